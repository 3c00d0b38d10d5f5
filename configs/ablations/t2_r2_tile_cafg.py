# Table 2 row 2: Baseline (tile-and-concat) + CAFG, plain head.
_base_ = './ablation_base.py'
model = dict(
    backbone=dict(fusion='tile', gate='cafg'),
    decode_head=dict(use_lqpg=False, use_coord=False))

# Table 2 row 4: Baseline (BSAM, no queries) + CAFG, plain head.
_base_ = './ablation_base.py'
model = dict(
    backbone=dict(fusion='bsam', gate='cafg', query_stages=()),
    decode_head=dict(use_lqpg=False, use_coord=False))

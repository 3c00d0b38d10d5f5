# Table 2 row 1: Baseline = sentence vector tiled + concatenated (no BSAM), no CAFG, no
# LQPG (LAVT's plain upsampling-conv head).
_base_ = './ablation_base.py'
model = dict(
    backbone=dict(fusion='tile', gate='none'),
    decode_head=dict(use_lqpg=False, use_coord=False))

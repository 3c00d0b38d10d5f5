# Table 2 row 3: Baseline (BSAM): BSAM gives F_i only (no language queries), no CAFG,
# plain head.
_base_ = './ablation_base.py'
model = dict(
    backbone=dict(fusion='bsam', gate='none', query_stages=()),
    decode_head=dict(use_lqpg=False, use_coord=False))

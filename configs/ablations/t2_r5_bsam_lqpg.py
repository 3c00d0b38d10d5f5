# Table 2 row 5: Baseline (BSAM) + LQPG: no CAFG.
_base_ = './ablation_base.py'
model = dict(backbone=dict(gate='none'))

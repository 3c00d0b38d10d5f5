# Table 4: single-path CAFG (GAP path 1 only) instead of CAFG.
_base_ = './ablation_base.py'
model = dict(backbone=dict(gate='single'))

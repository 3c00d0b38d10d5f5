# Table 4: spatial-spatial AFG (both paths per-pixel) instead of CAFG.
_base_ = './ablation_base.py'
model = dict(backbone=dict(gate='spatial_spatial'))

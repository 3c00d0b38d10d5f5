# Table 4: spatial-channel AFG (path 1 per-pixel, no GAP) instead of CAFG.
_base_ = './ablation_base.py'
model = dict(backbone=dict(gate='spatial_channel'))

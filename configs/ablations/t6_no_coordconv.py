# Table 6: Ours w/o CoordConv in the mask head (Eq 16 without F_o).
_base_ = './ablation_base.py'
model = dict(decode_head=dict(use_coord=False))

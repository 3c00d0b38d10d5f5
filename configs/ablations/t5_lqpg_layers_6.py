# Table 5: N_l = 6 LQPG layers (the paper default).
_base_ = './ablation_base.py'
model = dict(decode_head=dict(num_layers=6))

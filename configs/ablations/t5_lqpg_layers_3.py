# Table 5: N_l = 3 LQPG layers.
_base_ = './ablation_base.py'
model = dict(decode_head=dict(num_layers=3))

# Table 2 row 6: Ours w/o L_prior (λ = 0; only the last layer's prior head is built).
_base_ = './ablation_base.py'
model = dict(decode_head=dict(prior_loss_weight=0.0))

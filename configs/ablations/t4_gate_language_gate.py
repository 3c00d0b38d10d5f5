# Table 4: LAVT's Language Gate instead of CAFG.
_base_ = './ablation_base.py'
model = dict(backbone=dict(gate='language_gate'))

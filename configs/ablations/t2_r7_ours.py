# Table 2 row 7 (and 'Ours' in Tables 3-6): the full model.
_base_ = './ablation_base.py'

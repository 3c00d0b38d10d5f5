# Table 3: language queries from stage3 + stage4 only (the other stages build no query branch).
_base_ = './ablation_base.py'
model = dict(backbone=dict(query_stages=(2, 3)), decode_head=dict(num_queries=2))

# Table 3: language queries from stage1 + stage2 only (the other stages build no query branch).
_base_ = './ablation_base.py'
model = dict(backbone=dict(query_stages=(0, 1)), decode_head=dict(num_queries=2))

# Table 3: language queries from stage2 only (the other stages build no query branch).
_base_ = './ablation_base.py'
model = dict(backbone=dict(query_stages=(1, )), decode_head=dict(num_queries=1))

# Tiny MPG-LQGNet on the fixture tests/data/tiny_refer: CPU, BN, batch 2, a few iterations.
# Used by the tool / API tests and as a smoke test:
#   python tools/train.py configs/mpg_lqgnet_tiny_refer.py
_base_ = [
    './_base_/models/mpg_lqgnet_tiny.py', './_base_/datasets/tiny_refer.py',
    './_base_/default_runtime.py', './_base_/schedules/schedule_35e.py'
]
img_scale = (224, 224)  # multiple of 32 and of window 7 × 4 × 8
crop_size = img_scale
model = dict(data_preprocessor=dict(size=crop_size))
train_pipeline = [
    dict(type='LoadImageFromFile', color_type='color_ignore_orientation'),
    dict(type='LoadRefAnnotations'),
    dict(type='Resize', scale=img_scale, keep_ratio=False),
    dict(type='TokenizeText', tokenizer='bert-base-uncased', max_length=30),
    dict(type='PackRefSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', color_type='color_ignore_orientation'),
    dict(type='Resize', scale=img_scale, keep_ratio=False),
    dict(type='LoadRefAnnotations'),
    dict(type='TokenizeText', tokenizer='bert-base-uncased', max_length=30),
    dict(type='PackRefSegInputs'),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=2, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 4
optim_wrapper = dict(optimizer=dict(lr=1e-4))
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=max_iters, by_epoch=False)
]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=1, log_metric_by_epoch=False),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)

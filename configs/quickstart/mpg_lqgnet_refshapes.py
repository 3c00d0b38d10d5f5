# Quick start: a tiny MPG-LQGNet that learns to follow language on RefShapes (synthetic,
# generated on first use, no download) on a CPU. docs/quickstart.md has the expected time
# and score and the commands:
#   python tools/train.py configs/quickstart/mpg_lqgnet_refshapes.py
# The real modules (BERT from a config, BSAM-Swin with CAFG, pixel decoder, LQPG, Eq 17
# loss), only small: Swin embed 32, depths (1, 1, 2, 1), window 8 at 128×128; BERT 2×64;
# C_q 64; decoder width 64; N_l 2. Everything is trained from scratch (no pretrained
# weights), so the lr is that of a from-scratch model (1e-3), not the paper's 1.5e-5.
_base_ = ['../_base_/models/mpg_lqgnet_tiny.py', '../_base_/default_runtime.py']

img_size = 128
crop_size = (img_size, img_size)
max_tokens = 16  # the longest RefShapes sentence is 12 words
tokenizer = 'bert-base-uncased'  # bundled vocab (offline)
data_root = 'data/refshapes'  # cache of the generated PNGs (regenerated when absent)
seed = 0

model = dict(
    data_preprocessor=dict(size=crop_size),
    text_encoder=dict(config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=128, max_position_embeddings=32)),
    backbone=dict(
        pretrain_img_size=img_size,
        embed_dims=32,
        depths=[1, 1, 2, 1],
        num_heads=[1, 2, 4, 8],
        window_size=8,
        drop_path_rate=0.0,
        text_dims=64,
        query_dims=64),
    decode_head=dict(
        in_channels=[32, 64, 128, 256],
        channels=64,
        decoder_channels=64,
        num_layers=2,
        num_heads=4,
        ffn_channels=128,
        proj_norm_cfg=dict(type='GN', num_groups=8, requires_grad=True),
        # + a Dice loss on the referent (class 1 only): from scratch, plain CE first learns
        # to predict background everywhere (the referent is ~5 % of the pixels). Logged as
        # decode.loss_dice (on Y) and decode.loss_dice_prior_l{i} (on each prior, × λ/N_l:
        # prior_losses='all'; the default 'first' gives the priors the CE of Eq 17 only).
        prior_losses='all',
        loss_decode=[
            dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0,
                 avg_non_ignore=True),
            dict(type='DiceLoss', use_sigmoid=False, ignore_index=0, loss_weight=1.0,
                 loss_name='loss_dice')]))

dataset_type = 'RefShapesDataset'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadRefAnnotations'),
    dict(type='Resize', scale=crop_size, keep_ratio=False),
    dict(type='TokenizeText', tokenizer=tokenizer, max_length=max_tokens),
    dict(type='PackRefSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=False),
    dict(type='LoadRefAnnotations'),
    dict(type='TokenizeText', tokenizer=tokenizer, max_length=max_tokens),
    dict(type='PackRefSegInputs'),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, split='train', num_images=4000, refs_per_image=2,
                 seed=seed, img_size=img_size, data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, split='val', num_images=150, refs_per_image=2,
                 seed=seed, img_size=img_size, data_root=data_root, test_mode=True,
                 pipeline=test_pipeline))
test_dataloader = val_dataloader  # the held-out pairs: test_dataloader.dataset.split=test
val_evaluator = dict(type='RefSegMetric', resized_eval=False)  # input size = original size
test_evaluator = val_evaluator

# Schedule: iteration based, AdamW from scratch (FusedAdamW: torch's fused kernel where it
# has one, the same update), short warm-up then poly decay.
max_iters = 4000
val_interval = 500
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='FusedAdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
    clip_grad=dict(max_norm=1.0),
    paramwise_cfg=dict(norm_decay_mult=0.0,
                       custom_keys={'relative_position_bias_table': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, begin=0, end=100, by_epoch=False),
    dict(type='PolyLR', power=0.9, eta_min=1e-5, begin=100, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=val_interval)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=val_interval,
                    max_keep_ckpts=1, save_best='oIoU', rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
log_processor = dict(by_epoch=False)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=seed)

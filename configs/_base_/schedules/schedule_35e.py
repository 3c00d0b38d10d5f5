# Paper §4.1 recipe (unknowns from LAVT, see DESIGN.md "Training recipe"):
# AdamW lr 1.5e-5 (as printed), weight decay 0.01 except on norm layers and Swin's
# relative position bias tables, poly decay (power 0.9) stepped every iteration, no warm-up,
# no gradient clipping, 35 epochs, validation every epoch, best checkpoint by oIoU.
# FusedAdamW = torch's AdamW with its fused kernel where torch has one (CUDA; CPU from torch
# 2.4): the same update and state, one pass per tensor (mmrefseg/engine/optimizers).
optimizer = dict(type='FusedAdamW', lr=1.5e-5, betas=(0.9, 0.999), weight_decay=0.01)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=optimizer,
    clip_grad=None,
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        custom_keys={
            'relative_position_bias_table': dict(decay_mult=0.0),
            'absolute_pos_embed': dict(decay_mult=0.0),
        }))
max_epochs = 35
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=max_epochs, by_epoch=True,
         convert_to_iter_based=True)
]
# mmengine's EpochBasedTrainLoop restarts a mid-epoch checkpoint from the epoch's start; ours
# skips the batches already trained (the same as EpochBasedTrainLoop otherwise).
train_cfg = dict(type='ResumableEpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=True),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=True, interval=1, max_keep_ckpts=2,
                    save_best='oIoU', rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
# batch 8 in total (paper); used by `tools/train.py --auto-scale-lr` only (lr × effective
# batch / 8, the effective batch counting processes and accumulation steps).
auto_scale_lr = dict(enable=False, base_batch_size=8)

# Runtime shared by every mmrefseg config.
default_scope = 'mmseg'
custom_imports = dict(imports=['mmrefseg'], allow_failed_imports=False)
env_cfg = dict(
    cudnn_benchmark=False,  # 448×448 inputs; benchmark gains little and costs determinism
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
# image + mask + sentence, and a heatmap per LQPG mask prior (tools/test.py --show-dir)
visualizer = dict(type='RefSegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=True)
log_level = 'INFO'
load_from = None
resume = False
# A NaN/Inf loss stops the run with the iteration and every loss term printed
# ('skip' skips the optimizer step instead and raises after max_consecutive skips).
# SafeCheckpointLoadHook: load_from / resume / mmseg's tools/test.py CHECKPOINT read Runner
# checkpoints on torch >= 2.6 (weights-only loader + an allow-list); a truncated file is
# reported as such. Keep it when a config replaces custom_hooks. Crash-safe writes come
# from the AtomicCheckpointHook in default_hooks (schedules). See docs/reliability.md.
custom_hooks = [
    dict(type='NonFiniteLossHook', nonfinite='raise'),
    dict(type='SafeCheckpointLoadHook'),
]

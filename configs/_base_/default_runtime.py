# Runtime shared by every mmrefseg config.
default_scope = 'mmseg'
custom_imports = dict(imports=['mmrefseg'], allow_failed_imports=False)
env_cfg = dict(
    cudnn_benchmark=False,  # 448×448 inputs; benchmark gains little and costs determinism
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=True)
log_level = 'INFO'
load_from = None
resume = False

# Single-GPU preset of the paper recipe: 2 images × 4 accumulation steps = batch 8,
# everything else as mpg_lqgnet_swinb_refcoco.py, except the norms, which see 2 images
# per process instead of 8 (docs/model.md):
# - CAFG gates (normalise pooled B×C×1×1 vectors; a BN over 2 of them outputs ±γ+β, and
#   accumulation does not help): per-sample GN with 1 group (LayerNorm over the channels);
# - pixel-decoder convs (BN over 112×112 maps): plain BN.
#   python tools/train.py configs/mpg_lqgnet_swinb_refcoco_1xb2-acc4.py
_base_ = './mpg_lqgnet_swinb_refcoco.py'
gate_norm_cfg = dict(type='GN', num_groups=1, requires_grad=True)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(backbone=dict(norm_cfg=gate_norm_cfg), decode_head=dict(norm_cfg=norm_cfg))
train_dataloader = dict(batch_size=2)
optim_wrapper = dict(accumulative_counts=4)

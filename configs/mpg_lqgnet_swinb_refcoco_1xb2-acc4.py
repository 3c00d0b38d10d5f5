# Single-GPU preset of the paper recipe: 2 images × 4 accumulation steps = batch 8,
# plain BN (2 images per process), everything else as mpg_lqgnet_swinb_refcoco.py.
#   python tools/train.py configs/mpg_lqgnet_swinb_refcoco_1xb2-acc4.py
_base_ = './mpg_lqgnet_swinb_refcoco.py'
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), decode_head=dict(norm_cfg=norm_cfg))
train_dataloader = dict(batch_size=2)
optim_wrapper = dict(accumulative_counts=4)

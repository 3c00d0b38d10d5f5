# MPG-LQGNet, paper recipe on RefCOCOg (Google partition; val):
# 8 GPUs × 1 image, SyncBN, 35 epochs.
_base_ = [
    './_base_/models/mpg_lqgnet_swinb.py', './_base_/datasets/refcocog_google.py',
    './_base_/default_runtime.py', './_base_/schedules/schedule_35e.py'
]
train_dataloader = dict(batch_size=1)  # per GPU

# MPG-LQGNet, paper recipe on RefCOCO (UNC): 8 GPUs × 1 image = batch 8, SyncBN, 35 epochs.
#   bash tools/dist_train.sh configs/mpg_lqgnet_swinb_refcoco.py 8
_base_ = [
    './_base_/models/mpg_lqgnet_swinb.py', './_base_/datasets/refcoco_unc.py',
    './_base_/default_runtime.py', './_base_/schedules/schedule_35e.py'
]
train_dataloader = dict(batch_size=1)  # per GPU

# The tiny RefCOCO-format fixture in tests/data/tiny_refer (4 images, 13 refs, 17
# sentences; splits train / val / testA / testB). For tests and quick start: paths are
# relative to the repository root. Tests may override img_scale through the pipelines.
_base_ = './refer_common.py'
data_root = 'tests/data/tiny_refer'
train_dataloader = dict(
    num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root, split='train'))
val_dataloader = dict(
    num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root, split='val'))
test_dataloader = dict(
    num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root, split='val'))
test_splits = ['val', 'testA', 'testB']

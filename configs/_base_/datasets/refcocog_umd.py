# RefCOCOg, UMD partition: splits val / test (docs/dataset_prepare.md).
_base_ = './refer_common.py'
train_dataloader = dict(dataset=dict(split='train', dataset='refcocog', split_by='umd'))
val_dataloader = dict(dataset=dict(split='val', dataset='refcocog', split_by='umd'))
test_dataloader = dict(dataset=dict(split='val', dataset='refcocog', split_by='umd'))
test_splits = ['val', 'test']

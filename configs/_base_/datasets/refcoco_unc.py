# RefCOCO, UNC partition: splits val / testA / testB (docs/dataset_prepare.md).
_base_ = './refer_common.py'
train_dataloader = dict(dataset=dict(split='train', dataset='refcoco', split_by='unc'))
val_dataloader = dict(dataset=dict(split='val', dataset='refcoco', split_by='unc'))
test_dataloader = dict(dataset=dict(split='val', dataset='refcoco', split_by='unc'))
test_splits = ['val', 'testA', 'testB']

# RefCOCOg, Google partition: split val only (no public test split).
_base_ = './refer_common.py'
train_dataloader = dict(dataset=dict(split='train', dataset='refcocog', split_by='google'))
val_dataloader = dict(dataset=dict(split='val', dataset='refcocog', split_by='google'))
test_dataloader = dict(dataset=dict(split='val', dataset='refcocog', split_by='google'))
test_splits = ['val']

# Base of every ablation config (paper §4.3): the full model trained on RefCOCO+ (UNC) with
# the paper recipe, tested on RefCOCO+ testA (the split of Tables 2-6). Each ablation
# config changes 1-3 keys of this file. Row 'Ours' of every table = this file.
_base_ = '../mpg_lqgnet_swinb_refcoco+.py'
test_dataloader = dict(dataset=dict(split='testA'))

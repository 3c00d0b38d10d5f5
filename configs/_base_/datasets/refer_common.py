# Shared RefCOCO-family data settings (refer-API layout, docs/dataset_prepare.md).
# The per-dataset files (refcoco_unc.py, refcoco+_unc.py, refcocog_umd.py,
# refcocog_google.py) only name the dataset, the split_by and the splits.
#
# Pipelines (paper §4.1, docs/interfaces.md): resize to 448×448 without keeping the aspect
# ratio, no augmentation (no flip: it would need "left"/"right" swapped in the sentence),
# at most 30 BERT tokens. At test time the annotation is loaded after Resize, so the ground
# truth stays at the original size (RefSegMetric also scores at 448×448: "resized/" keys).
# Images are read as stored (color_ignore_orientation): the annotations refer to the stored
# pixels, a JPEG's EXIF orientation tag would rotate the image against its mask.
#
# Splits: train = one item per ref, a random sentence of the ref on each access (LAVT),
# drawn as a function of (seed, epoch, index): EpochTaggedSampler (mmengine's DefaultSampler
# whose indices carry the epoch, also to persistent workers) gives the dataset the epoch;
# val / test = one item per sentence (every sentence is scored). val_dataloader and
# test_dataloader both use `val`; `test_splits` lists the evaluation splits, which
# `tools/test.py CONFIG CKPT --split all` evaluates in one run (MultiSplitTestLoop);
# `--split testA` or `--split val testA` choose others.
dataset_type = 'RefCOCODataset'
data_root = 'data/refer'
img_scale = (448, 448)
max_tokens = 30
tokenizer = 'bert-base-uncased'  # bundled vocab; or a local vocab.txt / tokenizer dir

train_pipeline = [
    dict(type='LoadImageFromFile', color_type='color_ignore_orientation'),
    dict(type='LoadRefAnnotations'),
    dict(type='Resize', scale=img_scale, keep_ratio=False),
    dict(type='TokenizeText', tokenizer=tokenizer, max_length=max_tokens),
    dict(type='PackRefSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', color_type='color_ignore_orientation'),
    dict(type='Resize', scale=img_scale, keep_ratio=False),
    dict(type='LoadRefAnnotations'),  # after Resize: ground truth at the original size
    dict(type='TokenizeText', tokenizer=tokenizer, max_length=max_tokens),
    dict(type='PackRefSegInputs'),
]

train_dataloader = dict(
    batch_size=1,  # per GPU; 8 GPUs × 1 = the paper's batch 8
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='EpochTaggedSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        dataset='refcoco',
        split_by='unc',
        split='train',
        sentence_mode='random',
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        dataset='refcoco',
        split_by='unc',
        split='val',
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
test_splits = ['val', 'testA', 'testB']  # what `tools/test.py --split all` evaluates

val_evaluator = dict(type='RefSegMetric')
test_evaluator = val_evaluator

# Control for the quick start: identical, except that every training item gets the sentence
# of an item from another image (the language carries no information). Its val oIoU is
# what the model reaches without following language. docs/quickstart.md
_base_ = './mpg_lqgnet_refshapes.py'
train_dataloader = dict(dataset=dict(shuffle_text=True))

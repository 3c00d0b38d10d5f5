"""A toy model + dataset that run through mmengine's Runner in about a second.

Used by the reliability tests that exercise the engine (checkpoints, NaN guard) without the
(slower) MPG-LQGNet model. Loss = mean((w·x - 2x)^2); a sample whose metainfo has
``nan=True`` multiplies the batch loss by NaN, ``inf=True`` adds +Inf to it (the gradients
stay finite), ``nan_input=True`` feeds NaN through the model (``bn=True``: a BatchNorm
before the linear layer, whose running statistics the NaN then reaches).
"""
import torch
from mmengine.evaluator import BaseMetric, Evaluator
from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement
from torch.utils.data import Dataset


class ToyModel(BaseModel):

    def __init__(self, bn=False):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.constant_(self.linear.weight, 0.5)
        self.bn = torch.nn.BatchNorm1d(1) if bn else None

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = torch.stack(inputs).float()
        flags = [s.metainfo for s in data_samples or []]
        inp = x * float('nan') if any(m.get('nan_input', False) for m in flags) else x
        out = self.linear(self.bn(inp) if self.bn is not None else inp)
        if mode != 'loss':
            return out
        loss = ((out - 2 * x) ** 2).mean()
        aux = out.abs().mean()
        if any(m.get('nan', False) for m in flags):
            loss = loss * float('nan')
        if any(m.get('inf', False) for m in flags):
            loss = loss + float('inf')
        return dict(loss_main=loss, loss_aux=0.1 * aux, acc=torch.tensor(0.5))


class ToyDataset(Dataset):
    """``n`` samples x = 1, 2, ...; indices in ``nan_idx`` produce a NaN loss."""

    def __init__(self, n=16, nan_idx=()):
        self.n = n
        self.nan_idx = set(nan_idx)
        self.metainfo = dict(name='toy')

    def __len__(self):
        return self.n

    def __getitem__(self, idx):
        sample = BaseDataElement(metainfo=dict(img_path=f'toy_{idx:03d}.jpg',
                                               text=f'sentence {idx}',
                                               nan=idx in self.nan_idx))
        return dict(inputs=torch.tensor([float(idx % 4 + 1)]), data_samples=sample)


class ToyScore(BaseMetric):
    """``score`` = minus the mean |w·x - 2x| of the predictions (rises as the toy learns)."""

    def process(self, data_batch, data_samples):
        for x, out in zip(data_batch['inputs'], data_samples):
            self.results.append(float((out - 2 * x).abs().mean()))

    def compute_metrics(self, results):
        return dict(score=-sum(results) / len(results))


def make_runner(work_dir, name, max_iters=4, nan_idx=(), custom_hooks=None, ckpt_interval=2,
                max_keep_ckpts=-1, resume=False, n=16, optim_wrapper=None, val_interval=None,
                ckpt_type='AtomicCheckpointHook'):
    """A Runner on the toy, opted in as our configs are (``AtomicCheckpointHook``,
    ``SafeCheckpointLoadHook``); ``val_interval`` adds validation with ``save_best='score'``.
    """
    from mmengine.runner import Runner
    val = {}
    checkpoint = dict(type=ckpt_type, interval=ckpt_interval, by_epoch=False,
                      max_keep_ckpts=max_keep_ckpts)
    if val_interval is not None:
        val = dict(val_dataloader=dict(dataset=ToyDataset(n=4),
                                       sampler=dict(type='DefaultSampler', shuffle=False),
                                       batch_size=2, num_workers=0),
                   val_evaluator=Evaluator(ToyScore()), val_cfg=dict())
        checkpoint.update(save_best='score', rule='greater')
    return Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        experiment_name=name,
        train_dataloader=dict(
            dataset=ToyDataset(n=n, nan_idx=nan_idx),
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=2, num_workers=0),
        optim_wrapper=optim_wrapper or dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        param_scheduler=dict(type='PolyLR', eta_min=0, power=0.9, by_epoch=False),
        train_cfg=dict(by_epoch=False, max_iters=max_iters,
                       val_interval=val_interval or max_iters),
        default_hooks=dict(checkpoint=checkpoint, logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=list(custom_hooks or []) + [dict(type='SafeCheckpointLoadHook')],
        default_scope='mmseg',
        resume=resume,
        log_level='WARNING',
        **val)

"""Resuming a mid-epoch checkpoint of an epoch-based run (ResumableEpochBasedTrainLoop).

The stock EpochBasedTrainLoop restarts the epoch (batches trained twice, iteration counter
past max_iters); ours continues after the last trained batch and matches an uninterrupted
run exactly."""
import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner

import mmrefseg  # noqa: F401

from .toy import ToyDataset, ToyModel

EPOCHS, N, BATCH, CKPT_EVERY, CRASH_AT = 2, 12, 2, 4, 8  # 6 iterations per epoch


class _Record(Hook):
    """Per-iteration (iter, loss, sample indices); optionally crash after an iteration
    (after the CheckpointHook of that iteration)."""

    priority = 'LOWEST'

    def __init__(self, crash_at=None):
        self.log = []
        self.crash_at = crash_at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        idx = [s.metainfo['img_path'] for s in data_batch['data_samples']]
        self.log.append((runner.iter, round(outputs['loss'].item(), 7), batch_idx, idx))
        if self.crash_at is not None and runner.iter + 1 == self.crash_at:
            raise KeyboardInterrupt('simulated crash')


def _opted_in_hooks(hook=None):
    """The checkpoint hooks as our configs have them (crash-safe writes; Runner checkpoints
    load on torch >= 2.6, where ``import mmrefseg`` alone no longer makes them load)."""
    return dict(
        default_hooks=dict(checkpoint=dict(type='AtomicCheckpointHook', interval=CKPT_EVERY,
                                           by_epoch=False)),
        custom_hooks=[dict(type='SafeCheckpointLoadHook')] + ([hook] if hook else []))


def _runner(work_dir, name, loop, resume=False, hook=None):
    return Runner(
        model=ToyModel(), work_dir=str(work_dir), experiment_name=name,
        train_dataloader=dict(dataset=ToyDataset(n=N),
                              sampler=dict(type='DefaultSampler', shuffle=True),
                              batch_size=BATCH, num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        param_scheduler=dict(type='PolyLR', eta_min=0, power=0.9, by_epoch=False),
        train_cfg=dict(type=loop, max_epochs=EPOCHS),
        **_opted_in_hooks(hook),
        randomness=dict(seed=0), default_scope='mmseg', resume=resume, log_level='WARNING')


def _interrupted_then_resumed(tmp_path, loop):
    crash = _Record(crash_at=CRASH_AT)
    with pytest.raises(KeyboardInterrupt):
        _runner(tmp_path, f'{loop}_a', loop, hook=crash).train()
    resumed = _Record()
    runner = _runner(tmp_path, f'{loop}_b', loop, resume=True, hook=resumed)
    runner.train()
    return resumed.log, runner


def test_resumable_loop_continues_mid_epoch_like_an_uninterrupted_run(tmp_path):
    ref = _Record()
    ref_runner = _runner(tmp_path / 'ref', 'ref', 'ResumableEpochBasedTrainLoop', hook=ref)
    ref_runner.train()
    assert len(ref.log) == EPOCHS * N // BATCH

    log, runner = _interrupted_then_resumed(tmp_path / 'run', 'ResumableEpochBasedTrainLoop')
    # the checkpoint at iteration 8 (epoch 2, batch 2 of 6): iterations 9..12 are run
    assert [r[0] for r in log] == list(range(CRASH_AT, EPOCHS * N // BATCH))
    assert log == ref.log[CRASH_AT:]  # same batches (indices, batch_idx), same losses
    assert runner.iter == ref_runner.iter == EPOCHS * N // BATCH
    assert torch.equal(runner.model.linear.weight, ref_runner.model.linear.weight)


def test_stock_loop_replays_the_epoch(tmp_path):
    """What the resumable loop fixes (documents mmengine 0.10.7's behaviour)."""
    log, runner = _interrupted_then_resumed(tmp_path, 'EpochBasedTrainLoop')
    assert len(log) == N // BATCH  # the whole 2nd epoch again, not the 4 remaining batches
    assert runner.iter == CRASH_AT + N // BATCH > EPOCHS * N // BATCH


# ------------------------------------- sentence draws across a mid-epoch resume (issue 14 §4)
class _Sentences(torch.utils.data.Dataset):
    """RefCOCODataset items (one random sentence per ref and access) in ToyModel's format."""

    def __init__(self, root):
        from mmrefseg.datasets import RefCOCODataset
        self.refs = RefCOCODataset(data_root=root, split='train', pipeline=[])
        self.metainfo = dict(name='sentences')

    def __len__(self):
        return len(self.refs)

    def __getitem__(self, idx):
        from mmengine.structures import BaseDataElement
        info = self.refs[idx]  # idx carries the epoch (EpochTaggedSampler)
        sample = BaseDataElement(metainfo=dict(img_path=f'ref{info["ref_id"]}',
                                               text=info['text']))
        return dict(inputs=torch.tensor([float(info['sent_id'] % 7 + 1)]),
                    data_samples=sample)


class _RecordText(_Record):

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        texts = [s.metainfo['text'] for s in data_batch['data_samples']]
        self.texts = getattr(self, 'texts', []) + [(runner.iter, texts)]
        super().after_train_iter(runner, batch_idx, data_batch, outputs)


def _sentence_runner(work_dir, name, root, seed, resume=False, hook=None):
    return Runner(
        model=ToyModel(), work_dir=str(work_dir), experiment_name=name,
        train_dataloader=dict(dataset=_Sentences(root),
                              sampler=dict(type='EpochTaggedSampler', shuffle=True),
                              batch_size=BATCH, num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        param_scheduler=dict(type='PolyLR', eta_min=0, power=0.9, by_epoch=False),
        train_cfg=dict(type='ResumableEpochBasedTrainLoop', max_epochs=EPOCHS),
        **_opted_in_hooks(hook),
        randomness=dict(seed=seed), default_scope='mmseg', resume=resume,
        log_level='WARNING')


def test_sentence_draws_survive_a_mid_epoch_resume(tmp_path, refer_root):
    """(seed, epoch, index) draws: a resumed run trains the same sentences as an
    uninterrupted one, and the second epoch draws other sentences than the first. The run's
    seed is NOT fixed in the config: the resumed sampler takes the checkpoint's seed."""
    root = refer_root(n_refs=N, n_sents=5)
    crash = _RecordText(crash_at=CRASH_AT)
    first = _sentence_runner(tmp_path / 'run', 'a', root, seed=None, hook=crash)
    with pytest.raises(KeyboardInterrupt):
        first.train()
    seed = first.seed
    resumed = _RecordText()
    runner = _sentence_runner(tmp_path / 'run', 'b', root, seed=None, resume=True,
                              hook=resumed)
    runner.train()
    assert runner.train_loop.dataloader.sampler.seed == seed
    ref = _RecordText()
    _sentence_runner(tmp_path / 'ref', 'ref', root, seed=seed, hook=ref).train()
    assert resumed.texts == ref.texts[CRASH_AT:]
    assert crash.texts == ref.texts[:CRASH_AT]
    assert [r[0] for r in resumed.log] == list(range(CRASH_AT, EPOCHS * N // BATCH))
    per_epoch = [{}, {}]
    for it, texts in ref.texts:
        for t in texts:
            per_epoch[it // (N // BATCH)][t.split(' sentence ')[0]] = t
    assert sum(per_epoch[0][k] != per_epoch[1][k] for k in per_epoch[0]) >= N // 2

"""NonFiniteLossHook: a NaN/Inf loss stops the run, or skips the optimizer step."""

import pytest
import torch

import mmrefseg  # noqa: F401
from mmengine.hooks import Hook
from mmrefseg.engine import NonFiniteLossHook

from .toy import ToyModel, make_runner


class _RecordWeight(Hook):

    def __init__(self):
        self.weights = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.weights.append(runner.model.linear.weight.item())


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="nonfinite='ignore'.*'raise'.*'skip'"):
        NonFiniteLossHook(nonfinite='ignore')
    with pytest.raises(ValueError, match='max_consecutive=0'):
        NonFiniteLossHook(nonfinite='skip', max_consecutive=0)


def test_raise_names_iteration_terms_and_batch(tmp_path):
    # batch size 2, no shuffle: sample 5 is in the 3rd batch -> iteration 3
    runner = make_runner(tmp_path, 'nan_raise', max_iters=6, nan_idx=[5], ckpt_interval=1,
                         custom_hooks=[dict(type='NonFiniteLossHook', nonfinite='raise')])
    runner.register_hook(_rec := _RecordWeight())
    with pytest.raises(FloatingPointError) as e:
        runner.train()
    msg = str(e.value)
    assert 'Non-finite loss at iteration 3/6' in msg
    assert 'loss=nan' in msg and 'loss_main=nan' in msg and 'loss_aux=' in msg and 'acc=0.5' in msg
    assert 'toy_004.jpg' in msg and 'toy_005.jpg' in msg and "'sentence 5'" in msg
    # stopped in iteration 3, before any other hook of it ran: no later iteration, and no
    # checkpoint of the bad step (checkpoints are due every iteration here)
    assert len(_rec.weights) == 2
    assert sorted(p.name for p in tmp_path.glob('iter_*.pth')) == ['iter_1.pth', 'iter_2.pth']
    ckpt = torch.load(tmp_path / 'iter_2.pth', map_location='cpu', weights_only=False)
    assert torch.isfinite(ckpt['state_dict']['linear.weight']).all()
    # the price of checking without a sync: the check comes after the step, so the weights
    # in memory hold it (the run stops; resume from iter_2.pth)
    assert not torch.isfinite(runner.model.linear.weight).all()


def test_skip_leaves_weights_untouched_and_counts(tmp_path, capsys):
    rec = _RecordWeight()
    runner = make_runner(tmp_path, 'nan_skip', max_iters=6, nan_idx=[5, 9],
                         custom_hooks=[dict(type='NonFiniteLossHook', nonfinite='skip')])
    runner.register_hook(rec)
    runner.train()  # iterations 3 and 5 have NaN losses
    w = rec.weights
    assert len(w) == 6
    # momentum SGD moves the weight on every applied step; the skipped ones change nothing
    assert w[2] == w[1] and w[4] == w[3]
    assert w[1] != w[0] and w[3] != w[2]
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())
    assert runner.message_hub.get_info('nonfinite_skips') == 2
    out = capsys.readouterr().out
    assert 'Non-finite loss at iteration 3/6' in out and 'Optimizer step skipped (1 skipped' in out
    assert 'Non-finite loss at iteration 5/6' in out and '(2 skipped so far, 1 in a row' in out
    assert 'toy_009.jpg' in out
    assert '2 optimizer step(s) were skipped' in out


def test_skip_raises_after_max_consecutive(tmp_path):
    runner = make_runner(tmp_path, 'nan_consec', max_iters=8, nan_idx=[4, 6, 8],
                         custom_hooks=[dict(type='NonFiniteLossHook', nonfinite='skip',
                                            max_consecutive=3)])
    with pytest.raises(FloatingPointError, match=r'(?s)iteration 5/8.*3 consecutive'):
        runner.train()


def test_without_hook_nan_poisons_the_weights(tmp_path):
    """The control: what the hook prevents (mmengine applies the NaN step silently)."""
    runner = make_runner(tmp_path, 'nan_none', max_iters=4, nan_idx=[5])
    runner.train()
    assert not torch.isfinite(runner.model.linear.weight).all()


# --------------------------------------------------------------------------- distributed
def _ddp_worker(rank, world_size, port, queue, bad):
    import types

    import torch.distributed as dist
    from mmengine.hooks import RuntimeInfoHook
    from mmengine.logging import MessageHub
    from mmengine.model import MMDistributedDataParallel
    from mmengine.optim import OptimWrapper
    from mmengine.structures import BaseDataElement

    from mmrefseg.engine import NonFiniteLossHook

    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=world_size)
    collectives = []
    orig_all_reduce = dist.all_reduce
    dist.all_reduce = lambda *a, **k: collectives.append(1) or orig_all_reduce(*a, **k)
    try:
        model = MMDistributedDataParallel(ToyModel(), device_ids=None)
        wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
        hook = NonFiniteLossHook(nonfinite='skip')
        info = RuntimeInfoHook()
        runner = types.SimpleNamespace(model=model, optim_wrapper=wrapper, iter=0, epoch=0,
                                       max_iters=3, hooks=[info, hook],
                                       message_hub=MessageHub.get_instance(f'ddp{rank}'))
        hook.before_train(runner)
        weights = []
        for it in range(3):
            runner.iter = it
            flag = (it == 1 and rank == 1)  # only rank 1 has a bad loss, at iteration 2
            batch = dict(inputs=[torch.tensor([1.0 + rank])],
                         data_samples=[BaseDataElement(metainfo={bad: flag})])
            hook.before_train_iter(runner, it, batch)
            outputs = model.train_step(batch, optim_wrapper=wrapper)
            info.after_train_iter(runner, it, batch, outputs)
            hook.after_train_iter(runner, it, batch, outputs)
            weights.append(model.module.linear.weight.item())
        queue.put((rank, weights, hook.num_skipped, len(collectives)))
    finally:
        dist.all_reduce = orig_all_reduce
        dist.destroy_process_group()


@pytest.mark.parametrize('bad', ['nan', 'inf'])
def test_ddp_skip_is_taken_by_all_ranks_without_hang(bad, free_port):
    """A bad loss on one rank only: both ranks skip, no hang, no poison, and no collective
    of the hook's own: the rank's NaN-poisoned gradients reach every rank through DDP's
    all-reduce. 'inf': rank 1's loss is +Inf but its gradients would be finite; the poison
    still makes every rank skip (without it the ranks would apply that step)."""
    import torch.multiprocessing as mp
    ctx = mp.get_context('fork')  # no re-import of the test module (fast)
    queue = ctx.Queue()
    port = free_port
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, queue, bad)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, 'DDP workers hung'
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    results = dict((r, (w, n, c)) for r, w, n, c in (queue.get(timeout=5) for _ in range(2)))
    w0, n0, c0 = results[0]
    w1, n1, c1 = results[1]
    assert n0 == n1 == 1
    assert c0 == c1 == 0  # no all_reduce of the hook's own
    assert w0 == w1  # same weights on both ranks
    assert w0[1] == w0[0] and w0[2] != w0[1]  # iteration 2 skipped everywhere
    assert all(torch.isfinite(torch.tensor(w0)))


def test_skip_with_gradient_accumulation_drops_the_window(tmp_path, capsys):
    """accumulative_counts=2: windows are iterations (1,2), (3,4), (5,6). A NaN at 3 drops
    the whole window (no step at 4); the step at 6 then uses the gradients of 5 and 6 only
    (the NaN ones were dropped) and comes at 6 (the counter stayed aligned)."""
    from mmengine.runner import Runner

    from .toy import ToyDataset
    rec = _RecordWeight()
    runner = Runner(
        model=ToyModel(), work_dir=str(tmp_path), experiment_name='nan_accum',
        train_dataloader=dict(dataset=ToyDataset(n=16, nan_idx=[4]),
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              batch_size=2, num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01), accumulative_counts=2),
        train_cfg=dict(by_epoch=False, max_iters=6),
        custom_hooks=[dict(type='NonFiniteLossHook', nonfinite='skip'), rec],
        default_hooks=dict(checkpoint=None), default_scope='mmseg', log_level='WARNING')
    runner.train()
    w = rec.weights
    assert w[0] == 0.5 and w[1] != w[0]   # window 1: step at iteration 2
    assert w[2] == w[1] and w[3] == w[2]  # window 2 (NaN at 3): no step at 4
    assert w[4] == w[3] and w[5] != w[4]  # window 3: step at 6, not 5

    def grad(w0, x):  # d/dw of mean((w x - 2x)^2) + 0.1 mean|w x|, halved (2 windows)
        x = torch.tensor(x)
        return ((2 * (w0 * x - 2 * x) * x).mean() + 0.1 * torch.sign(torch.tensor(w0))
                * x.mean()).item() / 2
    # iterations 5 and 6: indices 8, 9 and 10, 11 -> x = (1, 2) and (3, 4)
    assert w[5] == pytest.approx(w[3] - 0.01 * (grad(w[3], [1., 2.]) + grad(w[3], [3., 4.])),
                                 abs=1e-6)
    assert runner.message_hub.get_info('nonfinite_skips') == 1
    out = capsys.readouterr().out
    assert 'Non-finite loss at iteration 3/6' in out and 'will be skipped' in out
    assert 'Non-finite gradients' in out and 'iteration(s) [3] of this accumulation' in out


def test_skip_restores_the_batchnorm_statistics(tmp_path):
    """A NaN that went through a BatchNorm in the forward has updated its running
    statistics before any loss exists; 'skip' puts them back, so eval is not poisoned."""
    from mmengine.runner import Runner

    from .toy import ToyDataset

    class _NaNInput(ToyDataset):
        def __getitem__(self, idx):
            out = super().__getitem__(idx)
            out['data_samples'].set_metainfo(dict(nan_input=idx in (4, 5)))
            return out

    runner = Runner(
        model=ToyModel(bn=True), work_dir=str(tmp_path), experiment_name='nan_bn',
        train_dataloader=dict(dataset=_NaNInput(n=16),
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              batch_size=2, num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=False, max_iters=4),
        custom_hooks=[dict(type='NonFiniteLossHook', nonfinite='skip')],
        default_hooks=dict(checkpoint=None), default_scope='mmseg', log_level='WARNING')
    runner.train()  # iteration 3 (indices 4, 5) is NaN
    bn = runner.model.bn
    assert runner.message_hub.get_info('nonfinite_skips') == 1
    assert torch.isfinite(bn.running_mean).all() and torch.isfinite(bn.running_var).all()
    assert bn.num_batches_tracked.item() == 3  # the skipped batch is not counted


def test_no_checkpoint_with_nonfinite_weights(tmp_path):
    """The guard for a distributed run: a rank that applied another rank's NaN gradients
    (its own loss finite) must not write them; the state dict is a CPU copy already."""
    hook = NonFiniteLossHook()
    runner = make_runner(tmp_path, 'guard', max_iters=1)
    runner._train_loop = runner.build_train_loop(runner._train_loop)
    good = dict(state_dict={'w': torch.ones(2), 'n': torch.tensor(3)})
    hook.before_save_checkpoint(runner, good)  # nothing to say
    bad = dict(state_dict={'w': torch.tensor([1., float('nan')]), 'b': torch.ones(1)})
    with pytest.raises(FloatingPointError, match=r'not saving.*1 weight tensor.*\(w\)'):
        hook.before_save_checkpoint(runner, bad)

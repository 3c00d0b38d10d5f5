"""The training step has no host–device syncs (issue 10 §4).

A real ``runner.train()`` of the tiny config (64×64 images, BN, batch 2); a probe hook wraps
exactly what runs on the hot path of every iteration: ``model.train_step`` (preprocessor,
BERT, BSAM-Swin, LQPG head, losses, backward, optimizer step) and ``NonFiniteLossHook``'s
per-iteration methods. mmengine's own ``RuntimeInfoHook`` (the one ``.item()`` per log
variable that the logger needs, and that the NaN check reads) stays outside the probe.

On CPU the probe (``sync_probe.SyncProbe``) records every value read and data-dependent
operator; on CUDA ``torch.cuda.set_sync_debug_mode('error')`` makes any sync raise.
"""
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook

import mmrefseg  # noqa: F401
from mmrefseg.engine import NonFiniteLossHook

from .sync_probe import SyncProbe
from .tiny_run import write_config


def _optimizer_step_counter(runner):
    """Adam keeps ``step`` on the host unless capturable/fused, so reading it is free."""
    def ignored(t):
        state = runner.optim_wrapper.optimizer.state
        return any(t is s.get('step') for s in state.values())
    return ignored


class _ProbeHotPath(Hook):
    """Runs ``train_step`` and NonFiniteLossHook's per-iteration methods inside ``ctx()``;
    ``self.iters[i]`` = what the probe recorded in iteration i + 1."""

    priority = 'LOWEST'  # before_train after NonFiniteLossHook has installed its wrappers

    def __init__(self, cuda=False, start_iter=0):
        self.cuda = cuda
        self.start_iter = start_iter
        self.iters = []

    def _ctx(self, runner):
        if self.cuda:
            return _CudaSyncError()
        return SyncProbe(ignore=_optimizer_step_counter(runner))

    def _wrap(self, runner, obj, name):
        orig = getattr(obj, name)
        probe = self

        def wrapped(*args, **kwargs):
            if runner.iter < probe.start_iter:
                return orig(*args, **kwargs)
            with probe._ctx(runner) as p:
                out = orig(*args, **kwargs)
            if name == 'before_train_iter':
                probe.iters.append([])
            probe.iters[-1].extend(getattr(p, 'calls', []))
            return out

        setattr(obj, name, wrapped)

    def before_train(self, runner):
        nonfinite = next(h for h in runner.hooks if isinstance(h, NonFiniteLossHook))
        self._wrap(runner, nonfinite, 'before_train_iter')
        self._wrap(runner, runner.model, 'train_step')
        self._wrap(runner, nonfinite, 'after_train_iter')


class _CudaSyncError:
    def __enter__(self):
        torch.cuda.synchronize()
        self.mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode('error')
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode(self.mode)
        return False


def _run(tmp_path, nonfinite='raise', n_iters=3, accumulate=1, device='cpu', start_iter=0):
    from mmengine.runner import Runner
    path = write_config(tmp_path / 'cfg.py', n_iters,
                        hooks=[dict(type='NonFiniteLossHook', nonfinite=nonfinite)])
    cfg = Config.fromfile(path, import_custom_modules=False)
    cfg.custom_imports = dict(imports=['mmrefseg'], allow_failed_imports=False)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.default_hooks.checkpoint = None
    if accumulate > 1:
        cfg.optim_wrapper.accumulative_counts = accumulate
    if device == 'cuda':
        cfg.env_cfg.dist_cfg = dict(backend='nccl')
    runner = Runner.from_cfg(cfg)
    probe = _ProbeHotPath(cuda=device == 'cuda', start_iter=start_iter)
    runner.register_hook(probe)
    runner.train()
    assert next(runner.model.parameters()).device.type == device
    return runner, probe.iters


def test_probe_sees_every_kind_of_sync():
    """The probe can fail: each of these is a sync on a GPU and must be recorded."""
    x = torch.arange(6.).reshape(2, 3)
    counts, two = torch.tensor([1, 2]), torch.tensor(2)
    cases = [
        lambda: x.sum().item(), lambda: int(x.max()), lambda: float(x.min()),
        lambda: bool((x > 0).any()), lambda: x.tolist(), lambda: x.cpu(),
        lambda: x[x > 2], lambda: torch.nonzero(x), lambda: x.masked_select(x > 1),
        lambda: torch.unique(x), lambda: torch.equal(x, x), lambda: range(10)[two],
        lambda: x.repeat_interleave(counts, dim=0), lambda: torch.tensor([1., 2.]),
        lambda: x[[1, 0]],
    ]
    for i, case in enumerate(cases):
        with SyncProbe() as p:
            case()
        assert len(p.calls) == 1, (i, p.calls)
        assert p.calls[0][1].endswith('(<lambda>)'), p.calls  # names the caller
    with SyncProbe() as p:  # device work without a host read: nothing
        y = torch.where(torch.isfinite(x), x * 2, float('nan')) @ x.T
        y[:, 0] = 1.
        x.flip(0).numpy()
    assert p.calls == [], p.report()
    counter = torch.tensor(3.)
    with SyncProbe(ignore=[counter]) as p:
        counter.item()
    assert p.calls == []


def test_training_step_has_no_sync(tmp_path):
    """Default runtime ('raise'): not one sync in any iteration, the first one included."""
    runner, iters = _run(tmp_path)
    assert len(iters) == 3
    for i, calls in enumerate(iters):
        assert calls == [], f'iteration {i + 1}:\n' + '\n'.join(map(str, calls))
    # the run was a real one: losses logged by the logger's own (outside) read
    assert torch.isfinite(torch.tensor(runner.message_hub.get_scalar('train/loss').current()))


def test_skip_syncs_once_per_optimizer_step(tmp_path):
    """'skip' decides before the step: exactly one read (all gradients finite?) per
    optimizer step, none in the accumulation iterations between, no all_reduce."""
    _, iters = _run(tmp_path, nonfinite='skip', n_iters=4, accumulate=2)
    assert [len(c) for c in iters] == [0, 1, 0, 1], iters
    for calls in (iters[1], iters[3]):
        what, where = calls[0]
        assert what == 'Tensor.__bool__' and '_grads_finite' in where, calls


@pytest.mark.cuda
def test_training_step_has_no_sync_cuda(tmp_path):
    """The same run on a GPU with torch.cuda.set_sync_debug_mode('error') around the hot
    path of iterations 2-3 (iteration 1 warms up cuBLAS/cuDNN and the allocator)."""
    _, iters = _run(tmp_path, device='cuda', start_iter=1)
    assert len(iters) == 2


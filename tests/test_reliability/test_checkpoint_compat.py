"""weights_only loading of Runner checkpoints (inside mmrefseg's opt-in loading block, as
SafeCheckpointLoadHook and init_model use it): HistoryBuffer methods pass, nothing else."""
import os
import pickle

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner.checkpoint import _load_checkpoint

from mmrefseg.utils.compat import (restricted_getattr, runner_checkpoint_loading,
                                   weights_only_default)


class _Gadget:
    """Pickles as ``getattr(numpy.ndarray, 'tofile')`` (an attribute lookup gadget)."""

    def __reduce__(self):
        return getattr, (np.ndarray, 'tofile')


def test_history_buffer_checkpoint_loads_with_weights_only(tmp_path):
    hub = MessageHub.get_instance('rel-compat')
    hub.update_scalar('train/loss', 0.5)
    path = str(tmp_path / 'hub.pth')
    torch.save(dict(message_hub=hub.state_dict()), path)  # pickles getattr(HistoryBuffer, ..)
    with runner_checkpoint_loading(path):
        loaded = _load_checkpoint(path, map_location='cpu')
    buf = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buf, HistoryBuffer) and buf.current() == 0.5


def test_other_getattr_is_refused(tmp_path):
    assert restricted_getattr(HistoryBuffer, 'mean') is HistoryBuffer.mean
    with pytest.raises(pickle.UnpicklingError, match='only allows the statistics methods'):
        restricted_getattr(np.ndarray, 'tofile')
    with pytest.raises(pickle.UnpicklingError):
        restricted_getattr(HistoryBuffer, '__init__')
    path = str(tmp_path / 'evil.pth')
    torch.save(dict(x=_Gadget()), path)
    if weights_only_default():  # torch >= 2.6: the safe loader refuses the gadget
        with pytest.raises(pickle.UnpicklingError, match='evil.pth'):
            with runner_checkpoint_loading(path):
                _load_checkpoint(path, map_location='cpu')
    else:  # torch 2.1-2.5 load with pickle (mmengine's behaviour, not widened by us)
        with runner_checkpoint_loading(path):
            assert callable(_load_checkpoint(path, map_location='cpu')['x'])


def _trained(tmp_path):
    """A toy run with one Runner checkpoint (``iter_2.pth``) in ``tmp_path``."""
    from .toy import make_runner
    make_runner(tmp_path, 'first', max_iters=2).train()
    return str(tmp_path / 'iter_2.pth')


def test_resume_needs_the_hook_on_new_torch(tmp_path):
    """The hook is what lets a Runner resume on torch >= 2.6; nothing global does it."""
    from mmengine.runner import Runner

    from .toy import make_runner
    ckpt = _trained(tmp_path)
    runner = make_runner(tmp_path, 'with_hook', max_iters=4, resume=True)
    runner.train()
    assert runner.iter == 4
    bare = make_runner(tmp_path, 'no_hook', max_iters=4)
    bare = Runner(model=bare.model, work_dir=str(tmp_path), experiment_name='bare')
    if weights_only_default():
        with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer|Unsupported global'):
            bare.load_checkpoint(ckpt)
    else:
        assert bare.load_checkpoint(ckpt)['meta']['iter'] == 2


def test_oom_during_resume_passes_through(tmp_path, monkeypatch):
    """A CUDA out-of-memory error while resuming keeps its type and message (the file is
    fine; calling it 'corrupt' could make a user delete a good checkpoint)."""
    from mmrefseg.utils.compat import CorruptCheckpointError

    from .toy import make_runner
    _trained(tmp_path)
    runner = make_runner(tmp_path, 'oom', max_iters=4, resume=True)
    msg = 'CUDA out of memory. Tried to allocate 2.00 GiB'

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError(msg)

    monkeypatch.setattr(torch, 'load', oom)
    with pytest.raises(torch.cuda.OutOfMemoryError) as e:
        runner.train()
    assert str(e.value) == msg and not isinstance(e.value, CorruptCheckpointError)


def test_truncated_checkpoint_during_resume_is_named(tmp_path):
    from mmrefseg.utils.compat import CorruptCheckpointError

    from .toy import make_runner
    ckpt = _trained(tmp_path)
    with open(ckpt, 'r+b') as f:
        f.truncate(os.path.getsize(ckpt) // 2)  # an interrupted copy
    with pytest.raises(CorruptCheckpointError, match='iter_2.pth.*truncated'):
        make_runner(tmp_path, 'cut', max_iters=4, resume=True).train()

"""weights_only loading of Runner checkpoints (inside mmrefseg's opt-in loading block, as
SafeCheckpointLoadHook and init_model use it): HistoryBuffer methods pass, nothing else."""
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

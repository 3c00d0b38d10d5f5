"""The stack work-arounds in mmrefseg.utils.compat (torch >= 2.6 checkpoints, pkg_resources)."""
import collections
import importlib
import pickle
import sys

import numpy as np
import pytest
import torch
from mmengine.logging import MessageHub
from mmengine.runner.checkpoint import _load_checkpoint, save_checkpoint

import mmrefseg  # noqa: F401  (applies the work-arounds)
from mmrefseg.utils import compat


def _runner_like_checkpoint():
    """What mmengine's Runner.save_checkpoint writes: meta, state dicts, a message hub."""
    hub = MessageHub.get_instance('mmrefseg-test-compat')
    for i in range(3):
        hub.update_scalar('train/loss', 1.0 / (i + 1))
    hub.update_info('iter', 3)
    hub.update_info('np_value', np.float64(0.5))
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    return dict(
        meta=dict(epoch=1, iter=3, seed=0, mmengine_version='0.10.7',
                  dataset_meta=dict(classes=('background', 'object')),
                  hook_msgs=dict(best_score=np.float32(0.75))),
        state_dict=collections.OrderedDict(model.state_dict()),
        optimizer=opt.state_dict(),
        message_hub=hub.state_dict(),
        param_schedulers=[dict(base_lrs=[1e-3], last_epoch=3)],
        arr=np.arange(4, dtype=np.int64))


def test_runner_checkpoint_round_trip(tmp_path):
    ckpt = _runner_like_checkpoint()
    path = str(tmp_path / 'iter_3.pth')
    save_checkpoint(ckpt, path)
    loaded = _load_checkpoint(path, map_location='cpu')  # the resume / test path
    assert loaded['meta']['iter'] == 3
    assert torch.equal(loaded['state_dict']['weight'], ckpt['state_dict']['weight'])
    hub = MessageHub.get_instance('mmrefseg-test-compat-loaded')
    hub.load_state_dict(loaded['message_hub'])
    assert hub.get_scalar('train/loss').current() == pytest.approx(1 / 3)
    np.testing.assert_array_equal(loaded['arr'], np.arange(4))


class NotAllowListed:
    """An arbitrary class: its pickle must not be executed by the safe loader."""


def test_weights_only_stays_on_for_unknown_objects(tmp_path):
    """We allow-list; we do not switch torch's safe loading off."""
    path = str(tmp_path / 'evil.pth')
    torch.save({'obj': NotAllowListed()}, path)
    with pytest.raises(pickle.UnpicklingError) as e:
        _load_checkpoint(path, map_location='cpu')
    assert 'evil.pth' in str(e.value) and 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' in str(e.value)


def test_truncated_checkpoint_names_the_file(tmp_path):
    path = tmp_path / 'latest.pth'
    save_checkpoint(_runner_like_checkpoint(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises((RuntimeError, pickle.UnpicklingError)) as e:
        _load_checkpoint(str(path), map_location='cpu')
    assert 'latest.pth' in str(e.value) and 'corrupt' in str(e.value)


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nothere.pth'):
        _load_checkpoint(str(tmp_path / 'nothere.pth'))


def _mmseg_base_config(tmp_path):
    path = tmp_path / 'uses_mmseg_base.py'
    path.write_text("_base_ = ['mmseg::_base_/default_runtime.py']\n")
    return str(path)


def test_pkg_resources_fallback(monkeypatch, tmp_path):
    """Without pkg_resources (setuptools >= 82) mmengine still finds installed packages."""
    mods = ['mmengine.utils.package_utils', 'mmengine.utils', 'mmengine.config.config',
            'mmengine.hub.hub']
    for name in mods:  # let monkeypatch restore mmengine's originals afterwards
        mod = importlib.import_module(name)
        for fn in ('package2module', 'is_installed', 'get_installed_path'):
            if hasattr(mod, fn):
                monkeypatch.setattr(mod, fn, getattr(mod, fn))
    monkeypatch.setitem(sys.modules, 'pkg_resources', None)  # import now raises ImportError
    compat._patch_pkg_resources()
    from mmengine.config import Config
    from mmengine.utils import package_utils
    import mmseg
    assert package_utils.get_installed_path('mmsegmentation').startswith(
        mmseg.__path__[0].rsplit('/', 1)[0])
    assert package_utils.is_installed('mmsegmentation')
    assert not package_utils.is_installed('surely-not-a-package-xyz')
    cfg = Config.fromfile(_mmseg_base_config(tmp_path))
    assert cfg.default_scope == 'mmseg'

"""mmrefseg.utils.compat: Runner checkpoints on torch >= 2.6 (opt-in), truthful load errors,
the guards that keep torch 2.1-2.5 working, and the opt-in pkg_resources fallback."""
import collections
import importlib
import pickle
import sys

import numpy as np
import pytest
import torch
from mmengine.logging import MessageHub
from mmengine.runner.checkpoint import _load_checkpoint, save_checkpoint

from mmrefseg.utils import compat
from mmrefseg.utils.compat import (CorruptCheckpointError, allow_runner_checkpoints,
                                   checkpoint_file_problem, runner_checkpoint_loading,
                                   weights_only_default)


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


@pytest.fixture
def runner_ckpt(tmp_path):
    path = str(tmp_path / 'iter_3.pth')
    save_checkpoint(_runner_like_checkpoint(), path)
    return path


def test_runner_checkpoint_round_trip(runner_ckpt):
    with runner_checkpoint_loading(runner_ckpt):
        loaded = _load_checkpoint(runner_ckpt, map_location='cpu')  # the resume / test path
    assert loaded['meta']['iter'] == 3
    hub = MessageHub.get_instance('mmrefseg-test-compat-loaded')
    hub.load_state_dict(loaded['message_hub'])
    assert hub.get_scalar('train/loss').current() == pytest.approx(1 / 3)
    np.testing.assert_array_equal(loaded['arr'], np.arange(4))


def test_allow_list_is_scoped_to_the_block(runner_ckpt):
    """Outside the block torch behaves as without mmrefseg: on torch >= 2.6 mmengine's plain
    load refuses its own checkpoint; on older torch it loads (not weights-only there)."""
    if weights_only_default():
        with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer|Unsupported global'):
            _load_checkpoint(runner_ckpt, map_location='cpu')
    else:
        assert _load_checkpoint(runner_ckpt, map_location='cpu')['meta']['iter'] == 3


def test_leaving_the_block_restores_torchs_allow_list(runner_ckpt):
    """An entry the user allow-listed before (np.dtype) stays allow-listed afterwards."""
    ser = torch.serialization
    if not hasattr(ser, 'get_safe_globals'):  # torch < 2.5: the block must not need it
        with allow_runner_checkpoints():
            assert _load_checkpoint(runner_ckpt, map_location='cpu')['meta']['iter'] == 3
    else:
        before = ser.get_safe_globals()
        ser.add_safe_globals([np.dtype])
        try:
            with allow_runner_checkpoints():
                assert _load_checkpoint(runner_ckpt, map_location='cpu')['meta']['iter'] == 3
            assert set(ser.get_safe_globals()) == set(before) | {np.dtype}
        finally:
            ser.clear_safe_globals()
            ser.add_safe_globals(before)


class NotAllowListed:
    """An arbitrary class: its pickle must not be executed by the safe loader."""


def test_weights_only_stays_on_for_unknown_objects(tmp_path):
    """We allow-list; we do not switch torch's safe loading off."""
    path = str(tmp_path / 'evil.pth')
    torch.save({'obj': NotAllowListed()}, path)
    if not weights_only_default():  # torch < 2.6 loads with pickle, as mmengine does
        with runner_checkpoint_loading(path):
            assert isinstance(_load_checkpoint(path)['obj'], NotAllowListed)
    else:
        with pytest.raises(pickle.UnpicklingError) as e:
            with runner_checkpoint_loading(path):
                _load_checkpoint(path, map_location='cpu')
        msg = str(e.value)
        assert 'evil.pth' in msg and 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' in msg
        assert 'NotAllowListed' in msg and 'truncated' not in msg


@pytest.mark.parametrize('cut', ['half', 'end_record', 'empty'])
def test_truncated_checkpoint_is_reported_as_corrupt(tmp_path, cut):
    path = tmp_path / 'latest.pth'
    save_checkpoint(_runner_like_checkpoint(), str(path))
    data = path.read_bytes()
    path.write_bytes({'half': data[:len(data) // 2], 'end_record': data[:-10],
                      'empty': b''}[cut])
    with pytest.raises(CorruptCheckpointError) as e:
        with runner_checkpoint_loading(str(path)):
            _load_checkpoint(str(path), map_location='cpu')
    assert 'latest.pth' in str(e.value) and 'truncated' in str(e.value)
    assert 'earlier checkpoint' in str(e.value)


def test_file_check_finds_a_crc_mismatch(runner_ckpt):
    assert checkpoint_file_problem(runner_ckpt) is None
    with open(runner_ckpt, 'r+b') as f:
        data = bytearray(f.read())
        weight = torch.load(runner_ckpt, weights_only=False)['state_dict']['weight']
        raw = weight.numpy().tobytes()
        at = bytes(data).find(raw)
        assert at > 0
        data[at] ^= 0xFF  # one flipped byte in the weight's storage
        f.seek(0)
        f.write(data)
    assert 'CRC' in checkpoint_file_problem(runner_ckpt)


def test_legacy_format_counts_as_sound(tmp_path):
    path = str(tmp_path / 'legacy.pth')
    torch.save({'w': torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    assert checkpoint_file_problem(path) is None
    path2 = tmp_path / 'text.pth'
    path2.write_text('not a checkpoint')
    assert 'neither a zip archive' in checkpoint_file_problem(str(path2))


def test_other_errors_pass_through_unchanged(runner_ckpt):
    """A CUDA out-of-memory error (or any error) while loading a sound file is not 'corrupt'."""
    oom = torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')
    with pytest.raises(torch.cuda.OutOfMemoryError) as e:
        with runner_checkpoint_loading(runner_ckpt):
            raise oom
    assert e.value is oom
    err = RuntimeError('size mismatch for weight')
    with pytest.raises(RuntimeError) as e:
        with runner_checkpoint_loading(runner_ckpt):
            raise err
    assert e.value is err


def test_device_mapping_error_passes_through(runner_ckpt):
    """torch's own message (no GPU here / a bad device), not 'corrupt'."""
    with pytest.raises(RuntimeError) as plain:
        with allow_runner_checkpoints():
            torch.load(runner_ckpt, map_location='cuda:7')
    with pytest.raises(RuntimeError) as ours:
        with runner_checkpoint_loading(runner_ckpt):
            torch.load(runner_ckpt, map_location='cuda:7')
    assert not isinstance(ours.value, CorruptCheckpointError)
    assert type(ours.value) is type(plain.value) and str(ours.value) == str(plain.value)


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nothere.pth'):
        with runner_checkpoint_loading(str(tmp_path / 'nothere.pth')):
            _load_checkpoint(str(tmp_path / 'nothere.pth'))


# -------------------------------------------------------------- the guards for torch 2.1-2.5
def test_guard_old_torch_does_nothing(monkeypatch, runner_ckpt):
    """torch 2.1: not weights-only by default; safe_globals is neither needed nor called."""
    monkeypatch.setattr(torch, '__version__', '2.1.2+cu121')
    monkeypatch.delenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', raising=False)

    def boom(*a, **k):
        raise AssertionError('safe_globals used on torch 2.1')

    monkeypatch.setattr(torch.serialization, 'safe_globals', boom, raising=False)
    assert compat.torch_version() == (2, 1)
    assert not weights_only_default()
    with allow_runner_checkpoints():
        pass


def test_guard_without_safe_globals(monkeypatch):
    """A torch without ``safe_globals`` / ``get_safe_globals`` (2.1-2.4): the block runs."""
    for name in ('safe_globals', 'get_safe_globals', 'add_safe_globals'):
        monkeypatch.delattr(torch.serialization, name, raising=False)
    monkeypatch.setenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', '1')
    ran = []
    with allow_runner_checkpoints():
        ran.append(1)
    assert ran == [1]


def test_weights_only_default_follows_torch_and_env(monkeypatch):
    monkeypatch.delenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', raising=False)
    monkeypatch.delenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', raising=False)
    for version, expected in (('2.1.2', False), ('2.5.1', False), ('2.6.0', True),
                              ('2.14.1+cu130', True)):
        monkeypatch.setattr(torch, '__version__', version)
        assert weights_only_default() is expected, version
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    assert weights_only_default() is False
    monkeypatch.setattr(torch, '__version__', '2.1.2')
    monkeypatch.delenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD')
    monkeypatch.setenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', 'true')
    assert weights_only_default() is True


# -------------------------------------------------------------- pkg_resources (opt-in)
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
    monkeypatch.setattr(compat, '_PKG_FALLBACK_APPLIED', False)
    monkeypatch.setitem(sys.modules, 'pkg_resources', None)  # import now raises ImportError
    assert compat.apply_pkg_resources_fallback() is True
    from mmengine.config import Config
    from mmengine.utils import package_utils
    import mmseg
    assert package_utils.get_installed_path('mmsegmentation').startswith(
        mmseg.__path__[0].rsplit('/', 1)[0])
    assert package_utils.is_installed('mmsegmentation')
    assert not package_utils.is_installed('surely-not-a-package-xyz')
    cfg = Config.fromfile(_mmseg_base_config(tmp_path))
    assert cfg.default_scope == 'mmseg'


def test_pkg_resources_fallback_leaves_mmengine_alone_when_not_needed(monkeypatch):
    """With pkg_resources importable the helpers stay mmengine's own."""
    from mmengine.utils import package_utils
    before = package_utils.get_installed_path
    monkeypatch.setattr(compat, '_PKG_FALLBACK_APPLIED', False)
    assert compat.apply_pkg_resources_fallback() is False
    assert package_utils.get_installed_path is before


def test_pkg_resources_fallback_only_on_the_mmengine_it_was_written_for(monkeypatch):
    """Version guard: on an mmengine other than 0.10.x the helpers are left alone, with a
    warning that says what to install."""
    import mmengine
    from mmengine.utils import package_utils
    before = package_utils.get_installed_path
    monkeypatch.setattr(compat, '_PKG_FALLBACK_APPLIED', False)
    monkeypatch.setitem(sys.modules, 'pkg_resources', None)
    monkeypatch.setattr(mmengine, '__version__', '0.11.0')
    with pytest.warns(UserWarning, match=r"setuptools<82"):
        assert compat.apply_pkg_resources_fallback() is False
    assert package_utils.get_installed_path is before
    assert compat._PKG_FALLBACK_APPLIED is False


def test_pkg_resources_fallback_is_idempotent(monkeypatch):
    """Applied twice, the second call changes nothing (the helpers stay the first call's)."""
    mods = ['mmengine.utils.package_utils', 'mmengine.utils', 'mmengine.config.config',
            'mmengine.hub.hub']
    for name in mods:
        mod = importlib.import_module(name)
        for fn in ('package2module', 'is_installed', 'get_installed_path'):
            if hasattr(mod, fn):
                monkeypatch.setattr(mod, fn, getattr(mod, fn))
    monkeypatch.setattr(compat, '_PKG_FALLBACK_APPLIED', False)
    monkeypatch.setitem(sys.modules, 'pkg_resources', None)
    from mmengine.utils import package_utils
    assert compat.apply_pkg_resources_fallback() is True
    first = package_utils.get_installed_path
    assert compat.apply_pkg_resources_fallback() is True
    assert package_utils.get_installed_path is first

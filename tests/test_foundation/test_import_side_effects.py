"""``import mmrefseg`` (and every subpackage) registers components and changes nothing else.

A user adds ``custom_imports=dict(imports=['mmrefseg'])`` to an mmseg/mmdet job to borrow one
module; that must not change how the job loads or saves checkpoints, writes files, or finds
packages. The check runs in a fresh interpreter: the mmengine/torch objects that a plugin
could be tempted to patch are compared by identity before and after the import.
"""
import json
import os
import os.path as osp
import subprocess
import sys
import textwrap

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

SCRIPT = textwrap.dedent(r'''
    import importlib, json, os, pkgutil, sys
    import torch
    import mmengine, mmseg, mmseg.models  # the stack's own import-time effects come first
    from mmengine.fileio.backends import registry_utils
    from mmengine.hooks import CheckpointHook, Hook
    from mmengine.runner import Runner
    from mmengine.runner.checkpoint import CheckpointLoader

    PKG_MODULES = ('mmengine.utils.package_utils', 'mmengine.utils', 'mmengine.config.config',
                   'mmengine.hub.hub')

    def snapshot():
        from mmengine.fileio.backends.local_backend import LocalBackend
        s = {}
        s['CheckpointLoader._schemes'] = dict(CheckpointLoader._schemes)
        s['LocalBackend'] = dict(vars(LocalBackend))
        s['CheckpointHook'] = dict(vars(CheckpointHook))
        s['Hook'] = dict(vars(Hook))
        s['Runner'] = dict(vars(Runner))
        s['file backends'] = dict(registry_utils.backends)
        s['file backend prefixes'] = dict(registry_utils.prefix_to_backends)
        for name in PKG_MODULES:
            mod = importlib.import_module(name)
            s[name] = {fn: getattr(mod, fn) for fn in
                       ('package2module', 'is_installed', 'get_installed_path')
                       if hasattr(mod, fn)}
        s['torch.serialization'] = dict(vars(torch.serialization))
        s['torch.nn.functional'] = dict(vars(torch.nn.functional))
        # registering under a name mmseg/mmengine already use (force=True) would swap their
        # component for ours in every config of the job
        import mmengine.registry as engine_registry
        import mmseg.registry as seg_registry
        for mod in (engine_registry, seg_registry):
            for name, reg in sorted(vars(mod).items()):
                if isinstance(reg, engine_registry.Registry):
                    s[f'{mod.__name__}.{name}'] = dict(reg._module_dict)
        s['torch'] = {k: getattr(torch, k) for k in ('load', 'save')}
        return s

    def values():
        ser = torch.serialization
        return {
            'safe globals': (sorted(map(repr, ser.get_safe_globals()))
                             if hasattr(ser, 'get_safe_globals') else None),
            'environ': dict(os.environ),
            'default dtype': str(torch.get_default_dtype()),
            'num threads': torch.get_num_threads(),
            'deterministic': torch.are_deterministic_algorithms_enabled(),
            'anomaly': torch.is_anomaly_enabled(),
            'matmul precision': torch.get_float32_matmul_precision(),
            'cudnn.benchmark': torch.backends.cudnn.benchmark,
        }

    before, before_v = snapshot(), values()
    import mmrefseg
    names = ['mmrefseg'] + [m.name for m in pkgutil.walk_packages(mmrefseg.__path__,
                                                                  'mmrefseg.')]
    for name in names:
        importlib.import_module(name)
    after, after_v = snapshot(), values()

    problems = []
    for key, old in before.items():
        new = after[key]
        for attr, obj in old.items():
            if attr not in new or new[attr] is not obj:
                problems.append(f'{key}.{attr} was replaced')
        for attr in set(new) - set(old):
            if key != 'file backends' and '.registry.' not in key:  # registration
                problems.append(f'{key}.{attr} was added')
    for key, old in before_v.items():
        if after_v[key] != old:
            problems.append(f'{key} changed: {old!r} -> {after_v[key]!r}')
    print(json.dumps(dict(modules=len(names), problems=problems,
                          new_backends=sorted(set(after['file backends']) -
                                              set(before['file backends'])))))
''')


def test_import_registers_and_changes_nothing_else():
    proc = subprocess.run([sys.executable, '-c', SCRIPT], cwd='/',
                          env={**os.environ, 'PYTHONPATH': REPO},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out['modules'] > 20  # every subpackage and module was imported
    assert out['problems'] == []
    assert out['new_backends'] == ['atomic_local']

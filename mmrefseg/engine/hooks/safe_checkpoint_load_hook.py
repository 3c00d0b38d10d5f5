# Copyright (c) mmrefseg contributors. All rights reserved.
"""Let a Runner load its own checkpoints on torch >= 2.6, with errors that tell the truth.

mmengine 0.10.7's ``Runner.load_checkpoint`` ends in ``torch.load(path)``; on torch >= 2.6
that loads weights-only and refuses the ``HistoryBuffer`` / numpy objects of mmengine's own
checkpoints. ``load_from``, ``resume`` (auto or a path) and mmseg's ``tools/test.py
CONFIG CHECKPOINT`` all go through ``Runner.load_checkpoint`` (``Runner.resume`` and
``Runner.load_or_resume`` call it), and every Runner path calls ``before_run`` before it.

Config (our ``configs/_base_/default_runtime.py`` has it)::

    custom_imports = dict(imports=['mmrefseg'])
    custom_hooks = [dict(type='SafeCheckpointLoadHook')]

At ``before_run`` the hook wraps this runner's ``load_checkpoint`` (an instance attribute:
nothing global, no other runner changes) in
:func:`mmrefseg.utils.compat.runner_checkpoint_loading`, which for the one call

- allow-lists exactly what mmengine writes into a checkpoint, keeping torch's weights-only
  loader on (torch >= 2.6; nothing to do on torch 2.1-2.5), and
- reports a truncated or damaged file as such, naming it, and passes every other error
  (CUDA out-of-memory, device mapping, state-dict mismatch) through unchanged.

Not covered: weights that ``init_cfg=dict(type='Pretrained')`` loads while the model is
initialised. Plain state dicts (Swin, converted weights) need nothing; to start from a
Runner checkpoint, use ``load_from``.
"""
import functools

from mmengine.hooks import Hook
from mmseg.registry import HOOKS

from ...utils.compat import runner_checkpoint_loading

__all__ = ['SafeCheckpointLoadHook']


@HOOKS.register_module()
class SafeCheckpointLoadHook(Hook):
    """Runner checkpoints load under torch's weights-only loader, errors name the cause.

    No arguments. See the module docstring.
    """

    priority = 'VERY_HIGH'

    def before_run(self, runner) -> None:
        load = runner.load_checkpoint
        if getattr(load, '_mmrefseg_safe_load', False):
            return

        @functools.wraps(load)
        def load_checkpoint(filename, *args, **kwargs):
            with runner_checkpoint_loading(filename):
                return load(filename, *args, **kwargs)

        load_checkpoint._mmrefseg_safe_load = True
        runner.load_checkpoint = load_checkpoint

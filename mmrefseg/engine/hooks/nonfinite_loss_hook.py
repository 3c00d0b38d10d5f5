# Copyright (c) mmrefseg contributors. All rights reserved.
"""Stop (or skip the optimizer step) when the training loss is NaN or Inf, without
stalling the GPU.

mmengine back-propagates and applies a NaN loss without a word: the weights turn NaN and
every later loss and prediction is NaN, often noticed hours later.

Config (``custom_hooks`` of the runtime config)::

    custom_hooks = [dict(type='NonFiniteLossHook', nonfinite='raise')]

**What it costs (host–device syncs).** A GPU runs ahead of the Python code; every read of a
device value on the host (``.item()``, ``bool(t)``) makes the host wait until the GPU has
finished everything queued so far. mmengine already does one such read per iteration:
``RuntimeInfoHook.after_train_iter`` calls ``MessageHub.update_scalar`` on every log
variable, which calls ``.item()`` (mmengine 0.10.7, ``mmengine/logging/message_hub.py``
``_get_valid_value``). The hook reads those host copies, so:

* ``'raise'`` (the default) adds **no** sync and no collective. It checks the logged loss
  after the iteration, in ``after_train_iter``, right after ``RuntimeInfoHook`` and before
  the checkpoint hook. The non-finite step has then been applied to the weights in memory,
  but the run stops in that same iteration, before any checkpoint of it is written. (If
  ``RuntimeInfoHook`` does not run before this hook, the hook reads the loss itself, one
  ``.item()`` per iteration, and says so in a warning at the start of training.)
* ``'skip'`` must decide **before** the optimizer step, so it needs the answer on the host
  there: **one sync per optimizer step** (none on the accumulation iterations in between),
  as torch's ``GradScaler`` does. With mmengine's ``AmpOptimWrapper`` (fp16 / bf16 with a
  ``GradScaler``) the scaler's own check does the skipping and the hook adds no sync.

**Distributed, without an extra all-reduce.** With ``'skip'`` a rank whose loss is
non-finite back-propagates ``loss × NaN``: every gradient on that rank is NaN, and DDP's
gradient all-reduce carries the NaN to every rank. The decision is then taken on the
all-reduced gradients (``'skip'``: "are all gradients finite?"; with a ``GradScaler``: the
scaler's ``found_inf``), which are the same on every rank, so all ranks skip together:
no rank leaves out ``backward`` (which would hang the others in DDP's all-reduce) and no
rank steps while another does not (which would make the replicas diverge). With
``'raise'`` the rank that sees the non-finite loss raises; ``torchrun`` then ends the
other ranks (tests/test_reliability/test_distributed.py). Every checkpoint is checked for
non-finite weights before it is written (``before_save_checkpoint``, on the CPU copy that
mmengine has already made: no device sync), so a rank that stepped with another rank's
NaN gradients cannot save them while the job is being torn down.

How it hooks in (``'skip'`` only): at ``before_train`` it wraps two methods of the run's
optim wrapper (instance attributes, nothing global): ``update_params`` (to multiply the
loss by ``where(isfinite(loss), 1, NaN)``, a device op) and ``step`` (to check the
gradients, without a ``GradScaler``). It works with every ``OptimWrapper`` subclass and
with DDP. fp16 gradient *overflow* (a finite loss, Inf gradients) stays the job of AMP's
gradient scaler.
"""
import logging
import math
import types
from collections import defaultdict

import torch
from mmengine.hooks import Hook, RuntimeInfoHook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS

__all__ = ['NonFiniteLossHook']


def _fmt(value) -> str:
    """A logged value (host float, or a tensor only on the error path) as text."""
    if isinstance(value, torch.Tensor):
        value = value.detach().float()
        value = value.item() if value.numel() == 1 else value.tolist()
    return f'{value:.6g}' if isinstance(value, float) else str(value)


def _is_finite(value) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _grads_finite(optimizer) -> bool:
    """All gradients finite? One multi-tensor max-abs per device, ONE host read."""
    by_device = defaultdict(list)
    for group in optimizer.param_groups:
        for p in group['params']:
            if p.grad is not None:
                by_device[p.grad.device].append(p.grad)
    if not by_device:
        return True
    flags = []
    for grads in by_device.values():
        norms = torch._foreach_norm(grads, math.inf)  # max |g| per tensor; NaN stays NaN
        flags.append(torch.stack(norms).isfinite().all())
    device = next(iter(by_device))
    flag = torch.stack([f.to(device) for f in flags]).all()
    return bool(flag)  # the one sync of 'skip' (before the optimizer step)


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Raise on, or skip, training iterations whose loss is NaN / ±Inf.

    Args:
        nonfinite (str): ``'raise'``: stop the run with a ``FloatingPointError`` that names
            the iteration (1-based, as in the log lines ``Iter(train) [k/N]``), every loss
            term, and the images/sentences of the batch. No host–device sync of its own:
            it reads the values mmengine's ``RuntimeInfoHook`` has already copied to the
            host, after the iteration (the weights in memory then hold that step; no
            checkpoint of it is written). ``'skip'``: the optimizer step of the iteration
            (of its accumulation window, with ``accumulative_counts > 1``) is not taken and
            the window's gradients are dropped; the running statistics of the norm layers
            are restored to their values before the non-finite forward; a warning with the
            same information is logged and the skip is counted (``message_hub`` info
            ``nonfinite_skips``, saved in checkpoints). The learning-rate schedule still
            advances. Costs **one host–device sync per optimizer step** (the decision must
            be on the host before the step), none with a ``GradScaler`` (its own check
            skips). Defaults to ``'raise'``.
        max_consecutive (int): with ``'skip'``, raise once this many consecutive optimizer
            steps were skipped (the run has diverged; skipping more only burns compute).
            Defaults to 10.
    """

    priority = 'VERY_HIGH'

    def __init__(self, nonfinite: str = 'raise', max_consecutive: int = 10):
        if nonfinite not in ('raise', 'skip'):
            raise ValueError(f"NonFiniteLossHook: nonfinite={nonfinite!r} is not supported; "
                             "use 'raise' (stop the run) or 'skip' (skip the optimizer step).")
        if not isinstance(max_consecutive, int) or max_consecutive < 1:
            raise ValueError(f'NonFiniteLossHook: max_consecutive={max_consecutive!r} must be '
                             'an int >= 1.')
        self.nonfinite = nonfinite
        self.max_consecutive = max_consecutive
        self.num_skipped = 0
        self.consecutive = 0
        self._runner = None
        self._read_logged = True  # RuntimeInfoHook runs first: read its host copies
        self._scaler = False
        self._norm_buffers = []
        self._snapshot = None
        self._reset_iter()
        self._window_bad = []  # (iteration, message) of non-finite losses in this window

    def _reset_iter(self):
        self._updated = False  # this iteration ended an accumulation window (a step was due)
        self._stepped = False  # ... and the optimizer's step() ran

    # ------------------------------------------------------------------ set-up
    def before_train(self, runner) -> None:
        self._runner = runner
        self.num_skipped = int(runner.message_hub.get_info('nonfinite_skips', 0) or 0)
        hooks = list(getattr(runner, 'hooks', []))
        mine = next((i for i, h in enumerate(hooks) if h is self), len(hooks))
        self._read_logged = any(isinstance(h, RuntimeInfoHook) for h in hooks[:mine])
        if not self._read_logged:
            print_log('NonFiniteLossHook: no RuntimeInfoHook runs before it, so it reads the '
                      'loss from the device itself (one host-device sync per iteration).',
                      logger='current', level=logging.WARNING)
        if self.nonfinite == 'skip':
            self._install_skip(runner)

    def _install_skip(self, runner) -> None:
        wrapper = runner.optim_wrapper
        for name in ('update_params', 'step', 'zero_grad', 'should_update', 'optimizer'):
            if not hasattr(wrapper, name):
                raise TypeError(f'NonFiniteLossHook: optim wrapper {type(wrapper).__name__} '
                                f'has no {name} (OptimWrapperDict is not supported).')
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self._norm_buffers = [
            b for m in model.modules()
            if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.track_running_stats
            for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None
        ]
        self._scaler = getattr(wrapper, 'loss_scaler', None) is not None
        hook = self
        optimizer = wrapper.optimizer
        orig_update, orig_step, orig_opt_step = wrapper.update_params, wrapper.step, \
            optimizer.step

        def update_params(_wrapper, loss, *args, **kwargs):
            # a non-finite loss on this rank makes every gradient NaN, on every rank after
            # DDP's all-reduce, so the decision in step() is the same everywhere (device op)
            poison = torch.where(torch.isfinite(loss.detach()), 1.0, float('nan'))
            out = orig_update(loss * poison.to(loss.dtype), *args, **kwargs)
            hook._updated = _wrapper.should_update()  # mmengine's own test, same counters
            return out

        def step(_wrapper, **kwargs):
            if hook._scaler or _grads_finite(_wrapper.optimizer):
                return orig_step(**kwargs)  # a GradScaler skips non-finite steps itself
            _wrapper.zero_grad()
            return None

        def optimizer_step(*args, **kwargs):
            hook._stepped = True
            return orig_opt_step(*args, **kwargs)

        wrapper.update_params = types.MethodType(update_params, wrapper)
        wrapper.step = types.MethodType(step, wrapper)
        optimizer.step = optimizer_step

    # ------------------------------------------------------------------ per iteration
    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._reset_iter()
        if self._norm_buffers and self._snapshot is None:  # at a window's start; device
            self._snapshot = [b.detach().clone() for b in self._norm_buffers]  # copies

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        values = self._logged_values(runner, outputs)
        loss_keys = [k for k in values if k == 'loss'] or [k for k in values if 'loss' in k]
        finite = all(_is_finite(values[k]) for k in loss_keys)
        if self.nonfinite == 'raise':
            if not finite:
                raise FloatingPointError(self._message(
                    values, data_batch, 'Non-finite loss',
                    'Stopping (NonFiniteLossHook nonfinite=\'raise\'). Usual causes: learning '
                    'rate too high, fp16 overflow (use bf16 or the AMP loss scaler), a broken '
                    'sample in the batch below. Resume from the last checkpoint with a lower '
                    "lr, or set dict(type='NonFiniteLossHook', nonfinite='skip') to skip such "
                    'steps.'))
            return
        it = runner.iter + 1
        if not finite:
            self._window_bad.append(it)
        if not self._updated:  # inside an accumulation window: no step was due
            if not finite:
                print_log(self._message(
                    values, data_batch, 'Non-finite loss',
                    'The optimizer step at the end of this accumulation window will be '
                    'skipped.'), logger='current', level=logging.WARNING)
            return
        window_bad, self._window_bad = self._window_bad, []
        if self._scaler:  # the poisoned gradients make the scaler's found_inf true
            counted = bool(window_bad)
            skipped = counted or not self._stepped
        else:
            skipped = counted = not self._stepped
        if skipped and self._snapshot is not None:  # undo the window's BN statistics
            for b, saved in zip(self._norm_buffers, self._snapshot):
                b.copy_(saved)
        self._snapshot = None
        if not counted:
            if not skipped:
                self.consecutive = 0
            return  # (an fp16 overflow skipped by the scaler is the scaler's business)
        self.num_skipped += 1
        self.consecutive += 1
        runner.message_hub.update_info('nonfinite_skips', self.num_skipped)
        if finite:
            earlier = [i for i in window_bad if i != it]
            what = ('Non-finite gradients (the loss of this iteration is finite on this rank'
                    + (f'; iteration(s) {earlier} of this accumulation window had a '
                       'non-finite loss' if earlier else
                       ': another rank had a non-finite loss, or backward overflowed') + ')')
        else:
            what = 'Non-finite loss'
        msg = self._message(
            values, data_batch, what,
            f'Optimizer step skipped ({self.num_skipped} skipped so far, '
            f'{self.consecutive} in a row, limit {self.max_consecutive}).')
        if self.consecutive >= self.max_consecutive:
            raise FloatingPointError(
                msg + f'\n{self.consecutive} consecutive non-finite losses: the run has '
                'diverged. Resume from an earlier checkpoint with a lower learning rate.')
        print_log(msg, logger='current', level=logging.WARNING)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Refuse to write non-finite weights (the state dict is already a CPU copy)."""
        bad = [k for k, v in (checkpoint.get('state_dict') or {}).items()
               if isinstance(v, torch.Tensor) and v.is_floating_point()
               and v.device.type == 'cpu' and not bool(torch.isfinite(v).all())]
        if bad:
            raise FloatingPointError(
                f'NonFiniteLossHook: not saving the checkpoint of iteration {runner.iter}: '
                f'{len(bad)} weight tensor(s) are non-finite ({", ".join(bad[:5])}'
                f'{", ..." if len(bad) > 5 else ""}). A non-finite step was applied (in a '
                'distributed run: another rank raised on a non-finite loss). Resume from the '
                'last checkpoint.')

    def after_train(self, runner) -> None:
        if self.num_skipped:
            print_log(f'NonFiniteLossHook: {self.num_skipped} optimizer step(s) were skipped '
                      'because of a non-finite loss in this run.', logger='current',
                      level=logging.WARNING)

    # ------------------------------------------------------------------ helpers
    def _logged_values(self, runner, outputs) -> dict:
        """This iteration's log variables as host floats: RuntimeInfoHook's copies."""
        if not outputs:
            return {}
        hub = runner.message_hub
        values = {}
        for key, value in outputs.items():
            if isinstance(value, torch.Tensor):
                if self._read_logged and f'train/{key}' in hub.log_scalars:
                    value = hub.get_scalar(f'train/{key}').current()
                elif value.numel() == 1:
                    value = value.item()  # no RuntimeInfoHook before us (warned once)
            values[key] = float(value) if isinstance(value, (int, float)) else value
        return values

    @staticmethod
    def _describe_batch(data_batch) -> str:
        samples = data_batch.get('data_samples') if isinstance(data_batch, dict) else None
        if not samples:
            return ''
        lines = []
        for s in samples:
            meta = s.metainfo if hasattr(s, 'metainfo') else {}
            path = meta.get('img_path', '?')
            text = meta.get('text')
            lines.append(f'    {path}' + (f' | {text!r}' if text is not None else ''))
        return '\n'.join(lines)

    def _message(self, values, data_batch, what: str, action: str) -> str:
        runner = self._runner
        it = runner.iter + 1
        where = f'iteration {it}'
        if runner.max_iters:
            where += f'/{runner.max_iters}'
        where += f' (epoch {runner.epoch + 1})'
        if values:
            terms = ', '.join(f'{k}={_fmt(v)}' for k, v in values.items())
        else:
            terms = 'loss terms unavailable (train_step returned no log variables)'
        msg = f'{what} at {where}: {terms}. {action}'
        batch = self._describe_batch(data_batch)
        if batch:
            msg += f'\n  batch (local rank):\n{batch}'
        return msg


# Copyright (c) mmrefseg contributors. All rights reserved.
"""Stop (or skip the step) when the training loss is NaN or Inf.

mmengine back-propagates and applies a NaN loss without a word: the weights turn NaN and
every later loss and prediction is NaN, often noticed hours later. This hook checks the
total loss of every iteration **before** the backward pass.

Config (``custom_hooks`` of the runtime config)::

    custom_hooks = [dict(type='NonFiniteLossHook', nonfinite='raise')]

How it hooks in: a hook cannot run between ``parse_losses`` and the optimizer step inside
``model.train_step``, so at ``before_train`` it wraps two methods of the run's objects
(instance attributes, nothing global): the model's ``parse_losses`` (to remember every loss
term) and the optim wrapper's ``update_params`` (to check the loss before ``backward``).
It therefore works with every ``OptimWrapper`` subclass (``AmpOptimWrapper``,
``CPUAmpOptimWrapper``, ...) and with DDP. fp16 gradient *overflow* (finite loss, Inf
gradients) stays the job of AMP's gradient scaler, which already skips those steps.

Distributed: the decision is all-reduced (MAX over ranks) every iteration, so all ranks
raise or skip together. Without that, one rank skipping ``backward`` would hang the others
in DDP's gradient all-reduce, and one rank back-propagating NaN would poison every rank's
weights through the averaged gradients.
"""
import logging
import types

import torch
import torch.distributed as torch_dist
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS

__all__ = ['NonFiniteLossHook']


def _fmt(value) -> str:
    if isinstance(value, torch.Tensor):
        value = value.detach().float()
        value = value.item() if value.numel() == 1 else value.tolist()
    return f'{value:.6g}' if isinstance(value, float) else str(value)


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Raise on, or skip, training iterations whose loss is NaN / ±Inf.

    Args:
        nonfinite (str): ``'raise'``: stop the run with a ``FloatingPointError`` that names
            the iteration (1-based, as in the log lines ``Iter(train) [k/N]``), every loss
            term, and the images/sentences of the batch. ``'skip'``: do not back-propagate,
            drop the gradients of the current accumulation window (``zero_grad``) and do not
            step the optimizer; log a warning with the same information and count the skip
            (``message_hub`` info ``nonfinite_skips``, saved in checkpoints). The learning
            rate schedule still advances. Defaults to ``'raise'``.
        max_consecutive (int): with ``'skip'``, raise once this many consecutive iterations
            were skipped (the run has diverged; skipping more only burns compute).
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
        self._log_vars = None
        self._batch_desc = ''

    # ------------------------------------------------------------------ set-up
    def before_train(self, runner) -> None:
        self._runner = runner
        self.num_skipped = int(runner.message_hub.get_info('nonfinite_skips', 0) or 0)
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if not hasattr(model, 'parse_losses'):
            raise TypeError(f'NonFiniteLossHook: {type(model).__name__} has no parse_losses; '
                            'the hook needs an mmengine BaseModel.')
        orig_parse = model.parse_losses
        hook = self

        def parse_losses(_model, losses):
            loss, log_vars = orig_parse(losses)
            hook._log_vars = log_vars
            return loss, log_vars

        model.parse_losses = types.MethodType(parse_losses, model)

        wrapper = runner.optim_wrapper
        if not hasattr(wrapper, 'update_params') or not hasattr(wrapper, 'zero_grad'):
            raise TypeError(f'NonFiniteLossHook: optim wrapper {type(wrapper).__name__} has no '
                            'update_params/zero_grad (OptimWrapperDict is not supported).')
        orig_update = wrapper.update_params

        def update_params(_wrapper, loss, *args, **kwargs):
            if hook._is_bad(loss):
                hook._handle(_wrapper)
                return None
            hook.consecutive = 0
            return orig_update(loss, *args, **kwargs)

        wrapper.update_params = types.MethodType(update_params, wrapper)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._log_vars = None
        self._batch_desc = self._describe_batch(data_batch)

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _is_bad(loss: torch.Tensor) -> bool:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if torch_dist.is_available() and torch_dist.is_initialized() \
                and torch_dist.get_world_size() > 1:
            # same decision on every rank (see the module docstring)
            device = loss.device if torch_dist.get_backend() != 'gloo' else 'cpu'
            flag = torch.tensor([float(bad)], device=device)
            torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
            bad = bool(flag.item() > 0)
        return bad

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

    def _message(self, what: str) -> str:
        runner = self._runner
        it = runner.iter + 1
        where = f'iteration {it}'
        if runner.max_iters:
            where += f'/{runner.max_iters}'
        where += f' (epoch {runner.epoch + 1})'
        if self._log_vars:
            terms = ', '.join(f'{k}={_fmt(v)}' for k, v in self._log_vars.items())
        else:
            terms = 'loss terms unavailable (the model did not call parse_losses)'
        msg = f'Non-finite loss at {where}: {terms}. {what}'
        if self._batch_desc:
            msg += f'\n  batch (local rank):\n{self._batch_desc}'
        return msg

    def _handle(self, wrapper) -> None:
        if self.nonfinite == 'raise':
            raise FloatingPointError(self._message(
                'Stopping (NonFiniteLossHook nonfinite=\'raise\'). Usual causes: learning '
                'rate too high, fp16 overflow (use bf16 or the AMP loss scaler), a broken '
                'sample in the batch below. Resume from the last checkpoint with a lower lr, '
                "or set dict(type='NonFiniteLossHook', nonfinite='skip') to skip such steps."))
        # skip: drop this accumulation window, keep the window counter aligned with iters
        wrapper.zero_grad()
        wrapper._inner_count += 1
        self.num_skipped += 1
        self.consecutive += 1
        self._runner.message_hub.update_info('nonfinite_skips', self.num_skipped)
        msg = self._message(
            f'Optimizer step skipped ({self.num_skipped} skipped so far, '
            f'{self.consecutive} in a row, limit {self.max_consecutive}).')
        if self.consecutive >= self.max_consecutive:
            raise FloatingPointError(
                msg + f'\n{self.consecutive} consecutive non-finite losses: the run has '
                'diverged. Resume from an earlier checkpoint with a lower learning rate.')
        print_log(msg, logger='current', level=logging.WARNING)

    def after_train(self, runner) -> None:
        if self.num_skipped:
            print_log(f'NonFiniteLossHook: {self.num_skipped} optimizer step(s) were skipped '
                      'because of a non-finite loss in this run.', logger='current',
                      level=logging.WARNING)


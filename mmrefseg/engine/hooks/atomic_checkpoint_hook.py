# Copyright (c) mmrefseg contributors. All rights reserved.
"""mmengine's ``CheckpointHook`` with writes that a crash cannot half-do.

mmengine 0.10.7's ``CheckpointHook``

1. writes every checkpoint in place (``LocalBackend.put``), so a process killed mid-write
   leaves a truncated file under the real name;
2. writes ``work_dir/last_checkpoint`` with a plain ``open(path, 'w')``;
3. deletes the checkpoint that falls out of ``max_keep_ckpts`` *before* saving the new one,
   and the previous ``best_*.pth`` *before* writing the new best, so a crash in between
   leaves ``last_checkpoint`` naming a deleted file, or no best checkpoint at all.

:class:`AtomicCheckpointHook` (a drop-in for ``type='CheckpointHook'``, same arguments):

1. writes files through the ``'atomic_local'`` backend
   (:class:`mmrefseg.utils.atomic_io.AtomicLocalBackend`, write-then-rename) whenever the
   checkpoints go to a local directory and no ``backend_args`` / ``file_client_args`` is
   given;
2. writes ``last_checkpoint`` the same way;
3. removes files only after the new checkpoint and ``last_checkpoint`` are on disk: during
   a save, mmengine's ``remove`` / ``rmtree`` calls are recorded and done at the end
   (:meth:`_removals_after_writes`), never for a file the save has just written. Cost: room
   for one more checkpoint (``max_keep_ckpts + 1``, or two best files) while one is written.

``_save_checkpoint_with_step`` is mmengine 0.10.7's method with only the ``last_checkpoint``
write changed: mmengine writes that file with a bare ``open`` inside the method and offers
no seam for it. On another mmengine version the hook warns and uses mmengine's method
(checkpoints are still written atomically and removals still come last).
"""
import os.path as osp
import warnings
from contextlib import contextmanager

import mmengine
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmseg.registry import HOOKS

from ...utils.atomic_io import atomic_write_text
from ...utils.compat import MMENGINE_SERIES

__all__ = ['AtomicCheckpointHook']



class _RemovalsRecorder:
    """A file backend whose ``remove`` / ``rmtree`` are recorded instead of done."""

    def __init__(self, backend):
        self.backend = backend
        self.pending = []

    def remove(self, path):
        self.pending.append(('remove', path))

    def rmtree(self, path):
        self.pending.append(('rmtree', path))

    def __getattr__(self, name):
        return getattr(self.backend, name)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` whose checkpoint, ``last_checkpoint`` and removals are crash-safe.

    Args: those of mmengine's ``CheckpointHook``. ``backend_args`` defaults to
    ``dict(backend='atomic_local')`` for a local ``out_dir`` (the default, ``work_dir``).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.backend_args is None and self.file_client_args is None and (
                self.out_dir is None or '://' not in str(self.out_dir)):
            self.backend_args = dict(backend='atomic_local')
        self._own_step_save = mmengine.__version__.startswith(MMENGINE_SERIES)
        if not self._own_step_save:
            warnings.warn(
                f'AtomicCheckpointHook was written for mmengine {MMENGINE_SERIES}x; with mmengine '
                f'{mmengine.__version__} `last_checkpoint` is written by mmengine (in place). '
                'Checkpoint files are still written atomically and removed last.')

    @contextmanager
    def _removals_after_writes(self):
        """Record the backend's removals inside the block; do them if the block succeeds."""
        backend = getattr(self, 'file_backend', None)  # set in before_train
        if backend is None or isinstance(backend, _RemovalsRecorder):  # nested: outer does it
            yield
            return
        recorder = self.file_backend = _RemovalsRecorder(backend)
        try:
            yield
        finally:
            self.file_backend = backend
        keep = {self.last_ckpt, getattr(self, 'best_ckpt_path', None)}
        keep.update(getattr(self, 'best_ckpt_path_dict', {}).values())
        for op, path in recorder.pending:
            if path in keep:  # just written under the same name
                continue
            if op == 'remove' and backend.isfile(path):
                backend.remove(path)
            elif op == 'rmtree' and backend.isdir(path):
                backend.rmtree(path)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        with self._removals_after_writes():
            super()._save_best_checkpoint(runner, metrics)

    def _save_checkpoint_with_step(self, runner, step, meta):
        with self._removals_after_writes():
            if not self._own_step_save:
                return super()._save_checkpoint_with_step(runner, step, meta)
            # mmengine 0.10.7's body; only the `last_checkpoint` write differs
            if self.max_keep_ckpts > 0:
                # _save_checkpoint and _save_best_checkpoint may both call this in one epoch
                if not (len(self.keep_ckpt_ids) > 0 and self.keep_ckpt_ids[-1] == step):
                    if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                        _step = self.keep_ckpt_ids.popleft()
                        if is_main_process():
                            ckpt_path = self.file_backend.join_path(
                                self.out_dir, self.filename_tmpl.format(_step))
                            if self.file_backend.isfile(ckpt_path):
                                self.file_backend.remove(ckpt_path)  # recorded, done last
                            elif self.file_backend.isdir(ckpt_path):  # deepspeed: a dir
                                self.file_backend.rmtree(ckpt_path)
                    self.keep_ckpt_ids.append(step)
                    runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

            ckpt_filename = self.filename_tmpl.format(step)
            self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
            runner.message_hub.update_info('last_ckpt', self.last_ckpt)

            runner.save_checkpoint(
                self.out_dir,
                ckpt_filename,
                self.file_client_args,
                save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler,
                meta=meta,
                by_epoch=self.by_epoch,
                backend_args=self.backend_args,
                **self.args)

            if not is_main_process():
                return
            atomic_write_text(self.last_ckpt, osp.join(runner.work_dir, 'last_checkpoint'))

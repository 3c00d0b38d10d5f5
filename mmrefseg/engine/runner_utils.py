# Copyright (c) mmrefseg contributors. All rights reserved.
"""Launcher helpers shared by ``tools/train.py`` and ``tools/test.py``.

Two things mmengine 0.10.7 does not do on a machine without a GPU (DESIGN.md, "The
OpenMMLab stack on today's torch"):

1. **CPU distributed.** ``--launcher pytorch`` / ``slurm`` make mmengine's ``init_dist``
   call ``torch.cuda.set_device(local_rank)`` (fails without CUDA), and
   ``Runner.wrap_model`` passes ``device_ids=[LOCAL_RANK]`` to DDP, which DDP rejects
   for CPU modules. :func:`setup_cpu_distributed` creates the ``gloo`` process group
   itself *before* the Runner is built (the Runner then skips ``init_dist`` because
   ``torch.distributed.is_initialized()``), sets ``env_cfg.dist_cfg.backend='gloo'`` and
   ``model_wrapper_cfg=dict(type='MMDistributedDataParallel', device_ids=None)``. The
   other DDP arguments are those mmengine gives on GPU: without a ``model_wrapper_cfg``,
   ``broadcast_buffers=False`` and the config's ``find_unused_parameters`` (default
   False); with one, the user's dict as it is. ``broadcast_buffers=False`` (mmengine's
   choice) means BN running statistics are not copied from rank 0 at every forward: with
   SyncBN they are equal on every rank anyway, with plain BN each rank keeps its own and
   the checkpoint (written by rank 0) holds rank 0's.
2. **Mixed precision on CPU, and bf16.** mmengine's ``AmpOptimWrapper`` asserts a GPU
   and always scales the loss. :class:`AutocastOptimWrapper` is autocast with a loss scaler
   for fp16 only; :class:`CPUAmpOptimWrapper` is that on the CPU (bf16 by default).
   :func:`enable_amp` picks the wrapper for ``--amp`` from the device and the config's
   ``amp_dtype``.

On a machine with CUDA these two leave the config to mmengine's own path.
:func:`build_runner` also opts the config into mmrefseg's checkpoint safety
(:func:`use_checkpoint_safety`), as our configs are.
"""
import logging
import os
import os.path as osp
import subprocess
from contextlib import contextmanager
from typing import Optional

import torch
import torch.distributed as torch_dist
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper
from mmseg.registry import OPTIM_WRAPPERS

from .hooks import SafeCheckpointLoadHook

__all__ = [
    'AutocastOptimWrapper', 'CPUAmpOptimWrapper', 'setup_cpu_distributed', 'enable_amp',
    'set_work_dir', 'check_config_file', 'add_launcher_args', 'parse_launcher_args',
    'build_runner', 'cpu_model_wrapper_cfg', 'use_checkpoint_safety', 'compile_supported',
    'check_compile_supported'
]


def _as_dtype(dtype):
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype


def _grad_scaler(device_type: str, loss_scale):
    """A dynamic (``'dynamic'``), fixed-start (float) or configured (dict) GradScaler."""
    if hasattr(torch, 'amp') and hasattr(torch.amp, 'GradScaler'):
        cls = torch.amp.GradScaler  # torch >= 2.3: any device
        kwargs = dict(device=device_type)
    elif device_type == 'cuda':
        cls, kwargs = torch.cuda.amp.GradScaler, {}
    else:
        raise RuntimeError(f'fp16 mixed precision on {device_type} needs a loss scaler for '
                           f'that device (torch >= 2.3, this is {torch.__version__}); use '
                           "amp_dtype='bfloat16'.")
    if loss_scale == 'dynamic':
        return cls(**kwargs)
    if isinstance(loss_scale, (int, float)):
        return cls(init_scale=float(loss_scale), **kwargs)
    if isinstance(loss_scale, dict):
        return cls(**kwargs, **loss_scale)
    raise TypeError(f'loss_scale must be "dynamic", a float or a dict, got {loss_scale!r}.')


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose forward runs under ``torch.autocast`` in ``dtype``.

    bf16 has fp32's exponent range: no loss scaling (and no per-step host-device sync of a
    scaler's inf check). fp16 gets a dynamic loss scaler (``torch.amp.GradScaler`` of the
    device, as mmengine's ``AmpOptimWrapper`` on CUDA).

    Args:
        dtype (str | torch.dtype): ``'bfloat16'`` or ``'float16'``. Default ``'bfloat16'``.
        loss_scale (str | float | dict): fp16 only, as ``AmpOptimWrapper``'s.
            Default ``'dynamic'``.
        device_type (str | None): autocast device; None = ``'cuda'`` when available,
            else ``'cpu'``. Other arguments as :class:`mmengine.optim.OptimWrapper`.
    """

    def __init__(self, dtype='bfloat16', loss_scale='dynamic', device_type=None, **kwargs):
        super().__init__(**kwargs)
        dtype = _as_dtype(dtype)
        if dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f'{type(self).__name__}: dtype={dtype!r} is not supported; use '
                             "'bfloat16' or 'float16'.")
        self.cast_dtype = dtype
        self.device_type = device_type or ('cuda' if torch.cuda.is_available() else 'cpu')
        self.loss_scaler = (_grad_scaler(self.device_type, loss_scale)
                            if dtype is torch.float16 else None)

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        if self.loss_scaler is None:
            return super().backward(loss, **kwargs)
        self.loss_scaler.scale(loss).backward(**kwargs)
        self._inner_count += 1

    def step(self, **kwargs) -> None:
        if self.loss_scaler is None:
            return super().step(**kwargs)
        if self.clip_grad_kwargs:
            self.loss_scaler.unscale_(self.optimizer)
            self._clip_grad()
        self.loss_scaler.step(self.optimizer, **kwargs)
        self.loss_scaler.update()

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.loss_scaler is not None:
            state['loss_scaler'] = self.loss_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        scaler_state = state_dict.pop('loss_scaler', None)
        if scaler_state is not None and self.loss_scaler is not None:
            self.loss_scaler.load_state_dict(scaler_state)
        super().load_state_dict(state_dict)

    @contextmanager
    def optim_context(self, model):
        with super().optim_context(model), torch.autocast(device_type=self.device_type,
                                                          dtype=self.cast_dtype):
            yield


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(AutocastOptimWrapper):
    """:class:`AutocastOptimWrapper` on the CPU (what ``--amp`` builds without CUDA).

    mmengine's ``AmpOptimWrapper`` is CUDA-only (it asserts a GPU and uses a CUDA
    ``GradScaler``). bf16 (default) needs no loss scaler; fp16 gets torch's CPU GradScaler
    (torch >= 2.3; slow on CPUs without fp16 arithmetic).

    Args:
        dtype (str | torch.dtype): ``'bfloat16'`` or ``'float16'``. Default ``'bfloat16'``.
        Other arguments as :class:`AutocastOptimWrapper`.
    """

    def __init__(self, dtype='bfloat16', **kwargs):
        kwargs['device_type'] = 'cpu'
        super().__init__(dtype=dtype, **kwargs)


def add_launcher_args(parser) -> None:
    """``--cfg-options``, ``--launcher`` and ``--local-rank``, as mmseg's tools have them."""
    from mmengine.config import DictAction
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override some settings in the used config, the key-value pair '
        'in xxx=yyy format will be merged into config file. If the value to '
        'be overwritten is a list, it should be like key="[a,b]" or key=a,b '
        'It also allows nested list/tuple values, e.g. key="[(a,b),(c,d)]" '
        'Note that the quotation marks are necessary and that no white space '
        'is allowed.')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher (pytorch/slurm also run on CPU, with gloo)')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_launcher_args(parser, argv=None):
    """``parser.parse_args`` + ``LOCAL_RANK`` exported from ``--local-rank`` if unset."""
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def use_checkpoint_safety(cfg) -> None:
    """Opt a config into mmrefseg's checkpoint safety, as our configs already are.

    Adds ``SafeCheckpointLoadHook`` to ``custom_hooks`` when the config lacks it (Runner
    checkpoints load on torch >= 2.6; a truncated file is reported as such), and turns a
    plain ``CheckpointHook`` in ``default_hooks.checkpoint`` into ``AtomicCheckpointHook``
    (same arguments; crash-safe writes). Called by :func:`build_runner`, so tools/train.py
    and tools/test.py give any config what our configs have.
    """
    hooks = list(cfg.get('custom_hooks', None) or [])
    if not any(h.get('type') in ('SafeCheckpointLoadHook', SafeCheckpointLoadHook)
               for h in hooks):
        hooks.append(dict(type='SafeCheckpointLoadHook'))
        cfg.custom_hooks = hooks
    ckpt = (cfg.get('default_hooks', None) or {}).get('checkpoint', None)
    if ckpt is not None and ckpt.get('type') in ('CheckpointHook', 'mmengine.CheckpointHook'):
        ckpt['type'] = 'AtomicCheckpointHook'
        print_log('default_hooks.checkpoint: CheckpointHook -> AtomicCheckpointHook '
                  '(crash-safe checkpoint writes)', logger='current', level=logging.INFO)


def build_runner(cfg):
    """``Runner.from_cfg``, or the config's ``runner_type`` from mmseg's RUNNERS, after
    :func:`use_checkpoint_safety`."""
    use_checkpoint_safety(cfg)
    check_compile_supported(cfg)
    if 'runner_type' not in cfg:
        from mmengine.runner import Runner
        return Runner.from_cfg(cfg)
    from mmseg.registry import RUNNERS
    return RUNNERS.build(cfg)


def compile_supported() -> bool:
    """Whether this torch can compile our models: transformers' BERT asks
    ``torch.compiler.is_compiling()`` while it is traced, which torch < 2.3 lacks."""
    return hasattr(getattr(torch, 'compiler', None), 'is_compiling')


def check_compile_supported(cfg) -> None:
    """Raise a clear error for a config with ``compile`` on a torch that cannot run it
    (rather than a dynamo trace error from inside transformers)."""
    if cfg.get('compile', None) and not compile_supported():
        raise RuntimeError(
            f'compile={cfg.compile!r} needs torch >= 2.3 (torch {torch.__version__} has no '
            'torch.compiler.is_compiling, which transformers\' BERT calls while traced). '
            'Remove compile from the config or upgrade torch.')


def check_config_file(path: str) -> None:
    """Raise a clear error when a config path does not exist."""
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'config file {path!r} not found (cwd: {os.getcwd()}). Pass the path of a '
            'config, e.g. configs/mpg_lqgnet_tiny_refer.py, relative to the repository root '
            'or absolute.')


def set_work_dir(cfg, work_dir: Optional[str], config_path: str) -> None:
    """work_dir priority, as mmseg: CLI > config > ``./work_dirs/<config name>``."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def enable_amp(cfg) -> None:
    """Turn on mixed precision for ``--amp``, in the dtype of the config's ``amp_dtype``
    (``'float16'`` | ``'bfloat16'``; default float16 on CUDA, bfloat16 on CPU):

    * CUDA fp16: mmengine's ``AmpOptimWrapper`` with a dynamic loss scale;
    * CUDA bf16: :class:`AutocastOptimWrapper` (bf16 needs no loss scaler);
    * CPU: :class:`CPUAmpOptimWrapper` (bf16; fp16 with torch's CPU loss scaler).
    """
    wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper in ('AmpOptimWrapper', 'CPUAmpOptimWrapper', 'AutocastOptimWrapper'):
        print_log('AMP training is already enabled in your config.', logger='current',
                  level=logging.WARNING)
        return
    if wrapper != 'OptimWrapper':
        raise ValueError(f'--amp is only supported when optim_wrapper.type is '
                         f"'OptimWrapper', but the config has {wrapper!r}. Remove --amp or "
                         'set the AMP wrapper in the config yourself.')
    cuda = torch.cuda.is_available()
    dtype = cfg.get('amp_dtype', None) or ('float16' if cuda else 'bfloat16')
    dtype = str(dtype).replace('torch.', '')
    if dtype not in ('float16', 'bfloat16'):
        raise ValueError(f"amp_dtype must be 'float16' or 'bfloat16', got {dtype!r}.")
    if cuda and dtype == 'float16':
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.dtype = 'float16'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    elif cuda:
        cfg.optim_wrapper.type = 'AutocastOptimWrapper'
        cfg.optim_wrapper.dtype = 'bfloat16'
    else:
        cfg.optim_wrapper.type = 'CPUAmpOptimWrapper'
        cfg.optim_wrapper.dtype = dtype


def _slurm_env(port=None):
    """Export RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* from SLURM variables (as mmengine)."""
    proc_id = int(os.environ['SLURM_PROCID'])
    ntasks = int(os.environ['SLURM_NTASKS'])
    local_rank = int(os.environ.get('SLURM_LOCALID', 0))
    if port is not None:
        os.environ['MASTER_PORT'] = str(port)
    os.environ.setdefault('MASTER_PORT', '29500')
    if 'MASTER_ADDR' not in os.environ:
        node_list = os.environ['SLURM_NODELIST']
        os.environ['MASTER_ADDR'] = subprocess.getoutput(
            f'scontrol show hostname {node_list} | head -n1')
    os.environ['WORLD_SIZE'] = str(ntasks)
    os.environ['LOCAL_RANK'] = str(local_rank)
    os.environ['RANK'] = str(proc_id)


def cpu_model_wrapper_cfg(cfg) -> dict:
    """The ``model_wrapper_cfg`` of a CPU (gloo) run: DDP without device ids, and every other
    argument as mmengine's ``Runner.wrap_model`` gives it on GPU for the same config."""
    user_wrapper = cfg.get('model_wrapper_cfg', None)
    wrapper = dict(user_wrapper or {})
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    wrapper['device_ids'] = None  # CPU modules: DDP must not get device ids
    if user_wrapper is None:
        # mmengine on GPU without a model_wrapper_cfg; with one it passes the user's dict
        # as it is (DDP's own defaults for the rest), and so do we
        wrapper['broadcast_buffers'] = False
        wrapper['find_unused_parameters'] = cfg.get('find_unused_parameters', False)
    return wrapper


def setup_cpu_distributed(cfg, launcher: str) -> bool:
    """Prepare a CPU (gloo) distributed run; a no-op with CUDA or ``launcher='none'``.

    Must be called before ``Runner.from_cfg(cfg)``. Returns True when it set things up.

    Args:
        cfg (Config): the run's config (changed in place).
        launcher (str): ``'none'``, ``'pytorch'``, ``'slurm'`` or ``'mpi'``.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return False
    if launcher not in ('pytorch', 'slurm'):
        raise ValueError(f'--launcher {launcher} is not supported without a GPU; use '
                         "'pytorch' (tools/dist_train.sh) or 'slurm'.")
    dist_cfg = dict(cfg.get('env_cfg', {}).get('dist_cfg', {}))
    dist_cfg['backend'] = 'gloo'
    cfg.setdefault('env_cfg', {})
    cfg.env_cfg.dist_cfg = dist_cfg

    cfg.model_wrapper_cfg = cpu_model_wrapper_cfg(cfg)

    if not torch_dist.is_initialized():
        kwargs = {k: v for k, v in dist_cfg.items() if k not in ('backend', 'port')}
        if 'timeout' in kwargs and not hasattr(kwargs['timeout'], 'total_seconds'):
            from datetime import timedelta
            kwargs['timeout'] = timedelta(seconds=kwargs['timeout'])
        if launcher == 'slurm':
            _slurm_env(dist_cfg.get('port'))
        for key in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
            if key not in os.environ:
                raise RuntimeError(
                    f'--launcher {launcher}: environment variable {key} is not set. Start '
                    'the processes with tools/dist_train.sh / dist_test.sh (torchrun) or '
                    'tools/slurm_train.sh / slurm_test.sh.')
        os.environ.setdefault('LOCAL_RANK', '0')
        torch_dist.init_process_group(
            backend='gloo', rank=int(os.environ['RANK']),
            world_size=int(os.environ['WORLD_SIZE']), **kwargs)
    return True

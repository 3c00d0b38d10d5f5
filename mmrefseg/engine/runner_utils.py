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
2. **Mixed precision on CPU.** mmengine's ``AmpOptimWrapper`` asserts a GPU. On CPU the
   mixed precision is bf16 autocast without a gradient scaler:
   :class:`CPUAmpOptimWrapper`. :func:`enable_amp` picks the right wrapper for ``--amp``.

On a machine with CUDA every function here leaves the config to mmengine's own path.
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

__all__ = [
    'CPUAmpOptimWrapper', 'setup_cpu_distributed', 'enable_amp', 'set_work_dir',
    'check_config_file', 'add_launcher_args', 'parse_launcher_args', 'build_runner',
    'cpu_model_wrapper_cfg'
]


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose forward runs under CPU bf16 autocast (no loss scaler).

    bf16 has fp32's exponent range, so no gradient scaling is needed; mmengine's
    ``AmpOptimWrapper`` is CUDA-only (it asserts a GPU and uses a CUDA ``GradScaler``).

    Args:
        dtype (str | torch.dtype): autocast dtype; CPU autocast supports only
            ``'bfloat16'``. Other arguments as :class:`mmengine.optim.OptimWrapper`.
    """

    def __init__(self, dtype='bfloat16', **kwargs):
        super().__init__(**kwargs)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None)
        if dtype is not torch.bfloat16:
            raise ValueError(f'CPUAmpOptimWrapper: dtype={dtype!r} is not supported; CPU '
                             "autocast only runs in bfloat16 (dtype='bfloat16').")
        self.cast_dtype = dtype

    @contextmanager
    def optim_context(self, model):
        with super().optim_context(model), torch.autocast(device_type='cpu',
                                                          dtype=self.cast_dtype):
            yield


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


def build_runner(cfg):
    """``Runner.from_cfg``, or the config's ``runner_type`` from mmseg's RUNNERS."""
    if 'runner_type' not in cfg:
        from mmengine.runner import Runner
        return Runner.from_cfg(cfg)
    from mmseg.registry import RUNNERS
    return RUNNERS.build(cfg)


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
    """Turn on mixed precision for ``--amp``: fp16 + dynamic loss scale on CUDA
    (mmengine ``AmpOptimWrapper``), bf16 autocast on CPU (:class:`CPUAmpOptimWrapper`)."""
    wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper in ('AmpOptimWrapper', 'CPUAmpOptimWrapper'):
        print_log('AMP training is already enabled in your config.', logger='current',
                  level=logging.WARNING)
        return
    if wrapper != 'OptimWrapper':
        raise ValueError(f'--amp is only supported when optim_wrapper.type is '
                         f"'OptimWrapper', but the config has {wrapper!r}. Remove --amp or "
                         'set the AMP wrapper in the config yourself.')
    if torch.cuda.is_available():
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    else:
        cfg.optim_wrapper.type = 'CPUAmpOptimWrapper'
        cfg.optim_wrapper.dtype = 'bfloat16'


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

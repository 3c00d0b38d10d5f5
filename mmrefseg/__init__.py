"""mmrefseg: referring image segmentation (MPG-LQGNet) as an MMSegmentation 1.x plugin.

``import mmrefseg`` (or ``custom_imports=dict(imports=['mmrefseg'])`` in a config) registers
every component into mmseg's registries, so ``default_scope='mmseg'`` configs find them by
bare name, and does nothing else: no mmengine or torch function is replaced. Crash-safe
checkpoint writes and loading Runner checkpoints on torch >= 2.6 are opt-in components
(``AtomicCheckpointHook``, ``SafeCheckpointLoadHook``) that our configs name
(docs/reliability.md).
"""
from .version import __version__
from . import utils  # noqa: F401  (registers the 'atomic_local' file backend)
from . import datasets, evaluation, models, engine, visualization  # noqa: F401,E402  (register)
from . import apis  # noqa: F401,E402

__all__ = ['__version__']

"""mmrefseg: referring image segmentation (MPG-LQGNet) as an MMSegmentation 1.x plugin.

``import mmrefseg`` (or ``custom_imports=dict(imports=['mmrefseg'])`` in a config) applies
the stack work-arounds in :mod:`mmrefseg.utils.compat` and registers every component into
mmseg's registries, so ``default_scope='mmseg'`` configs find them by bare name.
"""
from .version import __version__
from .utils import compat  # noqa: F401  (must run before mmengine loads checkpoints)

from . import datasets, evaluation, models, engine, visualization  # noqa: F401,E402  (register)
from . import apis  # noqa: F401,E402

__all__ = ['__version__']

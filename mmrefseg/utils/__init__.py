# Copyright (c) mmrefseg contributors. All rights reserved.
from . import atomic_io  # noqa: F401  (registers the 'atomic_local' mmengine file backend)
from . import compat  # noqa: F401  (functions only: nothing runs on import)

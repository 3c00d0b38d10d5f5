# Copyright (c) mmrefseg contributors. All rights reserved.
from .refshapes import RefShapesDataset  # noqa

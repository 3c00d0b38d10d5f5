# Copyright (c) mmrefseg contributors. All rights reserved.
from .accuracy import accuracy, non_ignored_count

__all__ = ['accuracy', 'non_ignored_count']

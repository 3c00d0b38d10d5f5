# Copyright (c) mmrefseg contributors. All rights reserved.

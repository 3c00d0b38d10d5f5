"""Fixtures of the reliability suite: writable fixture copies, the tiny config, a tiny model."""
import os.path as osp
import shutil

import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmrefseg  # noqa: F401  (registers the components)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TINY_ROOT = osp.join(REPO, 'tests', 'data', 'tiny_refer')
TINY_CONFIG = osp.join(REPO, 'configs', 'mpg_lqgnet_tiny_refer.py')
IMG_DIR = osp.join('images', 'mscoco', 'images', 'train2014')


@pytest.fixture(autouse=True)
def _mmseg_scope():
    init_default_scope('mmseg')


@pytest.fixture
def tiny_copy(tmp_path):
    """A writable copy of tests/data/tiny_refer."""
    dst = tmp_path / 'tiny_refer'
    shutil.copytree(TINY_ROOT, dst)
    return str(dst)


@pytest.fixture(scope='session')
def tiny_cfg():
    return Config.fromfile(TINY_CONFIG)


@pytest.fixture(scope='session')
def tiny_model(tiny_cfg):
    """The tiny MPG-LQGNet with random weights (mmrefseg.apis.init_model, CPU)."""
    from mmrefseg.apis import init_model
    return init_model(tiny_cfg, device='cpu')


# Copyright (c) mmrefseg contributors. All rights reserved.
"""Shared fixtures: the tiny refer fixture (read-only path and writable copies)."""
import json
import os.path as osp
import shutil

import pytest
from mmengine.registry import init_default_scope

import mmrefseg  # noqa: F401  (registers the components)

TEST_DATA = osp.join(osp.dirname(osp.dirname(__file__)), 'data')
TINY_ROOT = osp.join(TEST_DATA, 'tiny_refer')
VOCAB = osp.join(TEST_DATA, 'bert-base-uncased', 'vocab.txt')


@pytest.fixture(autouse=True)
def _mmseg_scope():
    init_default_scope('mmseg')


@pytest.fixture
def tiny_root():
    """Read-only path of the fixture (do not modify)."""
    return TINY_ROOT


@pytest.fixture
def tiny_copy(tmp_path):
    """A writable copy of the fixture, for tests that break it."""
    dst = tmp_path / 'tiny_refer'
    shutil.copytree(TINY_ROOT, dst)
    return str(dst)


def edit_instances(root, edit):
    """Apply ``edit(instances_dict)`` to ``root/refcoco/instances.json`` in place."""
    path = osp.join(root, 'refcoco', 'instances.json')
    with open(path) as f:
        inst = json.load(f)
    edit(inst)
    with open(path, 'w') as f:
        json.dump(inst, f)


def drop_annotation(root, ann_id):
    edit_instances(root, lambda inst: inst.update(
        annotations=[a for a in inst['annotations'] if a['id'] != ann_id]))

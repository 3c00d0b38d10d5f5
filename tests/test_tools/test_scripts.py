# Copyright (c) mmrefseg contributors. All rights reserved.
"""The launcher shell scripts parse, and the torchrun ones explain a missing argument."""
import os.path as osp
import subprocess

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SCRIPTS = ['dist_train.sh', 'dist_test.sh', 'slurm_train.sh', 'slurm_test.sh']


@pytest.mark.parametrize('script', SCRIPTS)
def test_script_is_valid_bash(script):
    subprocess.run(['bash', '-n', osp.join(REPO, 'tools', script)], check=True)


@pytest.mark.parametrize('script,usage', [('dist_train.sh', 'CONFIG GPUS'),
                                          ('dist_test.sh', 'CONFIG CHECKPOINT GPUS')])
def test_dist_scripts_print_usage(script, usage):
    proc = subprocess.run(['bash', osp.join(REPO, 'tools', script), 'only_config.py'],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and usage in proc.stderr

"""The installed stack imports, mmcv's compiled ops run, and the plugin registers itself."""
import importlib
import os.path as osp

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
VOCAB = osp.join(REPO, 'tests', 'data', 'bert-base-uncased', 'vocab.txt')


def test_pinned_stack_imports():
    import mmcv
    import mmengine
    import mmpretrain.models  # noqa: F401  (needs torchvision + transformers <= 4.50)
    import mmseg
    import mmseg.models  # noqa: F401  (needs the compiled mmcv._ext)
    import transformers
    assert mmcv.__version__ == '2.1.0'
    assert mmengine.__version__ == '0.10.7'
    assert mmseg.__version__ == '1.2.2'
    major, minor = (int(x) for x in transformers.__version__.split('.')[:2])
    assert (4, 40) <= (major, minor) < (4, 51)


def test_mmcv_compiled_op_runs():
    from mmcv.ops import point_sample
    feat = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    # point (0.5, 0.5) in [0, 1] coordinates is the centre: mean of the 4 middle pixels
    out = point_sample(feat, torch.tensor([[[0.5, 0.5]]]), align_corners=False)
    assert out.shape == (1, 1, 1)
    assert out.item() == pytest.approx((5 + 6 + 9 + 10) / 4)


def test_bert_tokenizer_matches_bert_base_uncased():
    from transformers import BertTokenizer
    tok = BertTokenizer(vocab_file=VOCAB)
    ids = tok('the lady with the blue shirt')['input_ids']
    assert ids == [101, 1996, 3203, 2007, 1996, 2630, 3797, 102]


EXPECTED = {
    'DATASETS': ['RefCOCODataset', 'RefShapesDataset'],
    'TRANSFORMS': ['LoadRefAnnotations', 'TokenizeText', 'PackRefSegInputs'],
    'METRICS': ['RefSegMetric'],
    'MODELS': ['BertTextEncoder', 'BSAMSwinTransformer', 'LQPGHead', 'RefEncoderDecoder',
               'RefSegDataPreProcessor'],
    'VISUALIZERS': ['RefSegLocalVisualizer'],
}


@pytest.mark.parametrize('registry,name', [(r, n) for r, ns in EXPECTED.items() for n in ns])
def test_components_are_in_mmseg_registries(registry, name):
    import mmrefseg  # noqa: F401
    reg = getattr(importlib.import_module('mmseg.registry'), registry)
    assert reg.get(name) is not None, f'{name} is not registered in mmseg.registry.{registry}'


def test_build_by_bare_name_from_config(tmp_path):
    """A config with custom_imports + default_scope='mmseg' builds our components."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import TRANSFORMS
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text(
        "custom_imports = dict(imports=['mmrefseg'], allow_failed_imports=False)\n"
        "default_scope = 'mmseg'\n"
        f"tok = dict(type='TokenizeText', tokenizer={VOCAB!r}, max_length=8)\n")
    cfg = Config.fromfile(str(cfg_file))  # runs custom_imports
    init_default_scope(cfg.default_scope)
    tok = TRANSFORMS.build(cfg.tok)
    out = tok(dict(text='the lady with the blue shirt'))
    assert list(out['text_ids']) == [101, 1996, 3203, 2007, 1996, 2630, 3797, 102]
    assert list(out['text_mask']) == [1] * 8


def test_mmseg_base_configs_resolve(tmp_path):
    """``mmseg::`` bases need mmengine's package lookup (pkg_resources on setuptools < 82)."""
    from mmengine.config import Config
    path = tmp_path / 'uses_mmseg_base.py'
    path.write_text("_base_ = ['mmseg::_base_/default_runtime.py']\n")
    cfg = Config.fromfile(str(path))
    assert cfg.default_scope == 'mmseg'


def test_plugin_importable_outside_the_checkout(tmp_path):
    """The set-up installs the package (editable): mmseg's own tools, run from anywhere,
    find it through ``custom_imports`` (not only because the checkout is the cwd)."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, '-c', 'import mmrefseg; print(mmrefseg.__file__)'],
                         cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in __import__('os').environ.items()
                              if k != 'PYTHONPATH'})
    assert out.returncode == 0, out.stderr[-2000:]
    assert osp.realpath(out.stdout.strip()).startswith(osp.realpath(REPO))

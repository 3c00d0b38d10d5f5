"""mmrefseg: referring image segmentation (MPG-LQGNet) as an MMSegmentation 1.x plugin.

Install with ``bash tools/install.sh`` (it installs the pinned stack, compiles mmcv and then
runs ``pip install -e .``). torch and mmcv are deliberately not in ``install_requires``: torch
has to match the mmcv build and mmcv must be compiled (see docs/get_started.md).

Extra ``demo`` (``pip install -e ".[demo]"``): Gradio for ``tools/webui.py``. 6.17.3 is the
newest Gradio whose requirements fit the pinned stack (later ones need huggingface_hub >= 1,
which transformers < 4.51 refuses); it brings pillow < 13.
"""
import os.path as osp
import re

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def version():
    with open(osp.join(HERE, 'mmrefseg', 'version.py')) as f:
        return re.search(r"__version__ = '([^']+)'", f.read()).group(1)


def requirements():
    """Runtime requirements from requirements.txt (the test-only tail is skipped)."""
    reqs = []
    with open(osp.join(HERE, 'requirements.txt')) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if not line:
                continue
            if line.startswith(('pytest', 'timm')):
                continue
            reqs.append(line)
    return reqs


setup(
    name='mmrefseg',
    version=version(),
    description='Referring image segmentation (MPG-LQGNet) for MMSegmentation 1.x',
    long_description=open(osp.join(HERE, 'README.md')).read() if osp.exists(
        osp.join(HERE, 'README.md')) else '',
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10,<3.13',
    packages=find_packages(include=['mmrefseg', 'mmrefseg.*']),
    package_data={'mmrefseg': ['datasets/transforms/vocab/*.txt']},
    include_package_data=True,
    install_requires=requirements(),
    extras_require={'demo': ['gradio==6.17.3']},
    zip_safe=False,
)

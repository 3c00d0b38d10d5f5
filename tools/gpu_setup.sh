#!/usr/bin/env bash
# Set up mmrefseg's stack on a lent GPU machine that has no network (docs/benchmark.md, GPU).
#
#   here, with PyPI:  tools/gpu_setup.sh download     -> .gpu_wheels/ (ignored by git, ~30 MB)
#   there:            tools/gpu_setup.sh install [--mmcv-cuda | --mmcv-cpu]
#                     -> $MMREFSEG_SITE (/tmp/mmrefseg_site), which tools/gpu_check.sh puts
#                        first on PYTHONPATH
#
# What the H200 machine offers (/work/.library/device/KINDS.md, read Nov 2026; check the
# first lines of tools/gpu_check.sh's `stack` line): python3 3.12 with torch 2.11.0+cu130,
# nvcc 13.0, numpy, scipy, matplotlib, opencv-python-headless, pyyaml, rich, regex,
# safetensors, timm, pytest; transformers 5.17, tokenizers 0.23 and huggingface_hub 1.33 are
# too new for our pins. It has no mmcv, mmengine or mmseg, and no network. So `download`
# fetches, for CPython 3.12 / manylinux x86-64, the pure-Python and binary wheels below plus
# mmcv's source (PyPI has only mmcv sources), and `install` installs them with --no-deps
# into a target folder and compiles mmcv there against the machine's own torch.
#
# mmcv compile time on that machine (16 cores): ESTIMATES. Measured on the 2-core dev
# machine (Dec 2026): nms_cuda.cu, roi_align_cuda.cu and ms_deform_attn_cuda.cu of mmcv
# 2.1.0 compile with nvcc 13.0 for sm_90 against torch 2.14's headers (-std=c++20), about
# 40 CPU-seconds each; the CPU-only build takes ~20 min with MAX_JOBS=1.
#   --mmcv-cpu   ops without CUDA kernels (enough to import mmseg.models and run the whole
#                model, which uses no mmcv CUDA op): 77 C++ units, ~20 CPU-min -> ~2 min
#   --mmcv-cuda  (default) + the 59 .cu files for TORCH_CUDA_ARCH_LIST=<the GPU's sm> only:
#                ~60 CPU-min in all -> ~4-8 min on 16 cores
# A device session has 15 minutes in all (machine start, transfers and idle time
# included), so --mmcv-cuda + every check hardly fits in one session; --mmcv-cpu +
# tools/gpu_check.sh does (the `ops` check then FAILs, saying mmcv has no CUDA ops).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHEELS=${GPU_WHEELS:-$REPO/.gpu_wheels}
SITE=${MMREFSEG_SITE:-/tmp/mmrefseg_site}
PY=${PYTHON:-python3}
PYVER=${GPU_PYTHON_VERSION:-3.12}
say() { printf '[gpu_setup] %s\n' "$*"; }

# name==version, chosen to match requirements.txt and the device's python 3.12
PURE=(mmengine==0.10.7 mmsegmentation==1.2.2 transformers==4.50.3 "huggingface-hub>=0.26,<1.0"
      addict yapf platformdirs termcolor prettytable wcwidth ftfy "setuptools<82")
BINARY=("tokenizers>=0.21,<0.22" pycocotools)

download() {
  mkdir -p "$WHEELS"
  local plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
              --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  say "pure-Python and binary wheels for CPython $PYVER -> $WHEELS"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp "${plat[@]}" -d "$WHEELS" "${PURE[@]}" "${BINARY[@]}"
  say "mmcv 2.1.0 source"
  "$PY" -m pip download -q --no-deps --no-binary=:all: -d "$WHEELS" mmcv==2.1.0
  du -sh "$WHEELS"
  say "carry it: run(..., carry=['.gpu_wheels']) and start the command with
    tools/gpu_setup.sh install --mmcv-cpu && tools/gpu_check.sh"
}

install() {
  local cuda=1
  case "${1:---mmcv-cuda}" in
    --mmcv-cuda) cuda=1 ;;
    --mmcv-cpu) cuda=0 ;;
    *) echo "usage: $0 install [--mmcv-cuda | --mmcv-cpu]" >&2; exit 2 ;;
  esac
  [ -d "$WHEELS" ] || { echo "no $WHEELS: run '$0 download' where PyPI is reachable and carry it" >&2; exit 2; }
  local t0=$SECONDS
  mkdir -p "$SITE"
  say "installing $(ls "$WHEELS"/*.whl | wc -l) wheels into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  if "$PY" -c 'import mmcv, mmcv._ext' 2>/dev/null; then
    say "mmcv with compiled ops already in $SITE"
  else
    local src=/tmp/mmcv-src jobs=${MAX_JOBS:-$(nproc)}
    rm -rf "$src" && mkdir -p "$src"
    tar xzf "$WHEELS"/mmcv-2.1.0.tar.gz -C "$src" --strip-components=1
    if "$PY" -c 'import sys, torch; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(0 if v >= (2, 14) else 1)'; then
      sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"  # torch >= 2.14 headers need C++20
    fi
    local arch
    arch=$("$PY" -c 'import torch; p = torch.cuda.get_device_capability() if torch.cuda.is_available() else (9, 0); print(f"{p[0]}.{p[1]}")')
    say "compiling mmcv 2.1.0 ($([ $cuda = 1 ] && echo "CUDA ops for sm $arch" || echo 'CPU ops only')) with $jobs jobs"
    if [ "$cuda" = 1 ]; then
      (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$arch}" \
        MAX_JOBS=$jobs "$PY" -m pip install -q --no-build-isolation --no-deps --no-index \
        --target "$SITE" .)
    else  # mmcv builds CUDA ops whenever it sees a GPU: hide it
      (cd "$src" && CUDA_VISIBLE_DEVICES= MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=$jobs \
        "$PY" -m pip install -q --no-build-isolation --no-deps --no-index --target "$SITE" .)
    fi
  fi
  "$PY" -c 'import mmcv, mmcv._ext, mmseg.models, mmengine, transformers; from mmcv.ops import get_compiling_cuda_version as g; print("mmcv", mmcv.__version__, "CUDA ops:", g(), "| mmseg models import | transformers", transformers.__version__)'
  say "done in $((SECONDS - t0)) s"
}

case "${1:-}" in
  download) download ;;
  install) shift; install "$@" ;;
  *) echo "usage: $0 download | install [--mmcv-cuda | --mmcv-cpu]" >&2; exit 2 ;;
esac

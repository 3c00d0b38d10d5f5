#!/usr/bin/env bash
# One-command set-up for mmrefseg on a fresh Python 3.10/3.11 machine.
#
#   bash tools/install.sh            # into the active Python (conda env, venv or system)
#   PYTHON=/path/to/python bash tools/install.sh
#
# Installs: torch 2.14.1 + torchvision 0.29.1 (kept if a supported torch is already there),
# mmcv 2.1.0 compiled from source with its ops (CUDA ops when a CUDA toolkit and a GPU are
# present, CPU ops otherwise), the pinned OpenMMLab stack (requirements.txt) and mmrefseg in
# editable mode. Safe to run again: every step checks first and the second run takes seconds.
#
# Environment knobs:
#   MAX_JOBS=N             parallel compile jobs for mmcv (default: number of cores)
#   FORCE_CUDA=1|0         force / forbid the CUDA build of mmcv (default: auto)
#   MMREFSEG_CACHE=DIR     where built mmcv wheels are cached, keyed by torch version and
#                          CUDA tag (default: ~/.cache/mmrefseg)
#   TORCH_SPEC="..."       torch requirement to install when none is present
#                          (default: "torch==2.14.1 torchvision==0.29.1")
set -euo pipefail

PY=${PYTHON:-python}
MMCV_VERSION=2.1.0
SUPPORTED_TORCH_RE='^2\.(13|14)\.'
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
CACHE=${MMREFSEG_CACHE:-$HOME/.cache/mmrefseg}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf '\033[1m[mmrefseg install]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[mmrefseg install] ERROR:\033[0m %s\n' "$*" >&2; exit 1; }
pip_() { "$PY" -m pip "$@"; }
t0=$(date +%s)

# ---------------------------------------------------------------- 0. fail fast
command -v "$PY" >/dev/null 2>&1 || die "'$PY' not found. Activate a Python 3.10/3.11 environment or set PYTHON=/path/to/python."
PY=$(command -v "$PY")  # absolute: some checks run from /
pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case "$pyver" in
  3.10|3.11) ;;
  *) die "Python $pyver is not supported (torch 2.14.1 wheels + the OpenMMLab stack were measured on 3.11; 3.10 also works). Create a Python 3.11 env, e.g. 'conda create -n mmrefseg python=3.11'." ;;
esac
"$PY" -m pip --version >/dev/null 2>&1 || die "pip is missing for $PY. Run '$PY -m ensurepip --upgrade'."
command -v g++ >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1 || \
  die "no C++ compiler found: mmcv $MMCV_VERSION must be compiled. Install one (Debian/Ubuntu: 'apt-get install -y g++'; conda: 'conda install -c conda-forge gxx_linux-64')."
say "python $pyver at $(command -v "$PY")"

# ---------------------------------------------------------------- 1. torch
# (metadata only: importing torch costs seconds)
torch_ver=$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)
if [[ -n "$torch_ver" && "$torch_ver" =~ $SUPPORTED_TORCH_RE ]] && \
   "$PY" -c 'import importlib.metadata as m; m.version("torchvision")' 2>/dev/null; then
  say "keeping the installed torch $torch_ver (supported: 2.13.x, 2.14.x)"
else
  [[ -n "$torch_ver" ]] && say "torch $torch_ver is not a supported version (2.13.x / 2.14.x); installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  pip_ install $TORCH_SPEC
  torch_ver=$("$PY" -c 'import torch; print(torch.__version__)')
fi

# ---------------------------------------------------------------- 2. the pinned stack
# Build tools first (mmcv is built without isolation against this torch), then the stack.
# Skipped when every requirement is already satisfied (a re-run then takes seconds).
reqs_ok() {
  "$PY" - "$ROOT/requirements.txt" <<'PY' 2>/dev/null
import importlib.metadata as md
import sys
from packaging.requirements import Requirement
lines = ['setuptools>=64,<82', 'wheel', 'ninja', 'packaging'] + open(sys.argv[1]).read().splitlines()
for line in lines:
    line = line.split('#', 1)[0].strip()
    if not line:
        continue
    req = Requirement(line)
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        sys.exit(f'missing {req.name}')
    if not req.specifier.contains(have, prereleases=True):
        sys.exit(f'{req.name} {have} does not satisfy {line}')
PY
}
if reqs_ok; then
  say "requirements.txt already satisfied"
else
  pip_ install -q "setuptools>=64,<82" wheel ninja packaging
  pip_ install -q -r "$ROOT/requirements.txt"
fi

# ---------------------------------------------------------------- 3. mmcv with compiled ops
mmcv_ok() {
  "$PY" - <<'PY' 2>/dev/null
import mmcv, torch
from mmcv.ops import point_sample  # needs the compiled mmcv._ext
import mmcv._ext  # noqa: F401
assert mmcv.__version__ == "2.1.0", mmcv.__version__
x = torch.rand(1, 1, 4, 4); point_sample(x, torch.rand(1, 3, 2))
PY
}
if mmcv_ok; then
  say "mmcv $MMCV_VERSION with compiled ops already works"
else
  has_cuda=$("$PY" -c 'import torch; print(int(torch.cuda.is_available() and torch.version.cuda is not None))')
  if [[ -z "${FORCE_CUDA:-}" ]]; then
    if [[ "$has_cuda" == 1 ]] && command -v nvcc >/dev/null 2>&1; then FORCE_CUDA=1; else FORCE_CUDA=0; fi
  fi
  torch_full=$("$PY" -c 'import torch; print(torch.__version__)')  # with the local tag (+cu130)
  tag="torch${torch_full//+/_}-$([[ "$FORCE_CUDA" == 1 ]] && echo cuda || echo cpu)-py${pyver}"
  wheel_dir="$CACHE/wheels/$tag"
  whl=$(ls "$wheel_dir"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)
  if [[ -z "$whl" ]]; then
    jobs=${MAX_JOBS:-$(nproc 2>/dev/null || echo 2)}
    say "building mmcv $MMCV_VERSION for $tag with $jobs jobs (15-25 min on 2 cores, once per torch version)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # --no-cache-dir: pip keys its wheel cache by the source, not by the torch it was built
    # against; a wheel cached for another torch would be reused and fail to load.
    pip_ download --no-cache-dir --no-deps --no-binary :all: --no-build-isolation \
      "mmcv==$MMCV_VERSION" -d "$work" -q
    tar xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
    src="$work/mmcv-$MMCV_VERSION"
    # torch >= 2.14 headers need C++20; mmcv 2.1.0's setup.py hard-codes -std=c++17.
    if "$PY" -c 'import sys, torch; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(0 if v >= (2, 14) else 1)'; then
      say "torch $torch_ver needs C++20: patching mmcv's setup.py (-std=c++17 -> -std=c++20)"
      sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
      grep -q -- '-std=c++20' "$src/setup.py" || die "could not patch $src/setup.py for C++20"
    fi
    mkdir -p "$wheel_dir"
    (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=$FORCE_CUDA MAX_JOBS=$jobs \
      "$PY" -m pip wheel --no-cache-dir --no-deps --no-build-isolation . -w "$work/dist") \
      || die "mmcv build failed (log above). Check that a C++ compiler and, for CUDA, nvcc matching torch's CUDA are present."
    cp "$work"/dist/mmcv-"$MMCV_VERSION"-*.whl "$wheel_dir/"
    whl=$(ls "$wheel_dir"/mmcv-"$MMCV_VERSION"-*.whl | head -n1)
  else
    say "reusing the mmcv wheel built for $tag: $whl"
  fi
  pip_ install --no-deps --force-reinstall "$whl"
  mmcv_ok || die "mmcv $MMCV_VERSION was installed from $whl but its ops do not load. Delete $wheel_dir and run again."
fi

# ---------------------------------------------------------------- 4. mmrefseg itself
# (asked from /, so that the checkout in the current directory does not answer for pip)
if (cd / && "$PY" - "$ROOT" <<'PY' 2>/dev/null
import importlib.metadata as md, json, os, sys
info = json.loads(md.distribution('mmrefseg').read_text('direct_url.json') or '{}')
path = info.get('url', '').replace('file://', '', 1)
ok = info.get('dir_info', {}).get('editable') and os.path.realpath(path) == os.path.realpath(sys.argv[1])
sys.exit(0 if ok else 1)
PY
); then
  say "mmrefseg already installed (editable) from $ROOT"
else
  pip_ install -q --no-deps --no-build-isolation -e "$ROOT"
fi

# ---------------------------------------------------------------- 5. check
(cd / && "$PY" - <<'PY') || die "the installed stack does not import; see the traceback above."
import mmcv, mmengine, mmseg, mmpretrain, torch, transformers
from mmcv.ops import point_sample  # noqa: F401
import mmseg.models  # noqa: F401
import mmrefseg  # noqa: F401
print(f"torch {torch.__version__} | mmcv {mmcv.__version__} | mmengine {mmengine.__version__} | "
      f"mmseg {mmseg.__version__} | mmpretrain {mmpretrain.__version__} | "
      f"transformers {transformers.__version__} | mmrefseg {mmrefseg.__version__}")
PY
say "done in $(( $(date +%s) - t0 )) s"

#!/usr/bin/env bash
# One-command set-up for mmrefseg on a Python 3.10/3.11 machine.
#
#   bash tools/install.sh                  # into the active Python (conda env, venv or system)
#   PYTHON=/path/to/python bash tools/install.sh
#   bash tools/install.sh --replace-torch  # also replace an installed torch with $TORCH_SPEC
#
# torch 2.1 through 2.14 is supported. An installed torch in that range is KEPT, with its
# CUDA set-up, and so is a working mmcv 2.1.x with compiled ops (e.g. the prebuilt wheel
# from OpenMMLab's index that `mim install mmcv==2.1.0` gives torch 2.1). Otherwise:
#   - no torch at all: installs $TORCH_SPEC (default torch 2.14.1 + torchvision 0.29.1);
#   - a torch outside 2.1-2.14: stops and says what to do (your torch is never replaced
#     unless you pass --replace-torch);
#   - torchvision missing: installs the release that matches the installed torch;
#   - torch < 2.4 (built against NumPy 1.x): keeps numpy < 2;
#   - no working mmcv 2.1.x: compiles mmcv 2.1.0 from source with its ops against the
#     installed torch (CUDA ops when a CUDA toolkit and a GPU are present, CPU ops otherwise).
# Then the pinned OpenMMLab stack (requirements.txt, never allowed to change torch) and
# mmrefseg in editable mode. Safe to run again: every step checks first and the second run
# takes seconds.
#
# Environment knobs:
#   MAX_JOBS=N             parallel compile jobs for mmcv (default: number of cores)
#   FORCE_CUDA=1|0         force / forbid the CUDA build of mmcv (default: auto)
#   MMREFSEG_CACHE=DIR     where built mmcv wheels are cached, keyed by torch version and
#                          CUDA tag (default: ~/.cache/mmrefseg)
#   TORCH_SPEC="..."       torch requirement to install when none is present or with
#                          --replace-torch (default: "torch==2.14.1 torchvision==0.29.1")
set -euo pipefail

PY=${PYTHON:-python}
MMCV_VERSION=2.1.0
SUPPORTED_TORCH_RE='^2\.([1-9]|1[0-4])(\.|$)'  # 2.1 ... 2.14
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
CACHE=${MMREFSEG_CACHE:-$HOME/.cache/mmrefseg}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf '\033[1m[mmrefseg install]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[mmrefseg install] ERROR:\033[0m %s\n' "$*" >&2; exit 1; }
pip_() { "$PY" -m pip "$@"; }
t0=$(date +%s)

REPLACE_TORCH=0
for arg in "$@"; do
  case "$arg" in
    --replace-torch) REPLACE_TORCH=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$arg' (known: --replace-torch, --help)" ;;
  esac
done

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
torch_meta() { "$PY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true; }
torch_ver=$(torch_meta)
if [[ -z "$torch_ver" ]]; then
  say "no torch found; installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  pip_ install $TORCH_SPEC
elif [[ "$REPLACE_TORCH" == 1 ]]; then
  say "--replace-torch: replacing torch $torch_ver with $TORCH_SPEC (mmcv is rebuilt for it)"
  # shellcheck disable=SC2086
  pip_ install $TORCH_SPEC
elif [[ "$torch_ver" =~ $SUPPORTED_TORCH_RE ]]; then
  say "keeping the installed torch $torch_ver (supported: 2.1 - 2.14)"
else
  die "torch $torch_ver is installed, and mmrefseg supports torch 2.1 - 2.14 (mmcv 2.1 / mmseg 1.2.2). This script does not replace your torch on its own. Either
  - install a torch in that range yourself, with the CUDA build your driver runs (e.g. 'pip install torch==2.1.2 torchvision==0.16.2 --index-url https://download.pytorch.org/whl/cu121', then 'mim install mmcv==2.1.0' for OpenMMLab's prebuilt mmcv), and run this script again; or
  - run 'bash tools/install.sh --replace-torch' to install $TORCH_SPEC in its place (mmcv is then compiled for it; the PyPI build of torch 2.14.1 uses CUDA 13 and needs a recent NVIDIA driver)."
fi
torch_ver=$(torch_meta)
[[ "$torch_ver" =~ $SUPPORTED_TORCH_RE ]] || die "torch $torch_ver (from TORCH_SPEC='$TORCH_SPEC') is outside 2.1 - 2.14; set TORCH_SPEC to a supported release."
torch_minor=$(echo "$torch_ver" | cut -d. -f2)

# Every later pip call may not change torch: requirements (timm, torchvision, ...) depend on
# torch, and pip would otherwise "upgrade" it to the newest release.
CONSTRAINTS=$(mktemp)
work=""
trap 'rm -rf "$CONSTRAINTS" ${work:+"$work"}' EXIT
echo "torch==$torch_ver" > "$CONSTRAINTS"
if (( torch_minor < 4 )); then
  # torch <= 2.3 / torchvision <= 0.18 wheels are built against NumPy 1.x: with numpy 2
  # `tensor.numpy()` / `torch.from_numpy` fail ("Numpy is not available").
  echo "numpy<2" >> "$CONSTRAINTS"
  say "torch $torch_ver was built against NumPy 1.x: keeping numpy < 2"
fi

if ! "$PY" -c 'import importlib.metadata as m; m.version("torchvision")' 2>/dev/null; then
  tv="torchvision==0.$(( torch_minor + 15 )).*"  # torch 2.N pairs with torchvision 0.(N+15)
  say "torchvision is missing; installing $tv to match torch $torch_ver"
  pip_ install -c "$CONSTRAINTS" "$tv"
fi

# ---------------------------------------------------------------- 2. the pinned stack
# Build tools first (mmcv is built without isolation against this torch), then the stack.
# Skipped when every requirement is already satisfied (a re-run then takes seconds).
reqs_ok() {
  "$PY" - "$ROOT/requirements.txt" "$CONSTRAINTS" <<'PY' 2>/dev/null
import importlib.metadata as md
import sys
from packaging.requirements import Requirement
lines = ['setuptools>=64,<82', 'wheel', 'ninja', 'packaging']
lines += open(sys.argv[1]).read().splitlines() + open(sys.argv[2]).read().splitlines()
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
  pip_ install -q -c "$CONSTRAINTS" "setuptools>=64,<82" wheel ninja packaging
  pip_ install -q -c "$CONSTRAINTS" -r "$ROOT/requirements.txt"
fi

# ---------------------------------------------------------------- 3. mmcv with compiled ops
mmcv_ok() {
  "$PY" - <<'PY' 2>/dev/null
import mmcv, torch
from mmcv.ops import point_sample  # needs the compiled mmcv._ext
import mmcv._ext  # noqa: F401
assert mmcv.__version__.startswith("2.1."), mmcv.__version__  # mmseg 1.2.2: mmcv < 2.2
x = torch.rand(1, 1, 4, 4); point_sample(x, torch.rand(1, 3, 2))
PY
}
if mmcv_ok; then
  say "keeping the installed mmcv $("$PY" -c 'import mmcv; print(mmcv.__version__)') (its compiled ops work)"
else
  old_mmcv=$("$PY" -c 'import importlib.metadata as m; print(m.version("mmcv"))' 2>/dev/null || true)
  [[ -n "$old_mmcv" ]] && say "the installed mmcv $old_mmcv does not work here (mmseg 1.2.2 needs mmcv 2.1.x with compiled ops): replacing it"
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
# Installed = from /, Python finds the package in this checkout (whatever form pip's
# editable install took: a PEP 660 finder, a .pth or a legacy egg-link) and pip knows it.
# Asked from /, so that the checkout in the current directory does not answer for pip.
if (cd / && "$PY" - "$ROOT" <<'PY' 2>/dev/null
import importlib.metadata as md, importlib.util, os, sys
md.version('mmrefseg')
spec = importlib.util.find_spec('mmrefseg')
want = os.path.realpath(os.path.join(sys.argv[1], 'mmrefseg', '__init__.py'))
sys.exit(0 if spec is not None and os.path.realpath(spec.origin) == want else 1)
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

#!/usr/bin/env bash
# GPU readiness of mmrefseg in one command (issue 12; docs/benchmark.md, "GPU").
#
#   tools/gpu_check.sh [DEST]
#
# Prints one line per check, `PASS|FAIL|SKIP <check> (<s> s): <detail>`, and writes
# gpu_check.json + gpu_check.log to $OUT when set (the device tool), else to DEST
# (default work_dirs/gpu_check). Exit status 0 unless a check FAILed.
#
# Checks, in order (GPU_CHECKS="stack ops tests dist bench" selects some):
#   stack  torch / CUDA / cuDNN / GPU / driver / mmcv / mmengine / mmseg / transformers
#   ops    mmcv's ops on CUDA tensors (nms, roi_align, point_sample) against their CPU
#          results; says precisely when mmcv was built without its CUDA ops
#   tests  the suite's CUDA-marked tests: pytest --cuda -m cuda tests
#   dist   tools/dist_train.sh with 1 GPU (torchrun, NCCL, SyncBN) trains the tiny config on
#          the fixture, tools/dist_test.sh evaluates it; tools/train.py + tools/test.py do
#          the same in one process; the metrics must agree
#   bench  benchmark.py --device cuda, Swin-B config at 448², batch 2 and 8, fp32/fp16/bf16,
#          training and inference img/s, peak memory, whether batch 8 fits
# Without a CUDA device only `stack` runs; every GPU check prints SKIP and the exit status
# is 0. A check that runs past its time limit FAILs with the limit named; so does one not
# started because the whole run reached GPU_CHECK_DEADLINE (540 s: one device call).
#
# Set-up on the lent H200 (no network there; torch and nvcc are preinstalled, the
# OpenMMLab stack is not): tools/gpu_setup.sh (download here, install there). Environment:
#   PYTHON (python3)  MMREFSEG_SITE (/tmp/mmrefseg_site, put first on PYTHONPATH if present)
#   GPU_CHECK_WORK (/tmp/gpu_check_work: checkpoints and full logs; only the two result
#   files go to DEST, as the device tool brings back at most 8 files)
set -u
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${OUT:-${1:-$REPO/work_dirs/gpu_check}}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check_work}
PY=${PYTHON:-python3}
SITE=${MMREFSEG_SITE:-/tmp/mmrefseg_site}
CHECKS=${GPU_CHECKS:-stack ops tests dist bench}
DEADLINE=${GPU_CHECK_DEADLINE:-540}  # s; the device tool stops a command at 600 s
mkdir -p "$DEST" "$WORK/logs" "$WORK/bin" || exit 2
: > "$WORK/results.tsv"
: > "$DEST/gpu_check.log"
# tools/dist_*.sh call `python`; the H200 image has only `python3`
ln -sf "$(command -v "$PY")" "$WORK/bin/python"
export PATH="$WORK/bin:$PATH"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
[ -d "$SITE" ] && export PYTHONPATH="$SITE:$PYTHONPATH"
export PYTHONUNBUFFERED=1 PYTHON="$PY"
PROBE=("$PY" "$REPO/tools/analysis_tools/gpu_probe.py")

record() {  # name status seconds detail
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$WORK/results.tsv"
  printf '%-4s %s (%s s): %s\n' "$2" "$1" "$3" "$4"
}

# run_check NAME LIMIT_S CMD...: CMD's exit status 0 = PASS, 3 = SKIP, else FAIL; its last
# output line starting with "DETAIL:" is the detail.
run_check() {
  local name=$1 limit=$2; shift 2
  local log="$WORK/logs/$name.log" t0=$SECONDS rc detail left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 30 ]; then
    record "$name" FAIL 0 "not run: the script's deadline of $DEADLINE s was reached (set GPU_CHECK_DEADLINE, or GPU_CHECKS to run fewer checks)"
    return
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
  rc=$?
  detail=$(grep '^DETAIL:' "$log" | tail -n 1 | cut -c 9-)
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    detail="ran past its limit of $limit s. ${detail}"
  elif [ -z "$detail" ]; then
    detail=$(tail -n 1 "$log" | cut -c 1-300)
  fi
  local status=FAIL
  [ "$rc" -eq 0 ] && status=PASS
  [ "$rc" -eq 3 ] && status=SKIP
  record "$name" "$status" "$((SECONDS - t0))" "$detail"
  { echo "===== $name: $status (exit $rc)"; tail -n 60 "$log"; } >> "$DEST/gpu_check.log"
}

wanted() { [[ " $CHECKS " == *" $1 "* ]]; }

run_check stack 120 "${PROBE[@]}" stack --out "$WORK/stack.json"
if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
then
  HAVE_CUDA=1
else
  HAVE_CUDA=0
  why=$("$PY" -c 'import torch; print(f"torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA device")' 2>&1 | tail -n 1)
fi

gpu_check() {  # NAME LIMIT CMD...
  local name=$1
  wanted "$name" || return 0
  if [ "$HAVE_CUDA" -eq 0 ]; then
    record "$name" SKIP 0 "no GPU: $why"
    return 0
  fi
  run_check "$@"
}

gpu_check ops 120 "${PROBE[@]}" ops --out "$WORK/ops.json"
gpu_check tests 240 "${PROBE[@]}" tests --repo "$REPO" --work "$WORK" --timeout 230
gpu_check dist 240 "${PROBE[@]}" dist --repo "$REPO" --work "$WORK" --timeout 120
gpu_check bench 300 "${PROBE[@]}" bench --repo "$REPO" --work "$WORK" --timeout 150

"${PROBE[@]}" summary --work "$WORK" --out "$DEST/gpu_check.json" --cuda "$HAVE_CUDA"
echo "results: $DEST/gpu_check.json, logs: $DEST/gpu_check.log (full logs in $WORK/logs)"
! grep -q $'\tFAIL\t' "$WORK/results.tsv"

#!/usr/bin/env bash
# One prepared check of xsam-fast on a CUDA machine it has never seen, in one call of
# at most 10 minutes (the whole run is capped at GPU_CHECK_TOTAL_S, default 470 s).
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh            # on a GPU machine
#   OUT=/some/dir bash benchmarks/gpu_check.sh --dry-run  # anywhere: CPU, tiny sizes
#
# Needs python3 (or $PYTHON) with torch and, for the Triton backend, triton; nothing is
# downloaded. Stages, in order of value, each under its own `timeout` (a failing or
# timed-out stage does not stop the later ones):
#   install    pip install --no-build-isolation --no-deps -e . without extensions
#              (seconds: the package and its Triton kernels whatever the build does)
#   build      the same with the extensions, for GPU 0's arch only (TORCH_CUDA_ARCH_LIST
#              from torch.cuda.get_device_capability(), FORCE_CUDA=1, MAX_JOBS = CPU count)
#   gpu-tests  pytest tests/test_gpu.py tests/test_cuda_backend.py tests/test_no_sync.py
#   contract   pytest tests/test_backend_contract.py -k "triton-cuda or cuda"
#   bandwidth  bench_step at 125M and 1B params, fp32/bf16, triton and cuda, against the
#              device-to-device copy measured in the same run
#   resnet18   bench_step on ResNet-18 shapes: triton, cuda, reference, authors-style, foreach
#   launches   kernel launches per step for 3/62/300 tensors (benchmarks.gpu_stages)
#   syncs      steps under torch.cuda.set_sync_debug_mode("error"), both GPU backends,
#              SGD and AdamW, k = 1, 2 (benchmarks.gpu_stages)
#   compiled   the torch.compile baseline on ResNet-18 shapes, last
# Files under $OUT (at most 8): gpu_check.log (everything), summary.md (date, GPU, driver,
# versions, each stage's status and seconds, the key results), results.tar.gz (pytest
# XML, benchmark CSV/Markdown/PNG, stage outputs). Exit status: 0 when every stage that
# ran passed.
#
# --dry-run: every stage on the CPU with tiny sizes (CUDA hidden, Triton under its
# interpreter): nothing is installed (the commands are printed), the test stages collect
# only, and what needs CUDA is skipped with a message. The Python stages live in
# benchmarks/gpu_stages.py.
set -uo pipefail
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: OUT=dir bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
OUT=${OUT:-results/gpu_check_$(date +%Y%m%d-%H%M%S)}  # relative to the caller's directory
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
TOTAL=${GPU_CHECK_TOTAL_S:-470}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
LOG=$OUT/gpu_check.log
SUMMARY=$OUT/summary.md
: >"$LOG"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if [ "$DRY" = 1 ]; then
  export CUDA_VISIBLE_DEVICES="" TRITON_INTERPRET=1
  DRYFLAG=(--dry-run)
  COLLECT=(--collect-only)
else
  DRYFLAG=()
  COLLECT=()
fi
FAILED=0
STAGES=()

# stage NAME LIMIT_S COMMAND...: run COMMAND under `timeout`, output to the log and stdout;
# status ok / failed (rc) / timed out / skipped (exit 3: nothing to run in a dry run)
stage() {
  local name=$1 limit=$2 left rc status start secs
  shift 2
  left=$((TOTAL - SECONDS - 20))
  if [ "$left" -lt 15 ]; then
    STAGES+=("| $name | not run (no time left of ${TOTAL} s) | 0 | $limit |")
    echo "== $name: not run, no time left" | tee -a "$LOG"
    FAILED=1
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit} s) $(date -u +%H:%M:%S)" | tee -a "$LOG"
  start=$SECONDS
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG" | tee "$WORK/$name.txt"
  rc=${PIPESTATUS[0]}
  secs=$((SECONDS - start))
  case $rc in
    0) status=ok ;;
    3) status=skipped ;;
    124|137) status="timed out"; FAILED=1 ;;
    *) status="failed (exit $rc)"; FAILED=1 ;;
  esac
  STAGES+=("| $name | $status | $secs | $limit |")
  echo "== $name: $status in ${secs} s" | tee -a "$LOG"
}

PYTEST=("$PY" -m pytest -q -rs -p no:cacheprovider "${COLLECT[@]}")

{
  echo "gpu_check $([ "$DRY" = 1 ] && echo "DRY RUN (CPU, tiny sizes) ")$(date -u '+%F %T UTC')"
  command -v nvidia-smi >/dev/null && timeout 30 nvidia-smi
  "$PY" --version
} 2>&1 | tee -a "$LOG"

stage install 60 "$PY" -m benchmarks.gpu_stages install "${DRYFLAG[@]}"
stage build 240 "$PY" -m benchmarks.gpu_stages build "${DRYFLAG[@]}"
stage gpu-tests 120 "${PYTEST[@]}" --junitxml="$WORK/gpu-tests.xml" tests/test_gpu.py \
  tests/test_cuda_backend.py tests/test_no_sync.py
stage contract 60 "${PYTEST[@]}" --junitxml="$WORK/contract.xml" \
  tests/test_backend_contract.py -k "triton-cuda or cuda"
for name in bandwidth resnet18; do
  stage "$name" 75 "$PY" -m benchmarks.gpu_stages bench "$name" "${DRYFLAG[@]}" --out "$WORK/bench"
done
stage launches 45 "$PY" -m benchmarks.gpu_stages launches "${DRYFLAG[@]}"
stage syncs 60 "$PY" -m benchmarks.gpu_stages syncs "${DRYFLAG[@]}"
stage compiled 120 "$PY" -m benchmarks.gpu_stages bench compiled "${DRYFLAG[@]}" --out "$WORK/bench"

{
  echo "# xsam-fast gpu_check$([ "$DRY" = 1 ] && echo " (dry run: CPU, tiny sizes)")"
  echo
  timeout 60 "$PY" -m benchmarks.gpu_stages env 2>&1 || echo "- (the environment could not be read)"
  echo "- whole run: ${SECONDS} s of at most ${TOTAL} s"
  echo
  echo "| stage | status | seconds | limit s |"
  echo "|---|---|---|---|"
  printf '%s\n' "${STAGES[@]}"
  for name in gpu-tests contract; do
    [ -f "$WORK/$name.txt" ] || continue
    echo
    echo "$name: $(grep -E '(passed|failed|error|skipped|selected|collected)' \
      "$WORK/$name.txt" | tail -n 1)"
  done
  for name in launches syncs; do
    [ -f "$WORK/$name.txt" ] && { echo; echo "## $name"; echo; cat "$WORK/$name.txt"; }
  done
  for md in $(ls -tr "$WORK"/bench/step_*.md 2>/dev/null); do
    echo; echo "## $(basename "$md")"; echo; cat "$md"
  done
} >"$SUMMARY" 2>&1
tar -czf "$OUT/results.tar.gz" -C "$WORK" . 2>>"$LOG"
echo
cat "$SUMMARY"
exit "$FAILED"

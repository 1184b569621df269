#!/usr/bin/env bash
# One prepared GPU session (at most 8 minutes on one H100; issue 13): re-profile this GPU
# with the profiler as it now is (full grid, bf16, both frameworks' op lists, host
# dispatch, in-step GEMM scale, the standard-module self-check), then time real training
# iterations of the plain PyTorch GPT of the shared Hopper set (its ten configurations,
# the torch framework) and compare them with the simulator, with the new profile and with
# the shipped one. Run from the repository root on the device machine:
#
#   bash benchmarks/gpu_session.sh            # the device tool sets $OUT
#
# Writes into $OUT: $GPU-measured.json (the measured profile, its provenance holding the
# self-check), ${GPU%%-*}_gpt_single_gpu.csv (the steps, in the columns of
# ../shared/data/hopper/h200_gpt_single_gpu.csv), env.txt, profile.log, steps.log,
# validate.txt. Every file is written as it goes: a run cut short keeps what it measured.
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
PROFILE_TIMEOUT_S=${PROFILE_TIMEOUT_S:-400}  # the full grid took about 4 minutes on an H100
TOTAL_S=${TOTAL_S:-440}                  # no step configuration starts after this many seconds
# (the steps' largest configuration takes about 25 s and validate a few: done within 8 min)
export PYTHONUNBUFFERED=1

mkdir -p "$OUT"
start=$(date +%s)
profile="$OUT/$GPU-measured.json"
steps="$OUT/${GPU%%-*}_gpt_single_gpu.csv"

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  git rev-parse HEAD 2>/dev/null || true
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null \
    || echo "no nvidia-smi"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  lscpu 2>/dev/null | grep -E "Model name|^CPU\(s\)" || true
} >"$OUT/env.txt" 2>&1

echo "== 1. profile ($DEVICE) -> $profile"
timeout "$PROFILE_TIMEOUT_S" "$PY" -m vtrain_opt profile --device "$DEVICE" --out "$profile" \
  --check --no-progress $PROFILE_ARGS 2>&1 | tee "$OUT/profile.log"
echo "profile: exit $? after $(( $(date +%s) - start )) s"

budget=$(( TOTAL_S - ($(date +%s) - start) ))
(( budget < 30 )) && budget=30
echo "== 2. steps (budget ${budget} s) -> $steps"
"$PY" -m vtrain_opt.profiler.steps --device "$DEVICE" --out "$steps" \
  ${CONFIGS:+--configs "$CONFIGS"} --budget-s "$budget" 2>&1 | tee "$OUT/steps.log"
echo "steps: exit $? after $(( $(date +%s) - start )) s"

echo "== 3. the simulator on those steps (framework torch, no dropout, no master weights)"
if [[ "$DEVICE" == cuda && -s "$steps" ]]; then
  for p in "$profile" "$GPU"; do
    [[ "$p" == "$profile" && ! -s "$profile" ]] && continue
    echo "-- profile $p"
    "$PY" -m vtrain_opt validate --measurements "$steps" --gpu "$GPU" --dtype bf16 \
      --attention flash --framework torch --dropout 0 --master-weights none --profile "$p" \
      --worst 10 || true
  done 2>&1 | tee "$OUT/validate.txt"
else
  echo "skipped (device $DEVICE)" | tee "$OUT/validate.txt"
fi
echo "done in $(( $(date +%s) - start )) s"

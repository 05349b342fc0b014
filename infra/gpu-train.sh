#!/usr/bin/env bash
# The production network on a lent GPU machine (issue 13, point 4): one prepared run.
#
#   infra/gpu-train.sh prepare [GRID]   HERE: pack GRID (default: the full-grid cache) into .carry/grid.npz
#                                       (packed format 2, the finest fixed-point step whose file lets the
#                                       working tree travel within 60 MiB), and print the device call.
#   infra/gpu-train.sh run              THERE (the device tool runs it in the repo root with $OUT set):
#                                       measure the GPU's samples/s, size the epochs to MINUTES, train with
#                                       `jobs/train.py --local --no-tracking` (bf16 autocast, the sampler on
#                                       the GPU), and write the bundle, the log and the figures under $OUT.
#
# The lent machine has torch, numpy, scipy, pyarrow, safetensors, tqdm and matplotlib but no Ray,
# MLflow or astropy and no network: the training path needs none of them (tests/test_training.py,
# test_local_training_...). Back here, register and score what came back:
#   survey-estimator register <files_at>/bundle --name stellar-estimator --alias gpu
#   survey-estimator evaluate --model models:/stellar-estimator@gpu --grid ~/.cache/survey-estimator/grids/full \
#       --snr 10 20 50 100 --n 500 --real-stars ../shared/data/benchmarks
#
# Settings (environment): MINUTES=8 (training wall time on the GPU), MODEL=resnet, HEAD=diag,
# BATCH=128, STEPS=200 (steps per epoch), LR=5e-4, EVAL_N=500, PRESET=seed, PY=python3, RUNS=/tmp/runs;
# CARRY=.carry (git-ignored), MAX_TRAVEL_MIB=60 (prepare).
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=${CARRY:-.carry}
PY=${PY:-python3}
PRESET=${PRESET:-seed}
MODEL=${MODEL:-resnet}
HEAD=${HEAD:-diag}
BATCH=${BATCH:-128}
STEPS=${STEPS:-200}
LR=${LR:-5e-4}
MINUTES=${MINUTES:-8}
EVAL_N=${EVAL_N:-500}

case "${1:-}" in
prepare)
    GRID=${2:-$HOME/.cache/survey-estimator/grids/full}
    [ -x .venv/bin/python ] && [ "$PY" = python3 ] && PY=.venv/bin/python
    mkdir -p "$CARRY"
    tracked_mib=$(git ls-files -z | xargs -0 du -cb | tail -1 | awk '{printf "%.1f", $1 / 1048576}')
    budget=$(awk -v t="$tracked_mib" -v m="${MAX_TRAVEL_MIB:-60}" 'BEGIN {printf "%.1f", m - t}')
    echo "tracked files: $tracked_mib MiB; room for the grid: $budget MiB"
    for step in 0.00048828125 0.0009765625 0.001953125; do  # 2^-11, 2^-10, 2^-9
        "$PY" -m survey_estimator.synth.packed "$GRID" "$CARRY/grid.npz" "$step"
        size=$(du -b "$CARRY/grid.npz" | awk '{printf "%.1f", $1 / 1048576}')
        echo "step $step: $size MiB"
        if awk -v s="$size" -v b="$budget" 'BEGIN {exit !(s <= b)}'; then
            echo "ready: device run with carry [\"$CARRY\"] and command: bash infra/gpu-train.sh run"
            exit 0
        fi
    done
    echo "error: the packed grid does not fit the $budget MiB left for it" >&2
    exit 1
    ;;
run)
    : "${OUT:?run on the device machine, where OUT is set}"
    export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 SURVEY_ESTIMATOR_CACHE=/tmp/survey-estimator-cache
    (nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no GPU: CPU") | tee "$OUT/device.txt"
    "$PY" bench/train.py --grid "$CARRY/grid.npz" --models "$MODEL" --preset "$PRESET" --batch "$BATCH" --steps 5 \
        --learn 0 --sampler-batch 0 --json "$OUT/bench.json" 2>&1 | tee "$OUT/train.log"
    read -r epochs decay limit < <("$PY" -c "import json; r = json.load(open('$OUT/bench.json'))['results'][0]['samples_per_s']; \
e = max(2, int($MINUTES * 60 * r * 0.85 / ($STEPS * $BATCH))); print(e, e // 5 + 1, 1.15 * $MINUTES)")
    echo "$epochs epochs of $STEPS x $BATCH for ~$MINUTES min (bench.json: samples/s)" | tee -a "$OUT/train.log"
    "$PY" jobs/train.py --local --no-tracking --grid "$CARRY/grid.npz" --model "$MODEL" --head "$HEAD" --preset "$PRESET" \
        --no-dae --epochs "$epochs" --steps-per-epoch "$STEPS" --batch-size "$BATCH" --lr "$LR" --lr-decay-epochs "$decay" \
        --grad-clip 1 --val-steps 10 --max-minutes "$limit" --eval-snr 20 100 --eval-n "$EVAL_N" \
        --run-name "gpu-$MODEL-$HEAD" --storage "${RUNS:-/tmp/runs}" --bundle-out "$OUT/bundle" 2>&1 | tee -a "$OUT/train.log"
    ;;
*)
    sed -n '2,22p' "$0"
    exit 2
    ;;
esac

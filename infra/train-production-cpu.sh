#!/usr/bin/env bash
# Train the production model's candidates on a CPU-only machine, as docs/model-card.md reports them.
#
# Three Ray Train runs share one local Ray cluster (3 logical CPUs, one worker each) and the
# default MLflow store (mlflow/mlflow.db), each under the same wall-clock budget:
#   production-resnet-full   ResNet, full covariance, no DAE   -> models:/stellar-estimator@candidate
#   production-resnet-diag   ResNet, diagonal covariance       -> models:/stellar-estimator-diag@candidate
#   production-dae           the denoiser alone (--task dae)   -> checkpoint under runs/production-dae
# Then jobs/evaluate.py scores them (diag vs full; with and without the DAE in front, via
# --dae-checkpoint) and the winner is copied into survey_estimator/models/production/.
#
# The ResNet's stem is strided 4 instead of 2 ({"stem_stride": 4}): 2.2x the samples per CPU-second.
# On a GPU node use the seed sizes and jobs/train.py directly (docs/training.md).
#
# Usage: infra/train-production-cpu.sh [GRID]
#   EPOCHS=60 DAE_EPOCHS=40 STEPS=100 EVAL_N=1000: the budget; RUNS=runs: checkpoint storage;
#   rerunning resumes each run from its last checkpoint (with fewer EPOCHS it stops there).
set -euo pipefail
cd "$(dirname "$0")/.."
GRID=${1:-${GRID:-$HOME/.cache/survey-estimator/grids/teff4000-7000}}
EPOCHS=${EPOCHS:-60}
DAE_EPOCHS=${DAE_EPOCHS:-40}
STEPS=${STEPS:-100}
EVAL_N=${EVAL_N:-1000}
RUNS=${RUNS:-runs}
BIN=${BIN:-.venv/bin}
LOGS=$RUNS/logs
mkdir -p "$LOGS"

"$BIN/ray" start --head --num-cpus 3 --disable-usage-stats >"$LOGS/ray-start.log" 2>&1
trap '"$BIN/ray" stop >/dev/null 2>&1 || true' EXIT
export RAY_ADDRESS=auto

common=(--grid "$GRID" --storage "$RUNS" --num-workers 1 --use-gpu false --eval-n "$EVAL_N" --eval-snr 20 100)
estimator=("${common[@]}" --task estimator --model resnet --model-config '{"stem_stride": 4}'
           --batch-size 32 --steps-per-epoch "$STEPS" --val-steps 10 --epochs "$EPOCHS" --lr 5e-4
           --lr-decay-epochs $((EPOCHS / 5)))

"$BIN/python" jobs/train.py "${estimator[@]}" --head full --run-name production-resnet-full \
    --register-name stellar-estimator --alias candidate >"$LOGS/production-resnet-full.log" 2>&1 &
sleep 20  # one MLflow run creation at a time on the sqlite store
"$BIN/python" jobs/train.py "${estimator[@]}" --head diag --run-name production-resnet-diag \
    --register-name stellar-estimator-diag --alias candidate >"$LOGS/production-resnet-diag.log" 2>&1 &
sleep 20
"$BIN/python" jobs/train.py "${common[@]}" --task dae --dae-config '{"widths": [8, 12, 16, 24]}' \
    --batch-size 16 --steps-per-epoch $((STEPS / 2)) --val-steps 5 --epochs "$DAE_EPOCHS" --dae-lr 1e-3 \
    --lr-decay-epochs $((DAE_EPOCHS / 5)) --run-name production-dae >"$LOGS/production-dae.log" 2>&1 &
echo "training: logs in $LOGS/production-*.log"
wait

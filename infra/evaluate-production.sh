#!/usr/bin/env bash
# Measure the production model as docs/model-card.md reports it: every table and plot there.
#
#   full/            the shipped bundle at S/N 10, 20, 50, 100, 200 (MAE, 1/2-sigma coverage with
#                    the calibration refitted on 1000 validation spectra: the shipped calibration and
#                    sigma limit are this fit, saved with --save-bundle), and the real stars
#   full-4000-6000/  the same at S/N 100, test labels with Teff 4000-6000 K (the seed's subset)
#   full-dae/        the shipped estimator with the DAE of runs/production-dae in front
#                    (calibration refitted on validation nodes), S/N 10, 20, 50, 100
#   other-head/      the candidate with the other covariance head trained beside it (the shipped
#                    model is the diagonal one; the other is full covariance), S/N 10, 20, 50, 100
#
# Usage: infra/evaluate-production.sh [GRID] [OUT]
#   N=1000 spectra per S/N for the shipped model, N_CMP=500 for the DAE and covariance-head comparisons;
#   RUNS=runs: where the DAE's training checkpoints are
set -euo pipefail
cd "$(dirname "$0")/.."
GRID=${1:-${GRID:-$HOME/.cache/survey-estimator/grids/teff4000-7000}}
OUT=${2:-eval/production}
N=${N:-1000}
N_CMP=${N_CMP:-500}
BIN=${BIN:-.venv/bin}
REAL=${REAL:-../shared/data/real}
MODEL=${MODEL:-survey_estimator/models/production}
OTHER=${OTHER:-models:/stellar-estimator@candidate}
RUNS=${RUNS:-runs}
DAE=${DAE:-$(ls -td "$RUNS"/production-dae/checkpoint_*/ | head -1)}

ev() { "$BIN/python" jobs/evaluate.py --grid "$GRID" --device cpu "$@"; }
ev --model "$MODEL" --n "$N" --refit-calibration --save-bundle "$OUT/full/bundle" --snr 10 20 50 100 200 \
    --real-stars "$REAL" --out "$OUT/full" --log
ev --model "$MODEL" --n "$N" --snr 100 --teff-range 4000 6000 --out "$OUT/full-4000-6000"
ev --model "$MODEL" --n "$N_CMP" --dae-checkpoint "$DAE" --refit-calibration --snr 10 20 50 100 --real-stars "$REAL" \
    --out "$OUT/full-dae"
ev --model "$OTHER" --n "$N_CMP" --snr 10 20 50 100 --out "$OUT/other-head"

#!/usr/bin/env bash
# Start an MLflow tracking server (UI, REST API, model registry, artifact proxy) over the project's
# local store: mlflow/mlflow.db and mlflow/artifacts (see mlflow/README.md).
# Usage: bash infra/mlflow-server.sh [--host 0.0.0.0] [--port 5000]   (extra args go to `mlflow server`)
# Clients then use: export MLFLOW_TRACKING_URI=http://<host>:<port>
# For a server reachable from other machines, pass --host 0.0.0.0 and --allowed-hosts '<name>:<port>,...'.
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${SURVEY_MLFLOW_STORE:-$PWD/mlflow}
mkdir -p "$STORE/artifacts"
MLFLOW=${MLFLOW:-.venv/bin/mlflow}
[ -x "$MLFLOW" ] || MLFLOW=mlflow
exec "$MLFLOW" server \
  --backend-store-uri "sqlite:///$STORE/mlflow.db" \
  --artifacts-destination "$STORE/artifacts" \
  --serve-artifacts \
  --host 127.0.0.1 --port 5000 \
  "$@"

#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install everything.
# Usage: bash infra/setup.sh [--test]     (--test adds the test dependencies)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: an unpinned torch pulls several GB of CUDA wheels on a CPU machine.
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
python -m pip install -q -e ".${extra}"

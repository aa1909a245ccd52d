#!/usr/bin/env bash
# Create (or update) .venv with latentmill and its test dependencies. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -c "import pipeline, torch, torchvision, ray, lpips, facenet_pytorch" \
  || { echo "setup failed: the environment does not import" >&2; exit 1; }

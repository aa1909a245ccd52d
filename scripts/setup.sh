#!/usr/bin/env bash
# Create (or update) .venv with latentmill and its test dependencies. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
# The demo data is rendered from Debian's colour emoji font; installed when we may (root + apt).
font=/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
if [ ! -f "$font" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq fonts-noto-color-emoji) >/dev/null 2>&1 \
    || echo "note: could not install fonts-noto-color-emoji; make-demo-data needs it" >&2
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -c "import pipeline, torch, torchvision, ray, lpips, facenet_pytorch" \
  || { echo "setup failed: the environment does not import" >&2; exit 1; }

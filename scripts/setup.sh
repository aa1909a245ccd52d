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
echo "setup: installing latentmill into .venv with torch and torchvision (the CUDA builds, which also run on" >&2
echo "       CPUs), ray, lpips, facenet-pytorch, pyarrow, pandas and the test tools: about 3 GB to download," >&2
echo "       6 GB on disk, a minute or more on a fresh machine (seconds when .venv is already there)" >&2
[ -x .venv/bin/python ] || "$python" -m venv .venv
# uv (from the package index, into .venv) downloads and unpacks in parallel: seconds instead of minutes for
# torch's 3 GB. It reads no pip.conf, so where the index is reachable only through pip's settings (a mirror,
# a proxy) or uv fails for any reason, pip installs the same requirements. Bytecode is compiled at install,
# as pip does: where PYTHONDONTWRITEBYTECODE is set nothing else writes it, and every start of Python (each
# Ray worker, each command) would compile torch again, twice as slow.
quiet_pip() { grep -v "is ignored: it is neither" || true; }
if .venv/bin/python -m pip install --quiet -c constraints.txt uv 2>&1 | quiet_pip \
    && .venv/bin/python -m uv pip install --quiet --compile-bytecode --python .venv/bin/python -c constraints.txt \
        -e ".[dev]"; then
  :
else
  echo "setup: uv could not install; installing with pip" >&2
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]" 2>&1 | quiet_pip || true
fi
.venv/bin/python -c "import pipeline, torch, torchvision, ray, lpips, facenet_pytorch" \
  || { echo "setup failed: the environment does not import" >&2; exit 1; }
echo "setup: done; .venv holds $(du -sh .venv 2>/dev/null | cut -f1). Next: .venv/bin/latentmill demo" >&2

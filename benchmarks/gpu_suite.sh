#!/usr/bin/env bash
# Every GPU figure of BENCHMARKS.md in one call, headline figures first, within 8 minutes on one H200:
# each benchmark under its own timeout, OUT_DIR/summary.json (one entry per figure: value, unit,
# command, commit, machine) and OUT_DIR/summary.md. The engine and its list of steps: benchmarks/suite.py.
# --smoke: every benchmark at tiny sizes on any device (the CPU included), in a few minutes.
# Further options (--device, --budget SECONDS, --only STEPS) go to the engine.
# Usage: bash benchmarks/gpu_suite.sh OUT_DIR [--official-repo DIR] [--smoke]
# Exit status 0 when every step ran or was skipped (budget, no --official-repo); 1 when one failed or timed out.
set -uo pipefail
if [ $# -lt 1 ] || [[ $1 == -* ]]; then
  echo "usage: bash benchmarks/gpu_suite.sh OUT_DIR [--official-repo DIR] [--smoke]" >&2
  exit 2
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -x "$root/.venv/bin/python" ]; then py=$root/.venv/bin/python; else py=${PYTHON:-python3}; fi
out=$1
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -f "$out/summary.json" "$out/summary.md"  # never print an earlier run's table as this one's
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1
fi
# from the caller's directory, so that a relative --official-repo means what it says
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 "$py" -m benchmarks.suite "$out" "$@"
status=$?
[ -f "$out/summary.md" ] && cat "$out/summary.md"
exit $status

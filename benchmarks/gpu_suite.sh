#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md in one call: machine and ceilings, generator throughput,
# refinement against the official projector's recipe, near-duplicate search at 1M rows.
# Usage: bash benchmarks/gpu_suite.sh OUT_DIR   (python3 with torch; lpips importable)
set -uo pipefail
out=${1:-out/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
"$py" - <<'EOF' | tee "$out/ceilings.txt"
import torch
from benchmarks.timing import median_seconds
dev = torch.device("cuda")
print("torch", torch.__version__, torch.cuda.get_device_name(dev))
for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (torch.float32, "fp32"), (torch.float32, "tf32")):
    torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
    a = torch.randn(8192, 8192, device=dev, dtype=dtype); b = torch.randn(8192, 8192, device=dev, dtype=dtype)
    s = median_seconds(lambda: a @ b, dev, warmup=3, repeats=10)
    print(f"matmul 8192^3 {name}: {2 * 8192**3 / s / 1e12:.0f} TFLOP/s")
torch.backends.cuda.matmul.allow_tf32 = False
x = torch.empty(2**30, dtype=torch.uint8, device=dev); y = torch.empty_like(x)
s = median_seconds(lambda: y.copy_(x), dev, warmup=3, repeats=10)
print(f"device copy: {2 * 2**30 / s / 1e12:.2f} TB/s (read + write)")
EOF
"$py" -m benchmarks.generator --resolutions 256,1024 --batch-sizes 1,8,32 --dtypes fp32,bf16,fp16 \
    --repeats 5 --json "$out/generator.json" | tee "$out/generator.md"
for spec in "16 bf16" "16 fp32" "64 bf16"; do
  set -- $spec
  "$py" -m benchmarks.refine --batch "$1" --precision "$2" --timing-steps 5,25 --json "$out/refine_$1_$2.json" \
      | tee "$out/refine_$1_$2.md"
done
"$py" -m benchmarks.curate --rows 100000,1000000 --dim 512 --baseline-max-rows 100000 --block-size 4096 \
    --json "$out/curate.json" | tee "$out/curate.md"

"""This machine's ceilings: dense matmul FLOP/s in bf16, fp16, fp32 and TF32, and the bandwidth of a copy.

Every MFU figure of the suite (benchmarks/suite.py) divides by the ceiling of the precision the work
ran in: bf16 work by the bf16 matmul, fp32 convolutions on a GPU by TF32 (cuDNN's default), never
everything by a no-TF32 fp32 matmul. Square matmuls of --size, median of --repeats after warm-up;
the copy reads and writes --copy-mib MiB (a device-to-device copy on a GPU, RAM to RAM on a CPU).
On a CPU, "tf32" is the fp32 matmul again (TF32 is a GPU format); its row says so.

  python -m benchmarks.ceilings --json ceilings.json             # 8192^3 matmuls, 1 GiB copy
  python -m benchmarks.ceilings --size 256 --copy-mib 16 --device cpu   # a smoke run
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.timing import machine_description, median_seconds, write_results

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "tf32": torch.float32}


def matmul_tflops(dtype_name: str, size: int, device: torch.device, repeats: int) -> float:
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype_name == "tf32"
    try:
        a = torch.randn(size, size, device=device, dtype=DTYPES[dtype_name])
        b = torch.randn(size, size, device=device, dtype=DTYPES[dtype_name])
        seconds = median_seconds(lambda: a @ b, device, warmup=3, repeats=repeats)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return 2 * size**3 / seconds / 1e12


def copy_tb_per_s(mib: int, device: torch.device, repeats: int) -> float:
    x = torch.empty(mib * 2**20, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    seconds = median_seconds(lambda: y.copy_(x), device, warmup=3, repeats=repeats)
    return 2 * mib * 2**20 / seconds / 1e12  # read + write


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="bf16,fp16,fp32,tf32", help=f"from {','.join(DTYPES)}")
    parser.add_argument("--size", type=int, default=8192, help="square matmul size")
    parser.add_argument("--copy-mib", type=int, default=1024, help="bytes copied, in MiB")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", dest="json_path", help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"# {machine_description(device)}")
    rows = []
    for name in args.dtypes.split(","):
        tflops = matmul_tflops(name, args.size, device, args.repeats)
        note = "no TF32 on a CPU: the fp32 matmul" if name == "tf32" and device.type != "cuda" else None
        rows.append(dict(measure="matmul", dtype=name, size=args.size, tflop_per_s=tflops, note=note))
        print(f"matmul {args.size}^3 {name}: {tflops:.3g} TFLOP/s" + (f" ({note})" if note else ""), flush=True)
    bandwidth = copy_tb_per_s(args.copy_mib, device, args.repeats)
    rows.append(dict(measure="copy", mib=args.copy_mib, tb_per_s=bandwidth))
    print(f"copy {args.copy_mib} MiB: {bandwidth:.3g} TB/s (read + write)")
    write_results(args.json_path, device, rows)


if __name__ == "__main__":
    main()

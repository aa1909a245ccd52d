"""StyleGAN2 generator throughput: forward and forward+backward images/s.

Official architectures with random weights (speed does not depend on the values):
  256 px  = stylegan2-ada-pytorch 'paper256' (channel_base 16384, channel_max 512, 14 ws)
  1024 px = the FFHQ 1024 config-f network (channel_base 32768, channel_max 512, 18 ws)
Forward+backward takes gradients with respect to ws, as inversion does (G frozen).

  python -m benchmarks.generator --resolutions 256,1024 --batch-sizes 1,8,32 --dtypes fp32,bf16

Load time of a 1024 px NVlabs pickle, latentmill's loader against the official one
(legacy.load_network_pkl of an export of NVlabs/stylegan2-ada-pytorch), each in fresh processes,
with peak memory; the pickle is made by the official code from random weights unless given:

  python -m benchmarks.generator --load-official-repo PATH/TO/stylegan2-ada-pytorch [--load-pickle ffhq.pkl]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.timing import autocast, machine_description, median_seconds, write_results
from pipeline.models.stylegan2 import Generator
from pipeline.models.stylegan3 import StyleGAN3Generator

OFFICIAL_CONFIGS = {
    256: dict(channel_base=16384, channel_max=512, num_fp16_res=4, conv_clamp=256),
    512: dict(channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256),
    1024: dict(channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256),
}


# NVlabs/stylegan3 train.py --cfg=stylegan3-t / -r (the ffhqu, afhqv2 and metfacesu models).
STYLEGAN3_CONFIGS = {
    "stylegan3-t": dict(channel_base=32768, channel_max=512),
    "stylegan3-r": dict(channel_base=65536, channel_max=1024, conv_kernel=1, use_radial_filters=True),
}


def official_generator(resolution: int, arch: str = "stylegan2", *,
                       channel_max: int | None = None) -> Generator | StyleGAN3Generator:
    """`channel_max`: fewer channels than the official network's, at any resolution: a tiny network for smoke
    runs, not a figure."""
    torch.manual_seed(0)
    if arch in STYLEGAN3_CONFIGS:
        narrow = {} if channel_max is None else {"channel_max": channel_max}
        return StyleGAN3Generator(z_dim=512, w_dim=512, img_resolution=resolution, img_channels=3,
                                  **STYLEGAN3_CONFIGS[arch] | narrow).eval()
    synthesis = (OFFICIAL_CONFIGS[resolution] if channel_max is None
                 else OFFICIAL_CONFIGS.get(resolution, OFFICIAL_CONFIGS[256]) | {"channel_max": channel_max})
    return Generator(z_dim=512, w_dim=512, img_resolution=resolution, img_channels=3,
                     mapping_kwargs={"num_layers": 8}, synthesis_kwargs=synthesis).eval()


def measure(G: Generator, batch: int, dtype: str, fused: bool, backward: bool, device: torch.device,
            repeats: int) -> float:
    ws = G.mapping(torch.randn(batch, G.z_dim, device=device)).detach()

    def step() -> None:
        x = ws.clone().requires_grad_(backward)
        with autocast(device, dtype), torch.set_grad_enabled(backward):
            img = G.synthesis(x, fused_modconv=fused)
        if backward:
            img.square().mean().backward()

    return batch / median_seconds(step, device, repeats=repeats)


# Run in a fresh interpreter: import, then time loading the same file twice (cold, then warm).
_LOAD_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
import torch
if {official!r}:
    from torch_utils.ops import bias_act, upfirdn2d
    bias_act._init = upfirdn2d._init = lambda: False
    import legacy
    def load(path):
        with open(path, 'rb') as f:
            return legacy.load_network_pkl(f)
else:
    from pipeline.models.checkpoints import load_networks as load
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range(2):
    start = time.perf_counter(); nets = load({path!r}); times.append(time.perf_counter() - start); del nets
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(cold=times[0], warm=times[1], peak_mib=peak / 1024, import_mib=before / 1024)))
"""

_MAKE_1024 = """
import copy, pickle, sys, torch
sys.path.insert(0, {repo!r})
from torch_utils.ops import bias_act, upfirdn2d
bias_act._init = upfirdn2d._init = lambda: False
from training import networks
torch.manual_seed(0)
G = networks.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3,
                       mapping_kwargs=dict(num_layers=8),
                       synthesis_kwargs=dict(channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256))
D = networks.Discriminator(c_dim=0, img_resolution=1024, img_channels=3, channel_base=32768, channel_max=512,
                           num_fp16_res=4, conv_clamp=256, epilogue_kwargs=dict(mbstd_group_size=4))
snapshot = dict(training_set_kwargs=None, G=copy.deepcopy(G).eval().requires_grad_(False), D=D.eval().requires_grad_(False),
                G_ema=copy.deepcopy(G).eval().requires_grad_(False), augment_pipe=None)
with open({path!r}, 'wb') as f:
    pickle.dump(snapshot, f)
"""


def load_time_rows(official_repo: str, pickle_path: str | None, repeats: int) -> list[dict]:
    """Median cold and warm load seconds and peak RSS of both loaders, alternating fresh processes."""
    with tempfile.TemporaryDirectory() as tmp:
        if pickle_path is None:
            pickle_path = str(Path(tmp) / "stylegan2-1024.pkl")
            subprocess.run([sys.executable, "-c", _MAKE_1024.format(repo=official_repo, path=pickle_path)], check=True)
        runs: dict[str, list[dict]] = {"official": [], "latentmill": []}
        for _ in range(repeats):
            for name in runs:
                repo = official_repo if name == "official" else str(Path(__file__).resolve().parents[1])
                code = _LOAD_CHILD.format(repo=repo, official=name == "official", path=pickle_path)
                out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
                runs[name].append(json.loads(out.strip().splitlines()[-1]))
        size_mib = Path(pickle_path).stat().st_size / 2**20
    rows = []
    for name, results in runs.items():
        rows.append(dict(loader=name, pickle_mib=round(size_mib, 1),
                         **{key: round(statistics.median(r[key] for r in results), 3)
                            for key in ("cold", "warm", "peak_mib", "import_mib")}))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", default="256,1024", help="comma-separated, from 256/512/1024 (any with --channel-max, or StyleGAN3)")
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--dtypes", default="fp32,bf16", help="fp32, bf16 and/or fp16 (autocast)")
    parser.add_argument("--modes", default="fused,unfused", help="modulated-conv implementations to compare "
                        "(StyleGAN3 has one: its rows say 'fused')")
    parser.add_argument("--archs", default="stylegan2", help="comma-separated: stylegan2, stylegan3-t, stylegan3-r")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per figure (median reported)")
    parser.add_argument("--max-images", type=int, default=10**9,
                        help="skip settings whose batch exceeds this (keeps CPU runs short)")
    parser.add_argument("--json", dest="json_path", help="also write the results here")
    parser.add_argument("--channel-max", type=int, help="cap every layer's channels (tiny networks for smoke runs; "
                        "default: the official configuration's)")
    parser.add_argument("--load-official-repo", help="measure checkpoint load time against this official export "
                                                     "(NVlabs/stylegan2-ada-pytorch) instead of throughput")
    parser.add_argument("--load-pickle", help="the NVlabs pickle to load (default: a 1024 px one made by the official code)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.load_official_repo:
        rows = load_time_rows(args.load_official_repo, args.load_pickle, args.repeats)
        print("| loader | pickle MiB | cold load s | warm load s | peak RSS MiB | RSS after imports MiB |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['loader']} | {r['pickle_mib']} | {r['cold']:.2f} | {r['warm']:.2f} | {r['peak_mib']:.0f} | "
                  f"{r['import_mib']:.0f} |")
        ratio = {k: rows[1][k] / rows[0][k] for k in ("cold", "warm")}
        print(f"\nlatentmill / official: cold {ratio['cold']:.2f}x, warm {ratio['warm']:.2f}x")
        write_results(args.json_path, torch.device("cpu"), rows)
        return
    rows = []
    print(f"# {machine_description(device)}", file=sys.stderr)
    print("| arch | resolution | batch | dtype | modconv | forward img/s | fwd+bwd img/s |")
    print("|---|---|---|---|---|---|---|")
    for arch in args.archs.split(","):
        for res in map(int, args.resolutions.split(",")):
            G = official_generator(res, arch, channel_max=args.channel_max).to(device).requires_grad_(False)
            modes = args.modes.split(",") if arch == "stylegan2" else ["fused"]
            for batch in map(int, args.batch_sizes.split(",")):
                if batch > args.max_images:
                    continue
                for dtype in args.dtypes.split(","):
                    for mode in modes:
                        fused = mode == "fused"
                        try:
                            fwd = measure(G, batch, dtype, fused, False, device, args.repeats)
                            bwd = measure(G, batch, dtype, fused, True, device, args.repeats)
                        except torch.OutOfMemoryError:  # a figure in itself: this batch does not fit
                            torch.cuda.empty_cache()
                            print(f"| {arch} | {res} | {batch} | {dtype} | {mode} | out of memory | |", flush=True)
                            continue
                        rows.append(dict(arch=arch, resolution=res, batch=batch, dtype=dtype, modconv=mode,
                                         forward_img_per_s=fwd, forward_backward_img_per_s=bwd))
                        print(f"| {arch} | {res} | {batch} | {dtype} | {mode} | {fwd:.2f} | {bwd:.2f} |", flush=True)
    write_results(args.json_path, device, rows)


if __name__ == "__main__":
    main()

"""Running NVlabs' own StyleGAN2-ADA code beside latentmill, offline, for benchmarks.

Given an export of github.com/NVlabs/stylegan2-ada-pytorch, `OfficialCode` imports its modules
with the reference (pure PyTorch) ops forced, builds its Generator with a latentmill generator's
architecture and weights (the parameter names are the same), and calls its projector's
`project()` unmodified. `project()` downloads a TorchScript VGG16 from NVIDIA's CDN; offline, its
`dnnlib.util.open_url` is pointed at a stand-in made here from latentmill's LPIPS (the `lpips`
package's linear heads over the same VGG16 backbone weights), so both sides measure the same
distance with the same weights.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
import types
from pathlib import Path

import torch
from torch import nn

from pipeline.losses.lpips_loss import LPIPSLoss


class LpipsFeatures(nn.Module):
    """The interface of NVlabs' vgg16.pt (`vgg16(img, resize_images=False, return_lpips=True)`, img in
    [0, 255]): per-layer unit-normalized features scaled so that the squared L2 distance of two
    images' outputs is their LPIPS distance."""

    def __init__(self, lpips: LPIPSLoss) -> None:
        super().__init__()
        model = lpips.model
        self.shift = nn.Parameter(model.scaling_layer.shift.detach().clone(), requires_grad=False)
        self.scale = nn.Parameter(model.scaling_layer.scale.detach().clone(), requires_grad=False)
        net = model.net
        self.slices = nn.ModuleList([net.slice1, net.slice2, net.slice3, net.slice4, net.slice5])
        self.weights = nn.ParameterList([nn.Parameter(lin.model[-1].weight.detach().clone().reshape(1, -1, 1, 1),
                                                      requires_grad=False) for lin in model.lins])

    def forward(self, img: torch.Tensor, resize_images: bool = False, return_lpips: bool = True) -> torch.Tensor:
        x = (img / 127.5 - 1 - self.shift) / self.scale
        out: list[torch.Tensor] = []
        for block, weight in zip(self.slices, self.weights):
            x = block(x)
            unit = x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + 1e-10)
            out.append((unit * weight.sqrt() / (x.shape[2] * x.shape[3]) ** 0.5).flatten(1))
        return torch.cat(out, dim=1)


def scripted_lpips_features(lpips: LPIPSLoss) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(LpipsFeatures(lpips).eval()), buffer)
    return buffer.getvalue()


class OfficialCode:
    def __init__(self, repo: str | Path, *, cuda_plugins: bool = False) -> None:
        """`cuda_plugins`: let the official code build and use its CUDA kernels (bias_act, upfirdn2d)
        as it does on a GPU by default; otherwise its reference ops, on any device."""
        repo = str(Path(repo).resolve())
        if not (Path(repo) / "projector.py").is_file():
            raise SystemExit(f"--official-repo {repo}: not an export of NVlabs/stylegan2-ada-pytorch (no projector.py)")
        if repo not in sys.path:
            sys.path.insert(0, repo)
        if importlib.util.find_spec("pkg_resources") is None:  # the official code imports it; newer setuptools lack it
            from packaging.version import parse

            sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse)
        if importlib.util.find_spec("imageio") is None:  # projector.py imports it for its video output, unused here
            sys.modules["imageio"] = types.ModuleType("imageio")
        import dnnlib
        from torch_utils.ops import bias_act, upfirdn2d

        self.cuda_plugins = bool(cuda_plugins and bias_act._init() and upfirdn2d._init())
        if not self.cuda_plugins:  # not asked for, or the build failed (upfirdn2d would retry it on every call)
            bias_act._init = lambda: False
            upfirdn2d._init = lambda: False
        import projector
        from training import networks

        self.dnnlib, self.networks, self.projector = dnnlib, networks, projector

    def generator(self, ours: nn.Module) -> nn.Module:
        """The official Generator with `ours`' architecture and weights, in fp32 everywhere."""
        kwargs = dict(ours.init_kwargs)
        synthesis = dict(kwargs.pop("synthesis_kwargs", {}) or {}, num_fp16_res=0)
        G = self.networks.Generator(**kwargs, synthesis_kwargs=synthesis)
        missing, unexpected = G.load_state_dict(ours.state_dict(), strict=False)
        # the FIR filters are a function of the architecture, built by both; every weight must match
        if unexpected or any(not key.endswith("resample_filter") for key in missing):
            raise RuntimeError(f"official Generator: missing {missing}, unexpected {unexpected}")
        return G.eval().requires_grad_(False)

    @contextlib.contextmanager
    def vgg16_from(self, lpips: LPIPSLoss):
        """project()'s VGG16 download answered by the LPIPS stand-in."""
        data = scripted_lpips_features(lpips)
        real = self.dnnlib.util.open_url
        self.dnnlib.util.open_url = lambda url, *args, **kwargs: contextlib.nullcontext(io.BytesIO(data))
        try:
            yield
        finally:
            self.dnnlib.util.open_url = real

    def project(self, G: nn.Module, target: torch.Tensor, steps: int, device: torch.device) -> torch.Tensor:
        """project() unmodified, with its defaults, on one target [C, H, W] in [-1, 1]; returns its final
        latent as W+ [num_ws, w_dim] (the projector's own scripts render it with noise_mode='const')."""
        pixels = ((target + 1) * 127.5).clamp(0, 255)
        return self.projector.project(G, pixels, num_steps=steps, device=device)[-1]  # one w, repeated per layer

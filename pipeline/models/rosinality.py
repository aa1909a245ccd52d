"""rosinality/stylegan2-pytorch generator weights <-> latentmill's (NVlabs-named) generator.

The two code bases compute the same network with other names and shapes. The correspondence is
written once, as data (`name_table`), and used in both directions. Differences it absorbs:
- modulated 3x3 conv weights are stored [1, O, I, k, k] and scaled at run time by 1/sqrt(I*k*k);
  NVlabs stores [O, I, k, k] unscaled (demodulation cancels a constant scale, up to its epsilon),
  so importing folds the scale in and exporting divides it out;
- toRGB weights are [1, 3, I, 1, 1] (NVlabs scales the style instead: same product);
- the constant, toRGB biases, noise strengths and noise maps carry extra unit dimensions;
- rosinality has no activation clamp (`conv_clamp=None`) and keeps `latent_avg` outside the state dict;
- the fixed blur/upsample kernels are buffers there and derived from the filter taps here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.errors import CheckpointError
from pipeline.models.resample import make_filter
from pipeline.models.network_record import NetworkRecord
from pipeline.models.stylegan2 import DEFAULT_RESAMPLE_FILTER, Generator

Transform = Callable[[torch.Tensor], torch.Tensor]


def _modconv_to_ours(t: torch.Tensor) -> torch.Tensor:
    _, _, i, kh, kw = t.shape
    return t[0] / math.sqrt(i * kh * kw)


def _modconv_to_theirs(t: torch.Tensor) -> torch.Tensor:
    _, i, kh, kw = t.shape
    return (t * math.sqrt(i * kh * kw))[None]


# kind -> (rosinality tensor -> ours, ours -> rosinality tensor)
TRANSFORMS: dict[str, tuple[Transform, Transform]] = {
    "copy": (lambda t: t, lambda t: t),
    "leading_unit_dim": (lambda t: t[0], lambda t: t[None]),  # const [1,C,4,4], toRGB weight [1,3,I,1,1]
    "modconv": (_modconv_to_ours, _modconv_to_theirs),
    "rgb_bias": (lambda t: t.reshape(-1), lambda t: t.reshape(1, -1, 1, 1)),
    "scalar": (lambda t: t.reshape(()), lambda t: t.reshape(1)),
    "noise_map": (lambda t: t[0, 0], lambda t: t[None, None]),
}


@dataclass(frozen=True)
class TensorCorrespondence:
    ours: str
    theirs: str
    kind: str


def _styled_conv(ours: str, theirs: str) -> list[TensorCorrespondence]:
    return [
        TensorCorrespondence(f"{ours}.weight", f"{theirs}.conv.weight", "modconv"),
        TensorCorrespondence(f"{ours}.affine.weight", f"{theirs}.conv.modulation.weight", "copy"),
        TensorCorrespondence(f"{ours}.affine.bias", f"{theirs}.conv.modulation.bias", "copy"),
        TensorCorrespondence(f"{ours}.noise_strength", f"{theirs}.noise.weight", "scalar"),
        TensorCorrespondence(f"{ours}.bias", f"{theirs}.activate.bias", "copy"),
    ]


def _to_rgb(ours: str, theirs: str) -> list[TensorCorrespondence]:
    return [
        TensorCorrespondence(f"{ours}.weight", f"{theirs}.conv.weight", "leading_unit_dim"),
        TensorCorrespondence(f"{ours}.affine.weight", f"{theirs}.conv.modulation.weight", "copy"),
        TensorCorrespondence(f"{ours}.affine.bias", f"{theirs}.conv.modulation.bias", "copy"),
        TensorCorrespondence(f"{ours}.bias", f"{theirs}.bias", "rgb_bias"),
    ]


def name_table(resolution: int, n_mlp: int) -> list[TensorCorrespondence]:
    """Every tensor of a rosinality generator of this size, with its latentmill name and transform."""
    table = []
    for i in range(n_mlp):  # style.0 is PixelNorm (no weights)
        table += [TensorCorrespondence(f"mapping.fc{i}.{p}", f"style.{i + 1}.{p}", "copy") for p in ("weight", "bias")]
    table.append(TensorCorrespondence("synthesis.b4.const", "input.input", "leading_unit_dim"))
    table += _styled_conv("synthesis.b4.conv1", "conv1")
    table.append(TensorCorrespondence("synthesis.b4.conv1.noise_const", "noises.noise_0", "noise_map"))
    table += _to_rgb("synthesis.b4.torgb", "to_rgb1")
    for k, res in enumerate(2**i for i in range(3, int(math.log2(resolution)) + 1)):
        for j, layer in enumerate(("conv0", "conv1")):
            table += _styled_conv(f"synthesis.b{res}.{layer}", f"convs.{2 * k + j}")
            table.append(TensorCorrespondence(f"synthesis.b{res}.{layer}.noise_const",
                                              f"noises.noise_{2 * k + j + 1}", "noise_map"))
        table += _to_rgb(f"synthesis.b{res}.torgb", f"to_rgbs.{k}")
    return table


_FIXED_KERNEL = re.compile(r"^(convs\.\d+\.conv\.blur\.kernel|to_rgbs\.\d+\.upsample\.kernel)$")


def _expected_fixed_kernel() -> torch.Tensor:
    return make_filter(DEFAULT_RESAMPLE_FILTER) * 4  # rosinality folds the 2x upsampling gain in


def infer_architecture(state: Mapping[str, torch.Tensor], args: Any = None, *, source: str) -> dict[str, Any]:
    """latentmill Generator kwargs for a rosinality g_ema state dict (checked against `args` if given)."""
    try:
        n_mlp = sum(1 for k in state if re.fullmatch(r"style\.\d+\.weight", k))
        style_dim = state["style.1.weight"].shape[1]
        num_rgbs = sum(1 for k in state if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k))
        resolution = 4 * 2**num_rgbs
        channels = {4: state["conv1.conv.weight"].shape[1]}
        for k in range(num_rgbs):
            channels[8 * 2**k] = state[f"convs.{2 * k + 1}.conv.weight"].shape[1]
        img_channels = state["to_rgb1.conv.weight"].shape[1]
    except (KeyError, IndexError) as exc:
        raise CheckpointError(f"{source}: not a rosinality StyleGAN2 generator state dict (missing {exc})") from None
    if args is not None and getattr(args, "size", resolution) != resolution:
        raise CheckpointError(f"{source}: args.size={args.size} but the weights are for {resolution} px")
    channel_max = max(channels.values())
    channel_base = channels[resolution] * resolution
    if any(min(channel_base // r, channel_max) != c for r, c in channels.items()):
        raise CheckpointError(f"{source}: channel counts {channels} follow no min(base // res, max) rule")
    return dict(
        z_dim=style_dim, c_dim=0, w_dim=style_dim, img_resolution=resolution, img_channels=img_channels,
        mapping_kwargs=dict(num_layers=n_mlp, lr_multiplier=float(getattr(args, "lr_mlp", 0.01))),
        synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max, conv_clamp=None),
    )


def to_latentmill(state: Mapping[str, torch.Tensor], resolution: int, n_mlp: int, *,
                  source: str) -> dict[str, torch.Tensor]:
    """Rename and reshape a rosinality g_ema state dict (without w_avg, which lives outside it)."""
    table = name_table(resolution, n_mlp)
    known = {row.theirs for row in table}
    for name, tensor in state.items():
        if name in known:
            continue
        if _FIXED_KERNEL.match(name):
            if not torch.allclose(tensor.float(), _expected_fixed_kernel(), atol=1e-6):
                raise CheckpointError(f"{source}: {name} is not the standard [1,3,3,1] filter; unsupported")
            continue
        raise CheckpointError(f"{source}: unexpected tensor '{name}' in the rosinality generator")
    missing = known - set(state)
    if missing:
        raise CheckpointError(f"{source}: rosinality generator lacks {sorted(missing)[:5]}")
    return {row.ours: TRANSFORMS[row.kind][0](state[row.theirs].float()) for row in table}


def to_rosinality(state: Mapping[str, torch.Tensor], resolution: int, n_mlp: int) -> dict[str, torch.Tensor]:
    """The inverse of `to_latentmill`, fixed kernels included: a state dict rosinality's code loads."""
    out = {row.theirs: TRANSFORMS[row.kind][1](state[row.ours]) for row in name_table(resolution, n_mlp)}
    kernel = _expected_fixed_kernel()
    for k in range(int(math.log2(resolution)) - 2):
        out[f"convs.{2 * k}.conv.blur.kernel"] = kernel.clone()
        out[f"to_rgbs.{k}.upsample.kernel"] = kernel.clone()
    return out


W_AVG_SAMPLES = 4096


def generator_record(state: Any, latent_avg: Any = None, args: Any = None, *, source: str,
                     name: str = "g_ema") -> tuple[NetworkRecord, str]:
    """A latentmill Generator record from a rosinality generator state dict, with w_avg from `latent_avg`
    (rosinality keeps it outside the state dict) or, without one, estimated as rosinality's mean_latent()
    does (a fixed seed: reproducible); returns the record and where w_avg came from."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source}: '{name}' is not a state dict of tensors")
    kwargs = infer_architecture(state, args, source=source)
    mapped = to_latentmill(state, kwargs["img_resolution"], kwargs["mapping_kwargs"]["num_layers"], source=source)
    if isinstance(latent_avg, torch.Tensor) and latent_avg.numel() == kwargs["w_dim"]:
        mapped["mapping.w_avg"] = latent_avg.reshape(-1).float()
        return NetworkRecord("Generator", kwargs, mapped), "latent_avg"
    mapped["mapping.w_avg"] = _estimate_w_avg(kwargs, mapped)
    return NetworkRecord("Generator", kwargs, mapped), f"estimated from {W_AVG_SAMPLES} samples"


@torch.no_grad()
def _estimate_w_avg(kwargs: dict[str, Any], state: dict[str, torch.Tensor]) -> torch.Tensor:
    G = Generator(**kwargs)
    G.load_state_dict({**state, "mapping.w_avg": torch.zeros(G.w_dim)}, strict=True)
    z = torch.randn(W_AVG_SAMPLES, G.z_dim, generator=torch.Generator().manual_seed(0))
    return G.mapping(z)[:, 0].mean(dim=0)

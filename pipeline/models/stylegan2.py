"""StyleGAN2 generator and discriminator (Karras et al. 2020), in pure PyTorch.

The architecture, parameter names and numerics follow NVlabs stylegan2-ada-pytorch
(`training/networks.py`), so an official checkpoint's state dict loads 1:1 and the outputs
match the official code in fp32 to float rounding. Two additions serve latentmill:
- StyleSpace: synthesis is split into `styles(ws)` (every affine layer's output, S) and
  `synthesis_from_styles(styles)`, so editing S and rendering W+ share one code path.
- Mixed precision is plain `torch.autocast`; modulation and demodulation coefficients are kept
  in float32 so bf16/fp16 runs stay stable. `num_fp16_res` is accepted and recorded only.

Notation: N batch, C channels, num_ws the number of w vectors the synthesis network reads.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.invertible import InvertibleMapping
from pipeline.models.model_settings import MAPPINGS
from pipeline.models.ws_broadcast import broadcast_ws
from pipeline.models.resample import conv2d_resample, downsample2d, make_filter, upsample2d

ACTIVATION_GAINS = {"linear": 1.0, "relu": math.sqrt(2), "lrelu": math.sqrt(2)}
LRELU_SLOPE = 0.2
DEFAULT_RESAMPLE_FILTER = (1, 3, 3, 1)
NOISE_MODES = ("const", "random", "none")

# Keyword arguments that official checkpoints may record but that only affect training speed or
# memory layout, never the function the network computes; accepted and ignored.
_PERFORMANCE_ONLY_KWARGS = {"fp16_channels_last", "fused_modconv_default", "freeze_layers"}


_WEIGHTS_WILL_BE_LOADED = contextvars.ContextVar("weights_will_be_loaded", default=False)


@contextmanager
def uninitialized_weights() -> Iterator[None]:
    """Build networks whose weights are about to be loaded: random draws become bare allocations.

    A 1024 px generator draws 30M random numbers at construction; a loader that replaces them all
    at once (load_state_dict(assign=True)) need not pay for them, in time or in touched memory.
    """
    token = _WEIGHTS_WILL_BE_LOADED.set(True)
    try:
        yield
    finally:
        _WEIGHTS_WILL_BE_LOADED.reset(token)


def _randn(*shape: int) -> torch.Tensor:
    """Initial weights ~ N(0, 1), or uninitialized memory inside `uninitialized_weights()`."""
    return torch.empty(shape) if _WEIGHTS_WILL_BE_LOADED.get() else torch.randn(shape)


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None,
    *,
    activation: str = "linear",
    gain: float = 1.0,
    clamp: float | None = None,
) -> torch.Tensor:
    """Add a per-channel bias (dim 1), apply the activation, scale by `gain`, then clamp."""
    if b is not None:
        x = x + b.to(x.dtype).reshape([1, -1] + [1] * (x.ndim - 2))
    if activation == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
    elif activation == "relu":
        x = F.relu(x)
    elif activation != "linear":
        raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATION_GAINS)}")
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each vector to unit root-mean-square (StyleGAN's PixelNorm on z and label embeddings)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def _check_kwargs(where: str, kwargs: Mapping[str, Any]) -> None:
    unknown = set(kwargs) - _PERFORMANCE_ONLY_KWARGS
    if unknown:
        raise TypeError(f"{where}: unsupported architecture arguments {sorted(unknown)}")


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    *,
    noise: torch.Tensor | None = None,
    up: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused: bool = True,
) -> torch.Tensor:
    """Style-modulated convolution: w'_oik = s_i * w_oik, optionally demodulated per output channel.

    x [N, I, H, W], weight [O, I, k, k], styles [N, I]. `fused=True` builds per-sample kernels and
    runs one grouped convolution; `fused=False` scales activations before and after a shared
    convolution (the same function, usually faster for large batches on GPUs).
    """
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    styles = styles.float()
    w = weight.float().unsqueeze(0) * styles.reshape(n, 1, in_ch, 1, 1)  # [N, O, I, k, k]
    dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt() if demodulate else None  # [N, O]

    if not fused:
        x = x * styles.to(x.dtype).reshape(n, in_ch, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), resample_filter, up=up, padding=padding, flip_weight=flip_weight)
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(n, out_ch, 1, 1)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x

    if dcoefs is not None:
        w = w * dcoefs.reshape(n, out_ch, 1, 1, 1)
    x = x.reshape(1, n * in_ch, *x.shape[2:])  # [1, N*I, H, W]
    w = w.reshape(n * out_ch, in_ch, kh, kw)  # [N*O, I, k, k]
    x = conv2d_resample(x, w.to(x.dtype), resample_filter, up=up, padding=padding, groups=n, flip_weight=flip_weight)
    x = x.reshape(n, out_ch, *x.shape[2:])  # [N, O, H', W']
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


class FullyConnectedLayer(nn.Module):
    """Linear layer with equalized learning rate: weights are rescaled at run time, not at init."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,  # mapping network uses 0.01
        bias_init: float = 0.0,  # affine (style) layers start at 1
    ) -> None:
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(_randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, activation=self.activation, gain=ACTIVATION_GAINS[self.activation])


class Conv2dLayer(nn.Module):
    """Equalized-learning-rate convolution with optional FIR resampling (discriminator layers)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        up: int = 1,
        down: int = 1,
        resample_filter: Sequence[float] = DEFAULT_RESAMPLE_FILTER,
        conv_clamp: float | None = None,  # clamp outputs to +-conv_clamp (official: 256)
    ) -> None:
        super().__init__()
        self.activation, self.up, self.down, self.conv_clamp = activation, up, down, conv_clamp
        self.register_buffer("resample_filter", make_filter(resample_filter), persistent=False)
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = ACTIVATION_GAINS[activation]
        self.weight = nn.Parameter(_randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        x = conv2d_resample(x, w, self.resample_filter, up=self.up, down=self.down, padding=self.padding,
                            flip_weight=(self.up == 1))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, activation=self.activation, gain=self.act_gain * gain, clamp=clamp)



class MappingNetwork(nn.Module):
    """z (and optional label c) -> w, broadcast to num_ws copies; tracks w_avg for truncation."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int | None,
        num_layers: int = 8,
        embed_features: int | None = None,  # label embedding size, None = w_dim
        layer_features: int | None = None,  # hidden size, None = w_dim
        activation: str = "lrelu",
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.995,  # decay of the w_avg moving average, None = not tracked
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, w_avg_beta
        embed_features = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self,
        z: torch.Tensor | None,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_w_avg: bool = False,
    ) -> torch.Tensor:
        """z [N, z_dim], c [N, c_dim] -> ws [N, num_ws, w_dim] (or w [N, w_dim] if num_ws is None)."""
        x = None
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"mapping expects z of shape [N, {self.z_dim}], got "
                                 f"{None if z is None else list(z.shape)}")
            x = normalize_2nd_moment(z.float())
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"this generator is conditional: pass c of shape [N, {self.c_dim}]")
            y = normalize_2nd_moment(self.embed(c.float()))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        return broadcast_ws(self, x, truncation_psi, truncation_cutoff, update_w_avg)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (optionally upsampling), per-pixel noise, bias, lrelu, clamp."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter: Sequence[float] = DEFAULT_RESAMPLE_FILTER,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.activation, self.conv_clamp = activation, conv_clamp
        self.register_buffer("resample_filter", make_filter(resample_filter), persistent=False)
        self.padding = kernel_size // 2
        self.act_gain = ACTIVATION_GAINS[activation]
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(_randn(out_channels, in_channels, kernel_size, kernel_size))
        if use_noise:
            self.register_buffer("noise_const", _randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise_mode: str = "const", fused: bool = True,
                gain: float = 1.0, noise_input: torch.Tensor | None = None) -> torch.Tensor:
        """`noise_input` [N, 1, H, W] (unit-variance maps, e.g. optimized per image) overrides noise_mode."""
        noise = None
        if self.use_noise and noise_input is not None:
            noise = noise_input * self.noise_strength
        elif self.use_noise and noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, style, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1), fused=fused)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, activation=self.activation, gain=self.act_gain * gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution to image channels, without demodulation."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(_randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: torch.Tensor, style: torch.Tensor, fused: bool = True) -> torch.Tensor:
        # The style (raw affine output, the StyleSpace coordinate) is scaled by the weight gain here.
        x = modulated_conv2d(x, self.weight, style * self.weight_gain, demodulate=False, fused=fused)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: [conv0 (up)] conv1 [torgb], plus the image skip."""

    def __init__(
        self,
        in_channels: int,  # 0 = first block (starts from the learned constant)
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        is_last: bool,
        architecture: str = "skip",  # 'orig' | 'skip' | 'resnet'
        resample_filter: Sequence[float] = DEFAULT_RESAMPLE_FILTER,
        conv_clamp: float | None = None,
        use_fp16: bool = False,  # recorded only: use torch.autocast for mixed precision
        **layer_kwargs: Any,
    ) -> None:
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"unknown synthesis architecture {architecture!r}")
        super().__init__()
        layer_kwargs = {k: v for k, v in layer_kwargs.items() if k not in _PERFORMANCE_ONLY_KWARGS}
        self.in_channels, self.resolution, self.architecture = in_channels, resolution, architecture
        self.is_last, self.use_fp16 = is_last, use_fp16
        self.register_buffer("resample_filter", make_filter(resample_filter), persistent=False)
        self.layer_names: list[str] = []  # execution order; each reads one w of the block's window
        if in_channels == 0:
            self.const = nn.Parameter(_randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
            self.layer_names.append("conv0")
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp,
                                    **layer_kwargs)
        self.layer_names.append("conv1")
        self.num_conv = len(self.layer_names)
        self.num_torgb = 0
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
            self.layer_names.append("torgb")
            self.num_torgb = 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, styles: Mapping[str, torch.Tensor],
                noise_mode: str = "const", fused: bool = True, noise_inputs: Mapping[str, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """styles: this block's layer name -> [N, in_channels of that layer]; noise_inputs likewise, optional."""
        n = styles["conv1"].shape[0]
        noise_inputs = noise_inputs or {}
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat(n, 1, 1, 1)  # [N, C, 4, 4]
            x = self.conv1(x, styles["conv1"], noise_mode, fused, noise_input=noise_inputs.get("conv1"))
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, styles["conv0"], noise_mode, fused, noise_input=noise_inputs.get("conv0"))
            x = self.conv1(x, styles["conv1"], noise_mode, fused, gain=math.sqrt(0.5),
                           noise_input=noise_inputs.get("conv1"))
            x = y + x
        else:
            x = self.conv0(x, styles["conv0"], noise_mode, fused, noise_input=noise_inputs.get("conv0"))
            x = self.conv1(x, styles["conv1"], noise_mode, fused, noise_input=noise_inputs.get("conv1"))
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.num_torgb:
            y = self.torgb(x, styles["torgb"], fused).float()
            img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R]; also exposes StyleSpace."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,  # channels at resolution r: min(channel_base // r, channel_max)
        channel_max: int = 512,
        num_fp16_res: int = 0,  # recorded only: use torch.autocast for mixed precision
        **block_kwargs: Any,
    ) -> None:
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.num_fp16_res = num_fp16_res
        log2 = int(math.log2(img_resolution))
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        self.style_slots: dict[str, int] = {}  # "b{res}.{layer}" -> index into ws
        for res in self.block_resolutions:
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim, res, img_channels,
                                   is_last=(res == img_resolution), use_fp16=(res >= fp16_resolution), **block_kwargs)
            setattr(self, f"b{res}", block)
            # Each block reads a window of ws starting at the running conv count; its torgb shares
            # the index of the next block's first conv (NVlabs' overlapping windows).
            for offset, name in enumerate(block.layer_names):
                self.style_slots[f"b{res}.{name}"] = self.num_ws + offset
            self.num_ws += block.num_conv
        self.num_ws += getattr(self, f"b{img_resolution}").num_torgb

    def blocks(self) -> list[tuple[int, SynthesisBlock]]:
        return [(res, getattr(self, f"b{res}")) for res in self.block_resolutions]

    def layer(self, key: str) -> SynthesisLayer | ToRGBLayer:
        """The layer named "b{res}.{conv0|conv1|torgb}"."""
        block, name = key.split(".")
        return getattr(getattr(self, block), name)

    def affine_layers(self) -> dict[str, FullyConnectedLayer]:
        """StyleSpace layer name -> its affine map A_l, in execution order."""
        return {key: self.layer(key).affine for key in self.style_slots}

    def styles(self, ws: torch.Tensor) -> dict[str, torch.Tensor]:
        """ws [N, num_ws, w_dim] -> StyleSpace S: {"b{res}.{conv0|conv1|torgb}": [N, channels]}."""
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"synthesis expects ws of shape [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        ws = ws.float()
        return {key: affine(ws[:, self.style_slots[key]]) for key, affine in self.affine_layers().items()}

    def noise_layers(self) -> dict[str, SynthesisLayer]:
        """"b{res}.conv{0,1}" -> the layer, for every layer that adds per-pixel noise."""
        return {key: self.layer(key) for key in self.style_slots
                if not key.endswith("torgb") and self.layer(key).use_noise}

    def synthesis_from_styles(self, styles: Mapping[str, torch.Tensor], noise_mode: str = "const",
                              fused_modconv: bool | None = None,
                              noise_inputs: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Render images from StyleSpace coordinates (the dict `styles` returns, possibly edited).

        `noise_inputs` ("b{res}.conv{0,1}" -> [N, 1, res, res]) replaces those layers' noise maps.
        """
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        missing = set(self.style_slots) - set(styles)
        if missing:
            raise KeyError(f"styles lack layers {sorted(missing)}")
        fused = (not self.training) if fused_modconv is None else fused_modconv
        x = img = None
        noise_inputs = noise_inputs or {}
        for res, block in self.blocks():
            block_styles = {name: styles[f"b{res}.{name}"] for name in block.layer_names}
            block_noise = {name: noise_inputs[f"b{res}.{name}"] for name in block.layer_names
                           if f"b{res}.{name}" in noise_inputs}
            x, img = block(x, img, block_styles, noise_mode, fused, block_noise)
        return img

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", fused_modconv: bool | None = None,
                noise_inputs: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.synthesis_from_styles(self.styles(ws), noise_mode, fused_modconv, noise_inputs)


def build_mapping(z_dim: int, c_dim: int, w_dim: int, num_ws: int, mapping_kwargs: Mapping[str, Any]) -> nn.Module:
    """The mapping network `mapping_kwargs` describe: StyleGAN's MLP, or (kind='invertible') LIA's
    coupling stack with an exact inverse (pipeline/models/invertible.py)."""
    kwargs = dict(mapping_kwargs)
    kind = kwargs.pop("kind", "standard")
    if kind == "invertible":
        return InvertibleMapping(z_dim, c_dim, w_dim, num_ws, **kwargs)
    if kind != "standard":
        raise ValueError(f"mapping kind must be one of {MAPPINGS}, got {kind!r}")
    return MappingNetwork(z_dim, c_dim, w_dim, num_ws, **kwargs)


class MappedGenerator(nn.Module):
    """What every generator shares: `mapping` (z, c -> ws [N, num_ws, w_dim]) feeding `synthesis`."""

    def _assemble(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                  synthesis: nn.Module, mapping_kwargs: Mapping[str, Any]) -> None:
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = synthesis
        self.num_ws = synthesis.num_ws
        self.mapping = build_mapping(z_dim, c_dim, w_dim, self.num_ws, mapping_kwargs)

    @property
    def w_avg(self) -> torch.Tensor:
        return self.mapping.w_avg

    def styles(self, ws: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.synthesis.styles(ws)

    def synthesis_from_styles(self, styles: Mapping[str, torch.Tensor], noise_mode: str = "const",
                              fused_modconv: bool | None = None,
                              noise_inputs: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.synthesis.synthesis_from_styles(styles, noise_mode, fused_modconv, noise_inputs)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: str = "const") -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode)


class Generator(MappedGenerator):
    """StyleGAN2 generator: `mapping` (z, c -> ws) and `synthesis` (ws -> image in about [-1, 1])."""

    def __init__(
        self,
        z_dim: int = 512,
        c_dim: int = 0,  # label dimensionality, 0 = unconditional
        w_dim: int = 512,
        img_resolution: int = 1024,
        img_channels: int = 3,
        mapping_kwargs: Mapping[str, Any] | None = None,
        synthesis_kwargs: Mapping[str, Any] | None = None,
        **unused: Any,
    ) -> None:
        _check_kwargs("Generator", {k: v for k, v in unused.items() if k != "epochs"})
        super().__init__()
        mapping_kwargs = dict(mapping_kwargs or {})
        synthesis_kwargs = dict(synthesis_kwargs or {})
        self.init_kwargs = dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                                img_channels=img_channels, mapping_kwargs=mapping_kwargs,
                                synthesis_kwargs=synthesis_kwargs)
        self._assemble(z_dim, c_dim, w_dim, img_resolution, img_channels,
                       SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs), mapping_kwargs)


class DiscriminatorBlock(nn.Module):
    """One resolution of the residual discriminator: [fromrgb] conv0, conv1 (down), skip (down)."""

    def __init__(
        self,
        in_channels: int,  # 0 = first block (reads the image)
        tmp_channels: int,
        out_channels: int,
        resolution: int,
        img_channels: int,
        first_layer_idx: int = 0,  # accepted for compatibility with official kwargs
        architecture: str = "resnet",  # 'orig' | 'skip' | 'resnet'
        activation: str = "lrelu",
        resample_filter: Sequence[float] = DEFAULT_RESAMPLE_FILTER,
        conv_clamp: float | None = None,
        use_fp16: bool = False,  # recorded only
        **unused: Any,
    ) -> None:
        _check_kwargs("DiscriminatorBlock", unused)
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"unknown discriminator architecture {architecture!r}")
        super().__init__()
        self.in_channels, self.resolution, self.architecture = in_channels, resolution, architecture
        self.register_buffer("resample_filter", make_filter(resample_filter), persistent=False)
        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation=activation, conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation=activation, conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation=activation, down=2,
                                 resample_filter=resample_filter, conv_clamp=conv_clamp)
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2, resample_filter=resample_filter)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.in_channels == 0 or self.architecture == "skip":
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
            x = y + x
        else:
            x = self.conv1(self.conv0(x))
        return x, img


class MinibatchStdLayer(nn.Module):
    """Appends the per-group standard deviation of features as extra channels."""

    def __init__(self, group_size: int | None, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        f = self.num_channels
        if n % g:
            raise ValueError(f"discriminator batch size {n} must be divisible by the minibatch-std group size {g}")
        y = x.reshape(g, -1, f, c // f, h, w)  # [G, n, F, c, H, W]
        y = (y - y.mean(dim=0)).square().mean(dim=0)  # [n, F, c, H, W] variance over the group
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])  # [n, F]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)  # [N, F, H, W]
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    """4x4 head: minibatch std, conv, fc, output (projected onto the label embedding if conditional)."""

    def __init__(
        self,
        in_channels: int,
        cmap_dim: int,
        resolution: int,
        img_channels: int,
        architecture: str = "resnet",
        mbstd_group_size: int | None = 4,
        mbstd_num_channels: int = 1,
        activation: str = "lrelu",
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.cmap_dim, self.architecture = cmap_dim, architecture
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, 1, activation=activation)
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, img: torch.Tensor | None, cmap: torch.Tensor | None) -> torch.Tensor:
        if self.architecture == "skip":
            x = x + self.fromrgb(img)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.out(self.fc(self.conv(x).flatten(1)))
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator: images [N, C, R, R] (and labels) -> logits [N, 1]."""

    def __init__(
        self,
        c_dim: int = 0,
        img_resolution: int = 1024,
        img_channels: int = 3,
        architecture: str = "resnet",
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 0,  # recorded only
        conv_clamp: float | None = None,
        cmap_dim: int | None = None,  # label embedding size, None = channels at 4x4
        block_kwargs: Mapping[str, Any] | None = None,
        mapping_kwargs: Mapping[str, Any] | None = None,
        epilogue_kwargs: Mapping[str, Any] | None = None,
        **unused: Any,
    ) -> None:
        _check_kwargs("Discriminator", {k: v for k, v in unused.items() if k != "epochs"})
        super().__init__()
        block_kwargs, mapping_kwargs = dict(block_kwargs or {}), dict(mapping_kwargs or {})
        epilogue_kwargs = dict(epilogue_kwargs or {})
        self.init_kwargs = dict(c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels,
                                architecture=architecture, channel_base=channel_base, channel_max=channel_max,
                                num_fp16_res=num_fp16_res, conv_clamp=conv_clamp, cmap_dim=cmap_dim,
                                block_kwargs=block_kwargs, mapping_kwargs=mapping_kwargs,
                                epilogue_kwargs=epilogue_kwargs)
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        log2 = int(math.log2(img_resolution))
        self.block_resolutions = [2**i for i in range(log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        cmap_dim = 0 if c_dim == 0 else (channels[4] if cmap_dim is None else cmap_dim)
        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        for res in self.block_resolutions:
            block = DiscriminatorBlock(channels[res] if res < img_resolution else 0, channels[res], channels[res // 2],
                                       res, use_fp16=(res >= fp16_resolution), **block_kwargs, **common)
            setattr(self, f"b{res}", block)
        if c_dim > 0:
            self.mapping = MappingNetwork(0, c_dim, cmap_dim, num_ws=None, w_avg_beta=None, **mapping_kwargs)
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim, 4, **epilogue_kwargs, **common)

    def _run_blocks(self, img: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        x, feats = None, []
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img)
            feats.append(x)
        return feats, img

    def features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Activations after each block, highest resolution first: [N, C_r, r/2, r/2] per block.

        These are the discriminator's learned image features, usable as a perceptual distance.
        """
        return self._run_blocks(img)[0]

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        feats, skip_img = self._run_blocks(img)
        x = feats[-1]
        cmap = None
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this discriminator is conditional: pass c of shape [N, {self.c_dim}]")
            cmap = self.mapping(None, c)
        return self.b4(x, skip_img, cmap)

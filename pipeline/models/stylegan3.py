"""StyleGAN3 (alias-free) generator in plain PyTorch: configurations T and R, any resolution, conditional.

Karras et al., "Alias-Free Generative Adversarial Networks" (NVlabs/stylegan3). The mapping network is
StyleGAN2's (2 layers by default). Synthesis starts from Fourier features whose rotation and
translation come from the first w (`SynthesisInput`, with a user-settable `transform`), then runs
`num_layers` modulated convolutions, each followed by the filtered leaky ReLU: upsample with a
Kaiser low-pass filter, apply the nonlinearity at the higher rate, low-pass and downsample again.
Here that op is the reference composition of upfirdn2d and bias_act (no custom CUDA kernels), and
the modulated convolution is the grouped one. The last layer is the linear ToRGB; there is no
per-pixel noise. `num_ws = num_layers + 2` (input, layers, ToRGB).

StyleSpace: the affine output of every layer (`L{i}_{size}_{channels}`, the last one named
`....torgb` as in StyleGAN2), plus `input`, the four numbers (rotation cosine and sine,
translation) of the Fourier features' transform, so that `synthesis_from_styles(styles(ws))`
reproduces `synthesis(ws)` exactly. Channel rankings leave out `input` and toRGB by default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.resample import upfirdn2d
from pipeline.models.stylegan2 import FullyConnectedLayer, MappedGenerator, _randn

# Arguments of official StyleGAN3 pickles that change only speed or training, not the function.
_PERFORMANCE_ONLY = {"num_fp16_res", "fused_modconv_default"}


def lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float, radial: bool = False) -> torch.Tensor | None:
    """The Kaiser-windowed low-pass filter of a layer: separable taps [k], radial 2-D [k, k], or None (identity)."""
    import scipy.signal
    import scipy.special

    if numtaps == 1:
        return None
    if not radial:
        return torch.as_tensor(scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs),
                               dtype=torch.float32)
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    f = scipy.special.j1(2 * cutoff * (np.pi * r)) / (np.pi * r)  # jinc: radially symmetric ideal low-pass
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
    window = np.kaiser(numtaps, beta)
    f *= np.outer(window, window)
    return torch.as_tensor(f / np.sum(f), dtype=torch.float32)


def modulated_conv2d_sg3(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *, demodulate: bool,
                         padding: int, input_gain: torch.Tensor) -> torch.Tensor:
    """StyleGAN3's modulated convolution: weights and styles pre-normalized, then modulated,
    demodulated and scaled by the input gain, run as one grouped convolution. x [N, I, H, W]."""
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    w, s = weight.float(), styles.float()
    if demodulate:
        w = w * w.square().mean([1, 2, 3], keepdim=True).rsqrt()
        s = s * s.square().mean().rsqrt()
    w = w.unsqueeze(0) * s.reshape(n, 1, in_ch, 1, 1)  # [N, O, I, k, k]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(n, out_ch, 1, 1, 1)
    w = w * input_gain.expand(n, in_ch).reshape(n, 1, in_ch, 1, 1)
    x = F.conv2d(x.reshape(1, n * in_ch, *x.shape[2:]), w.reshape(n * out_ch, in_ch, kh, kw).to(x.dtype),
                 padding=padding, groups=n)
    return x.reshape(n, out_ch, *x.shape[2:])


def filtered_lrelu(x: torch.Tensor, up_filter: torch.Tensor | None, down_filter: torch.Tensor | None,
                   bias: torch.Tensor, *, up: int, down: int, padding: list[int], gain: float, slope: float,
                   clamp: float | None) -> torch.Tensor:
    """Bias, upsample (filter `up_filter`), leaky ReLU with gain and clamp, downsample (`down_filter`)."""
    identity = torch.ones(1, 1, dtype=torch.float32, device=x.device)
    x = x + bias.to(x.dtype).reshape(1, -1, 1, 1)
    x = upfirdn2d(x, up_filter if up_filter is not None else identity, up=up, padding=tuple(padding), gain=up**2)
    x = F.leaky_relu(x, slope) if slope != 1 else x
    x = x * gain if gain != 1 else x
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return upfirdn2d(x, down_filter if down_filter is not None else identity, down=down)


class SynthesisInput(nn.Module):
    """Fourier features [N, C, size, size] rotated and translated by the affine map of the first w."""

    def __init__(self, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float) -> None:
        super().__init__()
        self.w_dim, self.channels, self.size = w_dim, channels, int(size)
        self.sampling_rate, self.bandwidth = float(sampling_rate), float(bandwidth)
        freqs = _randn(channels, 2)
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs = freqs / (radii * radii.square().exp().pow(0.25)) * bandwidth  # uniform on a disc
        self.weight = nn.Parameter(_randn(channels, channels))
        self.affine = FullyConnectedLayer(w_dim, 4)
        with torch.no_grad():  # starts as the identity transform: (r_c, r_s, t_x, t_y) = (1, 0, 0, 0)
            self.affine.weight.zero_()
            self.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        self.register_buffer("transform", torch.eye(3, 3))  # user-specified inverse transform of the image
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", torch.rand(channels) - 0.5)

    def forward_from_style(self, t: torch.Tensor) -> torch.Tensor:
        """t [N, 4] = (r_c, r_s, t_x, t_y), the affine output: the image's inverse rotation and translation."""
        n, device = t.shape[0], t.device
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        m_r = torch.eye(3, device=device).repeat(n, 1, 1)
        m_r[:, 0, 0], m_r[:, 0, 1], m_r[:, 1, 0], m_r[:, 1, 1] = t[:, 0], -t[:, 1], t[:, 1], t[:, 0]
        m_t = torch.eye(3, device=device).repeat(n, 1, 1)
        m_t[:, 0, 2], m_t[:, 1, 2] = -t[:, 2], -t[:, 3]
        transforms = m_r @ m_t @ self.transform.unsqueeze(0)  # [N, 3, 3]
        freqs = self.freqs.unsqueeze(0)  # [1, C, 2]
        phases = self.phases.unsqueeze(0) + (freqs @ transforms[:, :2, 2:]).squeeze(2)  # [N, C]
        freqs = freqs @ transforms[:, :2, :2]  # [N, C, 2]
        # dampen frequencies the user transform pushed beyond the band
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        theta = torch.eye(2, 3, device=device)
        theta[0, 0] = theta[1, 1] = 0.5 * self.size / self.sampling_rate
        grids = F.affine_grid(theta.unsqueeze(0), [1, 1, self.size, self.size], align_corners=False)  # [1, H, W, 2]
        x = (grids.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)  # [N, H, W, C]
        x = torch.sin((x + phases.unsqueeze(1).unsqueeze(2)) * (2 * math.pi)) * amplitudes.unsqueeze(1).unsqueeze(2)
        x = x @ (self.weight / math.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2)  # [N, C, H, W]

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.forward_from_style(self.affine(w))


class SynthesisLayer(nn.Module):
    """Modulated convolution, then the filtered leaky ReLU between two sampling rates (or ToRGB)."""

    def __init__(self, w_dim: int, is_torgb: bool, is_critically_sampled: bool, in_channels: int, out_channels: int,
                 in_size: int, out_size: int, in_sampling_rate: int, out_sampling_rate: int, in_cutoff: float,
                 out_cutoff: float, in_half_width: float, out_half_width: float, conv_kernel: int = 3,
                 filter_size: int = 6, lrelu_upsampling: int = 2, use_radial_filters: bool = False,
                 conv_clamp: float | None = 256, magnitude_ema_beta: float = 0.999) -> None:
        super().__init__()
        self.is_torgb, self.in_channels, self.out_channels = is_torgb, in_channels, out_channels
        self.in_size, self.out_size = int(in_size), int(out_size)
        self.conv_kernel = 1 if is_torgb else conv_kernel
        self.conv_clamp, self.magnitude_ema_beta = conv_clamp, magnitude_ema_beta
        tmp_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(_randn(out_channels, in_channels, self.conv_kernel, self.conv_kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("magnitude_ema", torch.ones([]))
        self.up_factor = int(round(tmp_rate / in_sampling_rate))
        self.down_factor = int(round(tmp_rate / out_sampling_rate))
        up_taps = filter_size * self.up_factor if self.up_factor > 1 and not is_torgb else 1
        down_taps = filter_size * self.down_factor if self.down_factor > 1 and not is_torgb else 1
        self.register_buffer("up_filter", lowpass_filter(up_taps, in_cutoff, in_half_width * 2, tmp_rate))
        self.register_buffer("down_filter", lowpass_filter(down_taps, out_cutoff, out_half_width * 2, tmp_rate,
                                                           radial=use_radial_filters and not is_critically_sampled))
        pad_total = (self.out_size - 1) * self.down_factor + 1  # size before downsampling
        pad_total -= (self.in_size + self.conv_kernel - 1) * self.up_factor  # size after upsampling
        pad_total += up_taps + down_taps - 2  # what the two filters take away
        pad_lo = (pad_total + self.up_factor) // 2  # the symmetric interpretation of sample positions
        self.padding = [pad_lo, pad_total - pad_lo, pad_lo, pad_total - pad_lo]

    def forward_from_style(self, x: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        if self.is_torgb:
            styles = styles * (1 / math.sqrt(self.in_channels * self.conv_kernel**2))
        x = modulated_conv2d_sg3(x, self.weight, styles, demodulate=not self.is_torgb, padding=self.conv_kernel - 1,
                                 input_gain=self.magnitude_ema.rsqrt())
        return filtered_lrelu(x, self.up_filter, self.down_filter, self.bias, up=self.up_factor, down=self.down_factor,
                              padding=self.padding, gain=1 if self.is_torgb else math.sqrt(2),
                              slope=1 if self.is_torgb else 0.2, clamp=self.conv_clamp)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.forward_from_style(x, self.affine(w))


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R]; the layers' rates follow the paper's schedule."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_layers: int = 14, num_critical: int = 2, first_cutoff: float = 2,
                 first_stopband: float = 2**2.1, last_stopband_rel: float = 2**0.3, margin_size: int = 10,
                 output_scale: float = 0.25, **layer_kwargs: Any) -> None:
        super().__init__()
        layer_kwargs = {k: v for k, v in layer_kwargs.items() if k not in _PERFORMANCE_ONLY}
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.num_ws, self.output_scale = num_layers + 2, output_scale
        last_cutoff = img_resolution / 2
        exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
        cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
        stopbands = first_stopband * (last_cutoff * last_stopband_rel / first_stopband) ** exponents
        rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
        half_widths = np.maximum(stopbands, rates / 2) - cutoffs
        sizes = rates + margin_size * 2
        sizes[-2:] = img_resolution
        channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
        channels[-1] = img_channels
        self.input = SynthesisInput(w_dim, int(channels[0]), int(sizes[0]), rates[0], cutoffs[0])
        self.layer_names: list[str] = []
        for i in range(num_layers + 1):
            prev = max(i - 1, 0)
            layer = SynthesisLayer(w_dim, i == num_layers, i >= num_layers - num_critical, int(channels[prev]),
                                   int(channels[i]), int(sizes[prev]), int(sizes[i]), int(rates[prev]), int(rates[i]),
                                   float(cutoffs[prev]), float(cutoffs[i]), float(half_widths[prev]),
                                   float(half_widths[i]), **layer_kwargs)
            name = f"L{i}_{layer.out_size}_{layer.out_channels}"
            setattr(self, name, layer)
            self.layer_names.append(name)

    def style_key(self, name: str) -> str:
        """The StyleSpace name of a layer: its own, with '.torgb' for the last (StyleGAN2's convention)."""
        return f"{name}.torgb" if name == self.layer_names[-1] else name

    def affine_layers(self) -> dict[str, FullyConnectedLayer]:
        """StyleSpace layer name -> its affine map, in execution order ('input' first)."""
        return {"input": self.input.affine,
                **{self.style_key(name): getattr(self, name).affine for name in self.layer_names}}

    def styles(self, ws: torch.Tensor) -> dict[str, torch.Tensor]:
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"synthesis expects ws of shape [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        ws = ws.float()
        return {name: affine(ws[:, i]) for i, (name, affine) in enumerate(self.affine_layers().items())}

    def noise_layers(self) -> dict[str, nn.Module]:
        return {}  # StyleGAN3 has no per-pixel noise

    def synthesis_from_styles(self, styles: Mapping[str, torch.Tensor], noise_mode: str = "const",
                              fused_modconv: bool | None = None, noise_inputs: Any = None) -> torch.Tensor:
        x = self.input.forward_from_style(styles["input"].float())
        for name in self.layer_names:
            x = getattr(self, name).forward_from_style(x, styles[self.style_key(name)].float())
        return (x * self.output_scale if self.output_scale != 1 else x).float()

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", fused_modconv: bool | None = None,
                noise_inputs: Any = None, **_: Any) -> torch.Tensor:
        """`noise_mode`, `fused_modconv` and `noise_inputs` are accepted for StyleGAN2 callers and unused."""
        return self.synthesis_from_styles(self.styles(ws))


class StyleGAN3Generator(MappedGenerator):
    """StyleGAN3 generator: `mapping` (z, c -> ws) and `synthesis` (ws -> image in about [-1, 1])."""

    def __init__(self, z_dim: int = 512, c_dim: int = 0, w_dim: int = 512, img_resolution: int = 1024,
                 img_channels: int = 3, mapping_kwargs: Mapping[str, Any] | None = None,
                 **synthesis_kwargs: Any) -> None:
        super().__init__()
        mapping_kwargs = {"num_layers": 2, "w_avg_beta": 0.998, **dict(mapping_kwargs or {})}
        self.init_kwargs = dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                                img_channels=img_channels, mapping_kwargs=mapping_kwargs, **synthesis_kwargs)
        self._assemble(z_dim, c_dim, w_dim, img_resolution, img_channels,
                       SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs), mapping_kwargs)

    @property
    def config(self) -> str:
        """'T' or 'R' (1x1 convolutions and radial filters)."""
        return "R" if self.init_kwargs.get("conv_kernel") == 1 else "T"

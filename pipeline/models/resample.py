"""FIR resampling and resampled convolution, in plain PyTorch.

StyleGAN2 upsamples and downsamples through a low-pass FIR filter ([1, 3, 3, 1] by default)
instead of nearest or bilinear resizing. These functions reproduce the reference (`impl='ref'`)
behaviour of NVlabs' `upfirdn2d` and `conv2d_resample` ops, including the padding arithmetic and
filter flipping that checkpoint parity depends on, without any custom CUDA extension.

Shapes: activations are NCHW; a filter is 2-D [fh, fw] (the outer product of a 1-D filter).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

Padding = tuple[int, int, int, int]  # (x0, x1, y0, y1): left, right, top, bottom


def make_filter(taps: Sequence[float] = (1, 3, 3, 1)) -> torch.Tensor:
    """Separable low-pass filter as a normalized 2-D kernel [len(taps), len(taps)] (sums to 1)."""
    f = torch.as_tensor(list(taps), dtype=torch.float32)
    if f.ndim != 1 or f.numel() == 0:
        raise ValueError(f"resample filter taps must be a non-empty 1-D sequence, got {taps!r}")
    f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor,
    *,
    up: int = 1,
    down: int = 1,
    padding: Padding = (0, 0, 0, 0),
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative pads crop), filter with `f`, then decimate.

    `f` is a 2-D kernel [fh, fw] or 1-D separable taps [k] (applied along x, then y). The filter is
    applied as a true convolution (flipped), as in the reference op; for the symmetric StyleGAN
    filters this equals correlation.
    """
    n, c, h, w = x.shape
    px0, px1, py0, py1 = padding
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    kernel = (f * (gain ** (f.ndim / 2))).to(x.dtype).flip(list(range(f.ndim)))
    # Decimation is the convolution's stride: the same outputs as filtering everything and then
    # keeping every `down`-th sample, without computing the ones thrown away.
    if f.ndim == 1:  # separable: the same taps along x, then along y
        kernel = kernel[None, None].repeat(c, 1, 1)  # [C, 1, k]
        x = F.conv2d(x, kernel.unsqueeze(2), groups=c, stride=(1, down))  # [C, 1, 1, k]
        return F.conv2d(x, kernel.unsqueeze(3), groups=c, stride=(down, 1))  # [C, 1, k, 1]
    kernel = kernel[None, None].repeat(c, 1, 1, 1)  # [C, 1, fh, fw], depthwise
    return F.conv2d(x, kernel, groups=c, stride=down)


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """Upsample by `up` with FIR filtering; output is exactly `up` times larger."""
    fh, fw = f.shape
    pad = ((fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2)
    return upfirdn2d(x, f, up=up, padding=pad, gain=up * up)


def downsample2d(x: torch.Tensor, f: torch.Tensor, down: int = 2) -> torch.Tensor:
    """Downsample by `down` with FIR filtering; output is exactly `down` times smaller."""
    fh, fw = f.shape
    pad = ((fw - down + 1) // 2, (fw - down) // 2, (fh - down + 1) // 2, (fh - down) // 2)
    return upfirdn2d(x, f, down=down, padding=pad)


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    *,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    groups: int = 1,
    flip_weight: bool = True,
) -> torch.Tensor:
    """2-D convolution with optional FIR up/downsampling (at most one of them).

    `w` is [out, in/groups, kh, kw]. `flip_weight=True` means correlation (what F.conv2d does);
    the official layers pass False on their upsampling paths, which then use a transposed
    convolution with the unflipped kernel. `padding` is relative to the upsampled image.
    """
    if up > 1 and down > 1:
        raise ValueError("conv2d_resample supports up or down sampling, not both")
    out_ch, in_per_group, kh, kw = w.shape
    fh, fw = f.shape if f is not None else (1, 1)
    px0 = px1 = py0 = py1 = padding
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    def conv(x: torch.Tensor, w: torch.Tensor, stride: int = 1, pad: int | tuple[int, int] = 0,
             transpose: bool = False, flip: bool = True) -> torch.Tensor:
        if not flip:
            w = w.flip([2, 3])
        op = F.conv_transpose2d if transpose else F.conv2d
        return op(x, w, stride=stride, padding=pad, groups=groups)

    if down > 1:
        assert f is not None
        if kh == 1 and kw == 1:  # 1x1: decimate first, then convolve
            x = upfirdn2d(x, f, down=down, padding=(px0, px1, py0, py1))
            return conv(x, w, flip=flip_weight)
        x = upfirdn2d(x, f, padding=(px0, px1, py0, py1))
        return conv(x, w, stride=down, flip=flip_weight)

    if up > 1:
        assert f is not None
        if kh == 1 and kw == 1:  # 1x1: convolve first, then upsample
            x = conv(x, w, flip=flip_weight)
            return upfirdn2d(x, f, up=up, padding=(px0, px1, py0, py1), gain=up * up)
        # Transposed strided convolution, then the FIR filter to remove the checkerboard.
        if groups == 1:
            w = w.transpose(0, 1)  # [in, out, kh, kw]
        else:
            w = w.reshape(groups, out_ch // groups, in_per_group, kh, kw)
            w = w.transpose(1, 2).reshape(groups * in_per_group, out_ch // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = conv(x, w, stride=up, pad=(pyt, pxt), transpose=True, flip=not flip_weight)
        return upfirdn2d(x, f, padding=(px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt), gain=up * up)

    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return conv(x, w, pad=(py0, px0), flip=flip_weight)
    x = upfirdn2d(x, f if f is not None else torch.ones(1, 1, device=x.device), padding=(px0, px1, py0, py1))
    return conv(x, w, flip=flip_weight)

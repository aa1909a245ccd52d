"""The encoders of pSp, e4e and ReStyle in plain PyTorch: an image (or an image and the previous
reconstruction) -> W+ codes [N, n_styles, 512] (or one w [N, 512]), before `latent_avg` is added.

Parameter names are the official ones (under `encoder.` in their checkpoints), so their state dicts
load as they are. What each computes (eladrich/pixel2style2pixel, omertov/encoder4editing,
yuval-alaluf/restyle-encoder, models/encoders/):
- GradualStyleEncoder (pSp, e4e): IR-SE50 with taps c1 (body.6, 128@64), c2 (body.20, 256@32) and
  c3 (body.23, 512@16) for a 256 px input; a feature pyramid p2 = up(c3) + latlayer1(c2), p1 = up(p2) +
  latlayer2(c1) (bilinear, align_corners=True); style i from c3 (i < 3), p2 (i < 7) or p1 (the rest),
  each through a map2style head.
- Encoder4Editing (e4e): the same pyramid, but style 0 is w0 for every layer and style i adds a delta
  to row i only (all deltas: a loaded model runs past its last progressive stage).
- BackboneEncoderUsingLastLayerIntoW (pSp, e4e): pooled body output -> one w; IntoWPlus (pSp): BN,
  7x7 adaptive pool, a plain linear layer, then one EqualLinear to every style.
- BackboneEncoder / ProgressiveBackboneEncoder (ReStyle): every style (or w0 and its deltas) from the
  last 16x16 map, on IR-SE50 or (the ResNet variants, for non-face domains) a ResNet-34 body whose stem
  is a 7x7 stride-2 conv, BN and a PReLU named `relu`, with no max-pool.
map2style (GradualStyleBlock): log2(spatial) stride-2 3x3 convs with LeakyReLU(0.01) down to 1x1, then
an EqualLinear (weights scaled by 1/sqrt(fan_in) at run time, as rosinality's StyleGAN2 does).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.irse import IRSE50

STYLE_DIM = 512
COARSE, MIDDLE = 3, 7  # style indices below these read c3, then p2; the rest read p1


class EqualLinear(nn.Module):
    """rosinality's EqualLinear without activation: x @ (W / sqrt(in)).T + b (lr multiplier 1)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = 1 / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class GradualStyleBlock(nn.Module):
    """map2style: stride-2 convs from `spatial` down to 1x1, then an EqualLinear -> [N, 512]."""

    def __init__(self, in_channels: int, out_channels: int, spatial: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, 2, 1), nn.LeakyReLU()]
        for _ in range(int(math.log2(spatial)) - 1):
            layers += [nn.Conv2d(out_channels, out_channels, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).reshape(-1, self.out_channels))


def _upsample_add(x: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral


def _head_spatial(i: int) -> int:
    return 16 if i < COARSE else 32 if i < MIDDLE else 64


class PyramidEncoder(nn.Module):
    """pSp's GradualStyleEncoder, or with `progressive` e4e's Encoder4Editing: W+ [N, n_styles, 512]."""

    def __init__(self, n_styles: int, in_channels: int = 3, progressive: bool = False) -> None:
        super().__init__()
        self.n_styles, self.progressive = n_styles, progressive
        trunk = IRSE50(in_channels)
        self.input_layer, self.body = trunk.input_layer, trunk.body
        self.styles = nn.ModuleList([GradualStyleBlock(512, STYLE_DIM, _head_spatial(i)) for i in range(n_styles)])
        self.latlayer1 = nn.Conv2d(256, 512, 1)
        self.latlayer2 = nn.Conv2d(128, 512, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_layer(x)
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i == 6:
                c1 = x  # [N, 128, 64, 64] for a 256 px input
            elif i == 20:
                c2 = x  # [N, 256, 32, 32]
        c3 = x  # [N, 512, 16, 16]
        if self.progressive:
            w0 = self.styles[0](c3)
            ws = w0[:, None].repeat(1, self.n_styles, 1)  # [N, n_styles, 512]
            features = c3
            for i in range(1, self.n_styles):
                if i == COARSE:
                    p2 = _upsample_add(c3, self.latlayer1(c2))
                    features = p2
                elif i == MIDDLE:
                    p1 = _upsample_add(p2, self.latlayer2(c1))
                    features = p1
                ws[:, i] = ws[:, i] + self.styles[i](features)
            return ws
        latents = [self.styles[i](c3) for i in range(min(COARSE, self.n_styles))]
        if self.n_styles > COARSE:
            p2 = _upsample_add(c3, self.latlayer1(c2))
            latents += [self.styles[i](p2) for i in range(COARSE, min(MIDDLE, self.n_styles))]
        if self.n_styles > MIDDLE:
            p1 = _upsample_add(p2, self.latlayer2(c1))
            latents += [self.styles[i](p1) for i in range(MIDDLE, self.n_styles)]
        return torch.stack(latents, dim=1)


class BackboneToW(nn.Module):
    """pSp's (and e4e's) BackboneEncoderUsingLastLayerIntoW: one w [N, 512] (or, with `repeat`, the w
    repeated to [N, repeat, 512] as e4e's SingleStyleCodeEncoder returns it)."""

    def __init__(self, in_channels: int = 3, repeat: int = 0) -> None:
        super().__init__()
        self.repeat = repeat
        trunk = IRSE50(in_channels)
        self.input_layer, self.body = trunk.input_layer, trunk.body
        self.linear = EqualLinear(512, STYLE_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.linear(self.body(self.input_layer(x)).mean(dim=(2, 3)))
        return w[:, None].repeat(1, self.repeat, 1) if self.repeat else w


class BackboneToWPlus(nn.Module):
    """pSp's BackboneEncoderUsingLastLayerIntoWPlus: BN, 7x7 adaptive pool, linear, then every style."""

    def __init__(self, n_styles: int, in_channels: int = 3) -> None:
        super().__init__()
        self.n_styles = n_styles
        trunk = IRSE50(in_channels)
        self.input_layer, self.body = trunk.input_layer, trunk.body
        self.output_layer_2 = nn.Sequential(nn.BatchNorm2d(512), nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(),
                                            nn.Linear(512 * 7 * 7, 512))
        self.linear = EqualLinear(512, STYLE_DIM * n_styles)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.output_layer_2(self.body(self.input_layer(x)))
        return self.linear(x).reshape(-1, self.n_styles, STYLE_DIM)


class ResNet34Body(nn.Module):
    """ReStyle's ResNet-34 trunk: conv1 (7x7, stride 2), bn1, PReLU `relu`, no max-pool, then torchvision's
    layer1-4 BasicBlocks renumbered as `body.0` .. `body.15`."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.PReLU(64)
        blocks, channels = [], 64
        for depth, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(count):
                s = stride if i == 0 else 1
                down = None
                if s != 1 or channels != depth:
                    down = nn.Sequential(nn.Conv2d(channels, depth, 1, s, bias=False), nn.BatchNorm2d(depth))
                blocks.append(BasicBlock(channels, depth, s, down))
                channels = depth
        self.body = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.relu(self.bn1(self.conv1(x))))


class IterativeBackboneEncoder(nn.Module):
    """ReStyle's BackboneEncoder (or, `progressive`, ProgressiveBackboneEncoder) on IR-SE50 or ResNet-34:
    every style (or w0 and its deltas) from the last 16x16 map of [image, previous reconstruction]."""

    def __init__(self, n_styles: int, in_channels: int = 6, progressive: bool = False,
                 backbone: str = "ir_se50") -> None:
        super().__init__()
        self.n_styles, self.progressive, self.backbone = n_styles, progressive, backbone
        if backbone == "ir_se50":
            trunk = IRSE50(in_channels)
            self.input_layer, self.body = trunk.input_layer, trunk.body
        elif backbone == "resnet34":
            trunk = ResNet34Body(in_channels)
            self.conv1, self.bn1, self.relu, self.body = trunk.conv1, trunk.bn1, trunk.relu, trunk.body
        else:
            raise ValueError(f"unknown backbone {backbone!r}")
        self.styles = nn.ModuleList([GradualStyleBlock(512, STYLE_DIM, 16) for _ in range(n_styles)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backbone == "ir_se50":
            x = self.body(self.input_layer(x))
        else:
            x = self.body(self.relu(self.bn1(self.conv1(x))))
        if not self.progressive:
            return torch.stack([style(x) for style in self.styles], dim=1)
        ws = self.styles[0](x)[:, None].repeat(1, self.n_styles, 1)
        for i in range(1, self.n_styles):
            ws[:, i] = ws[:, i] + self.styles[i](x)
        return ws

"""IR-SE50: the ResNet-50 with improved residual units and squeeze-and-excitation of InsightFace
(ArcFace), the backbone of the pSp, e4e and ReStyle encoders and of the ArcFace identity network.

Parameter names follow TreB1eN/InsightFace_Pytorch (and so `model_ir_se50.pth` and the encoders'
`encoder.input_layer.*`, `encoder.body.N.*`), so their state dicts load as they are:
- `input_layer`: 3x3 conv (stride 1, no bias), BatchNorm, per-channel PReLU;
- `body.N`: 24 units in four stages (3, 4, 14, 3 units of 64, 128, 256, 512 channels); the first
  unit of each stage halves the resolution, on its *second* conv (`res_layer.3`). A unit is
  res_layer (BN, conv, PReLU, conv, BN, SE) + shortcut (a 1x1 conv and BN where the channels change,
  else a subsampling MaxPool2d(1, stride), which has no weights);
- SE: global average pool, 1x1 conv to C/16 (no bias), ReLU, 1x1 conv back (no bias), sigmoid gate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STAGES_50 = ((64, 3), (128, 4), (256, 14), (512, 3))  # (channels, units) of IR-SE50


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))
        return x * gate


class BottleneckIRSE(nn.Module):
    """One improved residual unit with squeeze-and-excitation; `stride` on its second conv."""

    def __init__(self, in_channels: int, depth: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.shortcut_layer = None if in_channels == depth else nn.Sequential(
            nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth), SqueezeExcite(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.shortcut_layer is None else self.shortcut_layer(x)
        return self.res_layer(x) + shortcut


class IRSE50(nn.Module):
    """input_layer + body; `features(x)` also returns the taps the style encoders read."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                                         nn.PReLU(64))
        units, channels = [], 64
        for depth, count in STAGES_50:
            units += [BottleneckIRSE(channels, depth, 2)] + [BottleneckIRSE(depth, depth, 1) for _ in range(count - 1)]
            channels = depth
        self.body = nn.Sequential(*units)

    def features(self, x: torch.Tensor, taps: tuple[int, ...] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The body's output, and the outputs of the units numbered in `taps` (in that order)."""
        x = self.input_layer(x)
        found: dict[int, torch.Tensor] = {}
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in taps:
                found[i] = x
        return x, [found[i] for i in taps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[0]


class ArcFaceBackbone(nn.Module):
    """ArcFace IR-SE50 (TreB1eN's `Backbone(112, 50, 0.6, 'ir_se')`, `model_ir_se50.pth`): a 112x112 face
    -> an l2-normalised 512-d embedding. Dropout is inactive (inference only)."""

    def __init__(self, input_size: int = 112, embedding_dim: int = 512) -> None:
        super().__init__()
        if input_size not in (112, 224):
            raise ValueError(f"ArcFace IR-SE50 takes 112 or 224 px faces, not {input_size}")
        self.init_kwargs = dict(input_size=input_size, embedding_dim=embedding_dim)
        trunk = IRSE50(3)
        self.input_layer, self.body = trunk.input_layer, trunk.body
        side = input_size // 16
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.6), nn.Flatten(),
                                          nn.Linear(512 * side * side, embedding_dim), nn.BatchNorm1d(embedding_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.output_layer(self.body(self.input_layer(x)))
        return features / torch.norm(features, 2, 1, True)  # as the official l2_norm: no epsilon

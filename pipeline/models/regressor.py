"""The latent regressor E (Chai, Wulff & Isola): an image and its mask -> W+ of a frozen generator.

Input is 4 channels, (x * m, m), so E knows which pixels are missing and learns to complete them;
output is W+ as offsets from the generator's w_avg (stored in E), so an untrained E starts at the
mean latent. 'w+' mode predicts one w per layer; 'w' mode one w broadcast to all layers (LIA's
target space). Backbones: a small residual convnet trained from scratch ('convnet', default), or a
torchvision ResNet whose ImageNet weights can be loaded from a URI.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import GeneratorMismatchError
from pipeline.models.fingerprint import fingerprint
from pipeline.models.stylegan2 import Generator

ENCODER_MODES = ("w+", "w")
BACKBONES = ("convnet", "resnet18", "resnet34", "resnet50")


class ResidualBlock(nn.Module):
    """Two 3x3 convs with a (strided) skip; GroupNorm keeps it batch-size independent."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(min(8, out_ch), out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(min(8, out_ch), out_ch)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False) if (stride != 1 or in_ch != out_ch) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.norm1(self.conv1(x)), 0.2)
        y = self.norm2(self.conv2(y))
        return F.leaky_relu(y + (x if self.skip is None else self.skip(x)), 0.2)


class ConvNetBackbone(nn.Module):
    """Stride-2 residual stages from the input resolution down to 4x4; returns [N, features]."""

    def __init__(self, resolution: int, in_channels: int = 4, base_channels: int = 32, max_channels: int = 256,
                 blocks_per_stage: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, base_channels, 3, 1, 1)
        stages, ch, res = [], base_channels, resolution
        while res > 4:
            out = min(ch * 2, max_channels)
            stages.append(ResidualBlock(ch, out, 2))
            stages += [ResidualBlock(out, out, 1) for _ in range(blocks_per_stage - 1)]
            ch, res = out, res // 2
        self.stages = nn.Sequential(*stages)
        self.out_features = ch * 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(F.leaky_relu(self.stem(x), 0.2)).flatten(1)  # [N, C * 4 * 4]


class TorchvisionBackbone(nn.Module):
    """A torchvision ResNet with a 4-channel stem and no classifier; returns pooled features."""

    def __init__(self, name: str, in_channels: int = 4) -> None:
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.out_features = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def load_imagenet(self, state: dict[str, torch.Tensor]) -> None:
        """Load torchvision ImageNet weights; the stem's RGB filters are kept, the mask channel starts at 0."""
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        rgb = state.pop("conv1.weight")
        stem = torch.zeros_like(self.net.conv1.weight)
        stem[:, :3] = rgb
        state["conv1.weight"] = stem
        self.net.load_state_dict(state, strict=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Encoder(nn.Module):
    """E(x * m, m) -> ws [N, num_ws, w_dim]."""

    def __init__(
        self,
        num_ws: int,
        w_dim: int,
        resolution: int,
        img_channels: int = 3,
        mode: str = "w+",  # 'w+' (a w per layer) or 'w' (one w for all layers)
        backbone: str = "convnet",
        base_channels: int = 32,  # convnet only
        max_channels: int = 256,  # convnet only
        blocks_per_stage: int = 1,  # convnet only
        generator_fingerprint: str | None = None,  # the generator E was trained for
    ) -> None:
        if mode not in ENCODER_MODES:
            raise ValueError(f"encoder mode must be one of {ENCODER_MODES}, got {mode!r}")
        if backbone not in BACKBONES:
            raise ValueError(f"encoder backbone must be one of {BACKBONES}, got {backbone!r}")
        super().__init__()
        self.init_kwargs: dict[str, Any] = dict(
            num_ws=num_ws, w_dim=w_dim, resolution=resolution, img_channels=img_channels, mode=mode,
            backbone=backbone, base_channels=base_channels, max_channels=max_channels,
            blocks_per_stage=blocks_per_stage, generator_fingerprint=generator_fingerprint)
        self.num_ws, self.w_dim, self.resolution, self.mode = num_ws, w_dim, resolution, mode
        self.img_channels, self.generator_fingerprint = img_channels, generator_fingerprint
        if backbone == "convnet":
            self.backbone = ConvNetBackbone(resolution, img_channels + 1, base_channels, max_channels,
                                            blocks_per_stage)
        else:
            self.backbone = TorchvisionBackbone(backbone, img_channels + 1)
        outputs = num_ws * w_dim if mode == "w+" else w_dim
        self.head = nn.Linear(self.backbone.out_features, outputs)
        nn.init.zeros_(self.head.weight)  # an untrained encoder predicts w_avg
        nn.init.zeros_(self.head.bias)
        self.register_buffer("w_avg", torch.zeros(w_dim))

    @classmethod
    def for_generator(cls, G: Generator, **kwargs: Any) -> Encoder:
        """An encoder sized for G, starting at G's w_avg, bound to G's fingerprint."""
        E = cls(G.num_ws, G.w_dim, G.img_resolution, G.img_channels, generator_fingerprint=fingerprint(G), **kwargs)
        E.w_avg.copy_(G.w_avg.detach().cpu())
        return E.to(G.w_avg.device)

    def forward(self, x_masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x_masked [N, C, R, R] (unknown pixels 0), mask [N, 1, R, R] -> ws [N, num_ws, w_dim]."""
        features = self.backbone(torch.cat([x_masked, mask], dim=1))
        offsets = self.head(features)
        if self.mode == "w":
            offsets = offsets[:, None].expand(-1, self.num_ws, -1)
        return self.w_avg + offsets.reshape(-1, self.num_ws, self.w_dim)

    def check_generator(self, G: Generator) -> None:
        if self.generator_fingerprint and fingerprint(G) != self.generator_fingerprint:
            raise GeneratorMismatchError(
                f"this encoder was trained for generator {self.generator_fingerprint}, not {fingerprint(G)}; "
                "train one for this generator with `latentmill train-encoder`")


def prepare_inputs(images: torch.Tensor, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x * m, m) with m = 0 wherever the mask says unknown or a pixel is NaN/inf (missing data)."""
    finite = torch.isfinite(images).all(dim=1, keepdim=True).float()  # [N, 1, H, W]
    mask = finite if masks is None else masks.float() * finite
    return torch.nan_to_num(images.float(), nan=0.0, posinf=0.0, neginf=0.0) * mask, mask

"""LPIPS (Zhang et al.) through the `lpips` package, with its backbone loaded from a URI.

`lpips` ships its small linear heads inside the package but downloads the VGG/AlexNet backbone from
the internet, which clusters and this project cannot rely on. Here the network is built with a
random backbone (`pnet_rand=True`) and the backbone's torchvision weights are loaded from a URI;
the default is the file torchvision itself caches (`$TORCH_HOME/hub/checkpoints/...`), downloaded
there when absent and reachable. A missing file is an error naming `--lpips-weights` and the
options that need no weights.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

import lpips
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import CheckpointError
from pipeline.models.checkpoints import read_state_dict

if TYPE_CHECKING:
    from pipeline.models.known_weights import KnownWeights

BACKBONE_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}
SETTING = "--lpips-weights"
MAX_RESOLUTION = 256  # larger images are area-downsampled first, as the official projector does


def default_backbone_uri(net: str, known: KnownWeights | None = None) -> str:
    """torchvision's own cache file; VGG16's is downloaded there when absent and reachable (`known`: its
    description, when the advice for running without it differs from VGG16's)."""
    if net == "vgg":
        from pipeline.models.known_weights import VGG16, ensure_weights

        return str(ensure_weights(known or VGG16))
    return os.path.join(torch.hub.get_dir(), "checkpoints", BACKBONE_FILES[net])


def _backbone_state(uri: str, backbone: nn.Module) -> dict[str, torch.Tensor]:
    """torchvision `features.{i}.*` (or bare `{i}.*`) tensors renamed to lpips' `slice{k}.{i}.*`."""
    state = read_state_dict(uri, setting=SETTING)
    slice_of = {index: name for name, child in backbone.named_children() for index, _ in child.named_children()}
    renamed = {}
    for key, tensor in state.items():
        index, _, param = key.removeprefix("features.").partition(".")
        if key.startswith("classifier."):
            continue
        if index not in slice_of:
            raise CheckpointError(f"{SETTING} {uri}: unexpected tensor {key!r} for this backbone")
        renamed[f"{slice_of[index]}.{index}.{param}"] = tensor
    return renamed


class LPIPSLoss(nn.Module):
    """LPIPS distance per image: x, y [N, 3, H, W] in [-1, 1] -> [N]."""

    def __init__(self, net: str = "vgg", weights_uri: str | None = None, *, known: KnownWeights | None = None) -> None:
        if net not in BACKBONE_FILES:
            raise ValueError(f"LPIPS backbone must be one of {sorted(BACKBONE_FILES)}, got {net!r}")
        super().__init__()
        uri = weights_uri or default_backbone_uri(net, known)
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=` argument
            warnings.simplefilter("ignore", UserWarning)
            self.model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        state = _backbone_state(uri, self.model.net)
        missing, unexpected = self.model.net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{SETTING} {uri}: not a torchvision {net} backbone (missing {missing[:3]})")
        self.model.eval().requires_grad_(False)
        self.net, self.weights_uri = net, uri

    def reference(self, y: torch.Tensor) -> list[torch.Tensor]:
        """The unit-normalized backbone features of the images compared against: computed once per
        batch by refinement, not at every step (they do not depend on the latent)."""
        if y.shape[-1] > MAX_RESOLUTION:
            y = F.adaptive_avg_pool2d(y, MAX_RESOLUTION)
        return [lpips.normalize_tensor(f) for f in self.model.net.forward(self.model.scaling_layer(y.float()))]

    def distance(self, x: torch.Tensor, reference: list[torch.Tensor]) -> torch.Tensor:
        """LPIPS between images x and the images whose `reference` features are given -> [N]."""
        features = self.reference(x)
        total = 0
        for lin, fx, fy in zip(self.model.lins, features, reference):
            total = total + lin((fx - fy) ** 2).mean(dim=(2, 3), keepdim=True)
        return total.flatten()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.distance(x, self.reference(y))

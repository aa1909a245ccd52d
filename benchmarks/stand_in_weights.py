"""Random networks saved in the layout of the weight files latentmill downloads (torchvision's VGG16 for
LPIPS, facenet-pytorch's InceptionResnetV1), for benchmarks and tests on machines without those files:
the compute is the real one, the figures that depend on trained weights are not."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


def save_random_backbone(path: str | Path, net: str = "vgg", seed: int = 0) -> Path:
    """A randomly initialized LPIPS backbone saved in torchvision's layout (`features.{i}.*`). The
    classifier, which LPIPS does not use, is left out."""
    import lpips

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        backbone = (lpips.pretrained_networks.vgg16 if net == "vgg" else lpips.pretrained_networks.alexnet)(
            pretrained=False, requires_grad=False)
    state = {f"features.{index}.{param}": tensor for _, block in backbone.named_children()
             for index, layer in block.named_children() for param, tensor in layer.state_dict().items()}
    torch.save(state, path)
    return Path(path)


def save_random_facenet(path: str, seed: int = 0) -> str:
    """A randomly initialized InceptionResnetV1 saved like facenet-pytorch's weight file."""
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(seed)
    torch.save(InceptionResnetV1(pretrained=None, classify=False).state_dict(), path)
    return path

"""Stage 4: identity scoring, the cosine between face embeddings of input and reconstruction.

Three embeddings, named with every score they make (`identity_model` in a store's metadata):
- 'facenet' (the default): facenet-pytorch's InceptionResnetV1 trained on VGGFace2;
- 'arcface:PATH': ArcFace IR-SE50 (TreB1eN/InsightFace_Pytorch's `model_ir_se50.pth`), the identity
  score the inversion papers report (pSp, e4e, ReStyle, HyperStyle), computed as pSp's
  criteria/id_loss.py does: the image at 256 px, the crop rows 35:223 and columns 32:220, average-pooled
  to 112 px, embedded and l2-normalised (a path to a `model_ir_se50.pth` alone is read as ArcFace too);
- the URI of a latentmill EmbeddingNet bundle (from train-identity).

The FaceNet embedding facenet-pytorch
downloads those weights on first use; here they are read from a URI instead (default: the file
facenet-pytorch itself caches, `$TORCH_HOME/checkpoints/20180402-114759-vggface2.pt`, downloaded
there when absent and reachable: pipeline/models/known_weights.py), and a missing file is an error
naming `--facenet-weights` and the way to run without it, raised before any work starts. Inputs are
assumed aligned (FFHQ-style crops); `--align ffhq` aligns with MTCNN's landmarks first.
"""

from __future__ import annotations

import os
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import CheckpointError
from pipeline.models.checkpoints import read_state_dict
from pipeline.models.irse import ArcFaceBackbone

FACENET_SETTING = "--facenet-weights"
FACENET_NAME = "facenet-vggface2"
# How to read a FaceNet (VGGFace2) cosine between two aligned faces. Verification on unit embeddings
# conventionally thresholds the Euclidean distance near 1.1 (cosine = 1 - d^2 / 2, about 0.4); pairs
# of one person typically lie below distance 0.9 (cosine above about 0.6). Used by the report to
# label identity scores; meaningful only with FaceNet's weights and aligned faces.
FACENET_SAME_PERSON = 0.6
FACENET_DIFFERENT_PERSON = 0.4


def identity_band(cosine: float) -> str:
    """What a FaceNet cosine between input and reconstruction says about identity."""
    if cosine >= FACENET_SAME_PERSON:
        return "same person"
    if cosine >= FACENET_DIFFERENT_PERSON:
        return "uncertain"
    return "different person"
FACENET_RESOLUTION = 160


class IdentityModel(Protocol):
    """Anything that maps images [N, 3, H, W] in [-1, 1] to unit-norm embeddings [N, D]."""

    def embed(self, images: torch.Tensor) -> torch.Tensor: ...


def _loaded(net: nn.Module, state: dict[str, torch.Tensor], *, source: str, what: str) -> nn.Module:
    """`net` with `state` loaded (every key, none left over) for inference; CheckpointError otherwise."""
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{source}: not {what} weights (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net.eval().requires_grad_(False)


def _rgb(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images as float RGB at size x size (bilinear, antialiased, where they are another size)."""
    x = images.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


class FaceNetIdentity(nn.Module):
    """facenet-pytorch InceptionResnetV1 with its weights from a URI."""

    def __init__(self, weights_uri: str | None = None) -> None:
        super().__init__()
        from facenet_pytorch import InceptionResnetV1

        if weights_uri is None:  # facenet-pytorch's own cache file, downloaded there when absent and reachable
            from pipeline.models.known_weights import FACENET, ensure_weights

            weights_uri = str(ensure_weights(FACENET))
        uri = weights_uri
        state = read_state_dict(uri, setting=FACENET_SETTING)
        state = {k: v for k, v in state.items() if not k.startswith("logits.")}  # the classifier is unused
        self.net = _loaded(InceptionResnetV1(pretrained=None, classify=False), state,
                           source=f"{FACENET_SETTING} {uri}", what="InceptionResnetV1")
        self.weights_uri = uri

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = _rgb(images, FACENET_RESOLUTION) * (127.5 / 128.0)  # facenet's fixed_image_standardization
        return F.normalize(self.net(x), dim=1)


class ArcFaceIdentity(nn.Module):
    """ArcFace IR-SE50 with pSp's crop and pooling (criteria/id_loss.py extract_feats)."""

    def __init__(self, weights_uri: str) -> None:
        super().__init__()
        self.net = ArcFaceBackbone()
        state = read_state_dict(weights_uri, setting=IDENTITY_SETTING)
        for key in [k for k in state if k.endswith(".running_var")]:  # absent from files of torch 0.4
            state.setdefault(key[: -len("running_var")] + "num_batches_tracked", torch.tensor(0))
        self.net = _loaded(ArcFaceBackbone(), state, source=f"{IDENTITY_SETTING} arcface:{weights_uri}",
                           what="ArcFace IR-SE50 (model_ir_se50.pth)")
        self.weights_uri = weights_uri

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = _rgb(images, ARCFACE_FRAME)  # pSp compares 256 px images (its face_pool)
        x = F.adaptive_avg_pool2d(x[:, :, 35:223, 32:220], (112, 112))  # the face inside an FFHQ-aligned frame
        return self.net(x)


ARCFACE_FRAME = 256
ARCFACE_NAME = "arcface-ir-se50"
ARCFACE_PREFIX = "arcface:"
IDENTITY_SETTING = "--identity-model"


def is_arcface_weights(uri: str) -> bool:
    """A plain state dict of ArcFace IR-SE50 (model_ir_se50.pth), by its keys."""
    try:
        state = read_state_dict(uri, setting=IDENTITY_SETTING)
    except (CheckpointError, FileNotFoundError, OSError):
        return False
    return "output_layer.3.weight" in state and "input_layer.0.weight" in state


def load_identity_model(spec: str = "facenet", *, facenet_weights: str | None = None,
                        device: str | torch.device = "cpu") -> tuple[IdentityModel, str]:
    """The identity model a run asks for, and the name recorded with its scores.

    'facenet' (the default, for faces) is InceptionResnetV1 with weights from `--facenet-weights`;
    'arcface:PATH' (or the path of a model_ir_se50.pth alone) is ArcFace IR-SE50; anything else is
    the URI of a latentmill bundle holding an `EmbeddingNet` (e.g. the demo's).
    """
    if spec == "facenet":
        return FaceNetIdentity(facenet_weights).to(device), FACENET_NAME
    if spec == "arcface":
        raise CheckpointError(f"{IDENTITY_SETTING} arcface needs its weights: {IDENTITY_SETTING} arcface:PATH, PATH "
                              "being ArcFace IR-SE50's model_ir_se50.pth (TreB1eN/InsightFace_Pytorch; pSp's README "
                              "links it as 'IR-SE50 Model')")
    if spec.startswith(ARCFACE_PREFIX):
        return ArcFaceIdentity(spec[len(ARCFACE_PREFIX):]).to(device), ARCFACE_NAME
    if not spec.endswith(".safetensors") and is_arcface_weights(spec):
        return ArcFaceIdentity(spec).to(device), ARCFACE_NAME
    from pipeline.models.checkpoints import load_networks
    from pipeline.models.embedding import EmbeddingNet

    networks = load_networks(spec, device=device, setting=IDENTITY_SETTING)
    embeddings = [n for n in networks.values() if isinstance(n, EmbeddingNet)]
    if len(embeddings) != 1:
        raise CheckpointError(f"{IDENTITY_SETTING} {spec}: expected one EmbeddingNet in the bundle, found "
                              f"{sorted(type(n).__name__ for n in networks.values())}; use 'facenet' for FaceNet")
    return embeddings[0], f"embedding:{os.path.basename(spec)}"


def cosine_to(model: IdentityModel, reference: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of images' identity embeddings to given (unit) embeddings [N, D] -> [N];
    for comparing several image sets with the same inputs, whose embeddings are then made once."""
    with torch.no_grad():
        return (reference * model.embed(images)).sum(dim=1)


def identity_cosine(model: IdentityModel, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the identity embeddings of two image batches -> [N]."""
    with torch.no_grad():
        return cosine_to(model, model.embed(a), b)

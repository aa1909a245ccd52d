"""Which models a job uses, as settings groups shared by every command that loads them.

Declared once here and inherited by the job configurations (invert, evaluate, train-encoder), so
`--perceptual`, `--lpips-weights`, `--identity-model` and `--facenet-weights` mean the same
everywhere. Torch-free: the command line imports it to build its options.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from pipeline.settings import setting

PERCEPTUAL_KINDS = ("lpips", "discriminator", "none")

MAPPINGS = ("standard", "invertible")  # StyleGAN's MLP, or LIA's coupling stack with an exact inverse
COUPLINGS = ("additive", "affine")  # NICE's coupling, or RealNVP's (pipeline/models/invertible.py)


@dataclass(kw_only=True)
class GeneratorSettings:
    generator: str = setting(MISSING, "Generator checkpoint URI (NVlabs .pkl, rosinality .pt, or latentmill bundle).")


@dataclass(kw_only=True)
class PerceptualSettings:
    perceptual: str = setting("lpips", "Perceptual distance: LPIPS (VGG16), the checkpoint's discriminator "
                                       "features, or none.", choices=PERCEPTUAL_KINDS)
    lpips_weights: str | None = setting(None, "URI of LPIPS's VGG16 backbone (torchvision's vgg16 weights; "
                                              "default: torchvision's cache).")


@dataclass(kw_only=True)
class IdentitySettings:
    identity_model: str = setting("facenet", "Identity embedding: 'facenet' (InceptionResnetV1, for faces), "
                                             "'arcface:PATH' (ArcFace IR-SE50, model_ir_se50.pth: the score the "
                                             "inversion papers report), or the URI of a latentmill EmbeddingNet "
                                             "bundle (from train-identity; the demo bundle carries one for emoji).")
    facenet_weights: str | None = setting(None, "URI of FaceNet VGGFace2 weights for identity scores (default: "
                                                "facenet-pytorch's cache file).")

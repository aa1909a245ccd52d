"""Settings of the training jobs, declared once (torch-free: the command line builds --help from them).

Every training job inherits TrainingRunSettings (output, workers, GPUs, seed, Ray address) and
CheckpointSettings, so resuming, distribution and seeding read the same fields in all of them.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from pipeline.models.model_settings import COUPLINGS, MAPPINGS, GeneratorSettings, PerceptualSettings
from pipeline.settings import ProgressSettings, TrainingRunSettings, setting

BACKBONES = ("convnet", "resnet18", "resnet34", "resnet50")
ENCODER_MODES = ("w+", "w")


def _default_mask_weights() -> dict[str, float]:
    from pipeline.masks import DEFAULT_KIND_WEIGHTS

    return dict(DEFAULT_KIND_WEIGHTS)


@dataclass(kw_only=True)
class CheckpointSettings:
    checkpoint_every: int = setting(500, "Steps between checkpoints and evaluations.", minimum=1)
    keep_checkpoints: int = setting(2, "Checkpoints kept on disk (older ones are deleted).", minimum=1)


@dataclass(kw_only=True)
class TrainingDataSettings:
    data: str = setting(MISSING, "Training images: a folder, tar shards or Parquet (any fsspec URI).")


@dataclass(kw_only=True)
class EncoderTrainingConfig(GeneratorSettings, PerceptualSettings, CheckpointSettings, TrainingRunSettings,
                            ProgressSettings):
    generator: str = setting(MISSING, "Generator checkpoint URI; G_ema is used, frozen (and D if --perceptual "
                                      "discriminator).")
    steps: int = setting(5000, "Optimizer steps in total.", minimum=1)
    batch_size: int = setting(16, "Samples per step per worker.", minimum=1)
    lr: float = setting(1e-3, "Adam learning rate.", above=0)
    mode: str = setting("w+", "Predict a w per layer (w+) or one w for all layers (w).", choices=ENCODER_MODES)
    backbone: str = setting("convnet", "Small residual convnet from scratch, or a torchvision ResNet.",
                            choices=BACKBONES)
    backbone_weights: str | None = setting(None, "torchvision ImageNet weights URI for a ResNet backbone (default: "
                                                 "train from scratch).")
    base_channels: int = setting(32, "convnet width at full resolution.", minimum=1)
    max_channels: int = setting(256, "convnet width cap.", minimum=1)
    perceptual: str = setting("discriminator", "Perceptual loss: LPIPS (needs --lpips-weights or torchvision's cache), "
                                               "the checkpoint's discriminator features, or none.",
                              choices=PerceptualSettings.__dataclass_fields__["perceptual"].metadata["choices"])
    pixel_weight: float = setting(1.0, "Weight of the pixel MSE.", minimum=0)
    perceptual_weight: float = setting(1.0, "Weight of the perceptual loss.", minimum=0)
    latent_weight: float = setting(1.0, "Weight of the latent-recovery MSE.", minimum=0)
    adversarial_weight: float = setting(0.1, "Weight of the adversarial term (LIA's beta2 = 0.1): G's discriminator, "
                                             "fine-tuned alongside, judges the reconstructions (0 = off; needs a D in "
                                             "--generator).", minimum=0)
    discriminator_lr: float = setting(2e-4, "Adam learning rate of the fine-tuned discriminator.", above=0)
    r1_gamma: float = setting(1.0, "R1 weight on the discriminator's real images, as in GAN training.", minimum=0)
    style_mixing_prob: float = setting(0.9, "Probability that a training latent mixes two ws at a random layer.", minimum=0, maximum=1)
    real_images: str | None = setting(None, "Dataset URI of real images (folder, tar or Parquet) mixed into each "
                                            "batch with pixel and perceptual terms only.")
    real_fraction: float = setting(0.25, "Share of each batch taken from --real-images.", minimum=0, maximum=1)
    real_max: int = setting(10_000, "Real images decoded into memory per worker.", minimum=1)
    mask_weights: dict[str, float] = setting(default_factory=lambda: _default_mask_weights(), cli=False)
    eval_size: int = setting(64, "Held-out samples evaluated at each checkpoint.", minimum=1)


@dataclass(kw_only=True)
class GeneratorTrainingConfig(TrainingDataSettings, CheckpointSettings, TrainingRunSettings, ProgressSettings):
    resolution: int = setting(32, "Image resolution (power of two).", minimum=4)
    steps: int = setting(20_000, "Training steps (one D and one G update each).", minimum=1)
    batch_size: int = setting(16, "Images per step per worker.", minimum=1)
    z_dim: int = setting(128, "Latent z dimensionality.", minimum=1)
    w_dim: int = setting(128, "Intermediate latent w dimensionality.", minimum=1)
    mapping_layers: int = setting(4, "Mapping network depth (coupling layers with --mapping invertible).", minimum=1)
    mapping: str = setting("standard", "Mapping network: StyleGAN's MLP, or LIA's invertible coupling stack "
                                       "(G.mapping.inverse(ws) gives the exact z; needs --z-dim == --w-dim).",
                           choices=MAPPINGS)
    coupling: str = setting("additive", "Coupling layers of an invertible mapping: NICE's additive or affine.",
                            choices=COUPLINGS)
    channel_base: int = setting(4096, "Channels at resolution r: min(channel_base // r, channel_max).", minimum=1)
    channel_max: int = setting(256, "Channel cap.")
    lr: float = setting(0.0025, "Adam learning rate of G and D.", above=0)
    r1_gamma: float = setting(1.0, "R1 regularization weight (lazy).", minimum=0)
    r1_interval: int = setting(16, "Steps between R1 penalties.", minimum=1)
    pl_weight: float = setting(0.0, "Path-length regularization weight (0 = off).", minimum=0)
    style_mixing_prob: float = setting(0.9, "Style-mixing probability.", minimum=0, maximum=1)
    augment: str = setting("color,translation,cutout", "DiffAugment ops applied to everything D sees ('' = none).")
    ema_images: float = setting(10_000.0, "EMA half-life of G_ema, in images.", above=0)
    checkpoint_every: int = setting(1000, "Steps between checkpoints, sample grids and KID.", minimum=1)
    kid_samples: int = setting(1000, "Samples per KID estimate.", minimum=2)


@dataclass(kw_only=True)
class IdentityTrainingConfig(TrainingDataSettings, CheckpointSettings, TrainingRunSettings, ProgressSettings):
    resolution: int = setting(32, "Side the embedding network sees (power of two).", minimum=4)
    steps: int = setting(2000, "Training steps.", minimum=1)
    batch_size: int = setting(128, "Images per step per worker (two views each).", minimum=1)
    lr: float = setting(1e-3, "Adam learning rate.", above=0)
    temperature: float = setting(0.1, "InfoNCE temperature.", above=0)
    strength: float = setting(1.0, "Strength of the view degradations (shift, scale, blur, colour drift, noise, "
                                   "occlusion).", minimum=0)
    base_channels: int = setting(32, "Channels of the first conv block.", minimum=1)
    max_channels: int = setting(128, "Channel cap.", minimum=1)
    embedding_dim: int = setting(64, "Embedding size.", minimum=1)

"""Commands that make models and data: fit-prior, fit-flow, train-encoder, train-generator, train-identity, make-demo-data."""

from __future__ import annotations

import click

from latentmill.errors import as_usage_errors
from latentmill.options import options_from
from pipeline.priors.prior_settings import FitFlowConfig, FitPriorConfig
from pipeline.training.settings import EncoderTrainingConfig, GeneratorTrainingConfig, IdentityTrainingConfig


@click.command("fit-prior")
@options_from(FitPriorConfig, first=("generator", "output"))
def fit_prior(**options: object) -> None:
    """Fit the gaussianized latent prior of a generator (Wulff & Torralba).

    Streams v = lrelu_5(w / sqrt(2)) of mapped samples into a float64 mean and covariance and saves
    them, with the generator's fingerprint, as safetensors. Refinement uses the prior as a penalty,
    and compression uses its PCA.

    \b
    Example:
      latentmill fit-prior --generator ffhq.pkl --output ffhq-prior.safetensors
    """
    from jobs.fit_prior import run

    run(FitPriorConfig(**options))


@click.command("fit-flow")
@options_from(FitFlowConfig, first=("generator", "output", "steps", "batch_size"))
def fit_flow(**options: object) -> None:
    """Fit a normalizing flow to a generator's latents: every w gets its exact z (LIA, post hoc).

    The flow maps W to a standard normal Z exactly and invertibly: it starts as the gaussianized
    prior and adds coupling layers trained by maximum likelihood on fresh mapped samples. Use it
    wherever a --prior goes (refinement, compression, curation, the NLL columns); stores then get a
    `z` column, the exact latent of each refined w. Runs on Ray Train and resumes like the training
    jobs; at each checkpoint it scores held-out samples against the gaussianized prior.

    \b
    Examples:
      latentmill fit-flow --generator ffhq.pkl --output ffhq-flow.safetensors
      latentmill fit-flow --generator ffhq.pkl --output s3://team/flows/ffhq.safetensors \\
          --run-directory runs/ffhq-flow --num-workers 4 --use-gpu
      latentmill invert --input photos/ --output store/ --generator ffhq.pkl --prior ffhq-flow.safetensors
    """
    from jobs.fit_flow import run, run_directory

    config = FitFlowConfig(**options)
    with as_usage_errors(ValueError):
        run_directory(config)  # a remote --output needs a local --run-directory: said before Ray starts
    click.echo(f"wrote {run(config)}")


@click.command("train-encoder")
@options_from(EncoderTrainingConfig, first=("generator", "output", "steps", "batch_size"))
def train_encoder(**options: object) -> None:
    """Train the latent regressor E(x * m, m) -> W+ for a frozen generator (Chai et al.).

    Training pairs are made on the fly from G (style-mixed W+ samples, random masks: rectangles,
    strokes, halves, and two-sample collages). Loss: pixel + perceptual + latent recovery. Runs on
    Ray Train; checkpoints, CSV logs and held-out evaluations go to --output.

    \b
    Example:
      latentmill train-encoder --generator ffhq.pkl --output runs/encoder --num-workers 4 --use-gpu
    """
    from jobs.train_encoder import run

    click.echo(f"wrote {run(EncoderTrainingConfig(**options))}")


@click.command("train-generator")
@options_from(GeneratorTrainingConfig, first=("data", "output", "resolution", "steps", "batch_size"))
def train_generator(**options: object) -> None:
    """Train a StyleGAN2 (G, G_ema, D) on a small image data set, on Ray Train.

    Non-saturating loss, lazy R1, optional path-length regularization, style mixing, EMA generator,
    DiffAugment. Writes generator.safetensors, checkpoints, sample grids and logs to --output; KID is
    measured on a fixed random-feature network (no pretrained extractor is available offline).

    \b
    Example:
      latentmill train-generator --data emoji/ --output runs/generator --resolution 32 --steps 20000
    """
    from jobs.train_generator import run

    click.echo(f"wrote {run(GeneratorTrainingConfig(**options))}")


@click.command("train-identity")
@options_from(IdentityTrainingConfig, first=("data", "output", "resolution", "steps", "batch_size"))
def train_identity(**options: object) -> None:
    """Train an identity embedding (EmbeddingNet) for data FaceNet does not cover.

    Contrastive (InfoNCE): two reconstruction-like degradations of an image embed close, other
    images far. Pass the written identity.safetensors to `invert --identity-model`. Reports the
    top-1 accuracy of finding an image from a degraded view among all training images.

    \b
    Example:
      latentmill train-identity --data emoji/ --output runs/identity
    """
    from jobs.train_identity import run

    click.echo(f"wrote {run(IdentityTrainingConfig(**options))}")


@click.command("make-demo-data")
@click.option("--output", required=True, help="Directory for the tar shards (created).")
@click.option("--resolution", default=64, show_default=True, help="Side of the square images, in pixels.")
@click.option("--shard-size", default=500, show_default=True, help="Emoji per tar shard.")
@click.option("--font", "font_path", default="/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf", show_default=True,
              help="Noto Color Emoji font file (Debian package fonts-noto-color-emoji).")
@click.option("--limit", type=int, default=None, help="Only the first N emoji (for quick runs).")
def make_demo_data(output: str, resolution: int, shard_size: int, font_path: str, limit: int | None) -> None:
    """Render the offline demo data set: colour emoji (faces among them) as webdataset tar shards.

    Each sample is key.png (emoji centred on white) and key.json with its codepoint, Unicode name
    and group ('face' or 'other'), usable as labels for rebalancing.

    \b
    Example:
      latentmill make-demo-data --output data/emoji --resolution 64
    """
    from jobs.make_demo_data import run

    with as_usage_errors(FileNotFoundError):
        run(output, font_path=font_path, resolution=resolution, shard_size=shard_size, limit=limit)

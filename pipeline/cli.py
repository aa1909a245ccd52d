"""The `latentmill` command line: parses options and calls library functions or jobs."""

from __future__ import annotations

import json
import sys

import click
import torch

from pipeline.errors import LatentmillError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _Group(click.Group):
    """Turns latentmill's own errors into one clear line and exit status 2, not a traceback."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except LatentmillError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="latentmill")
def main() -> None:
    """latentmill: invert, score and curate image datasets through a pretrained StyleGAN2.

    Weights are given as URIs (local paths, file://, s3://, gs://, https://, ...); remote files are
    cached under $LATENTMILL_CACHE (default ~/.cache/latentmill). Checkpoints are NVlabs pickles
    (read without running their code), rosinality .pt files, or latentmill .safetensors bundles.
    """


@main.command()
@click.argument("uri")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of text.")
def inspect(uri: str, as_json: bool) -> None:
    """Show a checkpoint's format, architecture, num_ws, parameter count and fingerprint.

    URI is any supported checkpoint. The fingerprint is a sha256 over the loaded weights; it is the
    same for a network whatever file format it is stored in.
    """
    from pipeline.models.checkpoints import describe_checkpoint

    desc = describe_checkpoint(uri)
    if as_json:
        click.echo(json.dumps(desc, indent=2, default=str))
        return
    click.echo(f"uri:     {desc['uri']}\nformat:  {desc['format']}")
    for name, net in desc["networks"].items():
        kw = net["init_kwargs"]
        click.echo(f"\n{name}: {net['class']}, {net['parameters']:,} parameters")
        if net["class"] == "Generator":
            click.echo(f"  resolution {net['img_resolution']} px, {net['img_channels']} channels, "
                       f"z_dim {net['z_dim']}, w_dim {net['w_dim']}, c_dim {net['c_dim']}, num_ws {net['num_ws']}, "
                       f"StyleSpace channels {net['stylespace_channels']}")
            click.echo(f"  mapping {kw['mapping_kwargs'] or 'defaults'}; synthesis {kw['synthesis_kwargs'] or 'defaults'}")
        else:
            click.echo(f"  resolution {kw['img_resolution']} px, architecture {kw['architecture']}, "
                       f"channel_base {kw['channel_base']}, channel_max {kw['channel_max']}, c_dim {kw['c_dim']}")
        click.echo(f"  fingerprint {net['fingerprint']}")
    if desc["info"].get("not_loaded"):
        click.echo(f"\nnot loaded: {', '.join(desc['info']['not_loaded'])} (unsupported in this format)")


@main.command()
@click.argument("src")
@click.argument("dst")
def convert(src: str, dst: str) -> None:
    """Convert checkpoint SRC into a latentmill safetensors bundle at DST.

    All networks of SRC (G, G_ema, D where present) are written with their architecture and
    provenance; the bundle loads without pickle and is what latentmill's jobs ship and read.
    """
    from pipeline.models.checkpoints import convert_checkpoint

    for name, fp in convert_checkpoint(src, dst).items():
        click.echo(f"{name}: {fp}")
    click.echo(f"wrote {dst}")


@main.command()
@click.argument("generator")
@click.option("--seeds", default="0-15", show_default=True, help="Seeds, e.g. '0-15' or '1,5,9'. Seed s draws "
              "z from numpy RandomState(s), as NVlabs' gen_images.py does, so images match the official code.")
@click.option("--truncation-psi", default=1.0, show_default=True, help="Truncation towards w_avg (1 = none).")
@click.option("--noise-mode", type=click.Choice(["const", "random", "none"]), default="const", show_default=True,
              help="Per-pixel noise: the stored constant maps, fresh random maps, or none.")
@click.option("--class-idx", type=int, default=None, help="Class label for conditional generators.")
@click.option("--which", default="G_ema", show_default=True, help="Network in the checkpoint: G_ema or G.")
@click.option("--out", "out_path", default="samples.png", show_default=True, help="Where to write the image grid.")
@click.option("--nrow", default=8, show_default=True, help="Images per row of the grid.")
@click.option("--device", default="auto", show_default=True, help="'auto' (CUDA if present), 'cpu', 'cuda:0', ...")
def generate(generator: str, seeds: str, truncation_psi: float, noise_mode: str, class_idx: int | None, which: str,
             out_path: str, nrow: int, device: str) -> None:
    """Render seeded samples of GENERATOR (any checkpoint URI) into one image grid."""
    from pipeline.imaging import save_grid
    from pipeline.models.checkpoints import load_generator
    from pipeline.sampling import generate_images, parse_seeds

    try:
        seed_list = parse_seeds(seeds)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--seeds") from None
    G = load_generator(generator, which=which, device=resolve_device(device))
    images = generate_images(G, seed_list, truncation_psi=truncation_psi, noise_mode=noise_mode, class_idx=class_idx)
    click.echo(f"wrote {save_grid(images, out_path, nrow=nrow)} ({len(seed_list)} images, "
               f"{G.img_resolution} px)")


@main.command("fit-prior")
@click.option("--generator", required=True, help="Generator checkpoint URI (its G_ema is used).")
@click.option("--output", required=True, help="Where to write the prior (.safetensors, any fsspec URI).")
@click.option("--num-samples", default=1_000_000, show_default=True,
              help="Mapped z draws for the mean and covariance (the paper uses 1e5 to 1e6).")
@click.option("--batch-size", default=10_000, show_default=True, help="z draws per mapping-network pass.")
@click.option("--seed", default=0, show_default=True, help="Seed of the z draws (the fit is deterministic).")
@click.option("--device", default="auto", show_default=True, help="'auto' (CUDA if present), 'cpu', 'cuda:0', ...")
def fit_prior(generator: str, output: str, num_samples: int, batch_size: int, seed: int, device: str) -> None:
    """Fit the gaussianized latent prior of a generator (Wulff & Torralba).

    Streams v = lrelu_5(w / sqrt(2)) of mapped samples into a float64 mean and covariance and saves
    them, with the generator's fingerprint, as safetensors. Refinement uses the prior as a penalty,
    and compression uses its PCA.
    """
    from jobs.fit_prior import run

    run(generator, output, num_samples=num_samples, batch_size=batch_size, device=resolve_device(device), seed=seed)


@main.command("train-encoder")
@click.option("--generator", required=True, help="Generator checkpoint URI; G_ema is used, frozen (and D if "
              "--perceptual discriminator).")
@click.option("--output", required=True, help="Output directory; rerunning with the same one resumes.")
@click.option("--steps", default=5000, show_default=True, help="Optimizer steps in total.")
@click.option("--batch-size", default=16, show_default=True, help="Samples per step per worker.")
@click.option("--lr", default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--mode", type=click.Choice(["w+", "w"]), default="w+", show_default=True,
              help="Predict a w per layer (w+) or one w for all layers (w).")
@click.option("--backbone", type=click.Choice(["convnet", "resnet18", "resnet34", "resnet50"]), default="convnet",
              show_default=True, help="Small residual convnet from scratch, or a torchvision ResNet.")
@click.option("--backbone-weights", default=None, help="torchvision ImageNet weights URI for a ResNet backbone "
              "(default: train from scratch).")
@click.option("--base-channels", default=32, show_default=True, help="convnet width at full resolution.")
@click.option("--max-channels", default=256, show_default=True, help="convnet width cap.")
@click.option("--perceptual", type=click.Choice(["lpips", "discriminator", "none"]), default="discriminator",
              show_default=True, help="Perceptual loss: LPIPS (needs --lpips-weights or torchvision's cache), "
              "the checkpoint's discriminator features, or none.")
@click.option("--lpips-weights", default=None, help="URI of the LPIPS backbone (torchvision VGG16 weights).")
@click.option("--pixel-weight", default=1.0, show_default=True, help="Weight of the pixel MSE.")
@click.option("--perceptual-weight", default=1.0, show_default=True, help="Weight of the perceptual loss.")
@click.option("--latent-weight", default=1.0, show_default=True, help="Weight of the latent-recovery MSE.")
@click.option("--style-mixing-prob", default=0.9, show_default=True,
              help="Probability that a training latent mixes two ws at a random layer.")
@click.option("--checkpoint-every", default=500, show_default=True, help="Steps between checkpoints + evaluation.")
@click.option("--eval-size", default=64, show_default=True, help="Held-out samples evaluated at each checkpoint.")
@click.option("--num-workers", default=1, show_default=True, help="Ray Train workers (data-parallel).")
@click.option("--use-gpu", is_flag=True, help="One GPU per worker.")
@click.option("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")
@click.option("--seed", default=0, show_default=True, help="Seed of the training and held-out samples.")
def train_encoder(**options: object) -> None:
    """Train the latent regressor E(x * m, m) -> W+ for a frozen generator (Chai et al.).

    Training pairs are made on the fly from G (style-mixed W+ samples, random masks: rectangles,
    strokes, halves, and two-sample collages). Loss: pixel + perceptual + latent recovery. Runs on
    Ray Train; checkpoints, CSV logs and held-out evaluations go to --output.
    """
    from jobs.train_encoder import EncoderTrainingConfig, run

    address = options.pop("address")
    path = run(EncoderTrainingConfig(**options), address=address)
    click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Commands on checkpoints: inspect, convert, generate."""

from __future__ import annotations

import json

import click

from latentmill.errors import as_usage_errors
from latentmill.options import options_from
from pipeline.sampling_settings import GenerateConfig


@click.command()
@click.argument("uri")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of text.")
def inspect(uri: str, as_json: bool) -> None:
    """Show a checkpoint's format, architecture, num_ws, parameter count and fingerprint.

    URI is any supported checkpoint. The fingerprint is a sha256 over the loaded weights; it is the
    same for a network whatever file format it is stored in.

    \b
    Example:
      latentmill inspect stylegan2-ffhq-config-f.pkl
    """
    from pipeline.models.checkpoints import describe_checkpoint

    desc = describe_checkpoint(uri, setting="URI (the first argument)")
    if as_json:
        click.echo(json.dumps(desc, indent=2, default=str))
        return
    click.echo(f"uri:     {desc['uri']}\nformat:  {desc['format']}\nsource:  {desc['layout']}")
    for name, net in desc["networks"].items():
        kw = net["init_kwargs"]
        click.echo(f"\n{name}: {net['class']}, {net['parameters']:,} parameters")
        if net["class"] == "Generator":
            click.echo(f"  resolution {net['img_resolution']} px, {net['img_channels']} channels, "
                       f"z_dim {net['z_dim']}, w_dim {net['w_dim']}, c_dim {net['c_dim']}, num_ws {net['num_ws']}, "
                       f"StyleSpace channels {net['stylespace_channels']}")
            click.echo(f"  mapping {kw['mapping_kwargs'] or 'defaults'}; synthesis {kw['synthesis_kwargs'] or 'defaults'}")
        elif net["class"] == "Discriminator":
            click.echo(f"  resolution {kw['img_resolution']} px, architecture {kw['architecture']}, "
                       f"channel_base {kw['channel_base']}, channel_max {kw['channel_max']}, c_dim {kw['c_dim']}")
        else:
            click.echo("  " + ", ".join(f"{k} {v}" for k, v in kw.items()))
        click.echo(f"  fingerprint {net['fingerprint']}")
    if desc["info"].get("not_loaded"):
        click.echo(f"\nnot loaded: {', '.join(desc['info']['not_loaded'])} (unsupported in this format)")


@click.command()
@click.argument("src")
@click.argument("dst")
def convert(src: str, dst: str) -> None:
    """Convert checkpoint SRC into a latentmill safetensors bundle at DST.

    All networks of SRC (G, G_ema, D where present) are written with their architecture and
    provenance; the bundle loads without pickle and is what latentmill's jobs ship and read.

    \b
    Example:
      latentmill convert stylegan2-ffhq-config-f.pkl ffhq.safetensors
    """
    from pathlib import Path

    from pipeline.models.checkpoints import convert_checkpoint

    if Path(dst).is_dir():
        raise click.UsageError(f"DST {dst} is a folder; convert writes one bundle file: name a file such as "
                               f"{Path(dst) / 'model.safetensors'}")
    for name, fp in convert_checkpoint(src, dst, setting="SRC (the first argument)").items():
        click.echo(f"{name}: {fp}")
    click.echo(f"wrote {dst}")


@click.command()
@options_from(GenerateConfig, first=("seeds", "output"))
def generate(**options: object) -> None:
    """Render seeded samples of GENERATOR (any checkpoint URI) into one image grid.

    \b
    Example:
      latentmill generate ffhq.pkl --seeds 0-7 --output grid.png
    """
    from pipeline.devices import resolve_device
    from pipeline.imaging import save_grid
    from pipeline.models.checkpoints import load_generator
    from pipeline.sampling import generate_images, parse_seeds

    with as_usage_errors(ValueError):
        config = GenerateConfig(**options)
    try:
        seed_list = parse_seeds(config.seeds)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--seeds") from None
    G = load_generator(config.generator, which=config.which, device=resolve_device(config.device),
                       setting="GENERATOR (the first argument)")
    images = generate_images(G, seed_list, truncation_psi=config.truncation_psi, noise_mode=config.noise_mode,
                             class_idx=config.class_idx)
    click.echo(f"wrote {save_grid(images, config.output, nrow=config.nrow)} ({len(seed_list)} images, "
               f"{G.img_resolution} px)")

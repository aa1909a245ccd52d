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


def parse_ids(spec: str) -> list[str]:
    """'a.png,b.png' or '@FILE' (one id per line) -> ids."""
    from pathlib import Path

    return Path(spec[1:]).read_text().split() if spec.startswith("@") else [i for i in spec.split(",") if i]


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
@click.option("--real-images", default=None, help="Dataset URI of real images (folder, tar or Parquet) mixed into "
              "each batch with pixel and perceptual terms only.")
@click.option("--real-fraction", default=0.25, show_default=True, help="Share of each batch taken from --real-images.")
@click.option("--real-max", default=10_000, show_default=True, help="Real images decoded into memory per worker.")
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


@main.command()
@click.option("--input", "input_uri", required=True, help="Dataset URI: a folder of images (recursive), a folder "
              "or file of webdataset .tar shards, or .parquet files; local or any fsspec URI.")
@click.option("--output", required=True, help="Latent store URI (created); rerunning skips finished shards.")
@click.option("--generator", required=True, help="Generator checkpoint URI (NVlabs .pkl, rosinality .pt, or bundle).")
@click.option("--encoder", default=None, help="Encoder bundle URI (from train-encoder); without it, refinement "
              "starts from w_avg.")
@click.option("--prior", default=None, help="Prior URI (from fit-prior): prior term of refinement, compression, NLLs.")
@click.option("--stages", default="encode,refine,compress,identity", show_default=True,
              help="Comma-separated stages to run, from encode,refine,compress,identity.")
@click.option("--steps", default=200, show_default=True, help="Refinement steps per image.")
@click.option("--lr", default=0.1, show_default=True, help="Peak refinement learning rate.")
@click.option("--prior-weight", default=0.01, show_default=True, help="Weight of the prior term (NLL / w_dim).")
@click.option("--perceptual-weight", default=1.0, show_default=True, help="Weight of the perceptual term.")
@click.option("--pixel-weight", default=1.0, show_default=True, help="Weight of the pixel MSE term.")
@click.option("--perceptual", type=click.Choice(["lpips", "discriminator", "none"]), default="lpips",
              show_default=True, help="Perceptual term of refinement (discriminator = the checkpoint's D features).")
@click.option("--lpips-weights", default=None, help="URI of LPIPS's VGG16 backbone (default: torchvision's cache).")
@click.option("--facenet-weights", default=None, help="URI of FaceNet VGGFace2 weights for the identity stage "
              "(default: facenet-pytorch's cache file).")
@click.option("--identity-model", default="facenet", show_default=True,
              help="Identity embedding: 'facenet' (InceptionResnetV1, for faces) or the URI of a latentmill "
              "EmbeddingNet bundle (from train-identity; the demo bundle carries one for emoji).")
@click.option("--tau", default=3.0, show_default=True, help="Compression threshold in units of sigma.")
@click.option("--latent-space", type=click.Choice(["w+", "w"]), default="w+", show_default=True,
              help="Refine a w per layer, or one w for all layers.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="Autocast precision of G and the perceptual net during refinement.")
@click.option("--early-stop-patience", default=0, show_default=True,
              help="Stop an image after this many steps without improvement (0 = never).")
@click.option("--compile", is_flag=True, help="torch.compile the generator's synthesis for refinement (one-time "
              "compile per actor; worth it on GPUs for long runs).")
@click.option("--input-format", type=click.Choice(["auto", "folder", "tar", "parquet"]), default="auto",
              show_default=True, help="Input layout; auto looks at the files.")
@click.option("--shard-size", default=1000, show_default=True, help="Images per shard for folder inputs.")
@click.option("--image-column", default="image", show_default=True, help="Parquet column holding image bytes.")
@click.option("--id-column", default=None, help="Parquet column holding image ids (default: <file>/<row>).")
@click.option("--on-duplicate-id", type=click.Choice(["suffix", "error"]), default="suffix", show_default=True,
              help="An id seen again (Parquet id column, repeated tar key): suffix keeps it as 'id~1', 'id~2', ... in "
              "plan order; error refuses the input before any work.")
@click.option("--resize-policy", type=click.Choice(["center-crop", "pad", "stretch"]), default="center-crop",
              show_default=True, help="How images become the generator's square resolution (pad marks the border "
              "as unknown pixels).")
@click.option("--align", type=click.Choice(["none", "faces"]), default="none", show_default=True,
              help="faces: crop the most confident face (facenet-pytorch's MTCNN) before resizing; images without "
              "a face become error rows.")
@click.option("--max-pixels", default=64_000_000, show_default=True,
              help="Larger images are error rows (decompression bombs).")
@click.option("--latent-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Storage type of the latent columns.")
@click.option("--batch-size", default=16, show_default=True, help="Images per batch on each actor.")
@click.option("--concurrency", default=1, show_default=True, help="Actors (model replicas) working in parallel.")
@click.option("--num-gpus", default=0.0, show_default=True, help="GPUs per actor (0 = CPU; 0.5 packs two per GPU).")
@click.option("--cpus-per-actor", default=1.0, show_default=True, help="CPUs reserved per actor.")
@click.option("--decode-threads", default=4, show_default=True, help="Decoding threads inside each actor.")
@click.option("--max-retries", default=2, show_default=True, help="Retries of a failed shard before it is recorded "
              "as failed in the manifest.")
@click.option("--overwrite", is_flag=True, help="Redo every row of --output, with this run's settings (the only way "
              "to change the recipe of an existing store).")
@click.option("--wait", is_flag=True, help="If another run is writing --output, wait for it instead of exiting.")
@click.option("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else an embedded Ray).")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def invert(input_uri: str, stages: str, no_progress: bool, **options: object) -> None:
    """Invert every image of a dataset through a StyleGAN2 into a Parquet latent store.

    Stages: encode (one forward pass of the regressor), refine (batched optimization of W+ against
    pixel + perceptual losses and the gaussianized prior), compress (PCA log-compression beyond
    tau), identity (FaceNet cosine between input and reconstructions). Every input yields exactly
    one row; failures are rows with status 'error' and a reason.
    """
    from jobs.invert import run
    from pipeline.runtime.config import InvertConfig

    config = InvertConfig(input=input_uri, stages=tuple(s.strip() for s in stages.split(",") if s.strip()),
                          progress=not no_progress, **options)
    try:
        summary = run(config)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"processed {summary.shards_done} shards ({summary.shards_skipped} already done), "
               f"{summary.rows} images: {summary.ok} ok, {summary.errors} errors, "
               f"{summary.images_per_second:.2f} images/s, {summary.retries} retries")
    click.echo(f"latents: {config.output.rstrip('/')}/latents/  manifest: {config.output.rstrip('/')}/manifest.json")
    if summary.shards_failed:
        click.echo(f"error: {len(summary.shards_failed)} shards failed after retries: {summary.shards_failed}; "
                   "see manifest/*.failed.json, then rerun to retry them", err=True)
        sys.exit(1)


@main.command()
@click.argument("store")
@click.option("--repair", is_flag=True, help="Move damaged shard files to STORE/quarantine/ and drop their manifest "
              "entries, so the next invert redoes them.")
@click.option("--quick", is_flag=True, help="Only the cheap checks (files present, footers, row counts).")
def verify(store: str, repair: bool, quick: bool) -> None:
    """Check every shard file of STORE against its manifest, recipe and plan; exit 1 on a problem.

    Checks: each finished shard's file exists, its Parquet footer reads, its rows are the manifest's;
    schema version, and the generator fingerprint is the recipe's; ids unique across the store;
    every planned shard finished, failed or still to run.

    \b
    Example:
      latentmill verify out/faces-latents
      latentmill verify out/faces-latents --repair && latentmill invert ...   # redo what was damaged
    """
    from pipeline.store.store_lock import claim_store
    from pipeline.store.verify import repair_store, verify_store

    report = verify_store(store, full=not quick)
    for line in report.lines():
        click.echo(line)
    if repair and report.damaged:
        with claim_store(store):
            moved = repair_store(store, report)
        click.echo(f"repaired: moved {len(moved)} damaged shard file(s) aside; the next invert redoes them")
        return
    if not report.ok:
        sys.exit(1)


@main.command()
@click.option("--output", default="out/demo", show_default=True, help="Directory for the demo's latent store "
              "(OUTPUT/store) and report (OUTPUT/store/report.html); rerunning resumes.")
@click.option("--limit", default=None, type=int, help="Only the first N images of the bundled sample (quick runs).")
@click.option("--steps", default=100, show_default=True, help="Refinement steps per image.")
@click.option("--batch-size", default=48, show_default=True, help="Images per batch.")
@click.option("--num-gpus", default=0.0, show_default=True, help="GPUs for the inversion actor (0 = CPU: then one "
              "actor per core, up to 2, one per sample shard).")
@click.option("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else an embedded Ray).")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def demo(output: str, limit: int | None, steps: int, batch_size: int, num_gpus: float, address: str | None,
         no_progress: bool) -> None:
    """Run the pipeline on the bundled demo model and emoji sample, then write report.html.

    invert (encode, refine, compress, identity) -> curate (outliers, near-duplicates, bad
    reconstructions) -> rebalance (faces are under-represented among emoji: compose new ones
    through E and G) -> report. No download and no GPU needed: the generator, prior, encoder and
    identity embedding in pipeline/assets/demo were trained by latentmill's own jobs (see its
    MODEL_CARD.md).
    """
    from jobs.curate import CurateConfig
    from jobs.curate import run as curate_store
    from jobs.invert import run
    from jobs.rebalance import RebalanceConfig
    from jobs.rebalance import run as rebalance_store
    from pipeline.demo import demo_config
    from pipeline.report.html_report import build_report

    config = demo_config(output, limit=limit, steps=steps, batch_size=batch_size, address=address,
                         num_gpus=num_gpus, progress=not no_progress)
    device = "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"
    summary = run(config)
    if summary.shards_done == 0 and summary.shards_skipped:
        click.echo(f"invert: reused: all {summary.shards_skipped} shards were already done; latents: "
                   f"{config.output}/latents/")
    else:
        click.echo(f"inverted {summary.rows} images ({summary.ok} ok, {summary.errors} errors) in "
                   f"{summary.seconds:.0f} s; latents: {config.output}/latents/")
    flags = curate_store(CurateConfig(store=config.output, device=device))
    click.echo(("curate: reused: " if flags.get("reused") else "curate: ") +
               f"{flags['outliers']} outliers, {flags['duplicates']} near-duplicates, "
               f"{flags['bad_reconstructions']} bad reconstructions")
    try:
        counts = rebalance_store(RebalanceConfig(store=config.output, output=f"{output.rstrip('/')}/rebalanced",
                                                 groups="meta:group", device=device, progress=not no_progress))
        click.echo(("rebalance: reused: " if counts.get("reused") else "rebalance: ") +
                   ", ".join(f"{g} {counts['before'][g]} -> {counts['after'][g]}" for g in counts["before"]))
    except ValueError as exc:  # e.g. a --limit subset with a single group
        click.echo(f"rebalance skipped: {exc}")
    report = build_report(config.output, device=device)
    click.echo(f"report: {report}")


@main.command()
@click.argument("store")
@click.option("--sheet-size", default=12, show_default=True, help="Images per contact sheet.")
@click.option("--curve-images", default=48, show_default=True,
              help="Images used for the compression-vs-truncation curve.")
@click.option("--generator", default=None, help="Generator URI (default: the one recorded in the store).")
@click.option("--device", default="auto", show_default=True, help="'auto' (CUDA if present), 'cpu', 'cuda:0', ...")
def report(store: str, sheet_size: int, curve_images: int, generator: str | None, device: str) -> None:
    """Write STORE/report.html: contact sheets (input | encoded | refined | compressed), histograms of
    MSE, perceptual distance, identity cosine and prior NLL, errors, and the compression-vs-truncation
    curve (identity kept vs distance from the prior as tau and psi vary)."""
    from pipeline.report.html_report import build_report

    try:
        uri = build_report(store, sheet_size=sheet_size, curve_images=curve_images, generator=generator,
                           device=resolve_device(device))
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"report: {uri}")


@main.command()
@click.argument("store")
@click.option("--column", type=click.Choice(["w_refined", "w_encoded", "w_compressed"]), default="w_refined",
              show_default=True, help="Which stored latents to test.")
@click.option("--outlier-percentile", default=99.0, show_default=True,
              help="Rows whose prior NLL is above this percentile of the store are outliers.")
@click.option("--duplicate-threshold", default=0.95, show_default=True,
              help="Cosine at or above which two rows are near-duplicates.")
@click.option("--duplicates-by", type=click.Choice(["latent", "identity"]), default="latent", show_default=True,
              help="latent: cosine of latents whitened in the prior's space; identity: cosine of the inputs' "
              "identity embeddings (re-reads the inputs).")
@click.option("--mse-percentile", default=95.0, show_default=True,
              help="Rows whose MSE is above this percentile are bad reconstructions.")
@click.option("--perceptual-percentile", default=95.0, show_default=True,
              help="Rows whose perceptual distance is above this percentile are bad reconstructions.")
@click.option("--min-identity", default=None, type=float,
              help="Rows whose identity cosine is below this are bad reconstructions (default: not tested).")
@click.option("--block-size", default=None, type=int,
              help="Rows per block of the duplicate search; memory is block x rows similarities (default: "
              "about 2^28 of them, 1 GiB: 4,096 rows up to 65k rows, 256 at 1M).")
@click.option("--device", default="auto", show_default=True, help="'auto' (CUDA if present), 'cpu', 'cuda:0', ...")
def curate(store: str, device: str, **options: object) -> None:
    """Flag outliers (prior NLL percentile), near-duplicates (blockwise cosine search) and bad
    reconstructions (MSE, perceptual, identity) among the ok rows of STORE.

    Writes STORE/curation/flags.parquet (schema flags v1) and summary.json; `latentmill report`
    then shows them.
    """
    from jobs.curate import CurateConfig, run

    try:
        summary = run(CurateConfig(store=store, device=str(resolve_device(device)), **options))
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"{summary['rows']} rows: {summary['outliers']} outliers, {summary['duplicates']} near-duplicates "
               f"in {summary['duplicate_groups']} groups, {summary['bad_reconstructions']} bad reconstructions; "
               f"{summary['flagged']} flagged")
    click.echo(f"flags: {store.rstrip('/')}/curation/flags.parquet")


@main.command()
@click.argument("store")
@click.option("--groups", required=True, help="How rows form groups: labels:COLUMN:URI (CSV/Parquet with image_id "
              "and COLUMN), meta:KEY (a key of the inputs' JSON sidecars), attribute:LAYER/CH[,LAYER/CH]:THRESHOLD "
              "(StyleSpace score, channels from `latentmill channels`), or kmeans:K (clusters of whitened latents).")
@click.option("--target", default="uniform", show_default=True,
              help="Target distribution: 'uniform' or shares such as 'face=0.5,other=0.5'. No row is removed; "
              "groups below their share get new samples.")
@click.option("--output", required=True, help="Where to write images/*.tar, samples.parquet, summary.json (any URI).")
@click.option("--method", type=click.Choice(["compose", "sample"]), default="compose", show_default=True,
              help="compose: paste a part of a member onto another image, then E and G; sample: draw near the "
              "group's latents in the whitened prior space.")
@click.option("--parts", default="half,quadrants,blob", show_default=True,
              help="Kinds of member parts for compose (half, quadrants, blob).")
@click.option("--column", type=click.Choice(["w_refined", "w_encoded", "w_compressed"]), default="w_refined",
              show_default=True, help="Stored latents that define groups and the sampling distribution.")
@click.option("--nll-percentile", default=95.0, show_default=True,
              help="Quality filter: reject candidates whose prior NLL exceeds this percentile of the store's rows.")
@click.option("--min-identity", default=0.5, show_default=True, type=float,
              help="Quality filter: reject candidates whose identity cosine to their source is lower (needs the "
              "store's identity model).")
@click.option("--temperature", default=0.7, show_default=True, help="sample: spread around the group's mean.")
@click.option("--max-attempts", default=4.0, show_default=True,
              help="Candidates per needed sample before a group is given up (its shortfall is reported).")
@click.option("--max-new", default=None, type=int, help="Cap on new samples in total (shares scaled down).")
@click.option("--background-pool", default=512, show_default=True,
              help="Store rows whose inputs serve as backgrounds for compose.")
@click.option("--batch-size", default=32, show_default=True, help="Candidates per batch.")
@click.option("--shard-size", default=1000, show_default=True, help="Samples per output tar shard.")
@click.option("--seed", default=0, show_default=True, help="Seed of picks, masks and samples.")
@click.option("--device", default="auto", show_default=True, help="'auto' (CUDA if present), 'cpu', 'cuda:0', ...")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def rebalance(store: str, device: str, no_progress: bool, **options: object) -> None:
    """Add realistic samples to the under-represented groups of STORE (latent-regression composition).

    Every candidate is a row of OUTPUT/samples.parquet with its provenance (sources, mask, method,
    seed, generator fingerprint) and whether it passed the quality filter; accepted images are in
    OUTPUT/images/*.tar. Before / target / after counts go to summary.json and the store's report.
    """
    from jobs.rebalance import RebalanceConfig, run

    try:
        summary = run(RebalanceConfig(store=store, device=str(resolve_device(device)), progress=not no_progress,
                                      **options))
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    for group in summary["before"]:
        click.echo(f"{group}: {summary['before'][group]} -> {summary['after'][group]} "
                   f"(target {summary['target_counts'][group]}, added {summary['added'][group]})")
    if summary["shortfall"]:
        click.echo(f"short of target after {options['max_attempts']} attempts per sample: {summary['shortfall']}; "
                   "see rejected_because in samples.parquet", err=True)
    click.echo(f"output: {options['output']}")


@main.command()
@click.option("--output", required=True, help="Directory for eval.json and eval.html (created).")
@click.option("--generator", default=None, help="Generator URI (default: the bundled demo model, with its encoder, "
              "prior, identity model and sample).")
@click.option("--encoder", default=None, help="Encoder bundle URI (studies use it to initialize and compose).")
@click.option("--prior", default=None, help="Prior URI (required with --generator).")
@click.option("--images", default=None, help="Real images: folder, tar shards or Parquet (required with --generator).")
@click.option("--identity-model", default=None, help="'facenet' or an EmbeddingNet bundle (default: the demo's "
              "with the demo model, else facenet).")
@click.option("--facenet-weights", default=None, help="URI of FaceNet VGGFace2 weights (with facenet).")
@click.option("--perceptual", type=click.Choice(["lpips", "discriminator", "none"]), default="discriminator",
              show_default=True, help="Perceptual metric of refinement and of the quality tables.")
@click.option("--lpips-weights", default=None, help="URI of LPIPS's VGG16 backbone.")
@click.option("--features", type=click.Choice(["discriminator", "identity", "random"]), default="discriminator",
              show_default=True, help="Features of the realism distance (KID): no Inception weights offline.")
@click.option("--studies", default=",".join(("inversion", "prior", "compression", "composition", "stylespace")),
              show_default=True, help="Which studies to run.")
@click.option("--num-images", default=32, show_default=True, help="Real images used (the first N).")
@click.option("--refine-steps", default="25,50,100,200", show_default=True,
              help="Refinement step counts of the inversion study.")
@click.option("--baseline-steps", default=1000, show_default=True, help="Steps of the official projector recipe.")
@click.option("--baseline-images", default=4, show_default=True,
              help="Images the official recipe inverts (one at a time, so it is the slow part).")
@click.option("--study-steps", default=100, show_default=True, help="Refinement steps inside studies 2-4.")
@click.option("--trials", default=20, show_default=True, help="Planted attributes per positive count (study 5).")
@click.option("--positives", default="10,20,30", show_default=True, help="Positive counts of study 5.")
@click.option("--device", default="auto", show_default=True, help="'auto' (CUDA if present), 'cpu', 'cuda:0', ...")
@click.option("--seed", default=0, show_default=True, help="Seed of every random choice.")
@click.option("--overwrite", is_flag=True, help="Redo studies that an earlier run with the same settings, models "
              "and images already finished (by default they are reused from OUTPUT/eval.json).")
def evaluate(output: str, studies: str, refine_steps: str, positives: str, device: str, **options: object) -> None:
    """Measure the papers' claims on a model: inversion quality against cost (with the official
    projector recipe as baseline), the prior's effect on interpolation, compression against
    truncation, composition, and StyleSpace detection accuracy. Writes OUTPUT/eval.json and
    OUTPUT/eval.html; every figure carries its settings and the model fingerprints.
    """
    from jobs.evaluate import EvaluateConfig, run

    config = EvaluateConfig(output=output, studies=tuple(s.strip() for s in studies.split(",") if s.strip()),
                            refine_steps=tuple(int(s) for s in refine_steps.split(",")),
                            positives=tuple(int(s) for s in positives.split(",")),
                            device=str(resolve_device(device)), **options)
    try:
        report = run(config)
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    for name in config.studies:
        study = report["studies"][name]
        click.echo(f"{name}: {study.get('claim', '')}: {'holds' if study.get('holds') else 'does not hold here'} "
                   f"({study['seconds']} s)")
    click.echo(f"wrote {output}/eval.json and {output}/eval.html")


@main.command()
@click.argument("store")
@click.option("--ids", required=True, help="Comma-separated image ids, or @FILE with one id per line.")
@click.option("--out", "out_dir", required=True, help="Directory for the PNGs (created).")
@click.option("--column", type=click.Choice(["w_refined", "w_encoded", "w_compressed"]), default="w_refined",
              show_default=True, help="Which latents to render.")
@click.option("--generator", default=None, help="Generator URI (default: the one recorded in the store).")
@click.option("--device", default="auto", show_default=True, help="'auto' (CUDA if present), 'cpu', 'cuda:0', ...")
def reconstruct(store: str, ids: str, out_dir: str, column: str, generator: str | None, device: str) -> None:
    """Render stored latents of STORE back into images (one PNG per id)."""
    from pathlib import Path

    from PIL import Image

    from pipeline.data.sources import IMAGE_SUFFIXES
    from pipeline.imaging import to_uint8
    from pipeline.models.checkpoints import load_generator
    from pipeline.models.fingerprint import fingerprint
    from pipeline.store.file_names import safe_file_name
    from pipeline.store.latent_store import latent_array, read_latents, read_store_metadata

    wanted = parse_ids(ids)
    meta = read_store_metadata(store)
    G = load_generator(generator or meta["generator"], device=resolve_device(device))
    if fingerprint(G) != meta["generator_fingerprint"]:
        raise click.UsageError(f"--generator is not the generator this store was made with "
                               f"({meta['generator_fingerprint']})")
    frame = read_latents(store, columns=["image_id", "status", column])
    frame = frame[frame["image_id"].isin(wanted)]
    missing = sorted(set(wanted) - set(frame["image_id"]))
    if missing:
        raise click.UsageError(f"ids not in the store: {missing[:5]}")
    ws = torch.from_numpy(latent_array(frame, column, meta["latent_shape"])).to(G.w_avg.device)
    with torch.no_grad():
        images = to_uint8(G.synthesis(ws, noise_mode=meta.get("noise_mode", "const")))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for image_id, array in zip(frame["image_id"], images):
        stem = image_id.rsplit(".", 1)[0] if image_id.lower().endswith(IMAGE_SUFFIXES) else image_id
        name = safe_file_name(stem, f".{column}.png")
        Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(out / name)
    click.echo(f"wrote {len(frame)} images to {out}")


@main.command()
@click.argument("store")
@click.option("--positives", required=True, help="Image ids showing the attribute (10-30 suffice): comma-separated, "
              "or @FILE with one id per line.")
@click.option("--column", type=click.Choice(["w_refined", "w_encoded", "w_compressed"]), default="w_refined",
              show_default=True, help="Which stored latents to analyse.")
@click.option("--top-k", default=10, show_default=True, help="How many channels to list.")
@click.option("--layers", default=None, help="Only rank these StyleSpace layers (comma-separated, e.g. b16.conv0).")
@click.option("--include-torgb", is_flag=True, help="Also rank toRGB style channels (off, as in the paper).")
@click.option("--generator", default=None, help="Generator URI (default: the one recorded in the store).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def channels(store: str, positives: str, column: str, top_k: int, layers: str | None, include_torgb: bool,
             generator: str | None, as_json: bool) -> None:
    """Find the StyleSpace channels that control an attribute, from a few positive examples.

    Ranks every channel by |mean over positives - mean over the store| / std over the store (Wu et
    al.); the population is every 'ok' row of STORE. Edit with s_c += alpha * std_c.
    """
    from pipeline.models.checkpoints import load_generator
    from pipeline.stages.stylespace import detect_channels, stats_of, styles_of
    from pipeline.store.latent_store import latent_array, read_latents, read_store_metadata

    wanted = parse_ids(positives)
    meta = read_store_metadata(store)
    G = load_generator(generator or meta["generator"], device="cpu")
    frame = read_latents(store, columns=["image_id", "status", column])
    frame = frame[(frame["status"] == "ok") & frame[column].notna()]
    missing = sorted(set(wanted) - set(frame["image_id"]))
    if missing:
        raise click.UsageError(f"--positives not found among the store's ok rows: {missing[:5]}")
    if len(frame) < 3:
        raise click.UsageError("the store needs at least 3 ok rows to estimate the population statistics")
    styles = styles_of(G, torch.from_numpy(latent_array(frame, column, meta["latent_shape"])))
    stats = stats_of(styles)
    mask = torch.tensor(frame["image_id"].isin(wanted).to_numpy(), dtype=torch.bool)
    ranked = detect_channels({k: v[mask] for k, v in styles.items()}, stats, top_k,
                             layers=layers.split(",") if layers else None, include_torgb=include_torgb)
    if as_json:
        click.echo(json.dumps([vars(c) for c in ranked], indent=2))
        return
    click.echo(f"{len(wanted)} positives against {len(frame)} rows of {store}\n")
    click.echo(f"{'rank':>4}  {'layer':<12} {'channel':>7}  {'score':>7}  direction")
    for rank, c in enumerate(ranked, 1):
        click.echo(f"{rank:>4}  {c.layer:<12} {c.channel:>7}  {c.score:7.3f}  {'+' if c.sign > 0 else '-'}")


@main.command("train-generator")
@click.option("--data", required=True, help="Training images: a folder, tar shards or Parquet (any fsspec URI).")
@click.option("--output", required=True, help="Output directory; rerunning with the same one resumes.")
@click.option("--resolution", default=32, show_default=True, help="Image resolution (power of two).")
@click.option("--steps", default=20_000, show_default=True, help="Training steps (one D and one G update each).")
@click.option("--batch-size", default=16, show_default=True, help="Images per step per worker.")
@click.option("--z-dim", default=128, show_default=True, help="Latent z dimensionality.")
@click.option("--w-dim", default=128, show_default=True, help="Intermediate latent w dimensionality.")
@click.option("--mapping-layers", default=4, show_default=True, help="Mapping network depth.")
@click.option("--channel-base", default=4096, show_default=True, help="Channels at resolution r: "
              "min(channel_base // r, channel_max).")
@click.option("--channel-max", default=256, show_default=True, help="Channel cap.")
@click.option("--lr", default=0.0025, show_default=True, help="Adam learning rate of G and D.")
@click.option("--r1-gamma", default=1.0, show_default=True, help="R1 regularization weight (lazy).")
@click.option("--r1-interval", default=16, show_default=True, help="Steps between R1 penalties.")
@click.option("--pl-weight", default=0.0, show_default=True, help="Path-length regularization weight (0 = off).")
@click.option("--style-mixing-prob", default=0.9, show_default=True, help="Style-mixing probability.")
@click.option("--augment", default="color,translation,cutout", show_default=True,
              help="DiffAugment ops applied to everything D sees ('' = none).")
@click.option("--ema-images", default=10_000.0, show_default=True, help="EMA half-life of G_ema, in images.")
@click.option("--checkpoint-every", default=1000, show_default=True,
              help="Steps between checkpoints, sample grids and KID.")
@click.option("--kid-samples", default=1000, show_default=True, help="Samples per KID estimate.")
@click.option("--num-workers", default=1, show_default=True, help="Ray Train workers (data-parallel).")
@click.option("--use-gpu", is_flag=True, help="One GPU per worker.")
@click.option("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")
@click.option("--seed", default=0, show_default=True, help="Seed of initialization and sampling.")
def train_generator(**options: object) -> None:
    """Train a StyleGAN2 (G, G_ema, D) on a small image data set, on Ray Train.

    Non-saturating loss, lazy R1, optional path-length regularization, style mixing, EMA generator,
    DiffAugment. Writes generator.safetensors, checkpoints, sample grids and logs to --output; KID is
    measured on a fixed random-feature network (no pretrained extractor is available offline).
    """
    from jobs.train_generator import GeneratorTrainingConfig, run

    address = options.pop("address")
    click.echo(f"wrote {run(GeneratorTrainingConfig(**options), address=address)}")


@main.command("train-identity")
@click.option("--data", required=True, help="Training images: a folder, tar shards or Parquet (any fsspec URI).")
@click.option("--output", required=True, help="Output directory; rerunning with the same one resumes.")
@click.option("--resolution", default=32, show_default=True, help="Side the embedding network sees (power of two).")
@click.option("--steps", default=2000, show_default=True, help="Training steps.")
@click.option("--batch-size", default=128, show_default=True, help="Images per step per worker (two views each).")
@click.option("--lr", default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--temperature", default=0.1, show_default=True, help="InfoNCE temperature.")
@click.option("--strength", default=1.0, show_default=True, help="Strength of the view degradations (shift, "
              "scale, blur, colour drift, noise, occlusion).")
@click.option("--base-channels", default=32, show_default=True, help="Channels of the first conv block.")
@click.option("--max-channels", default=128, show_default=True, help="Channel cap.")
@click.option("--embedding-dim", default=64, show_default=True, help="Embedding size.")
@click.option("--checkpoint-every", default=500, show_default=True, help="Steps between checkpoints and evaluations.")
@click.option("--num-workers", default=1, show_default=True, help="Ray Train workers (data-parallel).")
@click.option("--use-gpu", is_flag=True, help="One GPU per worker.")
@click.option("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")
@click.option("--seed", default=0, show_default=True, help="Seed of initialization and views.")
def train_identity(**options: object) -> None:
    """Train an identity embedding (EmbeddingNet) for data FaceNet does not cover.

    Contrastive (InfoNCE): two reconstruction-like degradations of an image embed close, other
    images far. Pass the written identity.safetensors to `invert --identity-model`. Reports the
    top-1 accuracy of finding an image from a degraded view among all training images.
    """
    from jobs.train_identity import IdentityTrainingConfig, run

    address = options.pop("address")
    click.echo(f"wrote {run(IdentityTrainingConfig(**options), address=address)}")


@main.command("make-demo-data")
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
    """
    from jobs.make_demo_data import run

    try:
        run(output, font_path=font_path, resolution=resolution, shard_size=shard_size, limit=limit)
    except FileNotFoundError as exc:
        raise click.UsageError(str(exc)) from None


if __name__ == "__main__":
    main()

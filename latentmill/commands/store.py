"""Commands that read a latent store: report, curate, rebalance, augment, reconstruct, channels."""

from __future__ import annotations

import json

import click

from latentmill.errors import as_usage_errors, parse_ids
from latentmill.options import options_from
from pipeline.curation.curation_settings import CurateConfig
from pipeline.curation.rebalance_settings import RebalanceConfig
from pipeline.augment.augment_settings import AugmentConfig
from pipeline.export.export_settings import INDEX_MIN_ROWS, ExportConfig
from pipeline.report.report_settings import ReportConfig
from pipeline.stages.stylespace_settings import ChannelsConfig
from pipeline.store.reconstruct_settings import ReconstructConfig


@click.command()
@options_from(ReportConfig, first=("self_contained", "in_domain", "exclude_flagged"))
def report(**options: object) -> None:
    """Write STORE/report.html, the page to read (and send) after a run.

    A verdict (what ran, how well, what failed), labelled contact sheets (input | encoded | refined
    | compressed with each image's metrics), an in-domain check, histograms of MSE, perceptual
    distance, identity cosine and prior NLL, errors, the compression-vs-truncation curve, and the
    curation and rebalancing sections when they have run.

    \b
    Examples:
      latentmill report out/store && xdg-open out/store/report.html
      latentmill report out/store --self-contained      # one file to mail
    """
    from pipeline.report.html_report import build_report
    from pipeline.uris import link

    with as_usage_errors(ValueError):
        config = ReportConfig(**options)
    with as_usage_errors(FileNotFoundError, ValueError):
        uri = build_report(config.store, sheet_size=config.sheet_size, curve_images=config.curve_images,
                           generator=config.generator, device=config.device, self_contained=config.self_contained,
                           in_domain=config.in_domain, progress=config.progress, exclude_flagged=config.exclude_flagged)
    click.echo(f"report: {link(uri)}")


@click.command()
@options_from(CurateConfig)
def curate(**options: object) -> None:
    """Flag outliers (prior NLL percentile), near-duplicates (blockwise cosine search) and bad
    reconstructions (MSE, perceptual, identity) among the ok rows of STORE.

    Writes STORE/curation/flags.parquet (schema flags v2) and summary.json; `latentmill report`
    then shows them. With --against, rows with a near-duplicate in another store (train/test
    leakage) are flagged too, naming it.

    \b
    Examples:
      latentmill curate out/store --duplicate-threshold 0.9
      latentmill curate out/test-store --against out/store --duplicates-by latent
    """
    from jobs.curate import run

    config = CurateConfig(**options)
    with as_usage_errors(FileNotFoundError, ValueError):
        summary = run(config)
    click.echo(f"{summary['rows']} rows: {summary['outliers']} outliers, {summary['duplicates']} near-duplicates "
               f"in {summary['duplicate_groups']} groups, {summary['bad_reconstructions']} bad reconstructions; "
               f"{summary['flagged']} flagged")
    if config.against:
        click.echo(f"{summary['cross_duplicates']} rows have a near-duplicate in {', '.join(config.against)} "
                   "(cross_duplicate)")
    click.echo(f"flags: {config.store.rstrip('/')}/curation/flags.parquet")


@click.command()
@options_from(RebalanceConfig, first=("groups", "output", "target", "method"))
def rebalance(**options: object) -> None:
    """Add realistic samples to the under-represented groups of STORE (latent-regression composition).

    Every candidate is a row of OUTPUT/samples.parquet with its provenance (sources, mask, method,
    seed, generator fingerprint) and whether it passed the quality filter; accepted images are in
    OUTPUT/images/*.tar. Before / target / after counts go to summary.json and the store's report.

    \b
    Example:
      latentmill rebalance out/store --groups meta:group --output out/rebalanced
    """
    from jobs.rebalance import run

    config = RebalanceConfig(**options)
    with as_usage_errors(FileNotFoundError, ValueError):
        summary = run(config)
    for group in summary["before"]:
        click.echo(f"{group}: {summary['before'][group]} -> {summary['after'][group]} "
                   f"(target {summary['target_counts'][group]}, added {summary['added'][group]})")
    click.echo(nll_filter_line(summary, config.nll_percentile))
    if summary["shortfall"]:
        click.echo(f"short of target after {config.max_attempts} attempts per sample: {summary['shortfall']}; "
                   "see rejected_because in samples.parquet", err=True)
    click.echo(f"output: {config.output}")


@click.command()
@options_from(ExportConfig, first=("format", "output", "column"))
def export(**options: object) -> None:
    """Export STORE's ok rows for teams that query by vector: a Lance dataset with an IVF_PQ index.

    One row per ok row with every metric column; the latent as fixed_size_list<float32>[num_ws *
    w_dim] (its shape in the schema metadata). A rerun appends only the store shards the dataset
    lacks (an unchanged store changes nothing; a killed export resumes without duplicates). Read it
    with Lance, DuckDB, Polars or Ray Data (schemas/README.md); `open_store(STORE).nearest(...)`
    then answers from its index.

    \b
    Examples:
      latentmill export out/store --format lance --output out/store.lance
      latentmill export out/store --format lance --output s3://team/latents.lance --column w_encoded --exclude-flagged
    """
    from jobs.export import run

    config = ExportConfig(**options)
    with as_usage_errors(FileNotFoundError, ValueError):
        result = run(config)
    change = (f"appended {result['appended_rows']:,} rows of {result['appended_shards']} store shards"
              if result["appended_shards"] else "nothing to append: the store is unchanged since the last export")
    index = result["index"]
    index_line = (f"{index['type']} index on {result['column']} ({index['indexed_rows']:,} rows indexed)" if index
                  else f"no index yet (fewer than {INDEX_MIN_ROWS:,} rows: queries scan them all, exactly)")
    click.echo(f"{result['output']}: {result['rows']:,} rows, version {result['version']}; {change}; {index_line}")


@click.command()
@options_from(AugmentConfig, first=("output", "edits", "variants"))
def augment(**options: object) -> None:
    """Make K edited variants of every ok row of STORE: StyleSpace edits, style mixing, prior jitter, composition.

    Every variant is a row of OUTPUT/samples.parquet (schema augment v1) with its source, edit,
    parameters, seed, latent, prior NLL, identity and MSE to its source, and whether it passed the
    quality filter; accepted images are in OUTPUT/images/augment-*.tar (PNG + JSON provenance, read
    with the webdataset library). Units of source rows run on the actor pool, each exactly once; a
    rerun resumes, and after the store grew makes only its new rows' variants.

    \b
    Examples:
      latentmill augment out/store --output out/augmented --edits jitter:0.3,mix:4-7 --variants 2
      latentmill augment out/store --output out/smiles --edits attribute:b16.conv0/42:3 --variants 4 --runner local
      latentmill augment out/store --output gs://bucket/aug --edits compose:half,jitter:0.2 --address auto \\
          --concurrency 8 --num-gpus 1 --min-identity 0.6
    """
    from jobs.augment import run

    config = AugmentConfig(**options)
    with as_usage_errors(FileNotFoundError, ValueError):
        summary = run(config)
    rejected = ", ".join(f"{n:,} for {why}" for why, n in summary["rejected"].items() if n) or "none"
    click.echo(f"{summary['sources']:,} sources: {summary['variants']:,} variants, {summary['accepted']:,} accepted "
               f"(rejected: {rejected})")
    if summary["units_failed"]:
        failed = summary["units_failed"]
        click.echo(f"{len(failed)} units failed every attempt ({', '.join(failed[:5])}); rerun to retry them",
                   err=True)
    click.echo(f"samples: {summary['samples']}")
    click.echo(f"images: {summary['images']}/augment-*.tar")


def nll_filter_line(summary: dict, percentile: float) -> str:
    """The quality filter's bound on the prior-NLL scale users read elsewhere: a typical latent of G scores
    about w_dim, so a bound far above it says the store's own latents lie outside the prior."""
    cut, typical = summary["nll_cut"], summary["nll_typical"]
    return (f"quality filter: prior NLL at most {cut:,.0f} (p{percentile:g} of the store's {summary['nll_reference']}; "
            f"{cut / typical:,.1f}x the {typical:,.0f} of a typical latent of G)")


@click.command()
@options_from(ReconstructConfig, first=("ids", "output"))
def reconstruct(**options: object) -> None:
    """Render stored latents of STORE back into images (one PNG per id).

    \b
    Example:
      latentmill reconstruct out/store --ids face1.png,face2.png --output renders/
    """
    from pathlib import Path

    import torch
    from PIL import Image

    from pipeline.data.sources import IMAGE_SUFFIXES
    from pipeline.devices import resolve_device
    from pipeline.imaging import to_uint8
    from pipeline.stages.chain import NOISE_MODE
    from pipeline.store.file_names import distinct_file_names
    from pipeline.store.store import open_store

    with as_usage_errors(ValueError):
        config = ReconstructConfig(**options)
    column, out_dir = config.column, config.output
    wanted = parse_ids(config.ids)
    opened = open_store(config.store)
    G = opened.load_models(resolve_device(config.device), generator=config.generator).G
    frame = opened.to_pandas(["image_id", "status", column])
    frame = frame[frame["image_id"].isin(wanted)]
    missing = sorted(set(wanted) - set(frame["image_id"]))
    if missing:
        raise click.UsageError(f"ids not in the store: {missing[:5]}")
    with as_usage_errors(ValueError):
        ws = torch.from_numpy(opened.latents(frame, column)).to(G.w_avg.device)
    with torch.no_grad():
        images = to_uint8(G.synthesis(ws, noise_mode=opened.metadata.get("noise_mode", NOISE_MODE)))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise click.UsageError(f"--output {out_dir} is a file; reconstruct writes a folder of PNGs: name a folder")
    out.mkdir(parents=True, exist_ok=True)
    names = distinct_file_names(list(frame["image_id"]), f".{column}.png", strip=IMAGE_SUFFIXES)
    for name, array in zip(names, images):
        Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(out / name)
    click.echo(f"wrote {len(frame)} images to {out}")


@click.command()
@options_from(ChannelsConfig, first=("positives", "top_k"))
def channels(**options: object) -> None:
    """Find the StyleSpace channels that control an attribute, from a few positive examples.

    Ranks every channel by |mean over positives - mean over the store| / std over the store (Wu et
    al.); the population is every 'ok' row of STORE. Edit with s_c += alpha * std_c.

    \b
    Example:
      latentmill channels out/store --positives @smiling.txt --top-k 5
    """
    import torch

    from pipeline.stages.stylespace import detect_channels, stats_of, styles_of
    from pipeline.store.store import open_store

    with as_usage_errors(ValueError):
        config = ChannelsConfig(**options)
    column, layers = config.column, config.layers
    wanted = parse_ids(config.positives)
    opened = open_store(config.store)
    G = opened.load_models("cpu", generator=config.generator).G
    frame = opened.to_pandas(["image_id", "status", column])
    frame = frame[(frame["status"] == "ok") & frame[column].notna()]
    missing = sorted(set(wanted) - set(frame["image_id"]))
    if missing:
        raise click.UsageError(f"--positives not found among the store's ok rows: {missing[:5]}")
    if len(frame) < 3:
        raise click.UsageError("the store needs at least 3 ok rows to estimate the population statistics")
    styles = styles_of(G, torch.from_numpy(opened.latents(frame, column)))
    stats = stats_of(styles)
    mask = torch.tensor(frame["image_id"].isin(wanted).to_numpy(), dtype=torch.bool)
    ranked = detect_channels({k: v[mask] for k, v in styles.items()}, stats, config.top_k,
                             layers=layers.split(",") if layers else None, include_torgb=config.include_torgb)
    if config.json:
        click.echo(json.dumps([vars(c) for c in ranked], indent=2))
        return
    click.echo(f"{len(wanted)} positives against {len(frame)} rows of {config.store}\n")
    click.echo(f"{'rank':>4}  {'layer':<12} {'channel':>7}  {'score':>7}  direction")
    for rank, c in enumerate(ranked, 1):
        click.echo(f"{rank:>4}  {c.layer:<12} {c.channel:>7}  {c.score:7.3f}  {'+' if c.sign > 0 else '-'}")



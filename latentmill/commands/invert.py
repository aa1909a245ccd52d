"""Commands that make a latent store: demo, invert, verify."""

from __future__ import annotations

import sys

import click

from latentmill.errors import as_usage_errors
from latentmill.options import options_from
from pipeline.demo_settings import DemoConfig
from pipeline.invert.config import InvertConfig

INVERT_FIRST = ("input", "output", "generator", "encoder", "prior", "stages")


@click.command()
@options_from(InvertConfig, first=INVERT_FIRST)
def invert(**options: object) -> None:
    """Invert every image of a dataset through a StyleGAN2 into a Parquet latent store.

    Stages: encode (one forward pass of the regressor), refine (batched optimization of W+ against
    pixel + perceptual losses and the gaussianized prior), compress (PCA log-compression beyond
    tau), identity (FaceNet cosine between input and reconstructions). Every input yields exactly
    one row (with --align ffhq --faces all, one per face); failures are rows with status 'error'
    and a reason.

    \b
    Example:
      latentmill invert --input photos/ --output out/store --generator ffhq.pkl \\
          --encoder encoder.safetensors --prior prior.safetensors
    """
    from jobs.invert import EveryRowFailedError, run

    config = InvertConfig(**options)
    try:
        with as_usage_errors(ValueError):
            summary = run(config)
    except EveryRowFailedError as exc:
        echo_run_summary(config.output, exc.summary)
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    echo_run_summary(config.output, summary)
    if summary.shards_failed:
        click.echo(f"error: {len(summary.shards_failed)} shards failed after retries: {summary.shards_failed}; "
                   "see manifest/*.failed.json, then rerun to retry them", err=True)
        sys.exit(1)


def echo_run_summary(output: str, summary) -> None:
    """The end of a run in a few lines: what this run did, what the store holds (errors by reason),
    where it is (absolute links) and the command to run next."""
    from pipeline.store import layout
    from pipeline.store.store import open_store
    from pipeline.uris import link

    store = output.rstrip("/")
    if summary.shards_done or summary.shards_failed:
        click.echo(f"this run:  {summary.shards_done} shards, {summary.rows} rows in {summary.seconds:.0f} s "
                   f"({summary.images_per_second:.2f} rows/s after a start-up of {summary.startup_seconds:.1f} s), "
                   f"{summary.retries} retries"
                   + (f", {summary.requeued} shards run again after their node was lost" if summary.requeued else "")
                   + (f", {len(summary.shards_failed)} shards failed" if summary.shards_failed else ""))
    else:
        click.echo(f"this run:  nothing to do, all {summary.shards_skipped} shards were already done")
    totals = summary.store_totals  # the run's own read of the manifest: not read again
    if not totals:
        opened = open_store(store)
        totals = {"rows": opened.count_rows(), "error_reasons": opened.error_reasons()}
    rows, reasons = totals["rows"], totals["error_reasons"]
    errors = sum(reasons.values())
    by_reason = f" ({', '.join(f'{n} {reason}' for reason, n in reasons.items())})" if reasons else ""
    click.echo(f"the store: {rows} rows, {rows - errors} ok, {errors} errors{by_reason}")
    click.echo(f"latents:   {link(layout.join(store, layout.LATENTS) + '/')}\n"
               f"manifest:  {link(layout.join(store, layout.SUMMARY))}")
    click.echo(f"next:      latentmill report {store}   (then open {link(layout.join(store, layout.REPORT))})")


@click.command()
@click.argument("store")
@click.option("--repair", is_flag=True, help="Move damaged shard files to STORE/quarantine/ and drop their manifest "
              "entries, and rebuild damaged records (recipe, plan, precision), so the next invert completes the store.")
@click.option("--quick", is_flag=True, help="Only the cheap checks (files present with their recorded sizes, entries "
              "naming the store's recipe).")
def verify(store: str, repair: bool, quick: bool) -> None:
    """Check every file of STORE against its manifest, recipe and plan; exit 1 on a problem.

    Checks: each finished shard's file exists with its recorded size and sha256, every page of every
    column reads against its checksum, its rows are the manifest's; schema version, and the shard's
    own recorded recipe, models and settings are the store's; ids unique across the store; every
    planned shard finished, failed or still to run; the recipe, plan and precision records readable.

    \b
    Example:
      latentmill verify out/store
      latentmill verify out/store --repair && latentmill invert ...   # redo what was damaged
    """
    from pipeline.store.verify import RepairError, repair_store, verify_store
    from pipeline.store.writer import claim

    report = verify_store(store, full=not quick, defaults=InvertConfig.defaults())
    for line in report.lines():
        click.echo(line)
    if repair and report.repairable:
        with claim(store, wait_hint="") as writer, as_usage_errors(RepairError):
            for line in repair_store(writer, report):
                click.echo(f"repaired: {line}")
        click.echo("the next `latentmill invert` with the store's recipe redoes what was moved aside")
        return
    if not report.ok:
        sys.exit(1)


@click.command()
@options_from(DemoConfig, first=("output", "limit", "steps"))
def demo(**options: object) -> None:
    """Run the pipeline on the bundled demo model and emoji sample, then write report.html.

    invert (encode, refine, compress, identity) -> curate (outliers, near-duplicates, bad
    reconstructions) -> rebalance (faces are under-represented among emoji: compose new ones
    through E and G) -> report. No download and no GPU needed: the generator, prior, encoder and
    identity embedding in pipeline/assets/demo were trained by latentmill's own jobs (see its
    MODEL_CARD.md).

    \b
    Example:
      latentmill demo                  # about 10 minutes on 2 CPU cores
      latentmill demo --limit 8        # a quick look
    """
    from jobs.demo import run

    with as_usage_errors(ValueError):
        config = DemoConfig(**options)
    run(config, echo=click.echo)

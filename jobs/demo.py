"""`latentmill demo`: the whole pipeline on the bundled demo model and emoji sample.

invert -> curate -> rebalance (faces are under-represented among emoji) -> report, each step
reused when an earlier run already made it with the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable

from jobs import curate, invert, rebalance
from pipeline.demo import demo_config
from pipeline.demo_settings import DemoConfig
from pipeline.report.verdict import rebalance_shortfall
from pipeline.uris import link


def run(settings: DemoConfig, *, echo: Callable[[str], None] = print) -> str:
    """Run the demo into settings.output; returns the report's URI. `echo` receives one line per step."""
    from pipeline.report.html_report import build_report

    config = demo_config(settings)
    output, progress = settings.output, settings.progress
    device = "cuda" if settings.num_gpus > 0 else "cpu"
    summary = invert.run(config)
    if summary.shards_done == 0 and summary.shards_skipped:
        echo(f"invert: reused: all {summary.shards_skipped} shards were already done; latents: {config.output}/latents/")
    else:
        echo(f"inverted {summary.rows} images ({summary.ok} ok, {summary.errors} errors) in "
             f"{summary.seconds:.0f} s after a start-up of {summary.startup_seconds:.0f} s; latents: "
             f"{config.output}/latents/")
    flags = curate.run(curate.CurateConfig(store=config.output, device=device, progress=progress))
    echo(("curate: reused: " if flags.get("reused") else "curate: ") +
         f"{flags['outliers']} outliers, {flags['duplicates']} near-duplicates, "
         f"{flags['bad_reconstructions']} bad reconstructions")
    try:
        counts = rebalance.run(rebalance.RebalanceConfig(store=config.output, output=f"{output.rstrip('/')}/rebalanced",
                                                         groups="meta:group", device=device, progress=progress))
        echo(("rebalance: reused: " if counts.get("reused") else "rebalance: ") +
             ", ".join(f"{g} {counts['before'][g]} -> {counts['after'][g]} (target {counts['target_counts'][g]})"
                       for g in counts["before"]))
        short = rebalance_shortfall(counts)
        if short:
            echo(f"rebalance: {short}; the report's verdict says so too")
    except ValueError as exc:  # e.g. a --limit subset with a single group
        echo(f"rebalance skipped: {exc}")
    report = build_report(config.output, device=device, progress=progress)
    echo(f"report: {link(report)}")
    echo("next:   open the report; then try `latentmill invert --input YOUR_IMAGES --output out/store --generator "
         "YOUR_GENERATOR` (README: Invert your own images)")
    return report

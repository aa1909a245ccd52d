"""The report's first block: what ran, when, how long, how fast, how well, and what went wrong.

Written so that someone who opens the report cold (a reviewer, the person who asked for the run)
learns in a few lines whether it worked, before any table or chart.
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from pipeline.report.report_rows import ReportRows
from pipeline.models.identity import FACENET_NAME, identity_band

TOY_RESOLUTION = 64  # at or below this, reconstructions are blurry whatever the pipeline does


def _median(frame: pd.DataFrame, column: str) -> float | None:
    return float(frame[column].median()) if column in frame and frame[column].notna().any() else None


def headline(rows: ReportRows, meta: dict[str, Any]) -> str:
    """One sentence: how many rows worked and the median quality figures (of the report's sample)."""
    ok = rows.sample[rows.sample["status"] == "ok"]
    parts = [f"{rows.ok:,} of {rows.rows:,} images inverted ({rows.ok / max(rows.rows, 1):.0%})"]
    figures = []
    for column, name in (("mse", "MSE"), ("perceptual", f"perceptual ({meta.get('perceptual_metric', '?')})"),
                         ("id_cosine_refined", "identity cosine")):
        value = _median(ok, column)
        if value is not None:
            text = f"{name} {value:.4f}"
            if column == "id_cosine_refined" and meta.get("identity_model") == FACENET_NAME:
                text += f" ({identity_band(value)})"
            figures.append(text)
    if figures:
        parts.append("median " + ", ".join(figures))
    return "; ".join(parts) + "."


def verdict_block(rows: ReportRows, meta: dict[str, Any], manifest: dict[str, Any] | None,
                  shard_entries: dict[str, dict[str, Any]], failed_shards: list[str], in_domain: str | None,
                  toy_caption: str | None, rebalanced: dict[str, Any] | None = None, excluded: int = 0) -> str:
    """manifest: STORE/manifest.json (the last run's summary) or None; shard_entries: each finished
    shard's manifest entry (when and how long it ran), for stores whose last run did not finish."""
    settings = meta.get("settings", {})
    items = []
    stages = settings.get("stages", [])
    refined = (f"precision {html.escape(str(settings.get('precision', '?')))}, {settings.get('steps', '?')} "
               "refinement steps." if "refine" in stages else "no refinement.")
    items.append(f"<b>What ran</b>: {html.escape(', '.join(stages) or '?')} on "
                 f"<code>{html.escape(str(settings.get('input', '?')))}"
                 f"</code> with <code>{html.escape(str(meta.get('generator', '?')))}</code> "
                 f"({meta.get('img_resolution', '?')} px, W+ {meta.get('latent_shape', '?')}), " + refined)
    last = (manifest or {}).get("last_run") or {}
    if not last and shard_entries:
        finished = [e["finished_at"] for e in shard_entries.values() if e.get("finished_at")]
        seconds = sum(float(e.get("seconds", 0)) for e in shard_entries.values())
        rows = sum(int(e.get("rows", 0)) for e in shard_entries.values())
        items.append(f"<b>When</b>: {len(shard_entries)} shards finished, the last at "
                     f"{html.escape(max(finished) if finished else '?')}; {seconds:.0f} s of shard work "
                     f"({rows / seconds if seconds else 0:.2f} images/s per actor). No manifest.json: the last run "
                     "did not finish; rerun invert to complete it.")
    if last:
        items.append(f"<b>When</b>: last run finished {html.escape(str(last.get('finished_at', '?')))}, "
                     f"{last.get('seconds', 0):.0f} s of work at {last.get('images_per_second', 0):.2f} images/s "
                     f"after a start-up of {last.get('startup_seconds', 0):.1f} s "
                     f"({last.get('shards_processed', 0)} shards run, {last.get('shards_skipped', 0)} already done).")
    if excluded:
        items.append(f"<b>Rows shown</b>: {excluded:,} rows that <code>latentmill curate</code> flagged are left "
                     "out of every count, sheet and chart (--exclude-flagged).")
    problems = []
    if rows.error_reasons:
        problems.append(f"{sum(rows.error_reasons.values()):,} error rows (" + ", ".join(
            f"{n:,} {html.escape(r)}" for r, n in rows.error_reasons.items()) + "; listed under Errors)")
    if failed_shards:
        problems.append(f"{len(failed_shards)} shards failed after retries ({html.escape(', '.join(failed_shards[:5]))}"
                        "; rerun invert to retry them)")
    shortfall = rebalance_shortfall(rebalanced)
    if shortfall:
        problems.append(html.escape(shortfall) + " (listed under Rebalancing)")
    items.append("<b>Problems</b>: " + ("; ".join(problems) if problems else "none."))
    if in_domain:
        items.append(f"<b>In-domain check</b>: {in_domain}")
    listing = "".join(f"<li>{item}</li>" for item in items)
    caption = f'<p class="caption">{toy_caption}</p>' if toy_caption else ""
    return (f'<section class="verdict"><h2>Verdict</h2><p class="headline">{html.escape(headline(rows, meta))}</p>'
            f"<ul>{listing}</ul>{caption}</section>")


def rebalance_shortfall(summary: dict[str, Any] | None) -> str | None:
    """What the last rebalance fell short of, and why, in a sentence (None: it reached every target)."""
    short = (summary or {}).get("shortfall") or {}
    if not short:
        return None
    groups = ", ".join(f"{g} {summary['after'][g]} of target {summary['target_counts'][g]}" for g in short)
    rejected = {k: v for k, v in (summary.get("rejected") or {}).items() if v}
    why = ", ".join(f"{n:,} candidates rejected by the {REJECTION_NAMES.get(r, r)}" for r, n in rejected.items())
    attempts = (summary.get("settings") or {}).get("max_attempts")
    return (f"rebalancing fell short: {groups}" + (f"; {why}" if why else "")
            + (f", within {attempts:g} candidates per needed sample (--max-attempts)" if attempts else ""))


REJECTION_NAMES = {"prior_nll": "prior-NLL filter (--nll-percentile)", "identity": "identity filter (--min-identity)",
                   "enough": "group already full (stores rebalanced before candidates had streams of their own)"}


def toy_caption(meta: dict[str, Any], is_demo: bool) -> str | None:
    resolution = meta.get("img_resolution") or 0
    if not is_demo and resolution > TOY_RESOLUTION:
        return None
    who = "the bundled demo model, a toy StyleGAN2 trained on CPU" if is_demo else \
        f"a {resolution} px generator"
    return (f"This store was made with {who} ({resolution} px): at this size reconstructions look soft and "
            "blobby whatever the inversion does. Judge the pipeline by the in-domain check (the model's own "
            "images, which it can represent) and by the metrics, not by sharpness; a 256 or 1024 px generator "
            "(e.g. FFHQ) gives photographic reconstructions with the same commands.")

"""`latentmill report STORE`: one self-contained HTML page (plus PNGs beside it) about a latent store.

What a user checks after a run: did the inversions work (contact sheets input | encoded | refined |
compressed, a random sample and the worst reconstructions), how the metrics are spread (MSE,
perceptual distance, identity cosine, prior NLL), what failed and why, and what compression costs
against truncation. Written to STORE/report.html and STORE/report/*.png; works for any store.
"""

from __future__ import annotations

import html
import io
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image

from pipeline.devices import resolve_device
from pipeline.report.exact_latents import exact_latent_section
from pipeline.report.images import ImageRow, ReportImages, fmt, image_table
from pipeline.report.report_rows import collect, with_latents
from pipeline.report.in_domain import SEED as IN_DOMAIN_SEED
from pipeline.report.in_domain import in_domain_check, store_inversion_settings
from pipeline.report.svg_charts import histogram_svg, line_chart_svg
from pipeline.report.verdict import toy_caption, verdict_block
from pipeline.report.tradeoff import TradeoffPoint, compression_truncation_curve
from pipeline.model_set import ModelSet
from pipeline.models.identity import FACENET_NAME, identity_band
from pipeline.store import layout
from pipeline.store.derived_outputs import StoreFolder, inputs_key, reuse_or_compute
from pipeline.store.flags_schema import FLAGS
from pipeline.store.schema import latent_array
from pipeline.store.store import Store, open_store
from pipeline.store.writer import StoreWriter, claim

SHEET_COLUMNS = ("input", "w_encoded", "w_refined", "w_compressed")


TILE_TITLES = {"input": "input", "w_encoded": "encoded", "w_refined": "refined", "w_compressed": "compressed"}


def sheet_rows(G: Any, meta: dict[str, Any], rows: pd.DataFrame, inputs: torch.Tensor,
               notes: dict[str, str] | None = None) -> tuple[list[ImageRow], list[str]]:
    """One labelled row per image: id, metrics, then the input and G of each latent column present."""
    columns = [c for c in SHEET_COLUMNS[1:] if c in rows and rows[c].notna().all()]
    rendered = {}
    with torch.no_grad():
        for column in columns:
            ws = torch.from_numpy(latent_array(rows, column, meta["latent_shape"])).to(G.w_avg.device)
            rendered[column] = G.synthesis(ws, noise_mode=meta.get("noise_mode", "const")).float().cpu()
    facenet = meta.get("identity_model") == FACENET_NAME
    out = []
    for i, row in enumerate(rows.itertuples(index=False)):
        values = row._asdict()
        metrics = {title: fmt(values.get(column)) for column, title in METRIC_TITLES.items()
                   if column in rows and rows[column].notna().any()}
        classes = {}
        identity = values.get("id_cosine_refined")
        if facenet and identity is not None and np.isfinite(identity):
            metrics["identity"] += f" ({identity_band(identity)})"
            classes["identity"] = identity_band(identity).replace(" ", "-")
        out.append(ImageRow(str(values["image_id"]), metrics, [inputs[i]] + [rendered[c][i] for c in columns],
                            note=(notes or {}).get(values["image_id"], ""), classes=classes))
    return out, ["input"] + [TILE_TITLES[c] for c in columns]


METRIC_TITLES = {"mse": "MSE", "mse_encoded": "MSE encoded", "perceptual": "perceptual", "id_cosine_refined": "identity"}


def _histograms(frame: pd.DataFrame, meta: dict[str, Any]) -> list[str]:
    ok = frame[frame["status"] == "ok"]
    w_dim = meta["latent_shape"][1]
    charts = []

    def have(*names: str) -> dict[str, np.ndarray]:
        return {n: ok[n].dropna().to_numpy(float) for n in names if n in ok and ok[n].notna().any()}

    if mse := have("mse_encoded", "mse"):
        charts.append(histogram_svg({"encoded" if k == "mse_encoded" else "refined": v for k, v in mse.items()},
                                    title="pixel MSE vs input", x_label="MSE ([-1, 1] units)"))
    if perceptual := have("perceptual"):
        charts.append(histogram_svg({"refined": perceptual["perceptual"]},
                                    title=f"perceptual distance ({meta.get('perceptual_metric', '?')})",
                                    x_label="distance"))
    if cosines := have("id_cosine_refined", "id_cosine_compressed"):
        charts.append(histogram_svg({k.removeprefix("id_cosine_"): v for k, v in cosines.items()},
                                    title=f"identity cosine ({meta.get('identity_model', '?')})", x_label="cosine"))
    if nll := have("prior_nll_encoded", "prior_nll_refined", "prior_nll_compressed"):
        charts.append(histogram_svg({k.removeprefix("prior_nll_"): v for k, v in nll.items()},
                                    title=f"prior NLL (a typical latent: about {w_dim})", x_label="prior NLL"))
    return charts


def _curve(store: Store, models: ModelSet, rows: pd.DataFrame,
           inputs: dict[str, torch.Tensor]) -> tuple[str, list[TradeoffPoint]]:
    """The compression-vs-truncation chart, or a sentence saying why there is none."""
    meta = store.metadata
    if not meta.get("prior"):
        return "<p>No prior was used for this store, so there is no compression curve.</p>", []
    if "w_refined" not in rows or rows.empty or rows["w_refined"].isna().all():
        return "<p>No refined latents, so there is no compression curve.</p>", []
    if "identity" not in store.settings.get("stages", ()):
        return ("<p>The store's run scored no identity (no identity stage), so there is no identity-vs-prior "
                "curve.</p>"), []
    try:
        store.add_models(models, prior=True, identity=True)  # the report's G, not loaded again
        prior, identity, name = models.prior, models.identity, models.names["identity"]
    except (OSError, ValueError) as exc:
        return f"<p>No compression curve: {html.escape(str(exc))}</p>", []
    ws = torch.from_numpy(latent_array(rows, "w_refined", meta["latent_shape"]))
    points = compression_truncation_curve(models.G, prior, identity, _stack(inputs, rows["image_id"]), ws,
                                          noise_mode=meta.get("noise_mode", "const"))
    series = {
        "compression (tau)": [(p.prior_nll, p.identity, f"{p.parameter:g}") for p in points if p.method == "compression"],
        "truncation (psi)": [(p.prior_nll, p.identity, f"{p.parameter:g}") for p in points if p.method == "truncation"],
    }
    nll = [p.prior_nll for p in points if p.prior_nll > 0]
    wide = bool(nll) and max(nll) > 20 * min(nll)  # e.g. truncation far outside the prior's support
    chart = line_chart_svg(series, title=f"identity kept vs distance from the prior ({len(rows)} images)",
                           x_label="prior NLL of the moved latents", y_label=f"identity cosine ({name})", log_x=wide)
    return chart, points


def _read_flags(store: Store) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """The flags table of `latentmill curate` and its settings, or None if the store was not curated."""
    found = store.read_table(layout.FLAGS, FLAGS)
    return None if found is None else (found[0].to_pandas(), found[1]["settings"])


def _flagged_rows(flags: pd.DataFrame, sheet_size: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The outliers (highest prior NLL first), duplicates and rows with a duplicate in another store (highest
    cosine first) the report shows."""
    outliers = flags[flags["outlier"]].sort_values("prior_nll", ascending=False).head(sheet_size)
    duplicates = flags[flags["duplicate"]].sort_values("duplicate_cosine", ascending=False).head(sheet_size)
    crossed = flags.head(0)
    if "cross_duplicate" in flags:  # flags v2
        crossed = flags[flags["cross_duplicate"]].sort_values("cross_duplicate_cosine", ascending=False)
        crossed = crossed.head(sheet_size)
    return outliers, duplicates, crossed


def _other_stores_inputs(crossed: pd.DataFrame) -> dict[tuple[str, str], torch.Tensor]:
    """The inputs of the other stores' rows that `crossed` names, by (store, image_id): each store's ids and
    shards read once, a batch at a time."""
    found: dict[tuple[str, str], torch.Tensor] = {}
    for uri, rows in crossed.groupby("cross_duplicate_store"):
        other, wanted = open_store(uri), set(rows["cross_duplicate_of"])
        ids, shards = [], []
        for batch in other.iter_batches(["image_id", "shard"]):
            hit = pc.is_in(batch.column("image_id"), pa.array(sorted(wanted)))
            ids += batch.column("image_id").filter(hit).to_pylist()
            shards += batch.column("shard").filter(hit).to_pylist()
        found.update({(uri, i): x for i, x in other.read_inputs(shards, ids).items()})
    return found


def _curation_section(G: Any, meta: dict[str, Any], ok: pd.DataFrame, flags: pd.DataFrame,
                      settings: dict[str, Any], inputs: dict[str, torch.Tensor], sheet_size: int,
                      images: ReportImages) -> str:
    """Counts of `latentmill curate` flags, the strongest outliers and the duplicate pairs."""
    counts = [("rows curated", len(flags)), ("outliers (prior NLL > p%g)" % settings["outlier_percentile"],
                                             int(flags["outlier"].sum())),
              (f"near-duplicates (cosine >= {settings['duplicate_threshold']} by {settings['duplicates_by']})",
               int(flags["duplicate"].sum())),
              ("bad reconstructions", int(flags["bad_reconstruction"].sum())), ("flagged", int(flags["flagged"].sum()))]
    if "cross_duplicate" in flags:
        against = ", ".join(settings.get("against") or [])
        counts.insert(3, (f"with a near-duplicate in {against or 'another store'}",
                          int(flags["cross_duplicate"].sum())))
    parts = ['<h2 id="curation">Curation</h2>' + _table(counts)]
    outliers, duplicates, crossed = _flagged_rows(flags, sheet_size)
    if not outliers.empty:
        rows = ok.set_index("image_id").loc[outliers["image_id"]].reset_index()
        notes = {r.image_id: f"prior NLL {r.prior_nll:.1f} (p{r.prior_nll_percentile:.0f})"
                 for r in outliers.itertuples()}
        labelled, tiles = sheet_rows(G, meta, rows, _stack(inputs, rows["image_id"]), notes)
        parts.append("<h3>Outliers, highest prior NLL first</h3>" + image_table(labelled, tiles, images, "outliers"))
    if not duplicates.empty:
        pairs = [ImageRow(f"{a} ~ {b}", {"cosine": fmt(c)}, [inputs[a], inputs[b]])
                 for a, b, c in zip(duplicates["duplicate_of"], duplicates["image_id"], duplicates["duplicate_cosine"])]
        parts.append("<h3>Near-duplicates</h3>" + image_table(pairs, ["first member", "duplicate"], images,
                                                               "duplicates"))
    if not crossed.empty:
        theirs = _other_stores_inputs(crossed)
        pairs = [ImageRow(f"{a} ~ {b}", {"cosine": fmt(c), "in": s}, [inputs[a], theirs[(s, b)]])
                 for a, b, s, c in zip(crossed["image_id"], crossed["cross_duplicate_of"],
                                       crossed["cross_duplicate_store"], crossed["cross_duplicate_cosine"])]
        parts.append("<h3>Near-duplicates in another store</h3>" + image_table(pairs, ["this store", "the other"],
                                                                                images, "cross-duplicates"))
    return "".join(parts)


def _stack(inputs: dict[str, torch.Tensor], image_ids: Any) -> torch.Tensor:
    return torch.stack([inputs[i] for i in image_ids])


def _rebalance_section(store: Store, resolution: int, images: ReportImages) -> str | None:
    """Before / target / after counts of the last `latentmill rebalance` of this store, and its preview."""
    summary = store.read_json(layout.REBALANCE_SUMMARY)
    if summary is None:
        return None
    rows = "".join(f"<tr><td>{html.escape(g)}</td><td>{summary['before'][g]}</td><td>{summary['target_counts'][g]}</td>"
                   f"<td>{summary['added'][g]}</td><td>{summary['after'][g]}</td></tr>" for g in summary["before"])
    rejected = ", ".join(f"{n} for {html.escape(str(why))}" for why, n in summary["rejected"].items()) or "none"
    text = (f'<h2 id="rebalancing">Rebalancing</h2><p>Groups <code>{html.escape(summary["groups_spec"])}</code>, '
            f'target <code>{html.escape(summary["target"])}</code>, method {html.escape(summary["method"])}; '
            f"{summary['candidates']} candidates, rejected: {rejected}; output "
            f"<code>{html.escape(str(summary['output']))}</code>.</p>"
            f"<table><tr><th>group</th><th>before</th><th>target</th><th>added</th><th>after</th></tr>{rows}</table>")
    if summary.get("shortfall"):
        short = ", ".join(f"{html.escape(str(g))} by {n}" for g, n in summary["shortfall"].items())
        text += f"<p>Short of target: {short}.</p>"
    preview = store.read_bytes(layout.REBALANCE_PREVIEW)
    if preview is not None:
        columns = ["member", "background", "collage", "new sample"] if summary["method"] == "compose" else \
            ["nearest member", "new sample"]
        text += _preview_table(preview, columns, resolution, images, name="rebalance-preview",
                               caption="Accepted samples, one per row", alt="rebalanced samples")
    return text


def _preview_table(preview: bytes, columns: list[str], resolution: int, images: ReportImages, *, name: str,
                   caption: str, alt: str) -> str:
    """A preview grid of resolution-sized cells (2 px padding), shown at >= 128 px a cell under its column
    names."""
    grid = Image.open(io.BytesIO(preview)).convert("RGB")
    scale = max(1, -(-128 // resolution))
    shown = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    src = images.add(name, shown)
    width = shown.width // len(columns)  # each header over its column of cells
    head = "".join(f'<th style="width:{width}px;box-sizing:border-box;overflow:hidden">{html.escape(c)}</th>'
                   for c in columns)
    return (f"<p>{caption}, columns left to right: {html.escape(' | '.join(columns))}.</p>"
            f'<table class="plain" style="table-layout:fixed;width:{shown.width}px"><tr>{head}</tr>'
            f'<tr><td colspan="{len(columns)}" style="padding:0"><a href="{src}" '
            f'target="_blank"><img class="preview" src="{src}" alt="{alt}" width="{shown.width}"></a></td></tr>'
            "</table>")


def _augment_section(store: Store, resolution: int, images: ReportImages) -> str | None:
    """What the last `latentmill augment` of this store made, and sources beside their variants."""
    summary = store.read_json(layout.AUGMENT_SUMMARY)
    if summary is None:
        return None
    edits = [e.strip() for e in summary["edits"].split(",") if e.strip()]
    rejected = ", ".join(f"{n:,} for {html.escape(str(why))}" for why, n in summary["rejected"].items() if n) or "none"
    text = (f'<h2 id="augmentation">Augmentation</h2><p>Edits <code>{html.escape(summary["edits"])}</code>, '
            f"{summary['variants_per_edit']} variants of each for {summary['sources']:,} source rows: "
            f"{summary['variants']:,} variants, {summary['accepted']:,} accepted (rejected: {rejected}); output "
            f"<code>{html.escape(str(summary['output']))}</code>.</p>")
    if summary.get("units_failed"):
        text += f"<p>{len(summary['units_failed'])} units failed every attempt: rerun augment to retry them.</p>"
    preview = store.read_bytes(layout.AUGMENT_PREVIEW)
    if preview is not None:
        columns = ["source (as G renders it)", *edits]
        text += _preview_table(preview, columns, resolution, images, name="augment-preview",
                               caption="Sources, one per row, beside their first accepted variant of each edit "
                                       "(blank: none accepted)", alt="augmented variants")
    return text


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def build_report(store: str, *, sheet_size: int = 12, curve_images: int = 48, generator: str | None = None,
                 device: str | torch.device = "cpu", self_contained: bool = False, in_domain: int = 4,
                 progress: bool = False, exclude_flagged: bool = False) -> str:
    """Write STORE/report.html (and its pictures under STORE/report/, unless self_contained embeds
    them) through the store's claim; returns the report's URI. Reuses them when the store's rows, the
    settings, the curation and the rebalancing are unchanged since the last report."""
    opened = open_store(store)  # a store that is not one: said before anything is claimed
    with claim(opened.uri, wait_hint="") as writer:
        reads = [writer.path(name) for name in (layout.CURATION_SUMMARY, layout.FLAGS, layout.REBALANCE_SUMMARY,
                                                layout.REBALANCE_PREVIEW, layout.AUGMENT_SUMMARY,
                                                layout.AUGMENT_PREVIEW)]
        key = inputs_key(writer, {"sheet_size": sheet_size, "curve_images": curve_images, "generator": generator,
                                  "self_contained": self_contained, "in_domain": in_domain,
                                  **({"exclude_flagged": True} if exclude_flagged else {})}, depends_on=reads)
        uri = writer.path(layout.REPORT)
        return reuse_or_compute(
            StoreFolder(writer, layout.REPORT_FILES), key, outputs=[uri], reuse=lambda: uri,
            what="report (the store, its curation, rebalancing and augmentation)",
            compute=lambda: _build_report(writer, sheet_size=sheet_size, curve_images=curve_images,
                                          generator=generator, device=device, self_contained=self_contained,
                                          in_domain=in_domain, progress=progress,
                                          excluded=writer.flagged_ids() if exclude_flagged else None))


STEPS = ("read the store", "decode inputs", "contact sheets", "in-domain check", "compression curve", "write")


def _build_report(opened: StoreWriter, *, sheet_size: int, curve_images: int, generator: str | None,
                  device: str | torch.device, self_contained: bool, in_domain: int, progress: bool,
                  excluded: set[str] | None = None) -> str:
    from pipeline.progress import progress_bar

    device = resolve_device(device)
    store, meta = opened.uri, opened.metadata
    models = opened.load_models(device, generator=generator)
    bar = progress_bar(total=len(STEPS), desc="report", unit="step", enabled=progress)

    def step(name: str) -> None:
        bar.set_postfix_str(name)
        bar.update(1)

    images = ReportImages(opened, self_contained=self_contained)
    collected = collect(opened, worst=sheet_size, exclude=excluded)
    frame = collected.sample  # every row of a small store; a uniform sample of a large one
    G = models.G
    ok = frame[frame["status"] == "ok"]
    step("read the store")

    sample = curve_rows = ok.head(0)
    if not ok.empty:
        pick = np.random.default_rng(0).choice(len(ok), size=min(sheet_size, len(ok)), replace=False)
        sample = ok.iloc[np.sort(pick)]
        pick = np.random.default_rng(1).choice(len(ok), size=min(curve_images, len(ok)), replace=False)
        curve_rows = ok.iloc[np.sort(pick)]
    worst = collected.worst
    curated = _read_flags(opened)
    shown = [sample, worst]
    has_refined = "w_refined" in opened.schema.names
    if meta.get("prior") and has_refined:  # otherwise _curve draws nothing
        shown.append(curve_rows)
    flagged = ok.head(0)
    if curated is not None:
        outliers, duplicates, crossed = _flagged_rows(curated[0], sheet_size)
        ids = set(outliers["image_id"]) | set(duplicates["image_id"]) | set(duplicates["duplicate_of"]) \
            | set(crossed["image_id"])
        flags = curated[0]
        flagged = flags[flags["image_id"].isin(ids)][["image_id", "shard"]]
        shown.append(flagged)
    shown_rows = pd.concat(shown).drop_duplicates("image_id")
    inputs = opened.read_inputs(shown_rows["shard"].tolist(), shown_rows["image_id"].tolist()) if len(shown_rows) else {}
    step("decode inputs")

    sections: list[tuple[str, str, str]] = []  # (anchor, title for the contents, html)
    if not ok.empty:
        for title, name, rows in (("A random sample", "sample", sample),
                                  ("The worst reconstructions (highest MSE)", "worst", worst)):
            if rows.empty:
                continue
            labelled, tiles = sheet_rows(G, meta, with_latents(opened, rows), _stack(inputs, rows["image_id"]))
            sections.append((name, title, f'<h2 id="{name}">{title}</h2><p>Each row: an input and its '
                             "reconstructions from each stored latent; click a picture for its full size.</p>"
                             + image_table(labelled, tiles, images, name)))
    step("contact sheets")

    domain_html, domain_line = _in_domain_section(opened, G, device, in_domain, ok, images)
    if domain_html:
        sections.append(("in-domain", "In-domain check", domain_html))
    step("in-domain check")

    charts = _histograms(frame, meta)
    if charts:
        of = (f"<p>From a uniform sample of {len(frame):,} of the store's {collected.rows:,} rows.</p>"
              if collected.sampled else "")
        sections.append(("metrics", "Metrics", '<h2 id="metrics">Metrics</h2>' + of + '<div class="charts">'
                         + "".join(charts) + "</div>"))

    exact = exact_latent_section(collected.z, meta)
    if exact:
        sections.append(("exact-latents", "Exact latents (z)", exact))

    chart, points = _curve(opened, models, with_latents(opened, curve_rows, ["w_refined"]), inputs)
    table = ""
    if points:
        table = "<table><tr><th>method</th><th>tau / psi</th><th>prior NLL</th><th>identity cosine</th>" \
                "<th>MSE</th></tr>" + "".join(
                    f"<tr><td>{p.method}</td><td>{p.parameter:g}</td><td>{p.prior_nll:.3f}</td>"
                    f"<td>{p.identity:.4f}</td><td>{p.mse:.4f}</td></tr>" for p in points) + "</table>"
        opened.write_json(layout.TRADEOFF, [asdict(p) for p in points])
    sections.append(("tradeoff", "Compression vs truncation",
                     '<h2 id="tradeoff">Compression vs truncation</h2><p>Both pull refined latents towards the prior: '
                     "truncation scales all of w - w_avg by psi, compression log-compresses only the "
                     + ("flow's latent" if meta.get("prior_kind") == "flow" else "PCA") +
                     " components beyond tau sigma. Higher and further left is better.</p>" + chart + table))
    step("compression curve")

    if curated is not None:
        rows = with_latents(opened, flagged.merge(frame.drop(columns="shard"), on="image_id", how="left"))
        sections.append(("curation", "Curation", _curation_section(G, meta, rows, *curated, inputs, sheet_size,
                                                                   images)))
    rebalanced = _rebalance_section(opened, meta["img_resolution"], images)
    if rebalanced:
        sections.append(("rebalancing", "Rebalancing", rebalanced))
    augmented = _augment_section(opened, meta["img_resolution"], images)
    if augmented:
        sections.append(("augmentation", "Augmentation", augmented))

    if collected.error_reasons:
        errors = collected.error_rows
        listing = "".join(f"<tr><td>{html.escape(str(r.image_id))}</td><td>{html.escape(str(r.error))}</td></tr>"
                          for r in errors.itertuples())
        more = sum(collected.error_reasons.values()) - len(errors)
        sections.append(("errors", "Errors", '<h2 id="errors">Errors</h2>' + _table(list(collected.error_reasons.items()))
                         + f"<table><tr><th>image</th><th>error</th></tr>{listing}</table>"
                         + (f"<p>... and {more:,} more (the store's error rows: <code>status = 'error'</code>).</p>"
                            if more > 0 else "")))

    settings = meta.get("settings", {})
    models_table = [("generator", meta.get("generator")), ("encoder", meta.get("encoder")),
                    ("prior", f"{meta.get('prior')} ({meta.get('prior_kind') or 'gaussianized'})" if meta.get("prior") else None),
                    ("perceptual metric", meta.get("perceptual_metric")), ("identity model", meta.get("identity_model")),
                    ("resolution", meta.get("img_resolution")), ("latent shape", meta.get("latent_shape"))]
    sections.append(("settings", "Models and settings", '<h2 id="settings">Models and settings</h2>'
                     + _table(models_table) + _table([(k, _setting_text(v)) for k, v in sorted(settings.items())])))

    manifest = opened.summary()
    verdict = verdict_block(collected, meta, manifest, opened.finished, list((manifest or {}).get("shards_failed", [])),
                            domain_line, toy_caption(meta, _is_demo_generator(opened)),
                            opened.read_json(layout.REBALANCE_SUMMARY), excluded=len(excluded) if excluded else 0)
    contents = " · ".join(f'<a href="#{anchor}">{html.escape(title)}</a>' for anchor, title, _ in sections)
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>latentmill report: {html.escape(store)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{STYLE}</style></head>
<body><h1>latentmill report</h1><p class="store"><code>{html.escape(store)}</code></p>
{verdict}
<nav>{contents}</nav>
{''.join(body for _, _, body in sections)}
</body></html>"""
    opened.write_bytes(layout.REPORT, page.encode())
    uri = opened.path(layout.REPORT)
    step("write")
    bar.close()
    return uri


POOR_IN_DOMAIN_MSE = 0.05  # [-1, 1] units: an RMS error above 11% of the range on the model's own images

STYLE = """body{font-family:system-ui,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}
table.sheet td.tile{padding:2px}table.sheet img,img.preview{image-rendering:pixelated;display:block}
td.num{font-variant-numeric:tabular-nums;text-align:right}td.id{max-width:220px;word-break:break-all}
span.note{color:#666;font-size:12px}td.same-person{background:#e6f4ea}td.uncertain{background:#fff4d6}
td.different-person{background:#fde7e7}.verdict{border:2px solid #446;border-radius:6px;padding:0.2em 1em;
background:#f6f7fb}.headline{font-size:1.15em;font-weight:600}.caption{color:#555;font-style:italic}
nav{margin:1em 0;font-size:14px}.charts svg{margin:4px;overflow:visible}code{font-size:12px}"""


def _setting_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return "-" if value is None else str(value)


def _is_demo_generator(opened: Store) -> bool:
    from pipeline.demo import DemoBundle

    try:
        bundle = DemoBundle.locate()
    except (FileNotFoundError, OSError, ValueError):
        return False
    from pipeline.models.checkpoints import load_generator
    from pipeline.models.fingerprint import fingerprint

    return fingerprint(load_generator(str(bundle.generator))) == opened.metadata.get("generator_fingerprint")


def _in_domain_section(opened: Store, G: Any, device: torch.device, n: int, ok: pd.DataFrame,
                       images: ReportImages) -> tuple[str | None, str | None]:
    """The in-domain check's section and its one-line reading for the verdict (None, None when off)."""
    if n <= 0:
        return None, None
    meta = opened.metadata
    try:
        models = opened.load_models(device, encoder=bool(meta.get("encoder")), prior=bool(meta.get("prior")),
                                    perceptual=meta.get("perceptual_metric") or "none")
    except (OSError, ValueError) as exc:
        return f'<h2 id="in-domain">In-domain check</h2><p>Not run: {html.escape(str(exc))}</p>', None
    check = in_domain_check(models, store_inversion_settings(meta.get("settings", {})), n)
    rows = [ImageRow(f"sample {i}", {"MSE": fmt(check.mse[i]),
                                     **({"perceptual": fmt(check.perceptual[i])} if check.perceptual is not None else {})},
                     [check.samples[i], check.reconstructions[i]]) for i in range(n)]
    own = float(np.median(check.mse))
    theirs = float(ok["mse"].median()) if "mse" in ok and ok["mse"].notna().any() else None
    if theirs is None:
        reading = f"the generator's own samples reconstruct to median MSE {own:.4f}."
    elif own > POOR_IN_DOMAIN_MSE:
        reading = (f"even the generator's own samples reconstruct poorly (median MSE {own:.4f}; your images "
                   f"{theirs:.4f}): look at the settings (steps, learning rate, perceptual metric) and the models "
                   "before the data.")
    elif theirs <= 2 * own:
        reading = (f"the generator's own samples reconstruct to median MSE {own:.4f}, your images to {theirs:.4f}: "
                   "the pipeline reconstructs your images about as well as the model allows.")
    else:
        reading = (f"the generator's own samples reconstruct {theirs / own:.0f}x better (median MSE {own:.4f}) than "
                   f"your images ({theirs:.4f}): the pipeline works, and the gap is what this model can represent "
                   "of your images (another domain, alignment or framing, or a small model).")
    body = (f'<h2 id="in-domain">In-domain check</h2><p>{n} images the generator made itself (seed '
            f"{IN_DOMAIN_SEED}), inverted with this store's encoder, "
            f"prior and settings: {html.escape(reading)}</p>"
            + image_table(rows, ["generator's sample", "inverted"], images, "in-domain"))
    return body, html.escape(reading)

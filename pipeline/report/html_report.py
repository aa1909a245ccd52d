"""`latentmill report STORE`: one self-contained HTML page (plus PNGs beside it) about a latent store.

What a user checks after a run: did the inversions work (contact sheets input | encoded | refined |
compressed, a random sample and the worst reconstructions), how the metrics are spread (MSE,
perceptual distance, identity cosine, prior NLL), what failed and why, and what compression costs
against truncation. Written to STORE/report.html and STORE/report/*.png; works for any store.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pipeline.devices import resolve_device
from pipeline.imaging import grid_image, png_bytes
from pipeline.report.svg_charts import histogram_svg, line_chart_svg
from pipeline.report.tradeoff import TradeoffPoint, compression_truncation_curve
from pipeline.store.derived_outputs import inputs_key, reuse_or_compute
from pipeline.store.latent_store import latent_array
from pipeline.models.model_set import ModelSet
from pipeline.store.store import Store, open_store
from pipeline.uris import write_bytes

SHEET_COLUMNS = ("input", "w_encoded", "w_refined", "w_compressed")
MIN_TILE = 96  # pixels: small generators' images are upscaled (nearest) to at least this


def _join(store: str, name: str) -> str:
    return store.rstrip("/") + "/" + name


def contact_sheet(G: Any, meta: dict[str, Any], rows: pd.DataFrame, inputs: torch.Tensor) -> tuple[bytes, list[str]]:
    """PNG of one line per image: the input, then G of each latent column present (gray where absent)."""
    tiles, present = [], ["input"]
    columns = [c for c in SHEET_COLUMNS[1:] if c in rows and rows[c].notna().all()]
    present += columns
    rendered = {}
    with torch.no_grad():
        for column in columns:
            ws = torch.from_numpy(latent_array(rows, column, meta["latent_shape"])).to(G.w_avg.device)
            rendered[column] = G.synthesis(ws, noise_mode=meta.get("noise_mode", "const")).float().cpu()
    for i in range(len(rows)):
        tiles.append(inputs[i].float())
        tiles += [rendered[c][i] for c in columns]
    return png_bytes(_upscaled(grid_image(torch.stack(tiles), nrow=len(present)), meta["img_resolution"])), present


def _upscaled(grid: Image.Image, resolution: int) -> Image.Image:
    """Small generators' tiles enlarged (nearest neighbour) to at least MIN_TILE pixels."""
    scale = max(1, -(-MIN_TILE // resolution))
    return grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST) if scale > 1 else grid


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
        charts.append(histogram_svg({k.removeprefix("prior_nll_"): v / w_dim for k, v in nll.items()},
                                    title="prior NLL / w_dim (1 = typical sample)", x_label="NLL / w_dim"))
    return charts


def _curve(store: Store, models: ModelSet, rows: pd.DataFrame,
           inputs: dict[str, torch.Tensor]) -> tuple[str, list[TradeoffPoint]]:
    """The compression-vs-truncation chart, or a sentence saying why there is none."""
    meta = store.metadata
    if not meta.get("prior"):
        return "<p>No prior was used for this store, so there is no compression curve.</p>", []
    if "w_refined" not in rows or rows.empty:
        return "<p>No refined latents, so there is no compression curve.</p>", []
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
                           x_label="prior NLL / w_dim of the moved latents", y_label=f"identity cosine ({name})",
                           log_x=wide)
    return chart, points


def _read_flags(store: str) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """The flags table of `latentmill curate` and its settings, or None if the store was not curated."""
    import fsspec
    import pyarrow.parquet as pq

    fs, path = fsspec.core.url_to_fs(_join(store, "curation/flags.parquet"))
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    return table.to_pandas(), json.loads(table.schema.metadata[b"latentmill"])["settings"]


def _flagged_rows(flags: pd.DataFrame, sheet_size: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The outliers (highest prior NLL first) and duplicates (highest cosine first) the report shows."""
    outliers = flags[flags["outlier"]].sort_values("prior_nll", ascending=False).head(sheet_size)
    duplicates = flags[flags["duplicate"]].sort_values("duplicate_cosine", ascending=False).head(sheet_size)
    return outliers, duplicates


def _curation_section(store: str, G: Any, meta: dict[str, Any], ok: pd.DataFrame, flags: pd.DataFrame,
                      settings: dict[str, Any], inputs: dict[str, torch.Tensor], sheet_size: int) -> str:
    """Counts of `latentmill curate` flags, the strongest outliers and the duplicate pairs."""
    counts = [("rows curated", len(flags)), ("outliers (prior NLL > p%g)" % settings["outlier_percentile"],
                                             int(flags["outlier"].sum())),
              (f"near-duplicates (cosine >= {settings['duplicate_threshold']} by {settings['duplicates_by']})",
               int(flags["duplicate"].sum())),
              ("bad reconstructions", int(flags["bad_reconstruction"].sum())), ("flagged", int(flags["flagged"].sum()))]
    parts = ["<h2>Curation</h2>" + _table(counts)]
    outliers, duplicates = _flagged_rows(flags, sheet_size)
    if not outliers.empty:
        rows = ok.set_index("image_id").loc[outliers["image_id"]].reset_index()
        png, present = contact_sheet(G, meta, rows, _stack(inputs, rows["image_id"]))
        write_bytes(_join(store, "report/outliers.png"), png)
        parts.append(f"<h3>Outliers, highest prior NLL first</h3><p>Columns: {' | '.join(present)}.</p>"
                     '<img class="sheet" src="report/outliers.png" alt="outliers">')
    if not duplicates.empty:
        ids = [i for pair in zip(duplicates["duplicate_of"], duplicates["image_id"]) for i in pair]
        grid = _upscaled(grid_image(_stack(inputs, ids).float(), nrow=2), meta["img_resolution"])
        write_bytes(_join(store, "report/duplicates.png"), png_bytes(grid))
        listing = ", ".join(f"{html.escape(a)} ~ {html.escape(b)}" for a, b in zip(duplicates["duplicate_of"],
                                                                                 duplicates["image_id"]))
        parts.append(f"<h3>Near-duplicates (first member | duplicate)</h3><p>{listing}</p>"
                     '<img class="sheet" src="report/duplicates.png" alt="near-duplicates">')
    return "".join(parts)


def _stack(inputs: dict[str, torch.Tensor], image_ids: Any) -> torch.Tensor:
    return torch.stack([inputs[i] for i in image_ids])


def _rebalance_section(store: str) -> str | None:
    """Before / target / after counts of the last `latentmill rebalance` of this store, and its preview."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(_join(store, "rebalance/summary.json"))
    if not fs.exists(path):
        return None
    summary = json.loads(fs.cat_file(path))
    rows = "".join(f"<tr><td>{html.escape(g)}</td><td>{summary['before'][g]}</td><td>{summary['target_counts'][g]}</td>"
                   f"<td>{summary['added'][g]}</td><td>{summary['after'][g]}</td></tr>" for g in summary["before"])
    text = (f"<h2>Rebalancing</h2><p>Groups <code>{html.escape(summary['groups_spec'])}</code>, target "
            f"<code>{html.escape(summary['target'])}</code>, method {html.escape(summary['method'])}; "
            f"{summary['candidates']} candidates, rejected: {html.escape(json.dumps(summary['rejected']))}; "
            f"output {html.escape(str(summary['output']))}.</p>"
            f"<table><tr><th>group</th><th>before</th><th>target</th><th>added</th><th>after</th></tr>{rows}</table>")
    if summary.get("shortfall"):
        text += f"<p>Short of target: {html.escape(json.dumps(summary['shortfall']))}.</p>"
    if fs.exists(_join(path.rsplit("/", 1)[0], "preview.png")):
        columns = "member | background | collage | new sample" if summary["method"] == "compose" else \
            "nearest member | new sample"
        text += (f"<p>Accepted samples, columns: {columns}.</p>"
                 '<img class="sheet" src="rebalance/preview.png" alt="rebalanced samples">')
    return text


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def build_report(store: str, *, sheet_size: int = 12, curve_images: int = 48, generator: str | None = None,
                 device: str | torch.device = "cpu") -> str:
    """Write STORE/report.html and its PNGs; returns the report's URI. Reuses them when the store's
    rows, the settings, the curation and the rebalancing are unchanged since the last report."""
    folder, uri = _join(store, "report"), _join(store, "report.html")
    reads = [_join(store, name) for name in ("curation/summary.json", "curation/flags.parquet",
                                             "rebalance/summary.json", "rebalance/preview.png")]
    key = inputs_key(store, {"sheet_size": sheet_size, "curve_images": curve_images, "generator": generator},
                     depends_on=reads)
    return reuse_or_compute(
        folder, key, outputs=[uri], reuse=lambda: uri, what="report (the store, its curation and rebalancing)",
        compute=lambda: _build_report(store, sheet_size=sheet_size, curve_images=curve_images, generator=generator,
                                      device=device))


def _build_report(uri: str, *, sheet_size: int, curve_images: int, generator: str | None,
                  device: str | torch.device) -> str:
    device = resolve_device(device)
    opened = open_store(uri)
    store, meta = opened.uri, opened.metadata
    frame = opened.to_pandas().sort_values("image_id", kind="stable").reset_index(drop=True)
    models = opened.load_models(device, generator=generator)
    G = models.G
    ok = frame[frame["status"] == "ok"]
    errors = frame[frame["status"] != "ok"]
    sections = []

    summary = [("store", store), ("rows", len(frame)), ("ok", len(ok)), ("errors", len(errors)),
               ("generator", meta.get("generator")), ("encoder", meta.get("encoder")), ("prior", meta.get("prior")),
               ("perceptual metric", meta.get("perceptual_metric")), ("identity model", meta.get("identity_model")),
               ("resolution", meta.get("img_resolution")), ("latent shape", meta.get("latent_shape"))]
    for key in ("mse_encoded", "mse", "perceptual", "id_cosine_refined", "id_cosine_compressed"):
        if key in ok and ok[key].notna().any():
            summary.append((f"median {key}", f"{ok[key].median():.4f}"))
    sections.append("<h2>Summary</h2>" + _table(summary))

    sample = worst = curve_rows = ok.head(0)
    if not ok.empty:
        pick = np.random.default_rng(0).choice(len(ok), size=min(sheet_size, len(ok)), replace=False)
        sample = ok.iloc[np.sort(pick)]
        worst = ok.sort_values("mse", ascending=False).head(sheet_size) if "mse" in ok else ok.head(0)
        pick = np.random.default_rng(1).choice(len(ok), size=min(curve_images, len(ok)), replace=False)
        curve_rows = ok.iloc[np.sort(pick)]
    curated = _read_flags(store)
    shown = [sample, worst]
    if meta.get("prior") and "w_refined" in ok:  # otherwise _curve draws nothing
        shown.append(curve_rows)
    if curated is not None:
        outliers, duplicates = _flagged_rows(curated[0], sheet_size)
        shown.append(ok[ok["image_id"].isin(set(outliers["image_id"]) | set(duplicates["image_id"])
                                            | set(duplicates["duplicate_of"]))])
    shown_rows = pd.concat(shown).drop_duplicates("image_id")
    inputs = opened.read_inputs(shown_rows["shard"].tolist(), shown_rows["image_id"].tolist()) if len(shown_rows) else {}

    if not ok.empty:
        for title, name, rows in (("A random sample", "sample", sample), ("The worst reconstructions (highest MSE)",
                                                                        "worst", worst)):
            if rows.empty:
                continue
            png, present = contact_sheet(G, meta, rows, _stack(inputs, rows["image_id"]))
            path = f"report/{name}.png"
            write_bytes(_join(store, path), png)
            ids = ", ".join(html.escape(i) for i in rows["image_id"])
            sections.append(f"<h2>{title}</h2><p>Columns: {' | '.join(present)}. Rows: {ids}.</p>"
                            f'<img class="sheet" src="{path}" alt="{name} contact sheet">')

    charts = _histograms(frame, meta)
    if charts:
        sections.append("<h2>Metrics</h2><div class='charts'>" + "".join(charts) + "</div>")

    chart, points = _curve(opened, models, curve_rows, inputs)
    table = ""
    if points:
        table = "<table><tr><th>method</th><th>tau / psi</th><th>prior NLL / w_dim</th><th>identity cosine</th>" \
                "<th>MSE</th></tr>" + "".join(
                    f"<tr><td>{p.method}</td><td>{p.parameter:g}</td><td>{p.prior_nll:.3f}</td>"
                    f"<td>{p.identity:.4f}</td><td>{p.mse:.4f}</td></tr>" for p in points) + "</table>"
        write_bytes(_join(store, "report/tradeoff.json"), json.dumps([asdict(p) for p in points], indent=1).encode())
    sections.append("<h2>Compression vs truncation</h2><p>Both pull refined latents towards the prior: "
                    "truncation scales all of w - w_avg by psi, compression log-compresses only the PCA "
                    "components beyond tau sigma. Higher and further left is better.</p>" + chart + table)

    if curated is not None:
        sections.append(_curation_section(store, G, meta, ok, *curated, inputs, sheet_size))
    rebalanced = _rebalance_section(store)
    if rebalanced:
        sections.append(rebalanced)

    if not errors.empty:
        reasons = errors["error"].fillna("?").str.split(":", n=1).str[0].value_counts()
        listing = "".join(f"<tr><td>{html.escape(str(r.image_id))}</td><td>{html.escape(str(r.error))}</td></tr>"
                          for r in errors.head(50).itertuples())
        sections.append("<h2>Errors</h2>" + _table(list(reasons.items())) +
                        f"<table><tr><th>image</th><th>error</th></tr>{listing}</table>")

    settings = meta.get("settings", {})
    sections.append("<h2>Settings</h2>" + _table(sorted(settings.items())))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>latentmill report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:0.5em 0}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:13px}}
img.sheet{{image-rendering:pixelated;max-width:100%}}.charts svg{{margin:4px}}</style></head>
<body><h1>latentmill report</h1>
{''.join(sections)}
</body></html>"""
    uri = _join(store, "report.html")
    write_bytes(uri, page.encode())
    return uri

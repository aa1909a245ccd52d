"""Rendering an evaluation report (eval.json's content) as HTML and as Markdown tables."""

from __future__ import annotations

import html
import json
from typing import Any

from pipeline.report.svg_charts import line_chart_svg


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)\n"
    keys = list(rows[0])
    cell = (lambda v: f"{v:.4g}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def eval_markdown(report: dict[str, Any]) -> str:
    """The studies as Markdown tables (what docs/evaluation.md's results section shows)."""
    parts = [f"Model {report['model']['generator_fingerprint'][:19]}..., {report['data']['count']} images at "
             f"{report['data']['resolution']} px, {report['model']['perceptual_metric']} perceptual metric, "
             f"identity {report['model']['identity_model']}, realism = {report['model']['realism']}; "
             f"{report['machine']['device']}, {report['date']}.\n"]
    for name, study in report["studies"].items():
        verdict = "holds" if study.get("holds") else "does not hold here"
        note = f" {study['note']}." if study.get("note") else ""
        parts.append(f"\n**{name}** ({study['seconds']} s). Claim: {study.get('claim', '')}: **{verdict}**.{note}\n\n")
        parts.append(_markdown_table(study.get("rows", [])))
        for part_name, part in study.get("parts", {}).items():
            parts.append(f"\n*{part_name}*. {_part_verdict(part)}\n\n" + (_markdown_table(part["rows"]) if part.get("rows") else ""))
        if name == "inversion":
            parts.append(f"\nSteps to reach the baseline's {study['quality_key']}: "
                         f"{json.dumps(study['steps_to_reach_baseline'])}\n")
    return "".join(parts)


def _part_verdict(part: dict[str, Any]) -> str:
    """One sentence on a study's part: its claim and whether it held, or why it did not run."""
    if "skipped" in part:
        return f"Not run: {part['skipped']}."
    note = f" {part['note']}." if part.get("note") else ""
    return f"Claim: {part.get('claim', '')}: {'holds' if part.get('holds') else 'does not hold here'}.{note}"


def _rows_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>(no rows)</p>"
    keys = list(rows[0])
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{v:.4g}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>"
                                    for v in (r.get(k) for k in keys)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def eval_html(report: dict[str, Any]) -> str:
    parts = [f"<h1>latentmill evaluate</h1><p>{html.escape(json.dumps(report['model']))}</p>"
             f"<p>data: {html.escape(json.dumps(report['data']))}; {html.escape(report['date'])}, "
             f"{html.escape(json.dumps(report['machine']))}</p>"]
    studies = report["studies"]
    for name, study in studies.items():
        verdict = "holds" if study.get("holds") else "does not hold here"
        parts.append(f"<h2>{html.escape(name)}</h2><p><b>Claim</b>: {html.escape(study.get('claim', ''))} "
                     f"&mdash; <b>{verdict}</b>. {html.escape(study.get('note', ''))} ({study['seconds']} s)</p>")
        parts.append(_rows_table(study.get("rows", [])))
        for part_name, part in study.get("parts", {}).items():
            parts.append(f"<h3>{html.escape(part_name)}</h3><p>{html.escape(_part_verdict(part))}</p>")
            if part.get("rows"):
                parts.append(_rows_table(part["rows"]))
        if name == "inversion" and study["rows"]:
            key = study["quality_key"]
            series: dict[str, list] = {}
            for r in study["rows"]:
                series.setdefault(r["method"], []).append((r["seconds_per_image"], r[key], str(r["steps"])))
            parts.append(line_chart_svg(series, title=f"{key} against seconds per image", x_label="seconds / image",
                                        y_label=key, log_x=True))
        if name == "compression":
            series = {m: [(r["realism"], r["identity"], f"{r['parameter']:g}") for r in study["rows"]
                          if r["method"] == m] for m in ("compression", "truncation")}
            parts.append(line_chart_svg(series, title="identity kept against realism (lower KID = more realistic)",
                                        x_label="KID", y_label="identity cosine"))
            parts.append(_rows_table(study["equal_realism"]))
        if name == "composition" and study.get("rows"):
            series = {r["method"]: [(r["realism_kid"], r["masked_l1"], "")] for r in study["rows"]}
            parts.append(line_chart_svg(series, title="faithfulness against realism", x_label="KID",
                                        y_label="masked L1 to the parts"))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:"
             ".5em 0;display:block;overflow-x:auto;max-width:100%}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>latentmill evaluate</title><style>{style}" \
           f"</style></head><body>{''.join(parts)}</body></html>"


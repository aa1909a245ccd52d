"""`latentmill evaluate` / `python -m jobs.evaluate`: the papers' claims measured on one model.

Five studies (pipeline/evaluation): inversion quality against cost, the prior's effect on
interpolation, compression against truncation, composition, StyleSpace detection. Writes
OUTPUT/eval.json (every figure with its settings and the model fingerprints) and OUTPUT/eval.html.
Defaults evaluate the bundled demo model on its bundled sample.

Each study's result is written (eval.json, eval.html, eval.md) as soon as it finishes, so a killed
run keeps every finished study; a rerun with the same settings, models and images reuses them and
runs only the rest (`--overwrite` redoes them, `--studies` picks some).
"""

from __future__ import annotations

import hashlib
import html
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

STUDIES = ("inversion", "prior", "compression", "composition", "stylespace")


@dataclass
class EvaluateConfig:
    output: str
    generator: str | None = None  # None: the demo bundle (and its encoder, prior, identity model, sample)
    encoder: str | None = None
    prior: str | None = None
    images: str | None = None
    identity_model: str | None = None  # 'facenet' or an embedding bundle; default: the demo's, or facenet
    facenet_weights: str | None = None
    perceptual: str = "discriminator"
    lpips_weights: str | None = None
    features: str = "discriminator"  # realism features: discriminator | identity | random
    studies: tuple[str, ...] = STUDIES
    num_images: int = 32
    refine_steps: tuple[int, ...] = (25, 50, 100, 200)
    baseline_steps: int = 1000
    baseline_images: int = 4
    study_steps: int = 100  # refinement steps inside studies 2-4
    trials: int = 20
    positives: tuple[int, ...] = (10, 20, 30)
    device: str = "cpu"
    seed: int = 0
    overwrite: bool = False  # redo studies that an earlier run with the same inputs finished
    extra: dict[str, Any] = field(default_factory=dict)


# Settings that choose which studies run or where results go, not what a study computes.
_NOT_STUDY_INPUTS = ("output", "studies", "overwrite")


def inputs_key(cfg: EvaluateConfig, fingerprints: dict[str, str | None], image_count: int) -> str:
    """What every study's result depends on: settings, model fingerprints and the images used."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in _NOT_STUDY_INPUTS}
    blob = json.dumps({"settings": settings, "models": fingerprints, "images": [cfg.images, image_count]},
                      sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def _earlier_results(out: Path, key: str) -> dict[str, Any]:
    """Studies a previous run finished with the same inputs (none if the inputs differ)."""
    path = out / "eval.json"
    if not path.exists():
        return {}
    try:
        earlier = json.loads(path.read_text())
    except ValueError:
        return {}
    if earlier.get("inputs_key") != key:
        print(f"evaluate: {path} holds results of other settings or models; running every study again",
              file=sys.stderr)
        return {}
    return dict(earlier.get("studies", {}))


def _resolve(cfg: EvaluateConfig) -> EvaluateConfig:
    if cfg.generator is None:
        from pipeline.demo import DemoBundle

        demo = DemoBundle.locate()
        return EvaluateConfig(**{**asdict(cfg), "generator": demo.generator, "encoder": cfg.encoder or demo.encoder,
                                 "prior": cfg.prior or demo.prior, "images": cfg.images or demo.sample,
                                 "identity_model": cfg.identity_model or demo.identity})
    if cfg.prior is None or cfg.images is None:
        raise ValueError("--prior and --images are required with --generator")
    return cfg


def load(cfg: EvaluateConfig):
    from pipeline.data.image_pool import load_image_pool
    from pipeline.evaluation.models import EvalModels
    from pipeline.evaluation.realism import feature_extractor, kid_to
    from pipeline.losses.perceptual import build_perceptual
    from pipeline.models.checkpoints import generator_of, load_networks
    from pipeline.models.encoder import load_encoder
    from pipeline.priors.gaussian import GaussianizedPrior
    from pipeline.stages.identity import load_identity_model

    device = torch.device(cfg.device)
    networks = load_networks(cfg.generator, device=device, setting="--generator")
    G = generator_of(networks, source=cfg.generator)
    E = load_encoder(cfg.encoder, generator=G, device=device) if cfg.encoder else None
    prior = GaussianizedPrior.load(cfg.prior, generator=G).to(device)
    perceptual = build_perceptual(cfg.perceptual, discriminator=networks.get("D"), lpips_weights=cfg.lpips_weights)
    perceptual = perceptual.to(device) if perceptual is not None else None
    identity, identity_name = load_identity_model(cfg.identity_model or "facenet",
                                                  facenet_weights=cfg.facenet_weights, device=device)
    pool = load_image_pool(cfg.images, resolution=G.img_resolution, channels=G.img_channels,
                           max_images=cfg.num_images)
    images = pool.images
    extractor = feature_extractor(cfg.features, discriminator=networks.get("D"), identity=identity, device=device)
    models = EvalModels(G, E, prior, perceptual, identity, kid_to(images.to(device), extractor),
                        {"perceptual": cfg.perceptual, "identity": identity_name,
                         "features": f"KID on {cfg.features} features"})
    return models, images


def run(cfg: EvaluateConfig) -> dict[str, Any]:
    from pipeline.evaluation.detection_study import detection_accuracy
    from pipeline.evaluation.inversion_study import inversion_cost, prior_effect
    from pipeline.evaluation.tradeoff_study import composition, compression_vs_truncation
    from pipeline.models.fingerprint import fingerprint

    cfg = _resolve(cfg)
    unknown = set(cfg.studies) - set(STUDIES)
    if unknown:
        raise ValueError(f"--studies: unknown {sorted(unknown)}; choose from {','.join(STUDIES)}")
    torch.manual_seed(cfg.seed)
    models, images = load(cfg)
    fingerprints = {"generator": fingerprint(models.G),
                    "encoder": fingerprint(models.E) if models.E is not None else None,
                    "prior": fingerprint(models.prior)}
    key = inputs_key(cfg, fingerprints, len(images))
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    results = _earlier_results(out, key)
    if cfg.overwrite:  # redo the selected studies; keep the others' results
        results = {name: study for name, study in results.items() if name not in cfg.studies}
    runners = {
        "inversion": lambda: inversion_cost(models, images, step_counts=cfg.refine_steps,
                                            baseline_steps=cfg.baseline_steps, baseline_images=cfg.baseline_images),
        "prior": lambda: prior_effect(models, images, steps=cfg.study_steps),
        "compression": lambda: compression_vs_truncation(models, images, steps=cfg.study_steps),
        "composition": lambda: composition(models, images, steps=cfg.study_steps, seed=cfg.seed),
        "stylespace": lambda: detection_accuracy(models, positives=cfg.positives, trials=cfg.trials, seed=cfg.seed),
    }
    report = {
        "model": {"generator": cfg.generator, "generator_fingerprint": fingerprints["generator"], "encoder": cfg.encoder,
                  "encoder_fingerprint": fingerprints["encoder"],
                  "prior": cfg.prior, "identity_model": models.names["identity"],
                  "perceptual_metric": models.names["perceptual"], "realism": models.names["features"]},
        "data": {"images": cfg.images, "count": len(images), "resolution": models.G.img_resolution},
        "settings": asdict(cfg),
        "machine": {"device": str(models.device), "torch": torch.__version__, "platform": platform.platform(),
                    "threads": torch.get_num_threads()},
        "date": time.strftime("%Y-%m-%d"),
        "inputs_key": key,
        "studies": results,
    }
    todo = [name for name in cfg.studies if name not in results]
    reused = [name for name in cfg.studies if name in results]
    if reused:
        print(f"evaluate: reusing {', '.join(reused)} from {out / 'eval.json'} (same settings, models and images; "
              "--overwrite redoes them)", file=sys.stderr, flush=True)
    durations = [float(results[n].get("seconds", 0)) for n in reused]
    for i, name in enumerate(todo, 1):
        eta = f", about {sum(durations) / len(durations) * (len(todo) - i + 1):.0f} s left" if durations else ""
        print(f"evaluate: study {i}/{len(todo)} {name} ...{eta}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        results[name] = runners[name]()
        results[name]["seconds"] = round(time.perf_counter() - start, 1)
        durations.append(results[name]["seconds"])
        _write_report(out, report)  # each study is kept the moment it finishes
    report["studies"] = {name: results[name] for name in STUDIES if name in results}
    _write_report(out, report)
    return report


def _write_report(out: Path, report: dict[str, Any]) -> None:
    from pipeline.uris import write_bytes

    write_bytes(str(out / "eval.json"), json.dumps(report, indent=2, default=float).encode())
    write_bytes(str(out / "eval.html"), eval_html(report).encode())
    write_bytes(str(out / "eval.md"), eval_markdown(report).encode())


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)\n"
    keys = list(rows[0])
    cell = (lambda v: f"{v:.4g}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def eval_markdown(report: dict[str, Any]) -> str:
    """The studies as Markdown tables (what the README's results section shows)."""
    parts = [f"Model {report['model']['generator_fingerprint'][:19]}..., {report['data']['count']} images at "
             f"{report['data']['resolution']} px, {report['model']['perceptual_metric']} perceptual metric, "
             f"identity {report['model']['identity_model']}, realism = {report['model']['realism']}; "
             f"{report['machine']['device']}, {report['date']}.\n"]
    for name, study in report["studies"].items():
        verdict = "holds" if study.get("holds") else "does not hold here"
        note = f" {study['note']}." if study.get("note") else ""
        parts.append(f"\n**{name}** ({study['seconds']} s). Claim: {study.get('claim', '')}: **{verdict}**.{note}\n\n")
        parts.append(_markdown_table(study.get("rows", [])))
        if name == "inversion":
            parts.append(f"\nSteps to reach the baseline's {study['quality_key']}: "
                         f"{json.dumps(study['steps_to_reach_baseline'])}\n")
    return "".join(parts)


def _rows_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>(no rows)</p>"
    keys = list(rows[0])
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{v:.4g}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>"
                                    for v in (r.get(k) for k in keys)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def eval_html(report: dict[str, Any]) -> str:
    from pipeline.report.svg_charts import line_chart_svg

    parts = [f"<h1>latentmill evaluate</h1><p>{html.escape(json.dumps(report['model']))}</p>"
             f"<p>data: {html.escape(json.dumps(report['data']))}; {html.escape(report['date'])}, "
             f"{html.escape(json.dumps(report['machine']))}</p>"]
    studies = report["studies"]
    for name, study in studies.items():
        verdict = "holds" if study.get("holds") else "does not hold here"
        parts.append(f"<h2>{html.escape(name)}</h2><p><b>Claim</b>: {html.escape(study.get('claim', ''))} "
                     f"&mdash; <b>{verdict}</b>. {html.escape(study.get('note', ''))} ({study['seconds']} s)</p>")
        parts.append(_rows_table(study.get("rows", [])))
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
             ".5em 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>latentmill evaluate</title><style>{style}" \
           f"</style></head><body>{''.join(parts)}</body></html>"


if __name__ == "__main__":
    from pipeline.cli import main

    main(["evaluate", *sys.argv[1:]])

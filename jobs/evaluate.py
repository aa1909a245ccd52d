"""`latentmill evaluate`: the papers' claims measured on one model.

Six studies (pipeline/evaluation): inversion quality against cost, the prior's effect on
interpolation, compression against truncation, composition, StyleSpace detection, and LIA's
claims (lia: path lengths in z and w, optimizing z or w, refinement starts, the adversarial
encoder, flow against gaussianized prior). Writes
OUTPUT/eval.json (every figure with its settings and the model fingerprints) and OUTPUT/eval.html.
Defaults evaluate the bundled demo model on its bundled sample.

Each study's result is written (eval.json, eval.html, eval.md) as soon as it finishes, so a killed
run keeps every finished study; a rerun with the same settings, models and images reuses them and
runs only the rest (`--overwrite` redoes them, `--studies` picks some).
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from pipeline.devices import resolve_device
from pipeline.evaluation.render import eval_html, eval_markdown
from pipeline.evaluation.settings import STUDIES, EvaluateConfig

__all__ = ["EvaluateConfig", "run", "eval_html", "eval_markdown"]

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
        return replace(cfg, generator=demo.generator, encoder=cfg.encoder or demo.encoder, prior=cfg.prior or demo.prior,
                       flow=cfg.flow or demo.flow, images=cfg.images or demo.sample,
                       identity_model=cfg.identity_model or demo.identity)
    if cfg.prior is None or cfg.images is None:
        raise ValueError("--prior and --images are required with --generator")
    return cfg


def load(cfg: EvaluateConfig):
    """The models (through the one model loader) and the real images of an evaluation."""
    from pipeline.data.image_pool import load_image_pool
    from pipeline.evaluation.models import EvalModels
    from pipeline.evaluation.realism import feature_extractor, kid_to
    from pipeline.model_set import load_model_set

    device = torch.device(cfg.device)
    loaded = load_model_set(cfg.generator, device=device, encoder=cfg.encoder, prior=cfg.prior,
                            perceptual=cfg.perceptual, lpips_weights=cfg.lpips_weights,
                            identity_model=cfg.identity_model or "facenet", facenet_weights=cfg.facenet_weights)
    G = loaded.G
    pool = load_image_pool(cfg.images, resolution=G.img_resolution, channels=G.img_channels,
                           max_images=cfg.num_images)
    images = pool.images
    extractor = feature_extractor(cfg.features, discriminator=loaded.D, identity=loaded.identity, device=device)
    models = EvalModels(**vars(loaded), realism=kid_to(images.to(device), extractor))
    models.names.update(perceptual=cfg.perceptual, features=f"KID on {cfg.features} features")
    return models, images, load_flow(cfg.flow, models)


def load_flow(uri: str | None, models):
    """The flow of study 6 (None without --flow); a gaussianized prior given as --flow is refused."""
    from pipeline.errors import CheckpointError
    from pipeline.priors.flow import FlowPrior
    from pipeline.priors.load import load_prior

    if uri is None:
        return None
    flow = load_prior(uri, generator=models.G, setting="--flow")
    if not isinstance(flow, FlowPrior):
        raise CheckpointError(f"--flow {uri} is a gaussianized prior; give a flow from `latentmill fit-flow`")
    return flow.to(models.device)


def run(cfg: EvaluateConfig) -> dict[str, Any]:
    from pipeline.evaluation.detection_study import detection_accuracy
    from pipeline.evaluation.inversion_study import inversion_cost, prior_effect
    from pipeline.evaluation.lia_study import lia_claims
    from pipeline.evaluation.tradeoff_study import composition, compression_vs_truncation
    from pipeline.models.fingerprint import fingerprint

    cfg = _resolve(replace(cfg, device=str(resolve_device(cfg.device))))
    cfg.validate()
    torch.manual_seed(cfg.seed)
    models, images, flow = load(cfg)
    fingerprints = {"generator": fingerprint(models.G),
                    "encoder": fingerprint(models.E) if models.E is not None else None,
                    "prior": fingerprint(models.prior), "flow": fingerprint(flow) if flow is not None else None}
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
        "lia": lambda: lia_claims(models, images, flow, steps=cfg.study_steps, seed=cfg.seed,
                                  fine_tune_steps=cfg.fine_tune_steps, held_out=cfg.held_out),
    }
    report = {
        "model": {"generator": cfg.generator, "generator_fingerprint": fingerprints["generator"], "encoder": cfg.encoder,
                  "encoder_fingerprint": fingerprints["encoder"],
                  "prior": cfg.prior, "flow": cfg.flow, "identity_model": models.names["identity"],
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

"""`latentmill evaluate`: the papers' claims measured on one model."""

from __future__ import annotations

import click

from latentmill.errors import as_usage_errors
from latentmill.options import options_from
from pipeline.evaluation.settings import EvaluateConfig


@click.command()
@options_from(EvaluateConfig, first=("output", "generator", "encoder", "prior", "images", "studies"))
def evaluate(**options: object) -> None:
    """Measure the papers' claims on a model, with the official recipes as baselines.

    Inversion quality against cost (with the official projector recipe as baseline), the prior's
    effect on interpolation, compression against truncation, composition (KID and SWD), StyleSpace
    detection accuracy, and LIA's claims (study lia: path lengths in z and w, optimizing z or w,
    refinement starts, the adversarial encoder, a flow against the gaussianized prior and its
    compression). Writes
    OUTPUT/eval.json and OUTPUT/eval.html; every figure carries its settings and the model fingerprints.

    \b
    Example:
      latentmill evaluate --output out/eval                      # the bundled demo model
      latentmill evaluate --output out/eval --studies inversion --num-images 8
      latentmill evaluate --output out/eval --studies lia --generator ffhq.pkl --prior ffhq-prior.safetensors \\
          --flow ffhq-flow.safetensors --encoder ffhq-encoder.safetensors --images faces/
    """
    from jobs.evaluate import run

    config = EvaluateConfig(**options)
    with as_usage_errors(FileNotFoundError, ValueError):
        report = run(config)
    for name in config.studies:
        study = report["studies"][name]
        click.echo(f"{name}: {study.get('claim', '')}: {'holds' if study.get('holds') else 'does not hold here'} "
                   f"({study['seconds']} s)")
    click.echo(f"wrote {config.output}/eval.json and {config.output}/eval.html")

"""`latentmill align`: the face-alignment step users otherwise script themselves before inverting."""

from __future__ import annotations

import click

from latentmill.errors import as_usage_errors
from latentmill.options import options_from
from pipeline.data.align_settings import AlignConfig


@click.command()
@options_from(AlignConfig, first=("input", "output", "align", "faces", "resolution"))
def align(**options: object) -> None:
    """Detect and align every face of a dataset as FFHQ was made, before inverting it.

    Faces are found by facenet-pytorch's MTCNN (weights included) and each is cut as an oriented
    square from its eye and mouth landmarks, resampled to --resolution.

    Writes OUTPUT/images/ (PNG per face; a .mask.png beside it marks pixels outside the photo, so the
    folder is a ready input for `latentmill invert`) and OUTPUT/faces.parquet (box, landmarks,
    confidence, quad and known fraction per face; a photo without a face is an error row).
    `latentmill invert --align ffhq` does the same inside the inversion.

    \b
    Examples:
      latentmill align --input photos/ --output aligned/ --faces all --resolution 1024
      latentmill invert --input aligned/images --output out/store --generator ffhq.pkl
    """
    from jobs.align import run

    config = AlignConfig(**options)
    with as_usage_errors(ValueError):
        summary = run(config)
    errors = ", ".join(f"{n} {reason}" for reason, n in sorted(summary["errors"].items())) or "none"
    click.echo(f"aligned {summary['faces']} faces from {summary['inputs']} photos; errors: {errors}")
    click.echo(f"images: {summary['images']}\nfaces:  {summary['table']}")
    if summary["contact_sheet"]:
        click.echo(f"sheet:  {summary['contact_sheet']}")

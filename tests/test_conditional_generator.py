"""Every command runs on a conditional generator (one with class labels, c_dim > 0), in this process and without
Ray (their subject is the labels, not the runner): samples, priors, encoders and studies draw each latent's
class by pipeline/sampling.py's one rule; what a conditional discriminator cannot do is said before any work."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner

from latentmill.cli import main
from pipeline.models.bundle import write_bundle
from tests.conftest import tiny_discriminator, tiny_generator
from tests.datasets import colorful

pytestmark = pytest.mark.slow  # a dozen commands end to end: half a minute on 2 cores


def cli(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args), prog_name="latentmill")
    assert result.exit_code == code, (args, result.output[-3000:], result.exception)
    return result.output


def test_every_command_runs_on_a_conditional_generator(tmp_path, monkeypatch):
    from benchmarks.stand_in_weights import save_random_facenet

    monkeypatch.chdir(tmp_path)
    write_bundle("g.safetensors", {"G_ema": tiny_generator(16, c_dim=4), "D": tiny_discriminator(16, c_dim=4)})
    (tmp_path / "in").mkdir()
    for i in range(6):
        colorful(size=24, seed=i).save(tmp_path / "in" / f"{i}.png")
    facenet = save_random_facenet(str(tmp_path / "facenet.pt"))

    cli("generate", "g.safetensors", "--seeds", "0-3", "--class-idx", "1", "--output", "grid.png")
    cli("fit-prior", "--generator", "g.safetensors", "--output", "p.safetensors", "--num-samples", "5000",
        "--batch-size", "5000")
    cli("train-encoder", "--generator", "g.safetensors", "--output", "enc", "--steps", "2", "--batch-size", "4",
        "--perceptual", "discriminator", "--adversarial-weight", "0", "--checkpoint-every", "2", "--eval-size", "4",
        "--runner", "local", "--no-progress")
    cli("invert", "--input", "in", "--output", "store", "--generator", "g.safetensors", "--prior", "p.safetensors",
        "--encoder", "enc/encoder.safetensors", "--stages", "encode,refine,compress", "--perceptual", "discriminator",
        "--steps", "2", "--runner", "local", "--no-progress")
    assert (pd.read_parquet(tmp_path / "store" / "latents")["status"] == "ok").all()
    cli("curate", "store", "--device", "cpu", "--no-progress")
    cli("channels", "store", "--positives", "0.png,1.png")
    cli("reconstruct", "store", "--ids", "0.png", "--output", "renders")
    cli("rebalance", "store", "--groups", "kmeans:2", "--output", "rebalanced", "--device", "cpu", "--no-progress")
    cli("augment", "store", "--output", "augmented", "--edits", "jitter:0.3,mix:2-3,compose:half", "--variants", "1",
        "--runner", "local", "--no-progress")
    cli("export", "store", "--format", "lance", "--output", "store.lance")
    cli("report", "store", "--device", "cpu", "--in-domain", "2", "--no-progress")
    cli("evaluate", "--output", "eval", "--generator", "g.safetensors", "--encoder", "enc/encoder.safetensors",
        "--prior", "p.safetensors", "--images", "in", "--identity-model", "facenet", "--facenet-weights", facenet,
        "--num-images", "6", "--refine-steps", "2", "--baseline-steps", "2", "--baseline-images", "1",
        "--study-steps", "2", "--trials", "1", "--positives", "10", "--fine-tune-steps", "2", "--held-out", "300",
        "--device", "cpu")
    assert (tmp_path / "eval" / "eval.json").is_file() and (tmp_path / "store" / "report.html").is_file()

    refused = cli("train-encoder", "--generator", "g.safetensors", "--output", "adv", "--steps", "2",
                  "--adversarial-weight", "0.1", "--runner", "local", "--no-progress", code=2)
    assert "is conditional (4 classes)" in refused and "--adversarial-weight 0" in refused
    assert "Traceback" not in refused

"""The encoder training job: outputs, logs, and exact resume on either runner (Ray Train, started once here,
or this process)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from jobs.train_encoder import EncoderTrainingConfig, run
from pipeline.training.checkpointing import latest_checkpoint
from pipeline.models.bundle import read_bundle, write_bundle
from pipeline.models.checkpoints import load_networks
from pipeline.models.encoder import load_encoder
from tests.conftest import tiny_discriminator

pytestmark = pytest.mark.slow  # end-to-end runs (Ray, subprocesses, training): minutes on 2 cores


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory, G):
    path = tmp_path_factory.mktemp("gen") / "g16.safetensors"
    write_bundle(str(path), {"G_ema": G, "D": tiny_discriminator(resolution=16)})
    return str(path)


def config(generator: str, output, steps: int, runner: str = "local") -> EncoderTrainingConfig:
    return EncoderTrainingConfig(generator=generator, output=str(output), steps=steps, batch_size=8,
                                 checkpoint_every=10, base_channels=16, max_channels=64, eval_size=16,
                                 progress=False, keep_checkpoints=5, runner=runner)


def test_training_writes_encoder_checkpoints_and_logs(generator_file, G, tmp_path):
    path = run(config(generator_file, tmp_path, steps=20))  # --adversarial-weight defaults to LIA's 0.1
    E = load_encoder(str(path), generator=G)
    assert E.resolution == 16
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir())] == ["step-00000010", "step-00000020"]
    rows = list(csv.DictReader((tmp_path / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 21))
    evals = list(csv.DictReader((tmp_path / "eval_log.csv").open()))
    assert [int(r["step"]) for r in evals] == [10, 20]
    assert {"eval_latent_mse", "eval_pixel_mse", "eval_masked_pixel_mse", "eval_perceptual"} <= set(evals[0])
    assert float(evals[-1]["eval_latent_mse"]) < float(evals[-1]["eval_w_avg_latent_mse"])
    # the adversarial term: a copy of G's discriminator is fine-tuned alongside and checkpointed
    assert {"adversarial", "d_loss", "r1"} <= set(rows[0])
    tuned, original = load_networks(str(path))["D"], load_networks(generator_file)["D"]
    assert any(not torch.equal(v, original.state_dict()[k]) for k, v in tuned.state_dict().items()), "D was tuned"
    assert (tmp_path / "checkpoints" / "step-00000020" / "optimizer_D.pt").exists()
    # the bundle records the job's settings, the runner among them, and nothing of how the loop was placed
    _, info = read_bundle(path.read_bytes(), source=str(path))
    assert info["config"]["runner"] == "local" and info["config"]["steps"] == 20
    assert not [key for key in info["config"] if key.startswith("_in")]


def test_resume_continues_at_the_saved_step_with_the_same_optimizer_state_on_either_runner(ray_local, one_thread, generator_file,
                                                                                          tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    run(config(generator_file, straight, steps=20, runner="ray"))
    run(config(generator_file, split, steps=10))
    assert latest_checkpoint(split).name == "step-00000010"
    run(config(generator_file, split, steps=20))  # the same command with more steps resumes at 10
    rows = list(csv.DictReader((split / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 21)), "no step repeated or skipped"
    a = load_encoder(str(straight / "encoder.safetensors")).state_dict()
    b = load_encoder(str(split / "encoder.safetensors")).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    d_a, d_b = (load_networks(str(p / "encoder.safetensors"))["D"].state_dict() for p in (straight, split))
    for key in d_a:  # the fine-tuned discriminator resumes exactly too
        torch.testing.assert_close(d_a[key], d_b[key], rtol=0, atol=1e-6, msg=f"D.{key}")
    opt_a = torch.load(straight / "checkpoints" / "step-00000020" / "optimizer.pt", weights_only=True)
    opt_b = torch.load(split / "checkpoints" / "step-00000020" / "optimizer.pt", weights_only=True)
    assert opt_a["state"][0]["step"] == opt_b["state"][0]["step"] == 20


def test_training_with_real_images_runs_and_logs_the_pool(generator_file, tmp_path):
    import dataclasses

    from tests.datasets import messy_folder

    messy_folder(tmp_path / "real")
    cfg = dataclasses.replace(config(generator_file, tmp_path / "out", steps=10), real_images=str(tmp_path / "real"),
                              real_fraction=0.5, adversarial_weight=0.0)
    path = run(cfg)
    assert path.exists()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["real_images"] == str(tmp_path / "real")

"""The generator training job on the emoji demo data: outputs, and exact resume on either runner (Ray Train,
started once here, or this process)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from jobs.make_demo_data import DEFAULT_FONT
from jobs.make_demo_data import run as make_demo_data
from jobs.train_generator import GeneratorTrainingConfig, run
from pipeline.models.checkpoints import load_generator, load_networks

pytestmark = pytest.mark.slow  # end-to-end runs (Ray, subprocesses, training): minutes on 2 cores


@pytest.fixture(scope="module")
def emoji(tmp_path_factory):
    if not Path(DEFAULT_FONT).is_file():
        pytest.skip("fonts-noto-color-emoji is not installed")
    root = tmp_path_factory.mktemp("emoji")
    make_demo_data(str(root), resolution=16, shard_size=32, limit=64)
    return str(root)


def config(data: str, output, steps: int, runner: str = "local") -> GeneratorTrainingConfig:
    return GeneratorTrainingConfig(data=data, output=str(output), resolution=16, steps=steps, batch_size=4,
                                   z_dim=16, w_dim=16, mapping_layers=2, channel_base=256, channel_max=16,
                                   checkpoint_every=3, kid_samples=32, keep_checkpoints=5, progress=False,
                                   runner=runner)


def test_training_writes_a_loadable_generator_samples_and_kid(emoji, tmp_path):
    path = run(config(emoji, tmp_path, steps=6))
    G = load_generator(str(path))
    assert G.img_resolution == 16 and set(load_networks(str(path))) == {"G", "G_ema", "D"}
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step-00000003.png", "step-00000006.png"]
    evals = list(csv.DictReader((tmp_path / "eval_log.csv").open()))
    assert [int(r["step"]) for r in evals] == [3, 6]
    assert all(float(r["kid_random_features"]) == float(r["kid_random_features"]) for r in evals), "not NaN"


def test_resume_reproduces_an_uninterrupted_run_on_either_runner(ray_local, one_thread, emoji, tmp_path):
    run(config(emoji, tmp_path / "straight", steps=6, runner="ray"))
    run(config(emoji, tmp_path / "split", steps=3))
    run(config(emoji, tmp_path / "split", steps=6))
    a = load_networks(str(tmp_path / "straight" / "generator.safetensors"))
    b = load_networks(str(tmp_path / "split" / "generator.safetensors"))
    for name in ("G", "G_ema", "D"):
        for key, tensor in a[name].state_dict().items():
            torch.testing.assert_close(b[name].state_dict()[key], tensor, rtol=0, atol=1e-6, msg=f"{name}.{key}")
    rows = list(csv.DictReader((tmp_path / "split" / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))


def test_an_invertible_mapping_trains_and_inverts_exactly(emoji, tmp_path):
    """The training step itself, in this process: Ray's part is the same as for any mapping (above)."""
    from dataclasses import replace

    from pipeline.training.generator_task import GeneratorTask
    from pipeline.models.bundle import write_bundle

    cfg = replace(config(emoji, tmp_path, steps=3), mapping="invertible", coupling="affine")
    task = GeneratorTask(cfg, rank=0, world=1, device=torch.device("cpu"))
    for step in range(3):
        task.update(step, torch.Generator().manual_seed(step))
    write_bundle(str(tmp_path / "g.safetensors"), task.networks)
    G = load_generator(str(tmp_path / "g.safetensors"))
    assert G.init_kwargs["mapping_kwargs"]["kind"] == "invertible"
    z = torch.randn(32, 16)
    assert (G.mapping.inverse(G.mapping(z)) - z[:, None]).abs().max() < 1e-5
    trained = load_networks(str(tmp_path / "g.safetensors"))["G"].mapping.flow.layers[0].net.out.weight
    assert trained.abs().max() > 0, "the coupling networks learned something (they start at zero)"

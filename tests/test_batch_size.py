"""--batch-size auto: the largest batch whose refinement fits the actor's memory; a batch that does not
fit is one clear error before any work."""

from __future__ import annotations

import pytest
import torch

from pipeline.model_set import ModelSet
from pipeline.invert import batch_size as sizing
from tests.conftest import tiny_generator


def test_the_memory_of_one_more_image_grows_with_the_resolution():
    small = sizing.refine_bytes_per_image(ModelSet(G=tiny_generator(16)))
    large = sizing.refine_bytes_per_image(ModelSet(G=tiny_generator(64)))
    assert 0 < small and 8 < large / small < 32, "16x the pixels; the 4x4 and 8x8 layers do not grow"


def test_the_estimate_counts_without_computing_anything():
    G = tiny_generator(32)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    sizing.refine_bytes_per_image(ModelSet(G=G))
    assert all(torch.equal(before[k], v) and v.device.type == "cpu" for k, v in G.state_dict().items())


def real_step_peak(models: ModelSet, n: int, precision: str) -> int:
    """The same step as the estimate's, computed for real on the CPU, its tensors followed the same way."""
    from pipeline.precision import autocast_for

    G = models.G
    peak = sizing.PeakLiveBytes()
    with peak:
        target = torch.rand(n, G.img_channels, G.img_resolution, G.img_resolution) * 2 - 1
        ws = G.w_avg.expand(n, G.num_ws, -1).clone().requires_grad_(True)
        with autocast_for("cpu", precision):
            synth = G.synthesis(ws, noise_mode="const", fused_modconv=False)
        loss = (synth.float() - target).square().mean()
        torch.autograd.grad(loss, [ws])
        del synth, loss
    return peak.peak


@pytest.mark.parametrize("architecture", ["stylegan2", "stylegan3-t"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_estimate_is_the_peak_of_a_real_step_in_its_precision(architecture, precision):
    from benchmarks.generator import official_generator

    G = official_generator(64, architecture, channel_max=32).requires_grad_(False)
    models = ModelSet(G=G)
    estimated = sizing.refine_bytes_per_image(models, precision)
    measured = real_step_peak(models, 2, precision) - real_step_peak(models, 1, precision)
    assert abs(estimated - measured) <= 0.02 * measured


def test_a_low_precision_step_needs_less_memory_per_image():
    from benchmarks.generator import official_generator

    models = ModelSet(G=official_generator(64, "stylegan3-t", channel_max=32).requires_grad_(False))
    assert sizing.refine_bytes_per_image(models, "bf16") < 0.8 * sizing.refine_bytes_per_image(models, "fp32")


def test_auto_takes_the_largest_batch_within_the_margin_and_the_cap():
    cpu = torch.device("cpu")
    assert sizing.largest_batch(per_image=2**30, memory=10 * 2**30, device=cpu) == 6  # 60% of 10 GiB
    assert sizing.largest_batch(per_image=2**30, memory=2**29, device=cpu) == 1  # never below one image
    assert sizing.largest_batch(per_image=1, memory=2**40, device=cpu) == sizing.MAX_AUTO_BATCH["cpu"]


def test_an_explicit_batch_that_does_not_fit_names_the_one_that_does():
    assert sizing.check_batch(4, per_image=2**30, memory=8 * 2**30) is None
    message = sizing.check_batch(16, per_image=2**30, memory=8 * 2**30)
    assert "--batch-size 16 needs about 16.0 GiB" in message and "use --batch-size 4 or --batch-size auto" in message


def test_a_processor_with_a_batch_too_large_refuses_to_work(tmp_path, monkeypatch):
    from pipeline.models.bundle import write_bundle
    from pipeline.invert.config import InvertConfig
    from pipeline.invert.shard_processor import BatchSizeError, ShardProcessor
    from pipeline.store.writer import ShardWriter

    generator = str(tmp_path / "G.safetensors")
    write_bundle(generator, {"G_ema": tiny_generator(16)})
    monkeypatch.setattr("pipeline.invert.shard_processor.actor_memory_bytes", lambda *a, **k: 2**20)
    config = InvertConfig(input=str(tmp_path), output=str(tmp_path / "store"), generator=generator,
                          stages=("refine",), perceptual="none", batch_size=64)
    never_writes = ShardWriter(config.output, token="none", recipe=None)
    processor = ShardProcessor(config, never_writes)
    with pytest.raises(BatchSizeError, match="--batch-size 64 needs about"):
        processor.ready()
    auto = ShardProcessor(InvertConfig(**{**config.to_dict(), "batch_size": "auto"}), never_writes)
    assert auto.ready()["batch_size"] >= 1 and "--batch-size auto: " in auto.ready()["note"]

"""The identity embedding behind --identity-model: loading, errors, and what training achieves."""

from __future__ import annotations

import csv

import pytest
import torch

from pipeline.errors import CheckpointError, WeightsNotFoundError
from pipeline.models.bundle import write_bundle
from pipeline.models.embedding import EmbeddingNet
from pipeline.models.identity import identity_cosine, load_identity_model
from pipeline.training.identity_training import degrade, info_nce, retrieval_accuracy
from tests.conftest import tiny_generator


def blobs(n: int, resolution: int = 16, seed: int = 0) -> torch.Tensor:
    """n distinct smooth colour images in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(resolution, resolution), mode="bilinear", align_corners=False)


def test_a_saved_embedding_loads_through_identity_model_and_embeds_unit_vectors(tmp_path):
    net = EmbeddingNet(resolution=16, base_channels=8, max_channels=16, embedding_dim=12)
    write_bundle(str(tmp_path / "identity.safetensors"), {"identity": net})
    model, name = load_identity_model(str(tmp_path / "identity.safetensors"))
    images = blobs(5)
    emb = model.embed(images)
    assert emb.shape == (5, 12) and torch.allclose(emb.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(emb, net.embed(images), atol=1e-6)
    assert name == "embedding:identity.safetensors"
    assert torch.allclose(identity_cosine(model, images, images), torch.ones(5), atol=1e-5)
    assert model.embed(torch.nn.functional.interpolate(images, size=32)).shape == (5, 12), "any input size"


def test_a_bundle_without_an_embedding_and_a_missing_file_are_named_errors(tmp_path):
    write_bundle(str(tmp_path / "g.safetensors"), {"G_ema": tiny_generator()})
    with pytest.raises(CheckpointError, match="--identity-model.*EmbeddingNet"):
        load_identity_model(str(tmp_path / "g.safetensors"))
    with pytest.raises(WeightsNotFoundError, match="--identity-model"):
        load_identity_model(str(tmp_path / "absent.safetensors"))


def test_info_nce_prefers_matching_pairs():
    a = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    matched = info_nce(a, a + 0.01 * torch.randn(16, 8))
    shuffled = info_nce(a, a[torch.randperm(16)])
    assert matched < shuffled


def test_degrade_is_seeded_and_keeps_images_in_range():
    images = blobs(4)
    one = degrade(images, torch.Generator().manual_seed(3))
    two = degrade(images, torch.Generator().manual_seed(3))
    assert torch.equal(one, two) and one.shape == images.shape
    assert one.min() >= -1 and one.max() <= 1 and not torch.equal(one, images)


def test_contrastive_training_makes_degraded_views_recognizable():
    torch.manual_seed(0)
    images = (0.6 * blobs(1, seed=5) + 0.4 * blobs(48)).clamp(-1, 1)  # similar images: untrained, ~40% top-1
    net = EmbeddingNet(resolution=16, base_channels=16, max_channels=32, embedding_dim=16)
    before = retrieval_accuracy(net, images, torch.Generator().manual_seed(9))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(60):
        net.train()
        loss = info_nce(net(degrade(images, g)), net(degrade(images, g)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = retrieval_accuracy(net, images, torch.Generator().manual_seed(9))
    assert before["top1"] < 0.7 and after["top1"] >= 0.9
    assert after["cosine_same"] > after["cosine_other"] + 0.5


@pytest.mark.slow
def test_the_training_job_writes_a_bundle_that_identity_model_loads(ray_local, tmp_path):
    from jobs.train_identity import IdentityTrainingConfig, run
    from pipeline.imaging import save_grid

    data = tmp_path / "data"
    for i, image in enumerate(blobs(24)):
        save_grid(image[None], data / f"img{i:02d}.png", nrow=1)
    cfg = IdentityTrainingConfig(data=str(data), output=str(tmp_path / "out"), resolution=16, steps=4, batch_size=8,
                                 base_channels=8, max_channels=16, embedding_dim=8, checkpoint_every=2, progress=False)
    path = run(cfg)
    model, _ = load_identity_model(str(path))
    assert model.embed(blobs(2)).shape == (2, 8)
    evals = list(csv.DictReader((tmp_path / "out" / "eval_log.csv").open()))
    assert [int(r["step"]) for r in evals] == [2, 4] and 0 <= float(evals[-1]["top1"]) <= 1
    resumed = run(IdentityTrainingConfig(**{**cfg.__dict__, "steps": 6}))
    evals = list(csv.DictReader((tmp_path / "out" / "eval_log.csv").open()))
    assert [int(r["step"]) for r in evals] == [2, 4, 6] and resumed == path

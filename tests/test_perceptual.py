"""Perceptual distances: LPIPS with its backbone from a URI, discriminator features, the chooser."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import WeightsNotFoundError
from pipeline.losses.discriminator_features import DiscriminatorFeatureLoss
from benchmarks.stand_in_weights import save_random_backbone
from pipeline.losses.lpips_loss import LPIPSLoss
from pipeline.losses.perceptual import build_perceptual
from tests.conftest import tiny_discriminator


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    return save_random_backbone(tmp_path_factory.mktemp("w") / "vgg16.pth", "vgg", seed=3)


def test_lpips_loads_its_backbone_from_the_weights_uri(vgg_file):
    saved = torch.load(vgg_file, weights_only=True)
    loss = LPIPSLoss("vgg", str(vgg_file))
    torch.testing.assert_close(getattr(loss.model.net.slice1, "0").weight, saved["features.0.weight"])
    torch.testing.assert_close(getattr(loss.model.net.slice5, "28").weight, saved["features.28.weight"])


def test_a_full_torchvision_state_dict_loads_too(tmp_path):
    import torchvision

    model = torchvision.models.alexnet()
    torch.save(model.state_dict(), tmp_path / "alexnet.pth")  # includes classifier.* (ignored)
    loss = LPIPSLoss("alex", str(tmp_path / "alexnet.pth"))
    torch.testing.assert_close(getattr(loss.model.net.slice1, "0").weight, model.features[0].weight)


def test_lpips_is_zero_for_identical_images_and_grows_with_distortion(vgg_file):
    loss = LPIPSLoss("vgg", str(vgg_file))
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    small, large = x + 0.05 * torch.randn_like(x), x + 0.5 * torch.randn_like(x)
    assert loss(x, x).abs().max() < 1e-6
    d_small, d_large = loss(x, small), loss(x, large)
    assert d_small.shape == (3,) and (d_small < d_large).all()


def test_missing_lpips_weights_name_the_setting(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="--lpips-weights"):
        LPIPSLoss("vgg", str(tmp_path / "absent.pth"))


def test_large_images_are_downsampled_to_256_before_lpips(vgg_file):
    loss = LPIPSLoss("vgg", str(vgg_file))
    x = torch.zeros(1, 3, 512, 512)
    assert loss(x, x + 0.1).shape == (1,)


def test_discriminator_feature_distance_is_per_image():
    loss = DiscriminatorFeatureLoss(tiny_discriminator(resolution=16))
    x = torch.randn(4, 3, 16, 16)
    y = x.clone()
    y[0] += 1.0
    d = loss(x, y)
    assert d[0] > 0 and torch.equal(d[1:], torch.zeros(3))


def test_build_perceptual_chooses_and_explains(vgg_file):
    assert build_perceptual("none") is None
    assert isinstance(build_perceptual("lpips", lpips_weights=str(vgg_file)), LPIPSLoss)
    with pytest.raises(ValueError, match="has none"):
        build_perceptual("discriminator")
    with pytest.raises(ValueError, match="must be one of"):
        build_perceptual("ssim")


def test_a_file_that_is_not_a_state_dict_is_a_clear_error(tmp_path):
    from pipeline.errors import CheckpointError

    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="--lpips-weights .*not a readable torch state dict"):
        LPIPSLoss("vgg", str(path))

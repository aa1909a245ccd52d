"""The benchmark scripts keep running (tiny settings; speed is measured by running them, not here)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from benchmarks import refine

pytestmark = pytest.mark.slow  # end-to-end runs (Ray, subprocesses, training): minutes on 2 cores


def test_the_official_projectors_vgg16_stand_in_measures_lpips_and_loads_as_torchscript(tmp_path):
    import io

    from benchmarks.official_code import LpipsFeatures, scripted_lpips_features
    from benchmarks.stand_in_weights import save_random_backbone
    from pipeline.losses.lpips_loss import LPIPSLoss

    lpips = LPIPSLoss("vgg", str(save_random_backbone(tmp_path / "vgg.pth")))
    vgg16 = torch.jit.load(io.BytesIO(scripted_lpips_features(lpips)))
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    as_official = (vgg16((x + 1) * 127.5, resize_images=False, return_lpips=True)
                   - vgg16((y + 1) * 127.5, resize_images=False, return_lpips=True)).square().sum(dim=1)
    torch.testing.assert_close(as_official, lpips(x, y))
    assert isinstance(LpipsFeatures(lpips), torch.nn.Module)


@pytest.mark.skipif(not os.environ.get("LATENTMILL_OFFICIAL_REPO"),
                    reason="set LATENTMILL_OFFICIAL_REPO to an export of NVlabs/stylegan2-ada-pytorch")
def test_the_refine_benchmark_runs_the_official_projector(tmp_path):
    out = tmp_path / "o.json"
    refine.main(["--official-repo", os.environ["LATENTMILL_OFFICIAL_REPO"], "--batches", "1", "--repeats", "1",
                 "--timing-steps", "1,2", "--equal-images", "1", "--official-steps", "5", "--ladder", "0",
                 "--precision", "fp32", "--json", str(out)])
    result = json.loads(out.read_text())
    official, ours = result["per_step"]
    assert official["method"] == "official project()" and official["gflop_per_image_step"] > ours["gflop_per_image_step"]
    assert result["equal_lpips"]["official_steps"] == 5

"""The benchmark scripts keep running (tiny settings; speed is measured by running them, not here)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from benchmarks import flow, generator, refine

pytestmark = pytest.mark.slow  # end-to-end runs (Ray, subprocesses, training): minutes on 2 cores


def test_generator_benchmark_runs_and_reports_every_setting(tmp_path, capsys):
    out = tmp_path / "g.json"
    generator.main(["--resolutions", "256", "--batch-sizes", "1", "--dtypes", "fp32", "--modes", "unfused",
                    "--repeats", "1", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 and rows[0]["forward_img_per_s"] > 0
    assert "| 256 | 1 | fp32 | unfused |" in capsys.readouterr().out


def test_refine_benchmark_reports_a_ratio(tmp_path):
    out = tmp_path / "r.json"
    refine.main(["--batch", "1", "--precision", "fp32", "--timing-steps", "1,2", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["ratio"] > 0 and result["baseline_steps"] == 1000


def test_flow_benchmark_times_fitting_and_log_prob_against_the_gaussianized_prior(tmp_path, capsys):
    out = tmp_path / "f.json"
    flow.main(["--generators", "demo", "--samples", "1000", "--batch-size", "500", "--log-prob-batch", "500",
               "--device", "cpu", "--json", str(out)])
    row = json.loads(out.read_text())["rows"][0]
    assert row["samples"] == 1000 and row["train_s_per_1e6_samples"] > 0 and row["gaussianized_over_flow_speed"] > 0
    assert "| demo | 64 | 1,000 | 500 |" in capsys.readouterr().out


def test_the_official_projectors_vgg16_stand_in_measures_lpips_and_loads_as_torchscript(tmp_path):
    import io

    from benchmarks.official_code import LpipsFeatures, scripted_lpips_features
    from pipeline.losses.lpips_loss import LPIPSLoss, save_random_backbone

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


def test_encoder_benchmark_reports_forward_and_training_figures(tmp_path):
    from benchmarks import encoder

    out = tmp_path / "e.json"
    encoder.main(["--backbones", "convnet", "--batch-sizes", "1", "--train-batch", "1", "--repeats", "1",
                  "--json", str(out)])
    measures = {row["measure"] for row in json.loads(out.read_text())["rows"]}
    assert measures == {"forward img/s (fp32)", "train steps/s (fp32)"}


def test_invert_benchmark_runs_the_real_job(tmp_path):
    import ray

    from benchmarks import invert

    out = tmp_path / "i.json"
    try:
        invert.main(["--images", "1", "--steps", "1", "--batch-size", "1", "--json", str(out)])
    finally:
        ray.shutdown()  # the job started an embedded Ray in this process
    result = json.loads(out.read_text())
    assert result["ok"] == 1 and result["images_per_second_wall"] > 0


def test_curate_benchmark_finds_the_planted_pairs_and_compares_with_the_full_matrix(tmp_path):
    from benchmarks import curate

    out = tmp_path / "c.json"
    curate.main(["--rows", "500", "--dim", "16", "--planted", "5", "--block-size", "128", "--json", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["pairs"] >= 5 and row["speedup"] > 0 and row["rows_per_s"] > 0

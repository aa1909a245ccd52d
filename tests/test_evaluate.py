"""`latentmill evaluate`: six studies with their settings and fingerprints, on the demo model by default."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from latentmill.cli import main
from pipeline.evaluation.detection_study import detection_accuracy
from pipeline.evaluation.models import EvalModels
from pipeline.evaluation.realism import feature_extractor, kid_to


@pytest.mark.slow
def test_evaluate_writes_the_six_studies_for_the_demo_model(tmp_path):
    result = CliRunner().invoke(main, ["evaluate", "--output", str(tmp_path), "--num-images", "8", "--refine-steps",
                                       "2,4", "--baseline-steps", "3", "--baseline-images", "1", "--study-steps", "2",
                                       "--trials", "1", "--positives", "10", "--device", "cpu",
                                       "--fine-tune-steps", "2", "--held-out", "300"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report["studies"]) == {"inversion", "prior", "compression", "composition", "stylespace", "lia"}
    lia = report["studies"]["lia"]["parts"]
    assert len(lia) == 6 and not any("skipped" in part for part in lia.values()), "the demo has E, D and a flow"
    assert report["model"]["flow"].endswith("flow.safetensors")
    assert {"realism_swd", "seam_swd_finest"} <= set(report["studies"]["composition"]["rows"][0])
    assert report["model"]["generator_fingerprint"].startswith("sha256:")
    assert report["settings"]["refine_steps"] == [2, 4] and report["data"]["count"] == 8
    methods = [r["method"] for r in report["studies"]["inversion"]["rows"]]
    assert methods == ["encoder", "encoder + refine", "encoder + refine", "w_avg + refine", "w_avg + refine",
                       "official projector recipe"]
    for study in report["studies"].values():
        assert study["rows"] and "claim" in study and isinstance(study["holds"], bool)
    assert "| method | steps |" in (tmp_path / "eval.md").read_text()
    page = (tmp_path / "eval.html").read_text()
    assert all(f"<h2>{name}</h2>" in page for name in report["studies"])


def test_detection_finds_planted_channels_from_their_styles(G, prior):
    identity = type("Pixels", (), {"embed": staticmethod(lambda x: torch.nn.functional.normalize(x.flatten(1), dim=1))})
    extractor = feature_extractor("random")
    models = EvalModels(G=G, prior=prior, identity=identity, realism=kid_to(torch.zeros(4, 3, 16, 16), extractor))
    study = detection_accuracy(models, positives=(10, 30), trials=5, population=2000)
    rows = {r["positives"]: r for r in study["rows"]}
    assert set(r["mode"] for r in study["rows"]) == {"styles"}, "no encoder: no 'through E' rows"
    assert rows[30]["top5"] >= 0.8 and study["holds"] == (min(r["top5"] for r in rows.values()) >= 0.8)


@pytest.mark.slow
def test_a_killed_evaluate_keeps_finished_studies_and_the_rerun_does_only_the_rest(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    command = [sys.executable, "-m", "latentmill", "evaluate", "--output", str(tmp_path), "--num-images", "6",
               "--refine-steps", "2", "--baseline-steps", "3", "--baseline-images", "1", "--study-steps", "2",
               "--trials", "1", "--positives", "10", "--device", "cpu", "--studies", "inversion,prior,stylespace"]
    repo = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(command, cwd=repo, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    report = tmp_path / "eval.json"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not (
            report.exists() and json.loads(report.read_text())["studies"]):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    first = json.loads(report.read_text())["studies"]
    assert 1 <= len(first) < 3, "killed after its first study"
    rerun = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"reusing {', '.join(first)}" in rerun.stderr
    assert f"study 1/{3 - len(first)}" in rerun.stderr
    final = json.loads(report.read_text())["studies"]
    assert set(final) == {"inversion", "prior", "stylespace"}
    assert all(final[name] == first[name] for name in first), "finished studies are kept, not recomputed"
    overwrite = subprocess.run(command + ["--studies", "stylespace", "--overwrite"], cwd=repo, capture_output=True,
                               text=True, timeout=600)
    assert overwrite.returncode == 0 and "reusing" not in overwrite.stderr

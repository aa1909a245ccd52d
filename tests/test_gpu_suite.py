"""The benchmark suite (benchmarks/suite.py, benchmarks/gpu_suite.sh): every step recorded, figures read as
declared, failures, timeouts and the budget recorded without stopping the suite; the smoke run on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.suite import CEILINGS_STEP, STEPS, Figure, Step, figures_of, run_suite

REPO = Path(__file__).resolve().parents[1]


def writes(data: dict) -> tuple[str, ...]:
    """A fake benchmark: `python -c` writing `data` to its --json path."""
    return ("-c", f"import json, sys; json.dump(json.loads({json.dumps(data)!r}), open(sys.argv[1], 'w'))", "{json}")


def step(name: str, argv: tuple[str, ...], *, figures=(Figure("v", "u", "{name}"),), seconds=1.0, timeout_s=30.0,
         **kwargs) -> Step:
    return Step(name, argv, argv, seconds=seconds, timeout_s=timeout_s, figures=figures, smoke_seconds=seconds,
                **kwargs)


def suite(tmp_path: Path, steps, *, budget_s: float = 60.0, device: str = "cpu", smoke: bool = False, **kwargs):
    runs = run_suite(steps, tmp_path, device=device, smoke=smoke, budget_s=budget_s, machine="test machine",
                     invocation="test", **kwargs)
    summary = json.loads((tmp_path / "summary.json").read_text())
    return {run.step.name: run for run in runs}, summary


CEILINGS = {"rows": [{"measure": "matmul", "dtype": "bf16", "tflop_per_s": 100.0},
                     {"measure": "matmul", "dtype": "fp32", "tflop_per_s": 10.0},
                     {"measure": "matmul", "dtype": "tf32", "tflop_per_s": 50.0},
                     {"measure": "copy", "mib": 16, "tb_per_s": 1.0}]}
WORK = {"machine": "the benchmark's machine", "precision": "fp32",
        "rows": [{"method": "a", "gflop_per_s": 5000.0, "seconds": 2.0},
                 {"method": "b", "gflop_per_s": None, "seconds": 3.0}]}
WORK_FIGURES = (Figure("seconds", "s", "work {method} {precision}"),
                Figure("gflop_per_s", "MFU", "work {method}: MFU", ceiling="{precision}"))


def test_figures_are_read_row_by_row_with_their_units_and_nulls_left_out():
    figures = figures_of(step("w", (), figures=WORK_FIGURES), WORK, {}, "cpu")
    assert figures == [("work a fp32", 2.0, "s"), ("work b fp32", 3.0, "s")]  # no ceilings measured: no MFU


def test_mfu_is_against_the_ceiling_of_the_precision_the_work_ran_in():
    ceilings = {"bf16": 100.0, "fp32": 10.0, "tf32": 50.0}
    on_cpu = figures_of(step("w", (), figures=WORK_FIGURES), WORK, ceilings, "cpu")
    on_gpu = figures_of(step("w", (), figures=WORK_FIGURES), WORK, ceilings, "cuda")
    assert ("work a: MFU", 0.5, "MFU (of the fp32 matmul ceiling)") in on_cpu
    assert ("work a: MFU", 0.1, "MFU (of the tf32 matmul ceiling)") in on_gpu  # fp32 convolutions run in TF32
    bf16 = figures_of(step("w", (), figures=WORK_FIGURES), WORK | {"precision": "bf16"}, ceilings, "cuda")
    assert ("work a: MFU", 0.05, "MFU (of the bf16 matmul ceiling)") in bf16


def test_every_figure_is_an_entry_with_its_command_commit_machine_and_date(tmp_path):
    runs, summary = suite(tmp_path, [
        step(CEILINGS_STEP, writes(CEILINGS), figures=(Figure("tflop_per_s", "TFLOP/s", "matmul {dtype}"),)),
        step("work", writes(WORK), figures=WORK_FIGURES)])
    assert runs["work"].status == "ok"
    entries = {e["figure"]: e for e in summary["entries"]}
    assert entries["matmul bf16"]["value"] == 100.0 and entries["matmul bf16"]["unit"] == "TFLOP/s"
    mfu = entries["work a: MFU"]
    assert mfu["value"] == pytest.approx(0.5) and mfu["unit"] == "MFU (of the fp32 matmul ceiling)"
    assert mfu["step"] == "work" and mfu["status"] == "ok" and mfu["reason"] is None
    assert mfu["command"].startswith("python -c ") and str(tmp_path / "work.json") in mfu["command"]
    assert mfu["commit"] == summary["commit"] and mfu["commit"] != ""
    assert mfu["machine"] == "the benchmark's machine" and entries["matmul bf16"]["machine"] == "test machine"
    assert mfu["date"] and mfu["seconds"] >= 0
    table = (tmp_path / "summary.md").read_text()
    assert "| work a: MFU | 0.5 | MFU (of the fp32 matmul ceiling) | work | ok |" in table
    assert "| matmul bf16 | 100 | TFLOP/s | ceilings | ok |" in table


def test_a_failed_or_timed_out_step_is_recorded_and_the_suite_goes_on(tmp_path):
    start = time.monotonic()
    runs, summary = suite(tmp_path, [
        step("fails", ("-c", "import sys; print('working'); sys.exit('CUDA error: out of memory')")),
        step("hangs", ("-c", "import time; time.sleep(60)"), timeout_s=1),
        step("works", writes({"rows": [{"name": "x", "v": 1.5}]}))])
    assert time.monotonic() - start < 30
    assert runs["fails"].status == "failed" and runs["fails"].reason == "exit status 1: CUDA error: out of memory"
    assert runs["hangs"].status == "timeout" and runs["hangs"].reason == "stopped after 1 s"
    assert runs["works"].status == "ok" and runs["works"].figures == [("x", 1.5, "u")]
    assert [(e["step"], e["status"]) for e in summary["entries"]] == [("fails", "failed"), ("hangs", "timeout"),
                                                                       ("works", "ok")]
    assert "working" in (tmp_path / "fails.log").read_text()


def test_steps_that_would_not_fit_the_budget_or_lack_what_they_need_are_skipped(tmp_path):
    runs, summary = suite(tmp_path, [
        step("fits", writes({"rows": [{"name": "x", "v": 1}]}), seconds=1),
        step("too-long", writes({"rows": [{"name": "y", "v": 2}]}), seconds=1000),
        step("official", writes({"rows": [{"name": "z", "v": 3}]}), needs_official_repo=True),
        step("outruns", ("-c", "import time; time.sleep(60)"), seconds=0.1, timeout_s=60)], budget_s=2)
    assert runs["fits"].status == "ok"
    assert runs["too-long"].status == "skipped" and runs["too-long"].reason.startswith("budget: expected to take 1000 s")
    assert runs["official"].status == "skipped" and "--official-repo" in runs["official"].reason
    assert runs["outruns"].status == "timeout" and runs["outruns"].reason.endswith("(the end of the suite's budget)")
    assert {e["step"] for e in summary["entries"]} == {"fits", "too-long", "official", "outruns"}
    assert not (tmp_path / "too-long.log").exists()


def test_the_smoke_run_uses_each_steps_smoke_command_or_skips_it(tmp_path):
    tiny = writes({"rows": [{"name": "tiny", "v": 1}]})
    runs, _ = suite(tmp_path, [Step("a", writes({"rows": []}), tiny, seconds=1, timeout_s=30, figures=(
        Figure("v", "u", "{name}"),)), Step("b", tiny, None, seconds=1, timeout_s=30, figures=())], smoke=True)
    assert runs["a"].figures == [("tiny", 1, "u")]
    assert runs["b"].status == "skipped" and runs["b"].reason.startswith("smoke:")


def test_output_unlike_the_declaration_fails_the_step_with_the_reason(tmp_path):
    runs, _ = suite(tmp_path, [
        step("no-json", ("-c", "pass")),
        step("other-keys", writes({"rows": [{"name": "x", "w": 1}]})),
        step("missing-field", writes({"rows": [{"v": 1}]}))])
    assert runs["no-json"].status == "failed" and runs["no-json"].reason.startswith("its JSON: FileNotFoundError")
    assert runs["other-keys"].reason == "no declared figure in other-keys.json"
    assert runs["missing-field"].reason == "its JSON: KeyError: 'name'"


def test_the_declared_suite_covers_every_benchmark_with_a_json_output_and_a_smoke_run():
    names = [s.name for s in STEPS]
    assert len(set(names)) == len(names) and names[0] == CEILINGS_STEP
    modules = {s.argv[1] for s in STEPS}
    assert modules >= {f"benchmarks.{m}" for m in ("ceilings", "refine", "invert", "generator", "curate",
                                                   "refine_memory", "flow", "pretrained_encoder", "encoder",
                                                   "precision_quality")}
    assert {s.smoke_argv[1] for s in STEPS if s.smoke_argv} == modules  # every benchmark runs in --smoke
    for s in STEPS:
        assert "{json}" in s.argv and (s.smoke_argv is None or "{json}" in s.smoke_argv), s.name
        assert ("{official_repo}" in s.argv) == s.needs_official_repo, s.name
        assert (REPO / (s.argv[1].replace(".", "/") + ".py")).is_file(), s.name
    # the full run is sized for one H200's 8 minutes (with the official comparison, the last steps give way)
    assert sum(s.seconds for s in STEPS if not s.needs_official_repo) <= 480


@pytest.mark.slow
def test_the_smoke_suite_runs_every_benchmark_on_a_cpu_within_minutes(tmp_path):
    out = tmp_path / "out"
    official = os.environ.get("LATENTMILL_OFFICIAL_REPO")
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), str(out), "--smoke", "--device", "cpu",
                             *(["--official-repo", official] if official else [])],
                            capture_output=True, text=True, timeout=900, env=os.environ | {"PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    by_step: dict[str, list[dict]] = {}
    for entry in summary["entries"]:
        by_step.setdefault(entry["step"], []).append(entry)
    assert list(by_step) == [s.name for s in STEPS]  # every declared step, in order
    for s in STEPS:
        entries = by_step[s.name]
        if s.smoke_argv is None or (s.needs_official_repo and not official):
            assert [e["status"] for e in entries] == ["skipped"] and entries[0]["reason"], s.name
        else:
            assert all(e["status"] == "ok" and isinstance(e["value"], (int, float)) and e["unit"] for e in entries), \
                entries
            assert all(e["command"].startswith(f"python -m {s.smoke_argv[1]} ") for e in entries)
    assert all(e["commit"] and e["machine"] and e["date"] for e in summary["entries"])
    assert "| figure | value | unit | step | status |" in result.stdout  # the table, printed at the end

    # what each benchmark's own JSON says (these runs are the benchmarks' only test runs)
    def output(step: str) -> dict:
        return json.loads((out / f"{step}.json").read_text())

    refine = output("refine-b16-bf16")
    assert refine["ratio"] > 0 and refine["baseline_steps"] == 1000
    assert output("invert")["ok"] == 1 and output("invert")["images_per_second_wall"] > 0
    assert all(row["forward_img_per_s"] > 0 for row in output("generator")["rows"])
    assert all(row["pairs"] >= 5 and row["rows_per_s"] > 0 for row in output("curate")["rows"])
    assert any(row.get("speedup", 0) > 0 for row in output("curate")["rows"]), "compared with the full matrix"
    (flow,) = output("flow")["rows"]
    assert flow["samples"] == 1000 and flow["train_s_per_1e6_samples"] > 0 and flow["gaussianized_over_flow_speed"] > 0
    assert {row["measure"] for row in output("encoder")["rows"]} == {"forward img/s (fp32)", "train steps/s (fp32)"}

"""--precision auto: the precision a device runs natively, read from its capabilities, never timed; a
store records what each kind of device ran, so the same command resumes on any machine."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline import precision
from pipeline.precision import device_kind, resolve_precision


@pytest.fixture
def cpu_with(monkeypatch):
    """Pretend the CPU has these flags (no forcing from the environment)."""
    monkeypatch.delenv(precision.FORCE_CPU_BF16, raising=False)

    def pretend(flags: set[str]) -> None:
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    return pretend


def test_a_cpu_without_native_bf16_runs_fp32(cpu_with):
    cpu_with({"avx2", "fma"})
    choice, why = resolve_precision("auto", "cpu")
    assert choice == "fp32" and "no native bf16" in why
    assert device_kind("cpu") == "cpu"


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_a_cpu_with_native_bf16_runs_bf16(cpu_with, flag):
    cpu_with({"avx512f", flag})
    assert resolve_precision("auto", "cpu")[0] == "bf16"
    assert device_kind("cpu") == "cpu-bf16"


def test_the_choice_is_the_same_on_every_call_and_takes_no_timing(cpu_with, monkeypatch):
    cpu_with({"avx512_bf16"})
    monkeypatch.setattr("time.perf_counter", lambda: pytest.fail("auto never times anything"))
    assert {resolve_precision("auto", "cpu") for _ in range(5)} == {resolve_precision("auto", "cpu")}


def test_the_environment_forces_the_cpu_capability_either_way(cpu_with, monkeypatch):
    cpu_with({"avx512_bf16"})
    monkeypatch.setenv(precision.FORCE_CPU_BF16, "0")
    assert resolve_precision("auto", "cpu")[0] == "fp32" and device_kind("cpu") == "cpu"
    cpu_with({"avx2"})
    monkeypatch.setenv(precision.FORCE_CPU_BF16, "1")
    assert resolve_precision("auto", "cpu")[0] == "bf16" and device_kind("cpu") == "cpu-bf16"


def test_a_store_recorded_precision_for_a_kind_of_device_wins_over_the_rule(cpu_with):
    cpu_with({"avx512_bf16"})
    assert resolve_precision("auto", "cpu", {"cpu-bf16": "fp32"}) == ("fp32", "the store's precision for cpu-bf16")
    assert resolve_precision("auto", "cpu", {"cuda:NVIDIA H200": "bf16"})[0] == "bf16"  # another kind: the rule
    assert resolve_precision("fp16", "cpu", {"cpu-bf16": "fp32"}) == ("fp16", "as set")


def test_gpus_run_bf16_where_supported_else_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", "cuda")[0] == "bf16" and device_kind("cuda") == "cuda:Some GPU"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert resolve_precision("auto", "cuda")[0] == "fp16"


def test_an_explicit_precision_is_kept_and_a_bad_one_refused():
    assert resolve_precision("bf16", "cpu") == ("bf16", "as set")
    with pytest.raises(ValueError, match="--precision"):
        resolve_precision("int8", "cpu")


def test_refinement_reports_the_precision_it_ran_in():
    from pipeline.stages.refine import refine
    from tests.conftest import tiny_generator

    G = tiny_generator(16)
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    result = refine(G, images, G.w_avg.expand(1, G.num_ws, -1).clone(), steps=1)
    assert result.precision == resolve_precision("auto", "cpu")[0]
    assert refine(G, images, result.ws, steps=1, precision="bf16").precision == "bf16"


@pytest.fixture
def small_job(tmp_path):
    from pipeline.models.bundle import write_bundle
    from pipeline.invert.config import InvertConfig
    from tests.conftest import tiny_generator
    from tests.datasets import colorful, png_bytes

    (tmp_path / "in").mkdir()
    for i in range(4):
        (tmp_path / "in" / f"img{i}.png").write_bytes(png_bytes(colorful(seed=i)))
    write_bundle(str(tmp_path / "G.safetensors"), {"G_ema": tiny_generator(16)})

    def config(**changes) -> InvertConfig:
        return InvertConfig(**{**dict(input=str(tmp_path / "in"), output=str(tmp_path / "store"),
                                      generator=str(tmp_path / "G.safetensors"), stages=("refine",), steps=1,
                                      perceptual="none", shard_size=2, batch_size=2, progress=False), **changes})
    return config


def test_the_same_command_resumes_on_a_machine_whose_auto_differs(small_job, monkeypatch, tmp_path):
    from tests.stores import invert_here, manifest_entries

    monkeypatch.setenv(precision.FORCE_CPU_BF16, "1")
    store = small_job().output
    invert_here(small_job())
    (tmp_path / "store" / "manifest" / "folder-00001.json").unlink()  # as if the run died before it
    monkeypatch.setenv(precision.FORCE_CPU_BF16, "0")
    frame = invert_here(small_job())  # not refused: auto is auto
    assert len(frame) == 4
    recipe = json.loads((tmp_path / "store" / "store.json").read_text())
    assert recipe["settings"]["precision"] == "auto"
    kinds = json.loads((tmp_path / "store" / "precision.json").read_text())
    assert kinds == {"cpu-bf16": {"precision": "bf16"}, "cpu": {"precision": "fp32"}}
    entries = manifest_entries(store)
    assert {(e["device_kind"], e["precision"]) for e in entries.values()} == {("cpu-bf16", "bf16"), ("cpu", "fp32")}


def test_a_store_that_pinned_a_precision_keeps_it_for_auto(small_job, monkeypatch, tmp_path, capsys):
    from tests.stores import invert_here, manifest_entries

    monkeypatch.setenv(precision.FORCE_CPU_BF16, "1")
    invert_here(small_job())
    recipe_file = tmp_path / "store" / "store.json"
    recipe = json.loads(recipe_file.read_text())
    recipe["settings"]["precision"] = "fp32"  # as stores made before auto was recorded as such
    recipe_file.write_text(json.dumps(recipe))
    entry_file = tmp_path / "store" / "manifest" / "folder-00000.json"
    entry = json.loads(entry_file.read_text())
    del entry["recipe"]  # nor did their manifest entries name a recipe
    entry_file.write_text(json.dumps(entry))
    (tmp_path / "store" / "manifest" / "folder-00001.json").unlink()
    (tmp_path / "store" / "precision.json").unlink()
    invert_here(small_job())
    assert "--precision auto: fp32, the precision this store's rows were made in" in capsys.readouterr().err
    assert manifest_entries(small_job().output)["folder-00001"]["precision"] == "fp32"

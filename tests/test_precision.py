"""--precision auto: the precision each device is fast at, decided by its capability and a probe."""

from __future__ import annotations

import pytest
import torch

from pipeline import precision
from pipeline.precision import resolve_precision


@pytest.fixture
def cpu_with(monkeypatch):
    """Pretend the CPU has these flags (and, where timed, this bf16 speed-up)."""
    measured = precision.cpu_bf16_speedup

    def pretend(flags: set[str], speedup: float | None = None) -> None:
        measured.cache_clear()
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
        if speedup is not None:  # fp32 takes 1 s, bf16 1 / speedup
            monkeypatch.setattr(precision, "_seconds", _fixed_timings(speedup))
    yield pretend
    measured.cache_clear()


def _fixed_timings(speedup: float):
    calls = iter([1.0, 1.0 / speedup])
    return lambda fn, repeats=3: next(calls)


def test_a_cpu_without_native_bf16_runs_fp32_without_timing_anything(cpu_with, monkeypatch):
    cpu_with({"avx2", "fma"})
    monkeypatch.setattr(precision, "_seconds", lambda *a, **k: pytest.fail("no probe is needed"))
    assert resolve_precision("auto", "cpu") == ("fp32", "this CPU has no native bf16: no AVX512-BF16, no AMX")


def test_a_cpu_with_native_bf16_runs_bf16_only_where_it_measures_faster(cpu_with):
    cpu_with({"avx512f", "avx512_bf16"}, speedup=2.5)
    assert resolve_precision("auto", "cpu")[0] == "bf16"
    cpu_with({"amx_bf16"}, speedup=0.9)
    choice, why = resolve_precision("auto", "cpu")
    assert choice == "fp32" and "0.90x" in why


def test_this_machines_choice_follows_its_capability():
    precision.cpu_flags.cache_clear()
    precision.cpu_bf16_speedup.cache_clear()
    flags = precision.cpu_flags()
    choice, _ = resolve_precision("auto", "cpu")
    if flags is not None and not {"avx512_bf16", "amx_bf16"} & flags:
        assert choice == "fp32"
    assert choice == ("bf16" if precision.cpu_bf16_speedup() >= 1.2 else "fp32")


def test_gpus_run_bf16_where_supported_else_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", "cuda")[0] == "bf16"
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


def test_invert_pins_auto_to_one_precision_recorded_in_the_recipe():
    from pipeline.runtime.config import InvertConfig
    from pipeline.runtime.invert_store import pin_precision

    config = InvertConfig(input="in", output="out", generator="g.pkl")
    assert config.precision == "auto"
    pinned, line = pin_precision(config)
    assert pinned.precision == resolve_precision("auto", "cpu")[0] and line.startswith("--precision auto: ")
    assert pin_precision(pinned) == (pinned, None)

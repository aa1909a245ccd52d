"""A first run works, or fails once listing everything to fix: the preflight of `latentmill invert`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from latentmill.cli import main
from pipeline.priors import prior_cache
from pipeline.invert.config import InvertConfig
from pipeline.invert.preflight import PreflightError, preflight_invert
from tests.datasets import messy_folder


@pytest.fixture
def no_default_weights(monkeypatch, tmp_path):
    """A machine without LPIPS's or FaceNet's weights, offline (the conftest sets LATENTMILL_OFFLINE)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.setenv("LATENTMILL_CACHE", str(tmp_path / "cache"))


def newcomer(tmp_path, generator, **overrides) -> InvertConfig:
    """The README's minimal call: input, output, generator; every other setting at its default."""
    if not (tmp_path / "photos").exists():
        messy_folder(tmp_path / "photos")
    return InvertConfig(**{"input": str(tmp_path / "photos"), "output": str(tmp_path / "out"),
                           "generator": generator, "progress": False, **overrides})


def test_every_missing_piece_is_reported_in_one_error(tmp_path, fixture_dir, no_default_weights):
    cfg = newcomer(tmp_path, str(fixture_dir / "sg2ada_32px.pkl"), input=str(tmp_path / "no-such-folder"),
                   encoder=str(tmp_path / "encoder.safetensors"), concurrency=0)
    with pytest.raises(PreflightError) as info:
        preflight_invert(cfg)
    problems = info.value.problems
    assert len(problems) == 5, problems
    text = str(info.value)
    for expected in ("--concurrency", "--input", "--encoder", "--perceptual discriminator",
                     "leave identity out of --stages"):
        assert expected in text
    assert not (tmp_path / "out").exists(), "nothing was written"


def test_without_a_generator_the_other_files_are_still_checked(tmp_path, no_default_weights):
    cfg = newcomer(tmp_path, str(tmp_path / "G.pkl"), prior=str(tmp_path / "prior.safetensors"), perceptual="none",
                   stages=["refine", "compress"])
    with pytest.raises(PreflightError) as info:
        preflight_invert(cfg)
    assert [p.split(":")[0] for p in info.value.problems] == ["--generator", "--prior"]


def test_compress_without_a_prior_fits_one_and_caches_it_by_generator(tmp_path, fixture_dir, no_default_weights,
                                                                     monkeypatch):
    monkeypatch.setattr(prior_cache, "ON_THE_FLY_SAMPLES", 4000)
    cfg = newcomer(tmp_path, str(fixture_dir / "sg2ada_32px.pkl"), stages=["refine", "compress"], perceptual="none")
    first = preflight_invert(cfg)
    assert first.models.prior is not None and first.models.prior.num_samples == 4000
    assert first.config.prior.startswith(str(tmp_path / "cache" / "priors"))
    assert "fitted the generator's gaussianized prior on 4,000 samples" in first.notes[0]
    again = preflight_invert(cfg)
    assert again.config.prior == first.config.prior and "using the prior cached" in again.notes[0]
    assert (again.models.prior.cov == first.models.prior.cov).all()


def test_the_minimal_command_fails_once_with_one_error_and_no_traceback(tmp_path, fixture_dir, no_default_weights):
    messy_folder(tmp_path / "photos")
    result = CliRunner().invoke(main, ["invert", "--input", str(tmp_path / "photos"), "--output", str(tmp_path / "out"),
                                       "--generator", str(fixture_dir / "sg2ada_32px.pkl")])
    assert result.exit_code == 2
    assert result.output.startswith("error: 2 problems; nothing was run")
    assert "Traceback" not in result.output and "--lpips-weights" in result.output and "--facenet-weights" in result.output


@pytest.mark.parametrize("args", [
    ["invert", "--inptu", "x"],
    ["reconstruct", "{tmp}", "--ids", "a.png", "--output", "{tmp}/r"],
    ["report", "{tmp}/nothing-here"],
    ["curate", "{tmp}"],
    ["inspect", "{tmp}/missing.pkl"],
    ["align", "--input", "{tmp}/missing", "--output", "{tmp}/aligned"],
    ["train-identity", "--data", "{tmp}/no-data", "--output", "{tmp}/identity"],
    ["train-encoder", "--generator", "{tmp}/G.pkl", "--output", "{tmp}/encoder"],
    ["fit-prior", "--generator", "{tmp}/G.pkl", "--output", "{tmp}/prior.safetensors"],
    ["fit-flow", "--generator", "{tmp}/G.pkl", "--output", "{tmp}/flow.safetensors"],
    ["fit-flow", "--generator", "{tmp}/G.pkl", "--output", "s3://bucket/flow.safetensors"],
    ["evaluate", "--output", "{tmp}/eval", "--flow", "{tmp}/missing-flow.safetensors"],
])
def test_user_errors_are_one_error_line_in_every_command(tmp_path, args):
    result = CliRunner().invoke(main, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output


def test_training_settings_that_cannot_work_are_refused_before_ray_starts(tmp_path):
    from pipeline.models.bundle import write_bundle
    from pipeline.invert.preflight import preflight_training
    from pipeline.training.settings import EncoderTrainingConfig, GeneratorTrainingConfig
    from tests.conftest import tiny_generator

    g_only = str(tmp_path / "g.safetensors")
    write_bundle(g_only, {"G_ema": tiny_generator(16)})
    with pytest.raises(ValueError, match="--adversarial-weight 0"):
        preflight_training(EncoderTrainingConfig(generator=g_only, output=str(tmp_path / "e")), "train-encoder")
    preflight_training(EncoderTrainingConfig(generator=g_only, output=str(tmp_path / "e"), adversarial_weight=0.0),
                       "train-encoder")
    (tmp_path / "data").mkdir()
    with pytest.raises(ValueError, match="--z-dim .* must equal --w-dim"):
        preflight_training(GeneratorTrainingConfig(data=str(tmp_path / "data"), output=str(tmp_path / "g"),
                                                   mapping="invertible", z_dim=64, w_dim=128), "train-generator")


def test_a_checkpoint_without_a_discriminator_is_never_told_to_use_one(tmp_path, no_default_weights):
    from pipeline.models.bundle import write_bundle
    from tests.conftest import tiny_generator

    write_bundle(str(tmp_path / "g-only.safetensors"), {"G_ema": tiny_generator(16)})  # as an e4e decoder comes
    with pytest.raises(Exception) as info:
        preflight_invert(newcomer(tmp_path, str(tmp_path / "g-only.safetensors"), stages=("refine",)))
    text = str(info.value)
    assert "--perceptual none" in text and "does not hold" in text
    assert "--perceptual discriminator (the checkpoint's own" not in text

"""The `latentmill` command line, run as a user would."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from latentmill.cli import main


@pytest.fixture
def run():
    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(map(str, args)))


@pytest.mark.parametrize("name,fmt", [("sg2ada_32px.pkl", "nvlabs-pickle"), ("rosinality_32px.pt", "rosinality")])
def test_inspect_prints_format_architecture_and_fingerprint(run, fixture_dir, name, fmt):
    result = run("inspect", fixture_dir / name)
    assert result.exit_code == 0, result.output
    assert f"format:  {fmt}" in result.output
    assert "num_ws 8" in result.output and "85,715 parameters" in result.output
    assert "fingerprint sha256:" in result.output


def test_inspect_json_is_machine_readable(run, fixture_dir):
    result = run("inspect", fixture_dir / "sg2ada_32px.pkl", "--json")
    desc = json.loads(result.output)
    assert desc["networks"]["G_ema"]["img_resolution"] == 32


def test_convert_then_inspect_the_bundle(run, fixture_dir, tmp_path):
    dst = tmp_path / "g.safetensors"
    result = run("convert", fixture_dir / "rosinality_32px.pt", dst)
    assert result.exit_code == 0, result.output
    fp = result.output.split("G_ema: ")[1].split()[0]
    inspected = run("inspect", dst)
    assert "format:  latentmill-bundle" in inspected.output and fp in inspected.output


def test_generate_writes_a_grid_of_the_requested_seeds(run, fixture_dir, tmp_path):
    out = tmp_path / "grid.png"
    result = run("generate", fixture_dir / "sg2ada_32px.pkl", "--seeds", "0-5", "--nrow", "3", "--out", out,
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (3 * 34 + 2, 2 * 34 + 2)


def test_bad_input_is_one_error_line_not_a_traceback(run, tmp_path):
    result = run("inspect", tmp_path / "missing.pkl")
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "Traceback" not in result.output
    bad_seeds = run("generate", tmp_path / "x.pkl", "--seeds", "a-b")
    assert bad_seeds.exit_code == 2 and "--seeds" in bad_seeds.output


def test_help_explains_every_option_of_every_command(run):
    import click

    for name, command in main.commands.items():
        assert command.help, f"{name} has no description"
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"latentmill {name} {param.opts[0]} has no help text"
        assert run(name, "--help").exit_code == 0


def test_top_level_help_lists_whole_sentences_in_workflow_order(run):
    text = run("--help").output
    listing = text[text.index("Commands, in the order of a workflow"):]
    names = [line.split()[0] for line in listing.splitlines()[1:] if line.startswith("  ") and not line.startswith("   ")]
    assert names[:4] == ["demo", "align", "invert", "verify"]
    assert "..." not in listing, "no description is cut off"


def test_one_name_per_concept_across_commands(run):
    """Old spellings stay accepted but are not shown: every command says --output, never --out."""
    for name in main.commands:
        assert "--out " not in run(name, "--help").output.replace("--output", ""), name
    assert any("--out" in p.opts for p in main.commands["reconstruct"].params), "the old spelling still works"


def test_fit_prior_writes_a_prior_for_the_generator(run, fixture_dir, tmp_path):
    from pipeline.models.checkpoints import load_generator
    from pipeline.priors.gaussian import GaussianizedPrior

    out = tmp_path / "prior.safetensors"
    result = run("fit-prior", "--generator", fixture_dir / "sg2ada_32px.pkl", "--output", out,
                 "--num-samples", "5000", "--batch-size", "2500", "--device", "cpu")
    assert result.exit_code == 0, result.output
    prior = GaussianizedPrior.load(str(out), generator=load_generator(str(fixture_dir / "sg2ada_32px.pkl")))
    assert prior.num_samples == 5000 and prior.w_dim == 32


def test_inspect_describes_an_encoder_bundle(run, tmp_path):
    from pipeline.models.bundle import write_bundle
    from pipeline.models.encoder import Encoder
    from tests.conftest import tiny_generator

    path = tmp_path / "E.safetensors"
    write_bundle(str(path), {"E": Encoder.for_generator(tiny_generator(), base_channels=8, max_channels=16)})
    result = run("inspect", path)
    assert result.exit_code == 0, result.output
    assert "E: Encoder" in result.output and "mode w+" in result.output and "generator_fingerprint sha256:" in result.output


def test_channels_ranks_stylespace_channels_of_a_store(run, fixture_dir, tmp_path):
    from pipeline.invert.config import InvertConfig
    from tests.datasets import colorful, png_bytes
    from tests.stores import invert_here

    images = tmp_path / "images"
    images.mkdir()
    for i in range(8):
        (images / f"img{i}.png").write_bytes(png_bytes(colorful(seed=i)))
    config = InvertConfig(input=str(images), output=str(tmp_path / "store"), generator=str(fixture_dir / "sg2ada_32px.pkl"),
                          stages=("refine",), perceptual="none", steps=2, progress=False)
    invert_here(config)  # the library runs without Ray: the actor pool is only its edge
    result = run("channels", tmp_path / "store", "--positives", "img0.png,img1.png,img2.png", "--top-k", "4")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("3 positives against 8 rows") and len(lines) == 2 + 1 + 4
    assert all("torgb" not in line for line in lines[3:])
    missing = run("channels", tmp_path / "store", "--positives", "nope.png")
    assert missing.exit_code == 2 and "nope.png" in missing.output



def test_a_setting_outside_its_choices_is_named_with_the_choices():
    from pipeline.invert.config import InvertConfig

    config = InvertConfig(input="in", output="out", generator="g.pkl", prior="p", stages=("refine", "sharpen"))
    with pytest.raises(ValueError, match="--stages: unknown sharpen; choose from encode,refine,compress,identity"):
        config.validate()

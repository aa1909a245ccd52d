"""`latentmill report`: what the HTML report of a latent store shows, and that its numbers agree with the store."""

from __future__ import annotations

import json
import re
import shutil
import xml.dom.minidom
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from latentmill.cli import main
from pipeline.models.bundle import write_bundle
from pipeline.models.checkpoints import load_generator
from pipeline.models.embedding import EmbeddingNet
from pipeline.models.encoder import Encoder
from pipeline.priors.gaussian import fit_prior_file
from pipeline.report.html_report import build_report
from pipeline.report.svg_charts import histogram_svg, line_chart_svg
from pipeline.runtime.config import InvertConfig
from pipeline.store.store import read_latents
from tests.datasets import messy_folder
from tests.stores import invert_here


@pytest.fixture(scope="module")
def store(tmp_path_factory, fixture_dir):
    root = tmp_path_factory.mktemp("report")
    generator = str(fixture_dir / "sg2ada_32px.pkl")
    G = load_generator(generator)
    prior = str(root / "prior.safetensors")
    fit_prior_file(generator, prior, num_samples=5000, batch_size=5000)
    write_bundle(str(root / "E.safetensors"), {"E": Encoder.for_generator(G, base_channels=8, max_channels=16)})
    write_bundle(str(root / "identity.safetensors"), {"identity": EmbeddingNet(resolution=16, base_channels=8,
                                                                                max_channels=16, embedding_dim=8)})
    expected = messy_folder(root / "input")
    config = InvertConfig(input=str(root / "input"), output=str(root / "store"), generator=generator,
                          encoder=str(root / "E.safetensors"), prior=prior,
                          identity_model=str(root / "identity.safetensors"), perceptual="discriminator", steps=3,
                          batch_size=4, shard_size=8, progress=False)
    invert_here(config)
    return {"uri": str(root / "store"), "expected": expected}


@pytest.fixture(scope="module")
def report(store):
    uri = build_report(store["uri"], sheet_size=4)
    return Path(uri), Path(uri).read_text()


def test_the_report_references_only_images_it_wrote(report):
    path, page = report
    sources = re.findall(r'src="([^"]+)"', page)
    assert sources == ["report/sample.png", "report/worst.png"]
    for src in sources:
        image = Image.open(path.parent / src)
        assert image.width == image.height, "4 images (rows) x input | encoded | refined | compressed"
    assert "input | w_encoded | w_refined | w_compressed" in page


def test_the_report_has_the_metric_histograms_and_the_curve_as_valid_svg(report):
    _, page = report
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    for svg in svgs:
        xml.dom.minidom.parseString(svg)
    titles = " ".join(svgs)
    for title in ("pixel MSE", "perceptual distance (discriminator)", "identity cosine (embedding:identity",
                  "prior NLL / w_dim", "identity kept vs distance from the prior"):
        assert title in titles


def test_every_failed_input_is_listed_with_its_reason(report, store):
    _, page = report
    for image_id, status in store["expected"].items():
        if status != "ok":
            assert image_id in page and status in page


def test_the_curve_agrees_with_the_store_and_compression_is_monotone_in_tau(report, store):
    path, _ = report
    points = json.loads((path.parent / "report" / "tradeoff.json").read_text())
    frame = read_latents(store["uri"])
    ok = frame[frame["status"] == "ok"]
    untruncated = next(p for p in points if p["method"] == "truncation" and p["parameter"] == 1.0)
    # fewer than 48 ok rows, so the curve used them all: psi = 1 is the stored refinement
    assert untruncated["identity"] == pytest.approx(ok["id_cosine_refined"].mean(), abs=1e-4)
    compression = sorted((p for p in points if p["method"] == "compression"), key=lambda p: p["parameter"])
    nll = [p["prior_nll"] for p in compression]
    assert nll == sorted(nll) and nll[-1] <= untruncated["prior_nll"] + 1e-6


def test_the_report_command_writes_the_report_the_library_writes(store, report, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(store["uri"], copy, ignore=shutil.ignore_patterns("report*"))
    result = CliRunner().invoke(main, ["report", str(copy), "--sheet-size", "4", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"report: {copy}/report.html"
    _, library_page = report
    # the same page, but for the summary's "store" row (the settings still name the original --output)
    assert (copy / "report.html").read_text() == library_page.replace(store["uri"], str(copy), 1)
    for name in ("sample.png", "worst.png"):
        assert (copy / "report" / name).read_bytes() == (Path(store["uri"]) / "report" / name).read_bytes()


def test_svg_histograms_count_every_finite_value():
    svg = histogram_svg({"a": [0.0, 1.0, 1.0, np.nan], "b": []}, title="t", x_label="x")
    xml.dom.minidom.parseString(svg)
    assert "a (n=3" in svg and "b (n=0" in svg
    chart = line_chart_svg({"s": [(0.0, 1.0, "p1"), (1.0, 0.5, "p2")]}, title="c", x_label="x", y_label="y")
    xml.dom.minidom.parseString(chart)
    assert "p1" in chart and "p2" in chart
    logged = line_chart_svg({"s": [(1.0, 1.0, "a"), (1000.0, 0.5, "b")]}, title="c", x_label="x", y_label="y",
                            log_x=True)
    assert "x (log scale)" in logged and ">1e+03<" in logged

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
from pipeline.report.html_report import build_report
from pipeline.report.svg_charts import histogram_svg, line_chart_svg
from pipeline.store.store import read_latents


@pytest.fixture(scope="module")
def store(report_store):
    return report_store


@pytest.fixture(scope="module")
def report(store):
    uri = build_report(store["uri"], sheet_size=4)
    return Path(uri), Path(uri).read_text()


def test_the_report_references_only_images_it_wrote(report):
    path, page = report
    sources = re.findall(r'src="([^"]+)"', page)
    assert sources and all(src.startswith("report/") for src in sources)
    for src in sources:
        image = Image.open(path.parent / src)
        assert min(image.size) >= 128, "no picture is shown below 128 px"


def test_the_verdict_comes_first_and_says_what_ran_and_how_well(report, store):
    _, page = report
    verdict = page.index('class="verdict"')
    assert verdict < page.index('<table class="sheet">') and verdict < page.index("<svg")
    expected = store["expected"]
    ok = sum(status == "ok" for status in expected.values())
    assert f"{ok} of {len(expected)} images inverted" in page
    for line in ("What ran", "When", "Problems", "In-domain check"):
        assert f"<b>{line}</b>" in page
    assert "32 px" in page and "soft and blobby" in page, "the small model's reconstructions are explained"


def test_contact_sheets_are_labelled_rows_with_each_images_metrics(report, store):
    _, page = report
    sheet = page[page.index('<h2 id="sample">'):page.index('<h2 id="worst">')]
    for header in ("image", "MSE", "perceptual", "identity", "input", "encoded", "refined", "compressed"):
        assert f"<th>{header}</th>" in sheet
    frame = read_latents(store["uri"]).set_index("image_id")
    rows = re.findall(r'<td class="id">([^<]+)</td><td class="num ">([0-9.]+)</td>', sheet)
    assert len(rows) == 4
    for image_id, mse in rows:
        assert float(mse) == pytest.approx(frame.loc[image_id, "mse"], abs=1e-4)
    assert sheet.count('target="_blank"><img') == 4 * 4, "every tile opens at full size"


def test_the_in_domain_check_inverts_the_generators_own_samples(report):
    _, page = report
    section = page[page.index('<h2 id="in-domain">'):]
    section = section[:section.index("</table>")]
    assert section.count("<tr>") == 1 + 4 and "generator&#x27;s sample" in section


def test_a_self_contained_report_embeds_every_picture(store, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(store["uri"], copy, ignore=shutil.ignore_patterns("report*"))
    page = Path(build_report(str(copy), sheet_size=2, in_domain=2, self_contained=True)).read_text()
    sources = re.findall(r'src="([^"]+)"', page)
    assert sources and all(src.startswith("data:image/") for src in sources)
    assert not (copy / "report").exists() or not any((copy / "report").glob("*.png"))


def test_the_report_has_the_metric_histograms_and_the_curve_as_valid_svg(report):
    _, page = report
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    for svg in svgs:
        xml.dom.minidom.parseString(svg)
    titles = " ".join(svgs)
    for title in ("pixel MSE", "perceptual distance (discriminator)", "identity cosine (embedding:identity",
                  "prior NLL (a typical latent: about", "identity kept vs distance from the prior"):
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
    result = CliRunner().invoke(main, ["report", str(copy), "--sheet-size", "4", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"report: {(copy / 'report.html').as_uri()}"
    _, library_page = report
    # the same page, but for the title and the store's name (the settings still name the original --output)
    assert (copy / "report.html").read_text() == library_page.replace(store["uri"], str(copy), 2)
    for picture in (Path(store["uri"]) / "report").glob("*.png"):
        assert (copy / "report" / picture.name).read_bytes() == picture.read_bytes()


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


def test_the_report_of_a_large_store_reads_a_sample_and_the_exact_extremes(report_store, monkeypatch):
    """Stores past SAMPLE_ROWS rows: histograms from a uniform sample, worst rows and counts from all rows."""
    from pipeline.report import report_rows
    from pipeline.store.store import open_store

    store = open_store(report_store["uri"])
    everything = report_rows.collect(store)
    assert not everything.sampled and everything.rows == len(report_store["expected"])
    small = report_rows.collect(store, sample_rows=5, worst=3)
    assert small.sampled and 0 < len(small.sample) < small.rows  # about 5 of the rows, chosen by a hash of the id
    assert small.rows == everything.rows and small.ok == everything.ok
    frame = read_latents(report_store["uri"])
    ok = frame[frame["status"] == "ok"].sort_values("mse", ascending=False)
    assert small.worst["image_id"].tolist() == ok["image_id"].head(3).tolist()  # exact, over every row
    assert small.error_rows["image_id"].tolist() == sorted(frame.loc[frame["status"] != "ok", "image_id"])[:50]
    again = report_rows.collect(store, sample_rows=5, worst=3)
    assert again.sample["image_id"].tolist() == small.sample["image_id"].tolist()  # the same rows every run


def test_the_rows_curate_flagged_can_be_left_out_of_every_count(report_store):
    from pipeline.report import report_rows
    from pipeline.store.store import open_store

    store = open_store(report_store["uri"])
    frame = read_latents(report_store["uri"])
    ok = frame[frame["status"] == "ok"].sort_values("mse", ascending=False)
    worst_two = set(ok["image_id"].head(2))
    kept = report_rows.collect(store, worst=3, exclude=worst_two)
    assert kept.rows == len(frame) - 2 and kept.ok == len(ok) - 2
    assert not worst_two & set(kept.worst["image_id"]) and not worst_two & set(kept.sample["image_id"])


def test_the_report_command_takes_exclude_flagged_and_says_so(store, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(store["uri"], copy)
    without = CliRunner().invoke(main, ["report", str(copy), "--exclude-flagged", "--device", "cpu", "--no-progress"])
    assert without.exit_code == 2 and "run `latentmill curate" in without.output
    assert CliRunner().invoke(main, ["curate", str(copy), "--device", "cpu", "--no-progress"]).exit_code == 0
    result = CliRunner().invoke(main, ["report", str(copy), "--exclude-flagged", "--device", "cpu", "--no-progress",
                                       "--in-domain", "0"])
    assert result.exit_code == 0, result.output
    assert "left out of every count, sheet and chart (--exclude-flagged)" in (copy / "report.html").read_text()

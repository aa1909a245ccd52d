"""The report as a reader sees it: loaded in a real browser (headless Chromium), every picture loads,
linked or embedded. CI installs Chromium (.ci/run) and fails without it; elsewhere it is skipped."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.report.html_report import build_report

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="no Chromium on this machine")

PROBE = """<script>window.addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter(i => !i.complete || i.naturalWidth === 0).length;
  document.title = `IMAGES ${images.length} BROKEN ${broken}`;
});</script></body>"""


def loaded_images(page: Path) -> tuple[int, int]:
    """(pictures on the page, pictures that did not load) as Chromium rendered it."""
    assert CHROMIUM is not None, "CI must install Chromium for this test (apt-get install chromium; .ci/run does)"
    probe = page.with_name("browser-probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE))
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    found = re.search(r"<title>IMAGES (\d+) BROKEN (\d+)</title>", dom)
    assert found, dom[:500]
    return int(found.group(1)), int(found.group(2))


@pytest.mark.parametrize("self_contained", [False, True])
def test_every_picture_of_the_report_loads_in_a_browser(report_store, tmp_path, self_contained):
    from jobs.augment import AugmentConfig, run

    copy = tmp_path / "store"
    shutil.copytree(report_store["uri"], copy, ignore=shutil.ignore_patterns("report*"))
    run(AugmentConfig(store=str(copy), output=str(tmp_path / "augmented"), edits="jitter:0.3,compose:half",
                      variants=1, runner="local", device="cpu", progress=False))  # its sources beside their variants
    page = Path(build_report(str(copy), sheet_size=3, in_domain=2, self_contained=self_contained))
    assert 'alt="augmented variants"' in page.read_text()
    total, broken = loaded_images(page)
    assert total >= 3 * 4 + 1 and broken == 0


def test_the_browser_check_sees_a_missing_picture(report_store, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(report_store["uri"], copy, ignore=shutil.ignore_patterns("report*"))
    page = Path(build_report(str(copy), sheet_size=2, in_domain=0))
    next((copy / "report").glob("sample-000-*.png")).unlink()
    assert loaded_images(page)[1] == 1

"""Joining Ray never hangs: a cluster that does not answer is named with where its address came from,
within seconds; a dead cluster's leftover record means an embedded Ray, said so."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.demo import DemoBundle
from pipeline.runtime.ray_address import RayUnreachableError, choose_ray, gcs_answers
from tests.ray_cluster import free_ports

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ray_temp(tmp_path, monkeypatch) -> Path:
    """Ray's temp dir (where `ray start` leaves its record) moved into the test's own folder."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("TMPDIR", raising=False)
    (tmp_path / "ray").mkdir()
    return tmp_path / "ray"


@pytest.fixture
def silent_port():
    """A TCP port that accepts connections and never answers (a hung service, a proxy)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for s in held:
        s.close()
    server.close()


def test_a_given_address_that_nothing_answers_fails_within_seconds_naming_it(ray_temp):
    port = free_ports(1)[0]
    start = time.monotonic()
    with pytest.raises(RayUnreachableError, match=rf"127\.0\.0\.1:{port} \(from --address\)"):
        choose_ray(f"127.0.0.1:{port}")
    assert time.monotonic() - start < 15


def test_an_address_from_the_environment_is_named_as_such(ray_temp, monkeypatch):
    port = free_ports(1)[0]
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(RayUnreachableError, match=r"\(from \$RAY_ADDRESS\)"):
        choose_ray(None)


def test_a_port_that_accepts_but_never_answers_is_not_a_cluster(silent_port):
    start = time.monotonic()
    alive, why = gcs_answers(f"127.0.0.1:{silent_port}", timeout=1.0)
    assert not alive and why
    assert time.monotonic() - start < 5


def test_a_dead_clusters_record_means_an_embedded_ray_said_so(ray_temp):
    port = free_ports(1)[0]
    (ray_temp / "ray_current_cluster").write_text(f"127.0.0.1:{port}\n")
    target = choose_ray(None)
    assert target.embedded
    assert "no longer answers" in target.note and f"127.0.0.1:{port}" in target.note
    assert str(ray_temp / "ray_current_cluster") in target.note


def test_no_address_and_no_record_is_an_embedded_ray_without_a_note(ray_temp):
    target = choose_ray(None)
    assert target.embedded and target.note is None


def test_address_auto_insists_on_a_recorded_cluster(ray_temp):
    with pytest.raises(RayUnreachableError, match="no Ray cluster was started on this machine"):
        choose_ray("auto")
    port = free_ports(1)[0]
    (ray_temp / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
    with pytest.raises(RayUnreachableError, match="does not answer"):
        choose_ray("auto")


def test_address_local_is_always_embedded(ray_temp, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    assert choose_ray("local").embedded


def test_the_cli_says_so_in_one_line_and_exits(tmp_path):
    port = free_ports(1)[0]
    images = tmp_path / "in"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(images / "a.png")
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "latentmill", "invert", "--input", str(images), "--output",
                             str(tmp_path / "store"), "--generator", DemoBundle.locate().generator, "--stages",
                             "refine", "--perceptual", "none", "--address", f"127.0.0.1:{port}"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - start < 60
    assert result.returncode != 0
    assert f"cannot reach a Ray cluster at 127.0.0.1:{port} (from --address)" in result.stderr
    assert "Traceback" not in result.stderr

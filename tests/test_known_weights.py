"""Default third-party weights (LPIPS's VGG16, FaceNet) are fetched into torch's cache when absent
and reachable; otherwise the error says where to get them and how to run without them."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import socket
import threading

import pytest

from pipeline.errors import WeightsNotFoundError
from pipeline.models import known_weights
from pipeline.models.known_weights import FACENET, VGG16, ensure_weights


@pytest.fixture
def online(monkeypatch, tmp_path):
    """Downloads allowed, torch's cache in tmp_path."""
    monkeypatch.delenv("LATENTMILL_OFFLINE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over tmp_path/served; yields its base URL."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_absent_weights_are_downloaded_into_torchs_cache_with_their_hash_checked(online, server, tmp_path):
    url, root = server
    data = b"weights" * 1000
    (root / "vgg.pth").write_bytes(data)
    weights = dataclasses.replace(VGG16, url=f"{url}/vgg.pth", hash_prefix=hashlib.sha256(data).hexdigest()[:8])
    path = ensure_weights(weights, progress=False)
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / VGG16.file and path.read_bytes() == data
    (root / "vgg.pth").unlink()
    assert ensure_weights(weights, progress=False) == path, "present: nothing downloaded again"


def test_a_download_with_the_wrong_hash_is_refused_and_leaves_nothing(online, server, tmp_path):
    url, root = server
    (root / "vgg.pth").write_bytes(b"not the published file")
    weights = dataclasses.replace(VGG16, url=f"{url}/vgg.pth")
    with pytest.raises(WeightsNotFoundError, match="download failed"):
        ensure_weights(weights, progress=False)
    assert not any((tmp_path / "torch" / "hub" / "checkpoints").iterdir())


def test_unreachable_weights_name_the_url_the_place_and_the_way_without_them(online):
    weights = dataclasses.replace(FACENET, url=f"http://127.0.0.1:{closed_port()}/facenet.pt")
    with pytest.raises(WeightsNotFoundError) as info:
        ensure_weights(weights, progress=False)
    message = str(info.value)
    assert weights.url in message and str(weights.default_path()) in message
    assert "--facenet-weights" in message and "leave identity out of --stages" in message


def test_offline_mode_never_tries_the_network(monkeypatch, tmp_path):
    monkeypatch.setenv("LATENTMILL_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(known_weights, "_download", lambda *a, **k: pytest.fail("tried to download"))
    with pytest.raises(WeightsNotFoundError, match="downloads are off .*--perceptual discriminator"):
        ensure_weights(VGG16)


def test_lpips_without_weights_given_fetches_torchvisions_file(online, server, monkeypatch, tmp_path):
    from benchmarks.stand_in_weights import save_random_backbone
    from pipeline.losses.lpips_loss import LPIPSLoss

    url, root = server
    save_random_backbone(root / "vgg16.pth")
    monkeypatch.setattr(known_weights, "VGG16", dataclasses.replace(VGG16, url=f"{url}/vgg16.pth", hash_prefix=None))
    loss = LPIPSLoss("vgg")
    assert loss.weights_uri == str(tmp_path / "torch" / "hub" / "checkpoints" / VGG16.file)

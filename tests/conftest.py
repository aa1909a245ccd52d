"""Shared test fixtures: the reference checkpoints in ../shared/fixtures and small networks."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.models.stylegan2 import Discriminator, Generator

REPO = Path(__file__).resolve().parents[1]
# Tests never download: third-party weights absent here are errors at once (tests/test_known_weights.py
# serves a download from a local server with this unset).
os.environ.setdefault("LATENTMILL_OFFLINE", "1")


def _fixture_dir() -> Path:
    return Path(os.environ.get("LATENTMILL_FIXTURES", REPO.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    """Reference checkpoints and outputs made by the official code (required in CI)."""
    path = _fixture_dir()
    if not (path / "sg2ada_32px.pkl").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"reference fixtures missing at {path}; CI must provide ../shared/fixtures")
        pytest.skip(f"reference fixtures not found at {path} (set LATENTMILL_FIXTURES)")
    return path


IMAGE_TOL = 1e-4  # the fixtures' parity bar for images
LATENT_TOL = 1e-5  # mapping outputs, styles, discriminator logits


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def load_reference(path: Path) -> dict[str, torch.Tensor | list[str]]:
    """An outputs .npz as tensors (string arrays as lists), read without pickle."""
    with np.load(path, allow_pickle=False) as npz:
        return {k: (list(map(str, v)) if v.dtype.kind == "U" else torch.from_numpy(v)) for k, v in npz.items()}


def tiny_generator(resolution: int = 16, *, seed: int = 0, c_dim: int = 0, **synthesis: object) -> Generator:
    """A small random generator (8-16 channels) that runs in milliseconds on a CPU."""
    torch.manual_seed(seed)
    G = Generator(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=resolution, img_channels=3,
                  mapping_kwargs={"num_layers": 2},
                  synthesis_kwargs={"channel_base": 16 * resolution, "channel_max": 16, "conv_clamp": 256,
                                    **synthesis})
    with torch.no_grad():  # non-trivial noise strengths and w_avg, as in a trained network
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.3)
        G.mapping.w_avg.normal_()
    return G.eval()


def tiny_discriminator(resolution: int = 16, *, seed: int = 0, c_dim: int = 0) -> Discriminator:
    torch.manual_seed(seed)
    return Discriminator(c_dim=c_dim, img_resolution=resolution, img_channels=3, channel_base=16 * resolution,
                         channel_max=16, conv_clamp=256).eval()


@pytest.fixture(scope="session")
def G() -> Generator:
    """A tiny 16 px generator shared by the stage tests (never modified by them; files may override `G`)."""
    return tiny_generator(resolution=16)


@pytest.fixture(scope="session")
def prior(G):
    """The gaussianized prior of the shared G, fitted on 40k samples."""
    from pipeline.priors.gaussian import GaussianizedPrior

    return GaussianizedPrior.fit(G, num_samples=40_000, batch_size=10_000, progress=False)


_shared_ray: dict[str, str] = {}  # the GCS address of the local Ray ray_local started, while it may be reused


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules that use ray_local run last, one after another (each in its own order), so that one local
    Ray serves them all instead of a start and a stop per module."""
    with_ray = {getattr(item, "module", None) for item in items if "ray_local" in getattr(item, "fixturenames", ())}
    with_ray.discard(None)
    items[:] = sorted(items, key=lambda item: getattr(item, "module", None) in with_ray)  # a stable sort


def pytest_sessionfinish() -> None:
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


def _reusable(ray) -> bool:
    """Ray is the one ray_local started and holds nothing of an earlier module (every CPU free again)."""
    if not ray.is_initialized() or ray.get_runtime_context().gcs_address != _shared_ray.get("address"):
        return False
    for _ in range(20):  # a killed actor's CPU comes back a moment after the kill
        if ray.available_resources().get("CPU", 0) >= ray.cluster_resources().get("CPU", 0):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with 2 CPUs for one test module, as if started for it: the one the previous module used
    when it holds nothing of that module's, else a fresh one. Stopped at the end of the session."""
    import ray

    if not _reusable(ray):
        if ray.is_initialized():
            ray.shutdown()
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
        _shared_ray["address"] = ray.get_runtime_context().gcs_address
    yield


@pytest.fixture
def one_thread():
    """torch on one thread in this process, as in a Ray Train worker (Ray sets a worker's threads to its one
    CPU), so a run here and one on Ray Train sum in the same order and compare bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def report_store(tmp_path_factory, fixture_dir):
    """A small store made by a real inversion (sg2ada 32 px fixture, encoder, prior, identity net) of a
    messy folder: what the report tests read."""
    from tests.stores import small_inverted_store

    return small_inverted_store(tmp_path_factory.mktemp("report"), fixture_dir)


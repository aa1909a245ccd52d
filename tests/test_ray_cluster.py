"""On a real Ray cluster (`ray start` head and worker nodes on this machine, tests/ray_cluster.py):
the README's `ray job submit` runs as written, a node lost mid-job costs only time, a node that joins gets work,
the head's death stops the run with a clear message and the rerun resumes. The test decides when each
shard's work goes on (tests/cluster_faults), so every kill lands where it must however fast the work."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.demo import DemoBundle
from pipeline.data.webdataset import read_samples
from pipeline.store.store import read_latents
from tests.ray_cluster import LocalRayCluster
from tests.markdown_blocks import readme_cluster_commands
from tests.stores import manifest_entries
from tests.user_files import put_downloaded_weights

pytestmark = pytest.mark.slow  # real clusters: a minute or more each on 2 cores

REPO = Path(__file__).resolve().parents[1]
IMAGES = 16
SHARD = 4
FEW = 4  # four shards of one (--shard-size auto plans for the driver's machine: one actor here)
FAULTS = REPO / "tests" / "cluster_faults"
RAY_NOISE = ("(raylet)", "Raylet is terminated", "state-dump", "has been marked dead", "A worker died")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """IMAGES demo faces as a folder of PNG files."""
    folder = tmp_path_factory.mktemp("faces")
    bundle = DemoBundle.locate()
    count = 0
    for shard in sorted(Path(bundle.sample).glob("*.tar")):
        for key, parts in read_samples(shard).items():
            image = next((data for ext, data in parts.items() if ext in ("png", "jpg", "jpeg", "webp")), None)
            if image is not None and count < IMAGES:
                (folder / f"{count:03d}-{key}.png").write_bytes(image)
                count += 1
    assert count == IMAGES
    return folder


def invert_command(python: str, images: Path, store: Path, *extra: str) -> list[str]:
    return [python, "-m", "latentmill", "invert", "--input", str(images), "--output", str(store),
            "--generator", DemoBundle.locate().generator, "--stages", "refine", "--perceptual", "none", "--steps", "5",
            "--shard-size", str(SHARD), "--cpus-per-actor", "1", "--precision", "fp32", "--no-progress", *extra]


@pytest.fixture(scope="module")
def few_images(images, tmp_path_factory) -> Path:
    """The first FEW of `images`: the README's command refines each for 200 steps."""
    import shutil

    folder = tmp_path_factory.mktemp("few")
    for path in sorted(images.iterdir())[:FEW]:
        shutil.copyfile(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def downloaded_weights(tmp_path_factory) -> Path:
    """A $TORCH_HOME holding what invert downloads on a first run (random networks)."""
    torch_home = tmp_path_factory.mktemp("torch")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(torch_home))
        put_downloaded_weights()
    return torch_home


def activated() -> dict[str, str]:
    """The environment of a shell where `source .venv/bin/activate` ran (the README's first step)."""
    venv_bin = Path(sys.executable).parent
    return {"PATH": os.pathsep.join([str(venv_bin), os.environ.get("PATH", "")]), "VIRTUAL_ENV": str(venv_bin.parent)}


def held_shards(faults: Path) -> dict[str, str]:
    """The environment of nodes whose shards wait until the test releases them (tests/cluster_faults),
    reporting to `faults`."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(FAULTS), os.environ.get("PYTHONPATH")])),
            "LATENTMILL_TEST_FAULTS": str(faults)}


def wait_for_started(faults: Path, count: int, node_id: str | None = None, timeout: float = 300) -> list[str]:
    """The shards held on the node `node_id` (any node), once there are `count` of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = [p.name.removesuffix(".started").split("~", 1) for p in faults.glob("*.started")]
        shards = sorted(shard for on, shard in names if node_id in (None, on))
        if len(shards) >= count:
            return shards
        time.sleep(0.1)
    raise TimeoutError(f"{count} shards did not start on {node_id or 'the cluster'} in {timeout} s")


def wait_for_shards(store: Path, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (store / "manifest").is_dir() and len(manifest_entries(str(store))) >= count:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{count} shards were not finished in {timeout} s")


def assert_complete_store(store: Path, images: int = IMAGES) -> None:
    frame = read_latents(str(store))
    assert len(frame) == images and frame["image_id"].is_unique
    assert (frame["status"] == "ok").all()
    verified = subprocess.run([sys.executable, "-m", "latentmill", "verify", str(store)], capture_output=True,
                              text=True, cwd=REPO)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def readme_submit_command() -> str:
    """The README's `ray job submit` line, as a user copies it (its paths are shell variables)."""
    (submit,) = [c for c in readme_cluster_commands(REPO / "README.md") if c.startswith("ray job submit")]
    return submit


def test_the_readmes_job_submitted_verbatim_survives_a_lost_node_and_puts_a_new_node_to_work(
        few_images, downloaded_weights, tmp_path):
    """The README's command with its defaults (every stage, 200 steps, --num-gpus 1: the nodes declare a GPU
    each, which torch here does not see), on a head and a worker node that reach the same paths."""
    faults = tmp_path / "faults"
    faults.mkdir()
    cluster = LocalRayCluster(cpus=1, gpus=1, node_env=held_shards(faults) | activated()
                              | {"TORCH_HOME": str(downloaded_weights)})
    try:
        lost = cluster.add_node()
        cluster.wait_for_nodes(2)
        lost_node = lost.node_id()
        (faults / f"never~{lost_node}").touch()  # its shard is never finished: the node dies holding it
        store = tmp_path / "store"
        # from the checkout, as the README runs it: a driver that passed its own runtime_env to ray.init lost
        # the job's working dir (and its modules) on a two-node cluster
        user = cluster.env | activated() | {"RAY_ADDRESS": cluster.dashboard, "IMAGES": str(few_images),
                                            "STORE": str(store), "GENERATOR": DemoBundle.locate().generator}
        submitted = subprocess.Popen(["bash", "-c", readme_submit_command()], cwd=REPO, env=user,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for_started(faults, 1, lost_node)
            lost.kill()  # a machine lost mid-job: its actor and the shard it held go with it
            joined = cluster.add_node()
            joined_node = joined.node_id()
            wait_for_started(faults, 1, joined_node)  # the replacement actor, on the node that joined, has work
        except TimeoutError:
            submitted.kill()
            raise AssertionError(submitted.communicate()[0][-3000:]) from None
        (faults / "release").touch()
        logs, _ = submitted.communicate(timeout=600)  # `ray job submit` follows the job's logs to its end
        assert submitted.returncode == 0 and "succeeded" in logs, logs[-3000:]
        assert "1 shards run again after their node was lost" in logs
        assert "joined the Ray cluster at" in logs and "2 nodes, 2 CPUs, 2 GPUs" in logs
        assert "sees no CUDA device there: the actors run on CPUs" in logs
        assert not [noise for noise in RAY_NOISE if noise in logs], logs[-3000:]
        assert_complete_store(store, FEW)
        nodes = [entry["node"] for entry in manifest_entries(str(store)).values()]
        assert joined_node in nodes, "the node that joined mid-run received shards"
        assert len(set(nodes)) >= 2 and nodes.count(lost_node) < len(nodes)
    finally:
        cluster.stop()


def test_the_heads_death_stops_the_run_clearly_and_the_rerun_resumes(images, tmp_path):
    faults = tmp_path / "faults"
    faults.mkdir()
    cluster = LocalRayCluster(cpus=1, node_env=held_shards(faults))
    store = tmp_path / "store"
    try:
        cluster.add_node()
        cluster.wait_for_nodes(2)
        driver = subprocess.Popen(invert_command(sys.executable, images, store, "--concurrency", "auto",
                                                 "--address", cluster.address),
                                  cwd=REPO, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for shard in wait_for_started(faults, 2):  # one on each node: these two finish, the rest wait
            (faults / f"release~{shard}").touch()
        wait_for_shards(store, 2)
        cluster.head.kill()
        out, err = driver.communicate(timeout=120)
        assert driver.returncode != 0
        # latentmill's watch said so (Ray itself gives up only after 60 s, with a traceback)
        assert "lost the Ray cluster" in err and cluster.address in err and "has not answered for" in err, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert "run the same command again" in err
    finally:
        cluster.stop()
    done = len(manifest_entries(str(store)))
    assert done == 2, "the shards held when the head died were not finished"
    rerun = subprocess.run(invert_command(sys.executable, images, store), cwd=REPO, capture_output=True, text=True,
                           env={k: v for k, v in cluster.env.items() if k != "RAY_ADDRESS"}, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "started an embedded Ray" in rerun.stderr
    assert f"found 2 of {IMAGES // SHARD} shards done; resuming" in rerun.stderr, rerun.stderr[-2000:]
    assert_complete_store(store)

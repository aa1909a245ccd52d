"""Chaos: real `latentmill invert` runs on an embedded Ray, killed and raced at random points.

Every scenario ends with the same checks: rows in = rows out, every id once, one recipe per store
(`latentmill verify` passes and every shard names the recipe's generator).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.store.layout import shard_file
from tests.stores import manifest_entries
from pipeline.store.store import read_latents
from pipeline.store.verify import verify_store
from tests.datasets import colorful, messy_folder, png_bytes

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def command(generator: str, input: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "latentmill", "invert", "--input", str(input), "--output", str(output), "--generator",
            generator, "--stages", "refine", "--perceptual", "discriminator", "--shard-size", "2", "--batch-size", "2",
            "--concurrency", "2", "--no-progress", *extra]


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_shards(output: Path, count: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and len(manifest_entries(str(output))) < count:
        time.sleep(0.3)


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether process `pid` was started, directly or not, by `ancestor` (read from /proc)."""
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def kill_an_actor(run: subprocess.Popen) -> bool:
    """SIGKILL one shard actor of `run`'s embedded Ray: never another job's on this machine."""
    found = subprocess.run(["pgrep", "-f", "ray::ShardProcessor"], capture_output=True, text=True).stdout.split()
    ours = [int(pid) for pid in found if descends_from(int(pid), run.pid)]
    for pid in ours[:1]:
        os.kill(pid, signal.SIGKILL)
    return bool(ours)


def assert_store_whole(output: Path, expected_ids: set[str]) -> None:
    frame = read_latents(str(output))
    assert frame["image_id"].is_unique
    assert set(frame["image_id"]) == expected_ids
    report = verify_store(str(output))
    assert report.ok, report.lines()
    assert len(set(frame["model_fingerprint"])) == 1


@pytest.fixture()
def hostile_input(tmp_path) -> tuple[Path, set[str]]:
    root = tmp_path / "in"
    expected = set(messy_folder(root))
    for name in ("with space.png", "ünïcødé.png", "x" * 200 + ".png", "nested/deep/../odd.png"):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(colorful(seed=len(name))))
    expected |= {"with space.png", "ünïcødé.png", "x" * 200 + ".png", "nested/odd.png"}
    return root, expected


def test_random_kills_of_actors_and_driver_never_lose_or_duplicate_rows(fixture_dir, hostile_input, tmp_path):
    rng = random.Random(20261125)
    generator = str(fixture_dir / "sg2ada_32px.pkl")
    source, expected = hostile_input
    output = tmp_path / "store"
    cmd = command(generator, source, output, "--steps", "40")
    # 1. an actor dies mid-run: the shard is retried on a fresh actor and the run completes.
    run = start(cmd)
    wait_for_shards(output, 1)
    time.sleep(rng.uniform(0.0, 1.0))
    assert kill_an_actor(run)
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-2000:]
    assert_store_whole(output, expected)
    # 2. the driver and everything it started die at a random point of an --overwrite run.
    run = start(cmd + ["--overwrite"])
    wait_for_shards(output, rng.randint(1, 3))
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    # a damaged shard file on top of it, as a crashed copy tool would leave
    finished = sorted(manifest_entries(str(output)))
    damaged = Path(shard_file(str(output), finished[0]))
    damaged.write_bytes(damaged.read_bytes()[:100])
    # 3. resuming with another recipe is refused without touching the store ...
    refused = subprocess.run(command(generator, source, output, "--steps", "41"), cwd=REPO, capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode != 0 and "--steps: 40 in the store, 41 now" in refused.stderr
    # ... and the same recipe resumes, redoes the damaged shard and completes.
    resumed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr and f"redoing 1 whose files were damaged: {finished[0]}" in resumed.stderr
    assert_store_whole(output, expected)


def test_two_runs_into_one_output_one_writes_and_the_other_is_refused(fixture_dir, tmp_path):
    generator = str(fixture_dir / "sg2ada_32px.pkl")
    source = tmp_path / "in"
    source.mkdir()
    for i in range(6):
        (source / f"{i}.png").write_bytes(png_bytes(colorful(seed=i)))
    output = tmp_path / "store"
    runs = [start(command(generator, source, output, "--steps", "30")) for _ in range(2)]
    results = [(r.wait(timeout=600), r.stderr.read()) for r in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "is being written by the run of pid" in loser and "--wait" in loser
    assert_store_whole(output, {f"{i}.png" for i in range(6)})


def test_hostile_parquet_ids_through_ray_stay_unique(fixture_dir, tmp_path):
    generator = str(fixture_dir / "sg2ada_32px.pkl")
    ids = ["../escape", "a/b", "dup", "dup", "b" * 300, "", "\u202etxt.png"]
    table = pa.table({"id": ids, "image": [png_bytes(colorful(seed=i)) for i in range(len(ids))]})
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "part.parquet")
    output = tmp_path / "store"
    done = subprocess.run(command(generator, tmp_path / "in", output, "--steps", "2", "--id-column", "id"),
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    frame = read_latents(str(output))
    assert len(frame) == len(ids) and frame["image_id"].is_unique
    assert "dup~1" in set(frame["image_id"])
    assert isinstance(frame, pd.DataFrame)

"""`latentmill invert` on a real local Ray: one row per input, failures as rows, exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from jobs.invert import run
from pipeline.errors import WeightsNotFoundError
from pipeline.priors.prior_cache import fit_prior_file
from pipeline.invert.config import InvertConfig
from benchmarks.stand_in_weights import save_random_facenet
from tests.stores import manifest_entries
from pipeline.store.store import read_latents, read_store_metadata
from tests.datasets import messy_folder, parquet_files, tar_shards
from tests.fault_injection import crashing_once_on

pytestmark = pytest.mark.slow  # end-to-end runs (Ray, subprocesses, training): minutes on 2 cores

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory, fixture_dir):
    root = tmp_path_factory.mktemp("assets")
    generator = str(fixture_dir / "sg2ada_32px.pkl")
    prior = str(root / "prior.safetensors")
    fit_prior_file(generator, prior, num_samples=5000, batch_size=5000)
    return {"generator": generator, "prior": prior, "facenet": save_random_facenet(str(root / "facenet.pt")),
            "messy": messy_folder(root / "messy"), "messy_dir": str(root / "messy"), "root": root}


def config(assets, output, **overrides) -> InvertConfig:
    base = dict(input=assets["messy_dir"], output=str(output), generator=assets["generator"], prior=assets["prior"],
                stages=("refine", "compress", "identity"), perceptual="discriminator",
                facenet_weights=assets["facenet"], steps=3, shard_size=4, batch_size=4, progress=False)
    return InvertConfig(**{**base, **overrides})


def test_every_input_yields_exactly_one_row_and_failures_are_flagged(ray_local, assets, tmp_path):
    summary = run(config(assets, tmp_path / "store", concurrency=2))
    frame = read_latents(str(tmp_path / "store"))
    assert sorted(frame["image_id"]) == sorted(assets["messy"])
    assert summary.rows == len(assets["messy"]) and not summary.shards_failed
    for _, row in frame.iterrows():
        expected = assets["messy"][row["image_id"]]
        if expected == "ok":
            assert row["status"] == "ok" and pd.isna(row["error"])
            assert len(row["w_refined"]) == 8 * 32 and len(row["w_compressed"]) == 8 * 32
            assert row["mse"] >= 0 and -1 <= row["id_cosine_refined"] <= 1 and row["refine_steps"] == 3
        else:
            assert row["status"] == "error" and row["error"].startswith(expected), row["image_id"]
            assert row["w_refined"] is None


def test_store_metadata_lets_a_reader_regenerate_images(ray_local, assets, tmp_path):
    run(config(assets, tmp_path / "store", input=str(assets["root"] / "messy" / "good"), runner="local"))
    meta = read_store_metadata(str(tmp_path / "store"))
    assert meta["latent_shape"] == [8, 32] and meta["generator"] == assets["generator"]
    assert meta["schema_version"] == 1 and meta["settings"]["steps"] == 3


def test_the_store_reads_back_with_pandas_and_ray_data(ray_local, assets, tmp_path):
    import ray.data

    run(config(assets, tmp_path / "store", runner="local"))  # the subject is reading: made in this process
    with_pandas = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "store" / "latents").glob("*.parquet")))
    with_ray = ray.data.read_parquet(str(tmp_path / "store" / "latents")).to_pandas()
    assert len(with_pandas) == len(with_ray) == len(assets["messy"])
    assert set(with_ray["image_id"]) == set(assets["messy"])


def test_a_worker_dying_mid_shard_is_replaced_and_the_shard_retried(ray_local, assets, tmp_path):
    output = tmp_path / "store"
    summary = run(config(assets, output), processor_class=crashing_once_on(["folder-00001"]))
    assert summary.retries == 1 and not summary.shards_failed
    assert manifest_entries(str(output))["folder-00001"]["attempt"] == 2
    frame = read_latents(str(output))
    assert sorted(frame["image_id"]) == sorted(assets["messy"])


def test_a_shard_failing_every_attempt_is_recorded_not_dropped(ray_local, assets, tmp_path):
    output = tmp_path / "store"
    summary = run(config(assets, output, max_retries=0), processor_class=crashing_once_on(["folder-00000"]))
    assert summary.shards_failed == ["folder-00000"]
    failure = json.loads((output / "manifest" / "folder-00000.failed.json").read_text())
    assert failure["worker_died"] and failure["attempts"] == 1
    summary = run(config(assets, output))  # the rerun retries exactly the failed shard
    assert summary.shards_done == 1 and summary.shards_skipped == 3
    assert not (output / "manifest" / "folder-00000.failed.json").exists()
    assert sorted(read_latents(str(output))["image_id"]) == sorted(assets["messy"])


def test_rerun_skips_finished_shards_and_overwrite_redoes_them(ray_local, assets, tmp_path):
    output = tmp_path / "store"  # the subject is the store's account of its shards: runs in this process
    run(config(assets, output, runner="local"))
    first = manifest_entries(str(output))
    again = run(config(assets, output, runner="local"))
    assert again.shards_done == 0 and again.shards_skipped == len(first)
    redo = run(config(assets, output, overwrite=True, runner="local"))
    assert redo.shards_done == len(first)
    assert len(read_latents(str(output))) == len(assets["messy"])


def test_killed_run_resumes_without_duplicates_or_gaps(assets, tmp_path):
    output = tmp_path / "store"
    command = [sys.executable, "-m", "latentmill", "invert", "--input", assets["messy_dir"], "--output", str(output),
               "--generator", assets["generator"], "--prior", assets["prior"], "--stages", "refine,compress",
               "--perceptual", "discriminator", "--shard-size", "2", "--runner", "local", "--no-progress"]
    process = subprocess.Popen(command + ["--steps", "60"], cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(manifest_entries(str(output))) < 2:
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = len(manifest_entries(str(output)))
    assert 2 <= done_before < 8, "the run was killed midway"
    finished = subprocess.run(command + ["--steps", "60"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert f"found {done_before} of 8 shards done; resuming" in finished.stderr or \
        f"found {done_before + 1} of 8 shards done; resuming" in finished.stderr
    frame = read_latents(str(output))
    assert frame["image_id"].is_unique
    assert sorted(frame["image_id"]) == sorted(assets["messy"])


def test_tar_shards_and_parquet_inputs(ray_local, assets, tmp_path):
    tar_ids = tar_shards(tmp_path / "tars")
    run(config(assets, tmp_path / "from_tar", input=str(tmp_path / "tars"), stages=("refine",), runner="local"))
    frame = read_latents(str(tmp_path / "from_tar"))
    assert list(frame["image_id"]) == tar_ids and (frame["status"] == "ok").all()
    assert frame.loc[frame["image_id"] == tar_ids[0], "known_fraction"].item() == pytest.approx(0.5)
    assert json.loads(frame["meta"][1]) == {"label": 1}
    pq_ids = parquet_files(tmp_path / "pq")
    run(config(assets, tmp_path / "from_pq", input=str(tmp_path / "pq"), id_column="id", stages=("refine",),
               runner="local"))
    frame = read_latents(str(tmp_path / "from_pq"))
    assert list(frame["image_id"]) == pq_ids
    assert frame.set_index("image_id").loc["img-0-2", "status"] == "error"


def test_missing_identity_weights_fail_before_any_work(assets, tmp_path):
    with pytest.raises(WeightsNotFoundError, match="--facenet-weights"):
        run(config(assets, tmp_path / "store", facenet_weights=str(tmp_path / "absent.pt")))
    assert not (tmp_path / "store").exists()


def test_invalid_settings_name_the_option(assets, tmp_path):
    with pytest.raises(ValueError, match="--stages: unknown"):
        run(config(assets, tmp_path / "store", stages=("refine", "sharpen")))


def test_invert_and_reconstruct_from_the_command_line(ray_local, assets, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from latentmill.cli import main

    runner = CliRunner()
    store = tmp_path / "store"
    result = runner.invoke(main, ["invert", "--input", str(assets["root"] / "messy" / "good"), "--output", str(store),
                                  "--generator", assets["generator"], "--prior", assets["prior"], "--stages",
                                  "refine,compress", "--perceptual", "discriminator", "--steps", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "the store: 4 rows, 4 ok, 0 errors" in result.output and "manifest.json" in result.output
    assert f"next:      latentmill report {store}" in result.output
    result = runner.invoke(main, ["reconstruct", str(store), "--ids", "rgb_0.png,photo.jpg", "--out",
                                  str(tmp_path / "png"), "--column", "w_compressed", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["photo.w_compressed.png", "rgb_0.w_compressed.png"]
    assert Image.open(tmp_path / "png" / "photo.w_compressed.png").size == (32, 32)
    bad = runner.invoke(main, ["invert", "--input", str(tmp_path / "none"), "--output", str(tmp_path / "x"),
                               "--generator", assets["generator"], "--prior", str(tmp_path / "p.safetensors")])
    assert bad.exit_code == 2 and "--prior" in bad.output and "--input" in bad.output


def test_a_batch_too_large_for_the_actors_is_one_error_and_auto_is_the_default(ray_local, assets, tmp_path):
    from pipeline.invert.shard_processor import BatchSizeError

    with pytest.raises(BatchSizeError, match="--batch-size 10000000 needs about .* use --batch-size \\d+ or "
                                             "--batch-size auto"):
        run(config(assets, tmp_path / "store", batch_size=10**7))
    assert not list((tmp_path / "store" / "manifest").glob("*.json")), "no shard was started"
    summary = run(config(assets, tmp_path / "store", batch_size="auto"))
    assert summary.batch_size >= 1 and summary.rows == len(assets["messy"]) and summary.startup_seconds > 0


def test_the_local_runner_makes_the_same_store_without_starting_ray(assets, tmp_path):
    """`invert --runner local`: the shards run one after another in this process; no Ray is started, and
    the store holds one row per input, resumable by either runner (the runner is not part of the recipe)."""
    import ray
    from click.testing import CliRunner

    from latentmill.cli import main

    if ray.is_initialized():
        ray.shutdown()
    store = tmp_path / "store"
    args = ["invert", "--input", assets["messy_dir"], "--output", str(store), "--generator", assets["generator"],
            "--stages", "refine", "--perceptual", "discriminator", "--steps", "2", "--shard-size", "4",
            "--batch-size", "4", "--no-progress"]
    result = CliRunner().invoke(main, [*args, "--runner", "local"])
    assert result.exit_code == 0, result.output
    assert not ray.is_initialized() and "Ray" not in result.output
    frame = read_latents(str(store))
    assert sorted(frame["image_id"]) == sorted(assets["messy"]) and frame["image_id"].is_unique
    again = CliRunner().invoke(main, [*args, "--runner", "ray", "--address", "local"])
    assert again.exit_code == 0 and "nothing to run" in again.output, again.output
    ray.shutdown()


@pytest.mark.parametrize("runner", ["ray", "local"])
def test_both_runners_follow_one_retry_policy(ray_local, assets, tmp_path, runner):
    """A ShardFailure (the processor's state is suspect) is retried on a fresh processor, any other error on
    the same one, and a lost claim on the store stops the run: by exception type, on Ray as here."""
    from pipeline.runtime.local_runner import run_shards_here
    from pipeline.runtime.ray_runner import run_shards
    from pipeline.invert.shard_processor import ShardFailure
    from pipeline.store.store_lock import StoreClaimLostError
    from tests.fault_injection import failing_once_on

    runs = {"ray": run_shards, "local": run_shards_here}[runner]
    for exc_type, fresh in ((ShardFailure, True), (ValueError, False)):
        output = tmp_path / f"{runner}-{exc_type.__name__}"
        summary = run(config(assets, output, concurrency=1), runner=runs,
                      processor_class=failing_once_on(["folder-00001"], exc_type))
        assert summary.retries == 1 and not summary.shards_failed
        processors = (output / ".attempts" / "folder-00001").read_text().split()
        assert len(processors) == 2 and (processors[0] != processors[1]) == fresh, (exc_type, processors)
        assert sorted(read_latents(str(output))["image_id"]) == sorted(assets["messy"])
    with pytest.raises(StoreClaimLostError):
        run(config(assets, tmp_path / f"{runner}-claim"), runner=runs,
            processor_class=failing_once_on(["folder-00000"], StoreClaimLostError))

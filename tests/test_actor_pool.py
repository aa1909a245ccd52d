"""The actor pool works with the actors the cluster can place and never waits on one that cannot start."""

from __future__ import annotations

import pytest
from PIL import Image

from jobs.invert import run
from pipeline.demo import DemoBundle
from pipeline.errors import LatentmillError
from pipeline.runtime.actor_pool import ActorNeeds, placeable
from pipeline.invert.config import InvertConfig
from pipeline.store.store import read_latents


def test_what_a_node_holds_is_counted_by_its_scarcest_resource():
    gpu_actor = ActorNeeds(cpus=4, gpus=1)
    assert gpu_actor.fits({"CPU": 8, "GPU": 4}) == 2
    assert gpu_actor.fits({"CPU": 32, "GPU": 1}) == 1
    assert gpu_actor.fits({"CPU": 32}) == 0
    half = ActorNeeds(cpus=1, gpus=0.5)
    assert half.fits({"CPU": 8, "GPU": 1}) == 2
    assert placeable(ActorNeeds(cpus=1, gpus=0), [{"CPU": 2}, {"CPU": 1.5}, {"CPU": 0}]) == 3


@pytest.fixture
def small_input(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        Image.new("RGB", (32, 32), (40 * i, 80, 200 - 30 * i)).save(folder / f"{i}.png")
    return folder


def settings(small_input, tmp_path, **overrides) -> InvertConfig:
    base = dict(input=str(small_input), output=str(tmp_path / "store"), generator=DemoBundle.locate().generator,
                stages=("refine",), perceptual="none", steps=2, shard_size=2, progress=False, precision="fp32")
    return InvertConfig(**{**base, **overrides})


@pytest.mark.slow
def test_more_actors_than_the_cluster_holds_still_finish_every_shard(ray_local, small_input, tmp_path):
    """Three actors of one CPU on two CPUs: the third stays pending and never holds a shard."""
    summary = run(settings(small_input, tmp_path, concurrency=3, cpus_per_actor=1))
    assert summary.shards_done == 3 and not summary.shards_failed
    assert len(read_latents(str(tmp_path / "store"))) == 6


@pytest.mark.slow
def test_concurrency_auto_runs_what_the_cluster_holds(ray_local, small_input, tmp_path):
    summary = run(settings(small_input, tmp_path, concurrency="auto", cpus_per_actor=1))
    assert summary.shards_done == 3


@pytest.mark.slow
def test_an_actor_no_node_can_hold_stops_the_run_with_what_it_needs(ray_local, small_input, tmp_path):
    with pytest.raises(LatentmillError, match=r"no actor could start within --placement-timeout 3 s: each needs "
                                              r"4 CPU; the cluster has 1 live node\(s\), the largest with 2 CPU"):
        run(settings(small_input, tmp_path, cpus_per_actor=4, placement_timeout=3))

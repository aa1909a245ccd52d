"""Shards sized from the work: every actor gets several shards of a small input, large inputs get shards
of at most 1000 rows, and the size chosen once is the plan's for every later run, wherever it runs."""

from __future__ import annotations

import pytest

from pipeline.data.planning import Listing, auto_shard_size, plan_listing
from pipeline.models.bundle import write_bundle
from pipeline.invert.config import InvertConfig
from pipeline.store.store import open_store
from tests.conftest import tiny_generator
from tests.datasets import colorful, png_bytes
from tests.stores import invert_here


def listing_of(n: int) -> Listing:
    paths = [f"img{i:06d}.png" for i in range(n)]
    return Listing("mem://x", "auto", "mem://x", paths, [1] * n, ["v"] * n, ["file"] * n)


@pytest.mark.parametrize("inputs, actors, shards", [(200, 2, 8), (200, 1, 4), (3, 2, 3), (100_000, 2, 100)])
def test_auto_shards_give_every_actor_several_and_never_exceed_1000_rows(inputs, actors, shards):
    plan = plan_listing(listing_of(inputs), shard_size="auto", actors=actors)
    assert len(plan.shards) == shards
    assert max(len(s.members) for s in plan.shards) == auto_shard_size(inputs, actors) <= 1000
    assert "--shard-size auto" in plan.found


def test_new_inputs_after_an_auto_plan_are_cut_at_the_size_the_plan_chose():
    first = plan_listing(listing_of(80), shard_size="auto", actors=2)  # 10 per shard
    grown = listing_of(100)
    later = plan_listing(grown, shard_size="auto", actors=16, after=first)
    assert first.shard_size == 10 and [len(s.members) for s in later.shards] == [10, 10]


def test_an_explicit_size_is_kept(tmp_path):
    plan = plan_listing(listing_of(10), shard_size=3)
    assert [len(s.members) for s in plan.shards] == [3, 3, 3, 1] and plan.shard_size == 3


def test_a_store_resumes_whatever_shard_size_the_rerun_says(tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(6):
        (tmp_path / "in" / f"{i}.png").write_bytes(png_bytes(colorful(seed=i)))
    write_bundle(str(tmp_path / "g.safetensors"), {"G_ema": tiny_generator(16)})
    base = dict(input=str(tmp_path / "in"), output=str(tmp_path / "store"), generator=str(tmp_path / "g.safetensors"),
                stages=("refine",), steps=1, perceptual="none", batch_size=4, progress=False, precision="fp32",
                concurrency=2)
    invert_here(InvertConfig(**base))  # auto: 6 inputs for 2 actors -> shards of 1
    assert len(open_store(str(tmp_path / "store")).input_plan.shards) == 6
    again = invert_here(InvertConfig(**base, shard_size=4))  # not a recipe difference: the plan keeps its shards
    assert len(again) == 6 and len(open_store(str(tmp_path / "store")).input_plan.shards) == 6


def test_a_run_that_leaves_cpus_idle_says_what_would_use_them():
    from types import SimpleNamespace

    from pipeline.runtime.ray_runner import idle_note

    cluster = SimpleNamespace(cpus=2.0)
    config = InvertConfig(input="x", output="y", generator="g", concurrency=1)
    assert idle_note(config, cluster, 8) == "1 actor on 2 CPUs (--concurrency 1): --concurrency auto runs 2"
    two = InvertConfig(input="x", output="y", generator="g", concurrency=2)
    assert idle_note(two, cluster, 1).endswith("a smaller --shard-size gives every actor work")
    assert idle_note(two, cluster, 8) is None
    assert idle_note(InvertConfig(input="x", output="y", generator="g", concurrency="auto"), cluster, 8) is None

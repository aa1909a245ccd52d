"""A two-node Ray cluster (ray.cluster_utils.Cluster, on one machine) gives the rows of one node."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.invert import run
from pipeline.priors.prior_cache import fit_prior_file
from pipeline.invert.config import InvertConfig
from tests.stores import manifest_entries
from pipeline.store.store import read_latents
from tests.datasets import messy_folder

pytestmark = pytest.mark.slow  # end-to-end runs (Ray, subprocesses, training): minutes on 2 cores


@pytest.fixture(scope="module")
def two_node_cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_two_nodes_give_the_same_rows_and_latents_as_one(two_node_cluster, fixture_dir, tmp_path):
    import ray

    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    expected = messy_folder(tmp_path / "in")
    prior = str(tmp_path / "prior.safetensors")
    fit_prior_file(str(fixture_dir / "sg2ada_32px.pkl"), prior, num_samples=5000, batch_size=5000)
    base = dict(input=str(tmp_path / "in"), generator=str(fixture_dir / "sg2ada_32px.pkl"), prior=prior,
                stages=("refine", "compress"), perceptual="discriminator", steps=10, shard_size=1, progress=False)
    # one input a shard, 16 shards: work enough that the slower node's actor is ready before the other has
    # taken them all (the pool hands shards to whichever actor is ready first)
    run(InvertConfig(output=str(tmp_path / "two"), concurrency=2, cpus_per_actor=1, **base))
    nodes = {entry["node"] for entry in manifest_entries(str(tmp_path / "two")).values()}
    assert len(nodes) == 2, "shards ran on both nodes"
    run(InvertConfig(output=str(tmp_path / "one"), concurrency=1, **base))
    two = read_latents(str(tmp_path / "two")).sort_values("image_id").reset_index(drop=True)
    one = read_latents(str(tmp_path / "one")).sort_values("image_id").reset_index(drop=True)
    assert list(two["image_id"]) == list(one["image_id"]) == sorted(expected)
    assert list(two["status"]) == list(one["status"])
    for a, b in zip(two["w_refined"], one["w_refined"]):
        assert (a is None and b is None) or np.allclose(a, b, atol=1e-5)

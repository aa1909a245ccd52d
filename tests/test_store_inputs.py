"""Opening a store: its rows in one line, and its inputs re-read with the run's recorded settings."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from pipeline.data.planning import plan_shards
from pipeline.store.store import Store
from tests.datasets import colorful, png_bytes


@pytest.fixture
def store_with_plan(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(3):
        (inputs / f"img{i}.png").write_bytes(png_bytes(colorful(size=40, seed=i)))
    shards = plan_shards(str(inputs), shard_size=2)
    store = tmp_path / "store"
    store.mkdir()
    (store / "plan.json").write_text(json.dumps({"input": str(inputs),
                                                 "shards": [dataclasses.asdict(s) for s in shards]}))
    rows = [(s.shard_id, f"img{i}.png") for i, s in ((0, shards[0]), (1, shards[0]), (2, shards[1]))]
    return str(store), rows


def recorded(uri: str, **settings) -> Store:
    """The store at `uri`, as if its run had recorded 16 px RGB inputs and these settings."""
    store = Store(uri)
    store.metadata = {"img_resolution": 16, "img_channels": 3, "settings": settings}
    return store


def test_inputs_come_back_by_id_decoded_at_the_recorded_resolution(store_with_plan):
    store, rows = store_with_plan
    shards, ids = [r[0] for r in reversed(rows)], [r[1] for r in reversed(rows)]
    by_id = recorded(store).read_inputs(shards, ids)
    assert set(by_id) == set(ids)
    assert all(image.shape == (3, 16, 16) for image in by_id.values())
    assert not torch.equal(by_id[ids[0]], by_id[ids[1]])


def test_the_recorded_pixel_limit_applies_when_inputs_are_read_again(store_with_plan):
    store, rows = store_with_plan
    shards, ids = [r[0] for r in rows], [r[1] for r in rows]
    with pytest.raises(FileNotFoundError, match="no longer readable"):
        recorded(store, max_pixels=100).read_inputs(shards, ids)  # 40 x 40 inputs exceed 100 pixels


def test_a_store_reads_in_one_line_with_latents_as_arrays(tmp_path):
    from pipeline.priors.gaussian import GaussianizedPrior
    from pipeline.store.store import open_store
    from tests.conftest import tiny_generator
    from tests.stores import synthetic_store

    G = tiny_generator(16)
    prior = GaussianizedPrior.fit(G, num_samples=2000, batch_size=1000, progress=False)
    ws = G.mapping(torch.randn(3, G.z_dim)).detach()
    frame = open_store(synthetic_store(tmp_path, G, prior, ws)).to_pandas(latents_as_arrays=True)
    assert len(frame) == 3 and frame["w_refined"][0].shape == (G.num_ws, G.w_dim)
    torch.testing.assert_close(torch.from_numpy(frame["w_refined"][1]), ws[1])


def test_opening_something_that_is_not_a_store_says_what_to_do(tmp_path):
    from pipeline.store.store import StoreNotFoundError, open_store

    with pytest.raises(StoreNotFoundError, match="does not exist; make one with `latentmill invert"):
        open_store(str(tmp_path / "nowhere"))
    with pytest.raises(StoreNotFoundError, match="holds no latentmill store"):
        open_store(str(tmp_path))

"""Re-reading a store's inputs decodes them with the run's recorded settings."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from pipeline.data.sources import plan_shards
from pipeline.store.store_inputs import load_store_inputs, load_store_inputs_by_id
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


def meta(**settings):
    return {"img_resolution": 16, "img_channels": 3, "settings": settings}


def test_inputs_come_back_in_the_order_asked_and_by_id(store_with_plan):
    store, rows = store_with_plan
    shards, ids = [r[0] for r in reversed(rows)], [r[1] for r in reversed(rows)]
    stacked = load_store_inputs(store, meta(), shards, ids)
    by_id = load_store_inputs_by_id(store, meta(), shards, ids)
    assert stacked.shape == (3, 3, 16, 16)
    assert all(torch.equal(stacked[k], by_id[i]) for k, i in enumerate(ids))


def test_the_recorded_pixel_limit_applies_when_inputs_are_read_again(store_with_plan):
    store, rows = store_with_plan
    shards, ids = [r[0] for r in rows], [r[1] for r in rows]
    with pytest.raises(FileNotFoundError, match="no longer readable"):
        load_store_inputs(store, meta(max_pixels=100), shards, ids)  # 40 x 40 inputs exceed 100 pixels

"""A store's inputs read again, decoded exactly as its run decoded them (its plan says which file holds each
row, its recorded decode settings how to decode it): for readers that compare rows with their inputs
(rebalance's and augment's compositions, the report's contact sheets). Store.read_inputs is this."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch

from pipeline.data.decode import DecodeSettings, input_id
from pipeline.data.sources import ShardSpec, read_shard
from pipeline.store import layout


class Store(Protocol):
    """What this reads of a store (pipeline.store.store.Store): its plan, decode settings and records."""

    uri: str

    @property
    def metadata(self) -> dict[str, Any]: ...

    @property
    def settings(self) -> dict[str, Any]: ...

    @property
    def decode_settings(self) -> DecodeSettings: ...

    @property
    def plan(self) -> Mapping[str, ShardSpec]: ...


def read_store_inputs(store: Store, shards: Sequence[str], image_ids: Sequence[str], *,
                      missing_ok: bool = False) -> dict[str, torch.Tensor]:
    """The decoded inputs ([C, R, R] in [-1, 1]) of rows given by (shard, image_id), by image_id; each input
    shard involved is read once. An input no longer readable is a FileNotFoundError naming it, or
    (missing_ok) absent from the result."""
    decoding = store.decode_settings
    aligner = decoding.aligner()
    resolution, channels = store.metadata["img_resolution"], store.metadata["img_channels"]
    wanted: dict[str, set[str]] = {}
    for shard, image_id in zip(shards, image_ids):
        wanted.setdefault(shard, set()).add(image_id)
    plan = store.plan
    found: dict[str, torch.Tensor] = {}
    for shard, ids in wanted.items():
        if shard not in plan:
            raise KeyError(f"{store.uri}: shard {shard!r} is not in {layout.PLAN}")
        inputs = {input_id(row_id) for row_id in ids}
        for record in read_shard(plan[shard], on_duplicate_id=store.settings.get("on_duplicate_id", "suffix")):
            if record.image_id in inputs and record.data is not None:
                rows = decoding.decode_rows(record.data, resolution=resolution, channels=channels, aligner=aligner)
                for row_id, decoded in zip(decoding.row_ids(record.image_id, rows), rows):
                    if decoded.ok and row_id in ids:
                        found[row_id] = torch.from_numpy(decoded.image)
    missing = [i for i in image_ids if i not in found]
    if missing and not missing_ok:
        raise FileNotFoundError(f"{store.uri}: inputs no longer readable: {missing[:5]}")
    return found

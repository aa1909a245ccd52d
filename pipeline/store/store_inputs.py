"""Re-reading the input images behind rows of a latent store, decoded as the run decoded them.

The store records, per row, its input shard and id, and in its metadata the settings of the run
(resolution, resize policy, pixel limit, face alignment). plan.json maps shard ids to input files, so the
exact pixels a latent was fitted to can be recovered for reports and evaluations.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import fsspec
import torch

from pipeline.data.decode import DEFAULT_MAX_PIXELS, decode_image
from pipeline.data.sources import ShardSpec, read_shard


def _plan(store: str) -> dict[str, ShardSpec]:
    fs, path = fsspec.core.url_to_fs(store.rstrip("/") + "/plan.json")
    if not fs.exists(path):
        raise FileNotFoundError(f"{store}: no plan.json, so the inputs cannot be found again")
    return {s["shard_id"]: ShardSpec(**s) for s in json.loads(fs.cat_file(path))["shards"]}


def load_store_inputs_by_id(store: str, meta: dict[str, Any], shards: Sequence[str],
                            image_ids: Sequence[str]) -> dict[str, torch.Tensor]:
    """The decoded inputs ([C, R, R] in [-1, 1]) of rows given by (shard, image_id), by image_id;
    each input shard involved is read once."""
    plan = _plan(store)
    settings = meta.get("settings", {})
    aligner = None
    if settings.get("align") == "faces":
        from pipeline.data.align import FaceAligner

        aligner = FaceAligner()
    wanted: dict[str, set[str]] = {}
    for shard, image_id in zip(shards, image_ids):
        wanted.setdefault(shard, set()).add(image_id)
    found: dict[str, torch.Tensor] = {}
    for shard, ids in wanted.items():
        if shard not in plan:
            raise KeyError(f"{store}: shard {shard!r} is not in plan.json")
        for record in read_shard(plan[shard]):
            if record.image_id in ids and record.data is not None:
                decoded = decode_image(record.data, resolution=meta["img_resolution"], channels=meta["img_channels"],
                                       policy=settings.get("resize_policy", "center-crop"),
                                       max_pixels=settings.get("max_pixels", DEFAULT_MAX_PIXELS), aligner=aligner)
                if decoded.ok:
                    found[record.image_id] = torch.from_numpy(decoded.image)
    missing = [i for i in image_ids if i not in found]
    if missing:
        raise FileNotFoundError(f"{store}: inputs no longer readable: {missing[:5]}")
    return found


def load_store_inputs(store: str, meta: dict[str, Any], shards: Sequence[str], image_ids: Sequence[str]) -> torch.Tensor:
    """The decoded inputs [N, C, R, R] in [-1, 1] of rows given by (shard, image_id), in that order."""
    found = load_store_inputs_by_id(store, meta, shards, image_ids)
    return torch.stack([found[i] for i in image_ids])

"""A pool of decoded real images held in memory, e.g. for the encoder's real-image loss term."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.data.decode import decode_image
from pipeline.data.planning import plan_shards
from pipeline.data.sources import read_shard


@dataclass
class ImagePool:
    images: torch.Tensor  # [N, C, R, R] in [-1, 1]
    skipped: Counter = field(default_factory=Counter)  # reason -> count of inputs that could not be used

    def describe(self) -> str:
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
        return f"{len(self.images)} real images" + (f"; skipped {sum(self.skipped.values())}: {reasons}" if reasons else "")


def load_image_pool(uri: str, *, resolution: int, channels: int = 3, max_images: int = 10_000,
                    policy: str = "center-crop") -> ImagePool:
    """Decode up to `max_images` images of a dataset URI (any layout `latentmill invert` reads)."""
    arrays, skipped = [], Counter()
    for spec in plan_shards(uri):
        for record in read_shard(spec):
            if len(arrays) >= max_images:
                break
            decoded = decode_image(record.data, resolution=resolution, channels=channels,
                                   policy=policy) if record.error is None else None
            if decoded is None or not decoded.ok:
                reason = (record.error or decoded.error).split(":", 1)[0]
                skipped[reason] += 1
            else:
                arrays.append(decoded.image)
    if not arrays:
        raise ValueError(f"--real-images {uri}: no usable image ({dict(skipped) or 'the dataset is empty'})")
    return ImagePool(torch.from_numpy(np.stack(arrays)), skipped)

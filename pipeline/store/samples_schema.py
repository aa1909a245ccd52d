"""The `samples` table written by `latentmill rebalance`: one row per candidate sample, kept or not.

Every candidate is a row (accepted or rejected, with the reason), so nothing is dropped silently;
accepted rows' images are in the output's tar shards under the same `sample_id`.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.store.table_spec import TableSpec

SAMPLES = TableSpec("samples", 1, (
    ("sample_id", pa.string(), False, "id of the new sample; its image is <sample_id>.png in the tar shards"),
    ("group", pa.string(), False, "the under-represented group it was made for"),
    ("method", pa.string(), False, "'compose' (a part of a member pasted on another image, through E and G) or 'sample'"),
    ("source_ids", pa.list_(pa.string()), False, "image_ids of the store rows it was made from (member first)"),
    ("mask_kind", pa.string(), True, "compose: which part of the member was kept (half, quadrants, blob)"),
    ("mask_fraction", pa.float32(), True, "compose: fraction of pixels taken from the member"),
    ("seed", pa.int64(), False, "seed of the candidate's own random stream, from --seed, its group and its index "
                                "(with the settings, reproduces it whatever the batch size)"),
    ("prior_nll", pa.float32(), False, "prior NLL of its latent"),
    ("identity_to_sources", pa.float32(), True, "identity cosine to the member (compose) or the nearest member (sample)"),
    ("part_l1", pa.float32(), True, "compose: mean |new - member| on the kept part, in [-1, 1] units"),
    ("accepted", pa.bool_(), False, "passed the quality filter and is in the output images"),
    ("rejected_because", pa.string(), True, "why not: 'prior_nll' or 'identity' (the candidates after the one that filled its group are not kept)"),
    ("shard", pa.string(), True, "the tar shard holding the image (accepted rows)"),
    ("w", pa.list_(pa.float32()), False, "its W+ latent, flattened row-major [num_ws, w_dim]"),
    ("generator_fingerprint", pa.string(), False, "fingerprint of the generator that rendered it"),
    ("schema_version", pa.int16(), False, "version of this schema"),
))

"""The `flags` table written by `latentmill curate`: one row per ok row of a latent store.

Versioned like the latents table: schemas/flags.v1.json is generated from `_COLUMNS`, a test keeps
them equal. The thresholds used are in the schema metadata under the key `latentmill`.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

FLAGS_NAME = "flags"
FLAGS_VERSION = 1
METADATA_KEY = b"latentmill"

_COLUMNS: list[tuple[str, pa.DataType, bool, str]] = [
    ("image_id", pa.string(), False, "the row's image_id in the latent store"),
    ("shard", pa.string(), False, "the row's input shard"),
    ("prior_nll", pa.float32(), True, "prior NLL of the latent tested (w_refined, else w_encoded)"),
    ("prior_nll_percentile", pa.float32(), True, "percentile (0-100) of prior_nll within the store"),
    ("outlier", pa.bool_(), False, "prior_nll above the --outlier-percentile of the store"),
    ("duplicate_group", pa.int64(), False, "rows with the same value are near-duplicates (the value is a row index)"),
    ("duplicate_of", pa.string(), True, "image_id of the group's first member, when this row is another member"),
    ("duplicate_cosine", pa.float32(), True, "highest cosine to any other member of its group"),
    ("duplicate", pa.bool_(), False, "a near-duplicate of an earlier row (the first member is not flagged)"),
    ("bad_reconstruction", pa.bool_(), False, "MSE or perceptual above its percentile, or identity below its bound"),
    ("bad_reasons", pa.string(), True, "which tests failed, comma-separated: mse, perceptual, identity"),
    ("flagged", pa.bool_(), False, "outlier or duplicate or bad_reconstruction"),
    ("schema_version", pa.int16(), False, "version of this schema"),
]


def flags_schema(metadata: dict[str, Any] | None = None) -> pa.Schema:
    fields = [pa.field(name, dtype, nullable=nullable, metadata={b"description": text.encode()})
              for name, dtype, nullable, text in _COLUMNS]
    meta = {"schema": FLAGS_NAME, "schema_version": FLAGS_VERSION, **(metadata or {})}
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(meta, default=str).encode()})


def flags_document() -> dict[str, Any]:
    """A machine-readable description of the schema, written to schemas/flags.v1.json."""
    return {"name": FLAGS_NAME, "version": FLAGS_VERSION, "metadata_key": METADATA_KEY.decode(),
            "columns": [{"name": name, "type": str(dtype), "nullable": nullable, "description": text}
                        for name, dtype, nullable, text in _COLUMNS]}

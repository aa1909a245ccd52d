"""The `latents` table: the versioned contract between latentmill and the teams that read its output.

One row per input image, `status` 'ok' or 'error' (with `error` = "<reason>: <detail>"). Latents
are flattened W+ as fixed-size lists of num_ws * w_dim values (float32 or float16), row-major
[num_ws, w_dim]; the shape, the generator and every setting are in the schema metadata under the
key `latentmill`, so a reader can regenerate images without asking anyone. schemas/latents.v1.json
is generated from `latents_schema` and documented in schemas/README.md; a test keeps them equal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

import pyarrow as pa

from pipeline.settings import LATENT_COLUMN_NAMES

SCHEMA_NAME = "latents"
SCHEMA_VERSION = 1
METADATA_KEY = b"latentmill"
LATENT_COLUMNS = LATENT_COLUMN_NAMES  # declared with the --column setting, which picks one
LATENT_SHAPED_COLUMNS = (*LATENT_COLUMNS, "z")  # every column holding num_ws x w_dim values (z: the exact latents)
LATENT_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}

# name, type (None = latent list; (type, n) = fixed-size list), nullable, description
_COLUMNS: list[tuple[str, pa.DataType | tuple[pa.DataType, int] | None, bool, str]] = [
    ("image_id", pa.string(), False, "input id: relative path (folder), '<shard>/<key>' (tar), id column (Parquet); "
                                     "with --faces all, '<input id>#face<k>' per face"),
    ("source_uri", pa.string(), False, "where the input came from (file URI, tar URI#key, parquet URI#row=N)"),
    ("shard", pa.string(), False, "input shard id: the unit of work and of resume"),
    ("status", pa.string(), False, "'ok' or 'error'"),
    ("error", pa.string(), True, "'<reason>: <detail>' when status is 'error', else null"),
    ("w_encoded", None, True, "encoder output W+ (null without an encoder)"),
    ("w_refined", None, True, "refined W+ (null when refinement is off)"),
    ("w_compressed", None, True, "refined W+ after log-compression beyond tau of the prior's standard-normal coordinates (PCA for the gaussianized prior, z for a flow; null without a prior)"),
    ("z", None, True, "the exact latent of w_refined (of w_encoded without refinement), one z per layer: "
                      "G.mapping.inverse(w) for a generator with an invertible mapping (then G.mapping(z) gives w "
                      "back), else the flow prior's to_latent(w) (standard normal for mapped samples); null "
                      "with neither; the metadata's z_space says which"),
    ("mse", pa.float32(), True, "pixel MSE of G(w_refined) (or of the last stage run) against the input, on known pixels, in [-1, 1] units; mse_refined and mse_encoded name the latent"),
    ("mse_encoded", pa.float32(), True, "pixel MSE of G(w_encoded)"),
    ("mse_refined", pa.float32(), True, "pixel MSE of G(w_refined) (null when refinement is off); the name that "
                                        "pairs with mse_encoded"),
    ("perceptual", pa.float32(), True, "perceptual distance of G(w_refined); the metric is named in the metadata"),
    ("perceptual_refined", pa.float32(), True, "the same as perceptual, under the name that says which latent"),
    ("id_cosine_refined", pa.float32(), True, "identity-embedding cosine between input and G(w_refined)"),
    ("id_cosine_compressed", pa.float32(), True, "identity-embedding cosine between input and G(w_compressed)"),
    ("prior_nll_encoded", pa.float32(), True, "prior NLL of w_encoded: mean over layers of the squared norm of the prior's standard-normal coordinates (Mahalanobis norm in V for the gaussianized prior, |z|^2 for a flow); about w_dim for a typical latent, the scale of every NLL latentmill shows"),
    ("prior_nll_refined", pa.float32(), True, "prior NLL of w_refined"),
    ("prior_nll_compressed", pa.float32(), True, "prior NLL of w_compressed"),
    ("compression_delta", pa.float32(), True, "RMS change of the latent made by compression"),
    ("refine_steps", pa.int32(), True, "optimizer steps the image received"),
    ("known_fraction", pa.float32(), True, "fraction of pixels known (mask, pad border, outside the photo with --align)"),
    ("width", pa.int32(), True, "input width before resizing"),
    ("height", pa.int32(), True, "input height before resizing"),
    ("face_index", pa.int16(), True, "with --align: the face's rank in its photo by detection confidence (0 = most confident)"),
    ("face_confidence", pa.float32(), True, "with --align: the detector's confidence for this face"),
    ("face_box", (pa.float32(), 4), True, "with --align: the detection box x0, y0, x1, y1 in the photo's pixels (after EXIF orientation)"),
    ("face_landmarks", (pa.float32(), 10), True, "with --align: x, y of the eyes, the nose and the mouth corners (image left first), in the photo's pixels"),
    ("meta", pa.string(), True, "the input's JSON sidecar, if any, as JSON text"),
    ("seconds", pa.float32(), True, "this image's share of its batch's compute time"),
    ("model_fingerprint", pa.string(), False, "fingerprint of the generator (sha256 of its weights)"),
    ("schema_version", pa.int16(), False, "version of this schema"),
]


COLUMN_NAMES = tuple(name for name, *_ in _COLUMNS)


def _arrow_type(dtype: pa.DataType | tuple[pa.DataType, int] | None, latent_type: pa.DataType) -> pa.DataType:
    if dtype is None:
        return latent_type
    return pa.list_(*dtype) if isinstance(dtype, tuple) else dtype


def latents_schema(num_ws: int, w_dim: int, *, latent_dtype: str = "float32",
                   metadata: dict[str, Any] | None = None,
                   latent_columns: Iterable[str] = LATENT_SHAPED_COLUMNS) -> pa.Schema:
    """The Arrow schema of a latent store for a generator with num_ws x w_dim latents. Latent columns
    not in `latent_columns` (those of stages a store's recipe never runs) are left out: a column of
    nulls would still cost a reader num_ws * w_dim values per row."""
    if latent_dtype not in LATENT_DTYPES:
        raise ValueError(f"--latent-dtype must be one of {sorted(LATENT_DTYPES)}, got {latent_dtype!r}")
    latent_type = pa.list_(LATENT_DTYPES[latent_dtype], num_ws * w_dim)
    kept = set(latent_columns)
    fields = [pa.field(name, _arrow_type(dtype, latent_type), nullable=nullable, metadata={b"description": text.encode()})
              for name, dtype, nullable, text in _COLUMNS if dtype is not None or name in kept]
    meta = {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "latent_shape": [num_ws, w_dim],
            "latent_dtype": latent_dtype, **(metadata or {})}
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(meta, default=str).encode()})


def store_metadata(schema: pa.Schema) -> dict[str, Any]:
    """The `latentmill` metadata of a latent store's schema (generator, shapes, settings)."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError("not a latentmill latent store: the Parquet schema has no 'latentmill' metadata")
    return json.loads(raw)


def schema_document() -> dict[str, Any]:
    """A machine-readable description of the schema, written to schemas/latents.v<version>.json."""
    return {
        "name": SCHEMA_NAME,
        "version": SCHEMA_VERSION,
        "latent_columns": {"type": "fixed_size_list<float32|float16>[num_ws * w_dim]", "layout": "row-major [num_ws, w_dim]"},
        "metadata_key": METADATA_KEY.decode(),
        "columns": [{"name": name, "type": "latent" if dtype is None else str(_arrow_type(dtype, pa.null())),
                     "nullable": nullable,
                     "description": text} for name, dtype, nullable, text in _COLUMNS],
    }


def latent_array(frame: pd.DataFrame, column: str, latent_shape: Iterable[int]) -> np.ndarray:
    """One latent column as float32 [rows, num_ws, w_dim]; rows must all be non-null."""
    if column not in LATENT_SHAPED_COLUMNS:
        raise ValueError(f"{column!r} is not a latent column ({LATENT_SHAPED_COLUMNS})")
    values = frame[column].to_list() if column in frame else [None] * len(frame)
    if any(v is None for v in values):
        raise ValueError(f"some selected rows have no {column} (error rows, or the stage was off)")
    return np.stack(values).astype(np.float32).reshape(len(values), *latent_shape)

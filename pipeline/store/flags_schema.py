"""The `flags` table written by `latentmill curate`: one row per ok row of a latent store.

Versioned like the latents table: schemas/flags.v2.json is generated from `FLAGS`, a test keeps
them equal (v2 added the cross_duplicate columns; a v1 table reads as having none). The thresholds used are in the schema metadata under the key `latentmill`.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.store.table_spec import TableSpec

FLAGS = TableSpec("flags", 2, (
    ("image_id", pa.string(), False, "the row's image_id in the latent store"),
    ("shard", pa.string(), False, "the row's input shard"),
    ("prior_nll", pa.float32(), True, "prior NLL of the latent tested (w_refined, else w_encoded)"),
    ("prior_nll_percentile", pa.float32(), True, "percentile (0-100) of prior_nll within the store"),
    ("outlier", pa.bool_(), False, "prior_nll above the --outlier-percentile of the store"),
    ("duplicate_group", pa.int64(), False, "rows with the same value are near-duplicates (the value is a row index)"),
    ("duplicate_of", pa.string(), True, "image_id of the group's first member, when this row is another member"),
    ("duplicate_cosine", pa.float32(), True, "highest cosine to any other member of its group"),
    ("duplicate", pa.bool_(), False, "a near-duplicate of an earlier row (the first member is not flagged)"),
    ("cross_duplicate", pa.bool_(), False, "a near-duplicate lies in another store (curate --against): train/test "
                                           "leakage, the same person in both"),
    ("cross_duplicate_of", pa.string(), True, "image_id of the nearest such row in that store"),
    ("cross_duplicate_store", pa.string(), True, "URI of the store it lies in"),
    ("cross_duplicate_cosine", pa.float32(), True, "their cosine (by --duplicates-by)"),
    ("bad_reconstruction", pa.bool_(), False, "MSE or perceptual above its percentile, or identity below its bound"),
    ("bad_reasons", pa.string(), True, "which tests failed, comma-separated: mse, perceptual, identity"),
    ("flagged", pa.bool_(), False, "outlier or duplicate or cross_duplicate or bad_reconstruction"),
    ("schema_version", pa.int16(), False, "version of this schema"),
))
FLAGS_VERSION = FLAGS.version


def flags_schema(metadata: dict | None = None) -> pa.Schema:
    return FLAGS.schema(metadata)

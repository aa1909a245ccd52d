"""The `augment` table written by `latentmill augment`: one row per variant made, kept or not.

Every variant is a row (accepted or rejected, with the reason), so nothing is dropped silently;
accepted rows' images are in OUT/images/augment-*.tar under the row's `key`.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.store.table_spec import TableSpec

AUGMENT = TableSpec("augment", 1, (
    ("sample_id", pa.string(), False, "id of the variant: <source_id>~<edit>~<variant>"),
    ("source_id", pa.string(), False, "image_id of the store row it was made from"),
    ("edit", pa.string(), False, "the edit as given in --edits (e.g. 'jitter:0.3', 'mix:8-17')"),
    ("params", pa.string(), False, "the edit's parameters as JSON, with this variant's own (attribute: its alpha; "
                                   "mix and compose: the donor's image_id; compose: the mask's kept fraction)"),
    ("variant", pa.int32(), False, "the variant's index among --variants of this edit for this source (0-based)"),
    ("seed", pa.int64(), False, "seed of the variant's own random stream, from --seed, source_id, edit and variant "
                                "(with the settings, reproduces it whatever the batch size or worker)"),
    ("accepted", pa.bool_(), False, "passed the quality filter and is in the output images"),
    ("rejected_because", pa.string(), True, "why not: 'prior_nll' (beyond the --nll-percentile bound), 'identity' "
                                            "(below --min-identity), or 'input_unreadable' (compose: the source's "
                                            "input can no longer be read; no variant was made)"),
    ("key", pa.string(), False, "the sample's key in the tar shards: <key>.png and <key>.json"),
    ("shard", pa.string(), True, "the tar shard holding the image (accepted rows), relative to OUT"),
    ("w", pa.list_(pa.float32()), True, "its W+ latent, flattened row-major [num_ws, w_dim] (attribute: the W+ "
                                        "nearest to the edited styles the image was rendered from); null where no "
                                        "variant was made"),
    ("prior_nll", pa.float32(), True, "prior NLL of w (a typical latent of G scores about w_dim)"),
    ("identity_to_source", pa.float32(), True, "identity cosine to the source as G renders its latent (null without "
                                               "the store's identity model)"),
    ("mse_to_source", pa.float32(), True, "mean squared difference to the source as G renders its latent, in [-1, 1] "
                                           "units"),
    ("generator_fingerprint", pa.string(), False, "fingerprint of the generator that rendered it"),
    ("schema_version", pa.int16(), False, "version of this schema"),
))

"""The `faces` table written by `latentmill align`: one row per aligned face, or per input without one.

Versioned like the other tables: schemas/faces.v1.json is generated from `FACES`, a test keeps them
equal. The alignment settings are in the schema metadata under the key `latentmill`.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.store.table_spec import TableSpec

FACES = TableSpec("faces", 1, (
    ("image_id", pa.string(), False, "the row's id: the input's id, or '<input id>#face<k>' with --faces all "
                                     "(the same ids `latentmill invert --align` gives)"),
    ("input_id", pa.string(), False, "the input's id: relative path (folder), '<shard>/<key>' (tar), id column (Parquet)"),
    ("source_uri", pa.string(), False, "where the input came from"),
    ("status", pa.string(), False, "'ok' or 'error'"),
    ("error", pa.string(), True, "'<reason>: <detail>' when status is 'error' (e.g. 'no face: ...'), else null"),
    ("output", pa.string(), True, "the aligned PNG, relative to the output's images/ folder"),
    ("mask", pa.string(), True, "its mask of known pixels (white = from the photo), relative to images/; null when "
                                "every pixel is known"),
    ("known_fraction", pa.float32(), True, "fraction of the aligned square that lies inside the photo"),
    ("face_index", pa.int16(), True, "the face's rank in its photo by detection confidence (0 = most confident)"),
    ("face_confidence", pa.float32(), True, "the detector's confidence for this face"),
    ("face_box", pa.list_(pa.float32(), 4), True, "detection box x0, y0, x1, y1 in the photo's pixels (after EXIF "
                                                  "orientation)"),
    ("face_landmarks", pa.list_(pa.float32(), 10), True, "x, y of the eyes, the nose and the mouth corners (image "
                                                         "left first), in the photo's pixels"),
    ("quad", pa.list_(pa.float32(), 8), True, "x, y of the photo points that became the output's top-left, "
                                              "bottom-left, bottom-right and top-right corners"),
    ("width", pa.int32(), True, "the photo's width"),
    ("height", pa.int32(), True, "the photo's height"),
    ("schema_version", pa.int16(), False, "version of this schema"),
))

"""File names made from input ids: safe on every filesystem, bounded, and distinct for distinct ids.

Ids come from users (file paths, tar keys, a Parquet id column) and may hold '/', '..', control
characters or hundreds of characters. A name keeps [A-Za-z0-9._-], never starts with a dot, and is
at most `MAX_STEM` characters; whenever the id had to change, a hash of the full id is appended, so
two ids never share a file name.
"""

from __future__ import annotations

import hashlib
import re

MAX_STEM = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_file_name(image_id: str, suffix: str = "") -> str:
    """`image_id` as a file name stem, plus `suffix` (e.g. '.refined.png')."""
    stem = _UNSAFE.sub("_", image_id).lstrip("._-") or "id"
    if stem != image_id or len(stem) > MAX_STEM:
        digest = hashlib.sha256(image_id.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        stem = f"{stem[: MAX_STEM - 11]}-{digest}"
    return stem + suffix

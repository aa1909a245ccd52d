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


def distinct_file_names(image_ids: list[str], suffix: str, *, strip: tuple[str, ...] = ()) -> list[str]:
    """One file name per id, distinct even on case-insensitive filesystems: an id's extension in `strip`
    is dropped for a readable name ('face.png' -> 'face<suffix>') unless another id shares that name
    ('both.png' and 'both.jpg', 'A.png' and 'a.png'), which then keep their full ids (hashed where
    changed)."""
    from pipeline.data.names import same_file_key

    def short(image_id: str) -> str:
        return image_id.rsplit(".", 1)[0] if image_id.lower().endswith(strip) else image_id

    names = [safe_file_name(short(i), suffix) for i in image_ids]
    counts: dict[str, int] = {}
    for name in names:
        counts[same_file_key(name)] = counts.get(same_file_key(name), 0) + 1
    out = []
    for image_id, name in zip(image_ids, names):
        if counts[same_file_key(name)] > 1:
            full = safe_file_name(image_id)
            if full == image_id and same_file_key(image_id) != image_id:  # case twins: a hash tells them apart
                full = f"{full}-{hashlib.sha256(image_id.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"
            name = full + suffix
        out.append(name)
    return out

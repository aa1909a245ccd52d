"""Input datasets on any fsspec URI, planned into shards (the unit of work and of resume).

Layouts:
- folder   every non-hidden file under the URI (recursively) is one input, except sidecars:
           `name.mask.png` (mask of known pixels for `name.*`) and `name.json` (metadata);
           sorted paths are cut into shards of `shard_size` files.
- tar      webdataset layout: each `.tar` is a shard; members sharing a key (the name up to its
           first dot) form one input: `key.jpg|jpeg|png|webp`, optional `key.json`, `key.mask.png`.
- parquet  each `.parquet` file is a shard; one input per row: an image-bytes column (raw bytes, or a
           struct with a `bytes` field as Hugging Face datasets write) and an optional id column.
A shard that cannot be read at all (a corrupt tar, say) yields one error record for itself.

Ids: shard ids are unique by construction (two files whose names flatten to one id both get a hash
of their path appended). Input ids are unique within a plan: a repeated tar key or Parquet id
becomes `id~1`, `id~2`, ... in plan order (`on_duplicate_id="suffix"`, the default), or the plan
is refused (`"error"`). A sidecar without its image (`x.mask.png`, `x.json`) is an input of its
own whose row says so, so every file of a folder is accounted for.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import MISSING, dataclass, field

import fsspec
import pyarrow.parquet as pq

from pipeline.settings import setting

INPUT_FORMATS = ("auto", "folder", "tar", "parquet")
DUPLICATE_ID_POLICIES = ("suffix", "error")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MASK_SUFFIX = ".mask.png"


@dataclass(kw_only=True)
class InputSettings:
    """How an input URI becomes shards of records."""

    input: str = setting(MISSING, "Dataset URI: a folder of images (recursive), a folder or file of webdataset "
                                  ".tar shards, or .parquet files; local or any fsspec URI.")
    input_format: str = setting("auto", "Input layout; auto looks at the files.", choices=INPUT_FORMATS)
    shard_size: int = setting(1000, "Images per shard for folder inputs.")
    image_column: str = setting("image", "Parquet column holding image bytes.")
    id_column: str | None = setting(None, "Parquet column holding image ids (default: <file>/<row>).")
    on_duplicate_id: str = setting("suffix", "An id seen again (Parquet id column, repeated tar key): suffix keeps "
                                             "it as 'id~1', 'id~2', ... in plan order; error refuses the input "
                                             "before any work.", choices=DUPLICATE_ID_POLICIES)

    def check(self) -> None:
        if self.shard_size < 1:
            raise ValueError("--shard-size must be at least 1")


@dataclass
class InputRecord:
    """One input before decoding; `error` set when its bytes could not even be read."""

    image_id: str
    source_uri: str
    data: bytes | None = None
    mask: bytes | None = None
    meta: dict | None = None
    error: str | None = None


@dataclass
class ShardSpec:
    shard_id: str
    layout: str  # folder | tar | parquet
    uri: str  # the tar or parquet file; the folder root for folder shards
    members: list[str] = field(default_factory=list)  # folder shards: file paths under the root
    options: dict = field(default_factory=dict)  # parquet: image_column, id_column, renamed_ids {row: new id}


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(uri)


def _full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return fs.unstrip_protocol(path)


def _is_hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def detect_layout(uri: str) -> str:
    fs, root = _fs(uri)
    if root.endswith(".tar"):
        return "tar"
    if root.endswith(".parquet"):
        return "parquet"
    if not fs.isdir(root):
        raise FileNotFoundError(f"--input {uri}: no such file or directory")
    files = [p for p in fs.find(root) if not _is_hidden(posixpath.relpath(p, root))]
    if files and all(p.endswith(".tar") for p in files):
        return "tar"
    if files and all(p.endswith(".parquet") for p in files):
        return "parquet"
    return "folder"


def plan_input(settings: InputSettings) -> list[ShardSpec]:
    """The shards of `settings.input`; a ValueError naming --input when it does not exist or holds nothing."""
    return plan_dataset(settings.input, setting="--input", layout=settings.input_format,
                        shard_size=settings.shard_size, image_column=settings.image_column,
                        id_column=settings.id_column, on_duplicate_id=settings.on_duplicate_id)


def plan_dataset(uri: str, *, setting: str, **options) -> list[ShardSpec]:
    """plan_shards(uri, **options), refusing with a ValueError naming `setting` (--input, --data, ...) a
    dataset that does not exist or holds nothing."""
    try:
        shards = plan_shards(uri, **options)
    except FileNotFoundError:
        raise ValueError(f"{setting} {uri}: no such file or directory; point {setting} at a folder of images, "
                         ".tar shards or .parquet files (local or any fsspec URI)") from None
    if not shards or all(s.layout == "folder" and not s.members for s in shards):
        raise ValueError(f"{setting} {uri} holds no inputs (no files, .tar shards or .parquet files)")
    return shards


def plan_shards(uri: str, *, layout: str = "auto", shard_size: int = 1000, image_column: str = "image",
                id_column: str | None = None, on_duplicate_id: str = "suffix") -> list[ShardSpec]:
    """The shards of an input dataset, in a deterministic order."""
    if layout not in INPUT_FORMATS:
        raise ValueError(f"--input-format must be one of {INPUT_FORMATS}, got {layout!r}")
    layout = detect_layout(uri) if layout == "auto" else layout
    fs, root = _fs(uri)
    if layout in ("tar", "parquet"):
        suffix = f".{layout}"
        files = [root] if root.endswith(suffix) else sorted(p for p in fs.find(root) if p.endswith(suffix)
                                                            and not _is_hidden(posixpath.relpath(p, root)))
        base = posixpath.dirname(root) if root.endswith(suffix) else root
        relative = [posixpath.relpath(p, base) for p in files]
        shards = [ShardSpec(shard_id, layout, _full_uri(fs, p),
                            options={"image_column": image_column, "id_column": id_column})
                  for shard_id, p in zip(_unique_shard_ids(relative, suffix), files)]
        if layout == "parquet" and id_column:
            _rename_duplicate_ids(shards, id_column, on_duplicate_id)
        return shards
    files = sorted(posixpath.relpath(p, root) for p in fs.find(root))
    files = [f for f in files if not _is_hidden(f)]
    image_stems = {_stem(f) for f in files if _sidecar_stem(f) is None}
    inputs = [f for f in files if not _is_sidecar(f, image_stems)]
    return [ShardSpec(f"folder-{i // shard_size:05d}", "folder", _full_uri(fs, root), inputs[i : i + shard_size])
            for i in range(0, len(inputs), shard_size)]


def _unique_shard_ids(relative: list[str], suffix: str) -> list[str]:
    """'sub/a.tar' -> 'sub_a'; where two paths flatten to one id, each gets 8 hex of its path's hash."""
    flat = [r.removesuffix(suffix).replace("/", "_") for r in relative]
    counts = Counter(flat)
    return [f"{f}-{hashlib.sha256(r.encode()).hexdigest()[:8]}" if counts[f] > 1 else f
            for f, r in zip(flat, relative)]


def _rename_duplicate_ids(shards: list[ShardSpec], id_column: str, policy: str) -> None:
    """Find ids that repeat across the plan; the n-th repeat becomes 'id~n' (recorded per shard)."""
    seen: Counter[str] = Counter()
    repeated: Counter[str] = Counter()
    for spec in shards:
        fs, path = _fs(spec.uri)
        try:
            with fs.open(path, "rb") as f:
                ids = pq.read_table(f, columns=[id_column]).column(id_column).to_pylist()
        except (OSError, ValueError, KeyError):  # unreadable or without the column: its reader says so
            continue
        renamed = {}
        for row, value in enumerate(ids):
            if value is None:
                continue
            value = str(value)
            if seen[value]:
                repeated[value] += 1
                renamed[str(row)] = f"{value}~{seen[value]}"
            seen[value] += 1
        if renamed:
            spec.options["renamed_ids"] = renamed
    if repeated and policy == "error":
        sample = ", ".join(sorted(repeated)[:5])
        raise ValueError(f"--id-column {id_column}: {len(repeated)} ids appear more than once ({sample}); "
                         "rerun with --on-duplicate-id suffix to keep every row (repeats become 'id~1', 'id~2', ...)")


def _sidecar_stem(relative: str) -> str | None:
    """The image stem a sidecar file belongs to ('x' for 'x.mask.png' and 'x.json'), else None."""
    for suffix in (MASK_SUFFIX, ".json"):
        if relative.endswith(suffix):
            return relative[: -len(suffix)]
    return None


def _stem(relative: str) -> str:
    return relative.rsplit(".", 1)[0] if "." in posixpath.basename(relative) else relative


def _is_sidecar(relative: str, image_stems: set[str]) -> bool:
    """A sidecar with its image beside it; an orphan sidecar is planned as an input (its row says so)."""
    stem = _sidecar_stem(relative)
    return stem is not None and stem in image_stems


def read_shard(spec: ShardSpec) -> Iterator[InputRecord]:
    """The input records of one shard, in a deterministic order."""
    if spec.layout == "folder":
        yield from _read_folder(spec)
    elif spec.layout == "tar":
        yield from _read_tar(spec)
    elif spec.layout == "parquet":
        yield from _read_parquet(spec)
    else:
        raise ValueError(f"unknown shard layout {spec.layout!r}")


def _read_folder(spec: ShardSpec) -> Iterator[InputRecord]:
    fs, root = _fs(spec.uri)

    def read(relative: str) -> bytes | None:
        path = posixpath.join(root, relative)
        return fs.cat_file(path) if fs.exists(path) else None

    for relative in spec.members:
        stem = _stem(relative)
        source = _full_uri(fs, posixpath.join(root, relative))
        orphan = _sidecar_stem(relative)
        if orphan is not None:
            yield InputRecord(relative, source, error=f"orphan sidecar: no image {posixpath.basename(orphan)}.* "
                                                      f"beside {posixpath.basename(relative)}")
            continue
        try:
            data = read(relative)
            if data is None:
                yield InputRecord(relative, source, error="missing: the file disappeared after planning")
                continue
            record = InputRecord(relative, source, data, mask=read(stem + MASK_SUFFIX), meta=_parse_json(read(stem + ".json")))
        except Exception as exc:  # one unreadable file is that file's row, whatever the storage raised
            record = InputRecord(relative, source, error=f"unreadable: {type(exc).__name__}: {exc}")
        yield record


def _parse_json(data: bytes | None) -> dict | None:
    if not data:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return {"_unparsable_json": True}
    return value if isinstance(value, dict) else {"value": value}


def _read_tar(spec: ShardSpec) -> Iterator[InputRecord]:
    fs, path = _fs(spec.uri)
    samples: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    failure = None
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                directory, name = posixpath.split(member.name)
                if name.startswith("."):
                    continue
                key, _, suffix = name.partition(".")
                key, ext = posixpath.join(directory, key), suffix.lower()
                repeat, unique = 0, key
                while unique in samples and ext in samples[unique]:  # a repeated member: sample key~n
                    repeat += 1
                    unique = f"{key}~{repeat}"
                if unique not in samples:
                    samples[unique] = {}
                    order.append(unique)
                samples[unique][ext] = archive.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        failure = f"unreadable tar: {exc}"
    for key in order:
        parts = samples[key]
        source = f"{spec.uri}#{key}"
        image_suffix = next((s for s in ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif") if s in parts),
                            None)
        image_id = f"{spec.shard_id}/{key}"
        if image_suffix is None:
            yield InputRecord(image_id, source, error=f"no image: the sample has only {sorted(parts)}")
            continue
        yield InputRecord(image_id, source, parts[image_suffix], mask=parts.get("mask.png"),
                          meta=_parse_json(parts.get("json")))
    if failure is not None:  # what could not be enumerated gets one row, so nothing vanishes silently
        yield InputRecord(f"{spec.shard_id}/<rest of shard>", spec.uri, error=failure)


def _read_parquet(spec: ShardSpec) -> Iterator[InputRecord]:
    image_column, id_column = spec.options.get("image_column", "image"), spec.options.get("id_column")
    fs, path = _fs(spec.uri)
    try:
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
    except (OSError, ValueError) as exc:
        yield InputRecord(f"{spec.shard_id}/<whole file>", spec.uri, error=f"unreadable parquet: {exc}")
        return
    if image_column not in table.column_names:
        raise ValueError(f"--image-column {image_column!r} is not a column of {spec.uri} "
                         f"(columns: {table.column_names})")
    if id_column is not None and id_column not in table.column_names:
        raise ValueError(f"--id-column {id_column!r} is not a column of {spec.uri}")
    images = table.column(image_column).to_pylist()
    ids = table.column(id_column).to_pylist() if id_column else [None] * len(images)
    renamed = spec.options.get("renamed_ids") or {}
    for row, (value, image_id) in enumerate(zip(images, ids)):
        image_id = f"{spec.shard_id}/{row}" if image_id is None else renamed.get(str(row), str(image_id))
        source = f"{spec.uri}#row={row}"
        if isinstance(value, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
            value = value.get("bytes")
        if value is None:
            yield InputRecord(image_id, source, error="empty: the image cell is null")
        elif not isinstance(value, (bytes, bytearray)):
            yield InputRecord(image_id, source, error=f"not an image: the cell holds {type(value).__name__}")
        else:
            yield InputRecord(image_id, source, bytes(value))

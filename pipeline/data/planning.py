"""Listing an input dataset and planning it into shards (the unit of work and of resume), once.

Layouts:
- folder   every non-hidden file under the URI (recursively) is one input, except sidecars:
           `name.mask.png` (mask of known pixels for `name.*`) and `name.json` (metadata);
           sorted paths are cut into shards of `shard_size` files.
- tar      webdataset layout: each `.tar` is a shard; members sharing a key (the name up to its
           first dot) form one input: `key.jpg|jpeg|png|webp`, optional `key.json`, `key.mask.png`.
- parquet  each `.parquet` file is a shard; one input per row: an image-bytes column (raw bytes, or a
           struct with a `bytes` field as Hugging Face datasets write) and an optional id column.

A listing (`list_input`) records each file's size, version (mtime or ETag) and kind; only regular
files are read, anything else (a FIFO, a socket, a device) is planned as an input whose row says
what it is. A plan is made from a listing once, when a store is created, and saved with it
(`InputPlan.to_table`, a compact Parquet table); a rerun lists the input again and compares
(`compare_listing`): new inputs become new shards, changed and vanished ones are named.

Ids: shard ids are file-name safe and unique by construction, under case folding too
(pipeline/data/names.py). Input ids are unique within a plan: a repeated Parquet id, or a null id
whose default '<shard>/<row>' is another row's id, becomes 'id~1', 'id~2', ... (the first suffix no
other id has), or the plan is refused (`on_duplicate_id="error"`). Names that are not UTF-8 are
escaped reversibly (names.escape_name). A sidecar without its image (`x.mask.png`, `x.json`) is an
input of its own whose row says so, so every file of a folder is accounted for.
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import MISSING, dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.names import default_id, escape_name, flat_shard_name, id_text, unique_names, unique_shard_ids
from pipeline.data.sources import (SIDECAR_SUFFIXES, ShardSpec, is_sidecar_name, kind_of_mode, sidecar_stem,
                                   stem)
from pipeline.settings import setting
from pipeline.store.plan_schema import PLAN

INPUT_FORMATS = ("auto", "folder", "tar", "parquet")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
STATS_SUFFIX = "_stats.json"  # img2dataset's per-shard statistics, beside each shard
DEFAULT_IMAGE_COLUMN = "image"
IMAGE_COLUMN_GUESSES = ("image", "jpg", "jpeg", "png", "webp", "img", "image_bytes", "bytes")
DUPLICATE_ID_POLICIES = ("suffix", "error")
CHANGED_INPUT_POLICIES = ("refuse", "redo", "keep")
MAX_AUTO_SHARD = 1000  # rows per shard beyond which a shard's retry or resume costs too much
SHARDS_PER_ACTOR = 4  # --shard-size auto: enough shards that no actor waits on the last one for long
PLAN_VERSION = 2  # 2: a tar or Parquet shard's path is relative to the input root (1: its base name only)


@dataclass(kw_only=True)
class InputSettings:
    """How an input URI becomes shards of records."""

    input: str = setting(MISSING, "Dataset URI: a folder of images (recursive), a folder or file of webdataset "
                                  ".tar shards, or .parquet files; local or any fsspec URI.")
    input_format: str = setting("auto", "Input layout; auto looks at the files.", choices=INPUT_FORMATS)
    shard_size: int | str = setting("auto", "Images per shard for folder inputs; auto: sized from the work, so every "
                                            "actor gets several shards (inputs / (4 x actors), at most 1000), chosen "
                                            "once and kept in the store's plan.", minimum=1, metavar="N|auto")
    image_column: str = setting(DEFAULT_IMAGE_COLUMN, "Parquet column holding image bytes (by default, where no "
                                                      "column is so named: the first column of image bytes).")
    id_column: str | None = setting(None, "Parquet column holding image ids (default: <file>/<row>).")
    on_duplicate_id: str = setting("suffix", "An id seen again (Parquet id column, repeated tar key): suffix keeps "
                                             "it as 'id~1', 'id~2', ... (the first suffix no other id has); error "
                                             "refuses a repeated Parquet id before any work and makes a repeated "
                                             "tar key an error row.", choices=DUPLICATE_ID_POLICIES)


@dataclass
class Listing:
    """The files of an input URI: relative paths (as os gives them) with size, version and kind."""

    uri: str
    layout: str
    base: str  # URI of the folder the paths are relative to
    paths: list[str] = field(default_factory=list)
    sizes: list[int | None] = field(default_factory=list)
    versions: list[str | None] = field(default_factory=list)  # mtime (local) or ETag: what changes with content
    kinds: list[str] = field(default_factory=list)  # 'file', or what else it is: 'fifo', 'socket', 'device', ...
    notes: list[str] = field(default_factory=list)  # what the listing left out, and why

    def entries(self) -> dict[str, tuple[int | None, str | None, str]]:
        """escaped relative path -> (size, version, kind)."""
        return {escape_name(p): (s, v, k) for p, s, v, k in zip(self.paths, self.sizes, self.versions, self.kinds)}


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(uri)


def _is_hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def _version(info: dict[str, Any]) -> str | None:
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "updated"):
        if info.get(key) is not None:
            return str(info[key])
    return None


def _walk_local(root: str, skip: frozenset[str] = frozenset(),
                notes: list[str] | None = None) -> Iterable[tuple[str, int | None, str | None, str]]:
    """(relative path, size, mtime, kind) of every non-hidden entry under a local root, streamed.
    Directory symlinks are followed once: a directory already visited (by device and inode) is not
    entered again, so a link loop neither repeats inputs nor runs forever. Folders in `skip` (absolute
    paths, such as a store written inside its own input) are left out."""
    stack = [""]
    visited: set[tuple[int, int]] = set()
    try:
        top = os.stat(root)
        visited.add((top.st_dev, top.st_ino))
    except OSError:
        pass
    while stack:
        relative_dir = stack.pop()
        try:
            entries = sorted(os.scandir(os.path.join(root, relative_dir)), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            relative = posixpath.join(relative_dir, entry.name) if relative_dir else entry.name
            try:
                info = entry.stat()  # follows symlinks: a link to a FIFO is a FIFO
            except OSError:
                yield relative, None, None, "broken link"
                continue
            if stat.S_ISDIR(info.st_mode):
                if os.path.realpath(entry.path) in skip:
                    if notes is not None:
                        notes.append(f"{relative}/ left out: it is the output store, inside the input folder")
                    continue
                if (info.st_dev, info.st_ino) in visited:
                    if notes is not None:
                        notes.append(f"{relative}/ left out: a link to a folder already listed (a symlink loop "
                                     "or a second path to it)")
                    continue
                visited.add((info.st_dev, info.st_ino))
                stack.append(relative)
                continue
            yield relative, info.st_size, str(info.st_mtime_ns), kind_of_mode(info.st_mode)


def _walk(fs: fsspec.AbstractFileSystem, root: str, skip: frozenset[str],
          notes: list[str]) -> Iterable[tuple[str, int | None, str | None, str]]:
    if fs.protocol in ("file", "local") or "file" in (fs.protocol if isinstance(fs.protocol, tuple) else ()):
        yield from _walk_local(root, frozenset(os.path.realpath(p) for p in skip), notes)
        return
    skipped = [posixpath.relpath(fs._strip_protocol(p), root) for p in skip]
    skipped = [p for p in skipped if not p.startswith("..")]
    for path, info in sorted(fs.find(root, detail=True).items()):
        relative = posixpath.relpath(path, root)
        if _is_hidden(relative):
            continue
        if any(relative == p or relative.startswith(p + "/") for p in skipped):
            continue
        kind = "file" if info.get("type") == "file" else kind_of_mode(info.get("mode")) if info.get("mode") else "other"
        yield relative, info.get("size"), _version(info), kind


def list_input(uri: str, layout: str = "auto", *, skip: Iterable[str] = ()) -> Listing:
    """Every file of the dataset at `uri` (FileNotFoundError if there is none). `skip`: folder URIs
    left out (a store written inside its own input), said in `Listing.notes`."""
    if layout not in INPUT_FORMATS:
        raise ValueError(f"--input-format must be one of {INPUT_FORMATS}, got {layout!r}")
    fs, root = _fs(uri)
    root = root.rstrip("/") or root
    if container_kind(root) is not None and not fs.isdir(root):
        if not fs.exists(root):
            raise FileNotFoundError(uri)
        info = fs.info(root)
        base = posixpath.dirname(root)
        kind = "file" if info.get("type") == "file" else kind_of_mode(info.get("mode"))
        return Listing(uri, layout, fs.unstrip_protocol(base), [posixpath.basename(root)], [info.get("size")],
                       [_version(info)], [kind])
    if not fs.isdir(root):
        if fs.exists(root):
            raise NotADirectoryError(uri)
        raise FileNotFoundError(uri)
    listing = Listing(uri, layout, fs.unstrip_protocol(root))
    for relative, size, version, kind in _walk(fs, root, frozenset(skip), listing.notes):
        listing.paths.append(relative)
        listing.sizes.append(size)
        listing.versions.append(version)
        listing.kinds.append(kind)
    order = sorted(range(len(listing.paths)), key=lambda i: listing.paths[i])
    for name in ("paths", "sizes", "versions", "kinds"):
        values = getattr(listing, name)
        setattr(listing, name, [values[i] for i in order])
    return listing


def detect_layout(uri: str) -> str:
    """What `--input-format auto` makes of `uri`: folder, tar, parquet, or mixed."""
    return plan_listing(list_input(uri)).layout


def container_kind(path: str) -> str | None:
    """'tar' for a tar file (compressed or not), 'parquet' for a Parquet file, None for anything else."""
    lower = path.lower()
    if lower.endswith(TAR_SUFFIXES):
        return "tar"
    if lower.endswith(".parquet"):
        return "parquet"
    return None


def container_stem(path: str) -> str:
    """A container's path without its suffix ('sub/00000.tar.gz' -> 'sub/00000')."""
    lower = path.lower()
    for suffix in (*TAR_SUFFIXES, ".parquet"):
        if lower.endswith(suffix):
            return path[: -len(suffix)]
    return path


@dataclass
class ParquetColumns:
    """What a Parquet file's footer says of it as an input: its image and id columns (given, or found:
    the first binary column or Hugging Face Image struct; img2dataset's `key`), rows, and whether it is
    a per-sample metadata table (img2dataset's, beside its shards: `key` and `status`, no image)."""

    image_column: str | None = None
    id_column: str | None = None
    rows: int | None = None
    columns: list[str] = field(default_factory=list)
    img2dataset: bool = False
    huggingface: bool = False
    problem: str | None = None


def _holds_bytes(kind: pa.DataType) -> bool:
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return True
    return pa.types.is_struct(kind) and any(kind.field(i).name == "bytes" for i in range(kind.num_fields))


def inspect_parquet(uri: str, image_column: str = DEFAULT_IMAGE_COLUMN, id_column: str | None = None) -> ParquetColumns:
    """The footer of the Parquet file at `uri`, read once: which columns hold images and ids."""
    fs, path = _fs(uri)
    try:
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            schema, rows = parquet.schema_arrow, parquet.metadata.num_rows
            hf = b"huggingface" in (schema.metadata or {})
    except Exception as exc:  # its reader makes the error row
        return ParquetColumns(problem=f"unreadable parquet: {type(exc).__name__}: {exc}")
    names = schema.names
    found = ParquetColumns(rows=rows, columns=names, img2dataset={"key", "status"} <= set(names), huggingface=hf)
    if image_column in names:
        found.image_column = image_column
    elif image_column == DEFAULT_IMAGE_COLUMN:  # the default: look for the images
        candidates = [n for n in (*IMAGE_COLUMN_GUESSES, *names) if n in names and _holds_bytes(schema.field(n).type)]
        found.image_column = candidates[0] if candidates else None
    if id_column is not None:
        found.id_column = id_column
    elif found.img2dataset and found.image_column is not None:
        found.id_column = "key"
    if found.image_column is None:
        found.problem = (f"no image column: {image_column!r} is not a column and none holds image bytes "
                         f"(columns: {names}); pass --image-column")
    elif id_column is not None and id_column not in names:
        found.problem = f"no id column: --id-column {id_column!r} is not a column (columns: {names})"
    return found


@dataclass
class InputPlan:
    """The shards of an input, as saved with a store (plan.parquet) and followed by every run."""

    input: str
    layout: str  # folder, tar, parquet, or mixed (shards of several layouts)
    base: str
    shards: list[ShardSpec]
    files: dict[str, tuple[int | None, str | None, str]] = field(default_factory=dict)  # escaped path -> listing
    metadata: dict[str, str] = field(default_factory=dict)  # escaped path of a metadata file -> the shard it serves
    found: str = ""  # what planning found, in a line ("img2dataset webdataset output: 3 shards, 25 samples")
    version: int = PLAN_VERSION
    shard_size: int | None = None  # folder inputs per shard, as chosen when planned (--shard-size auto included)

    def shard_ids(self) -> list[str]:
        return [s.shard_id for s in self.shards]

    def add_sidecar(self, path: str, image: str, listed: tuple[int | None, str | None, str]) -> None:
        """A mask or JSON that appeared beside a planned image: read with it from now on."""
        self.files[path] = listed
        for spec in self.shards:
            if spec.layout == "folder" and image in spec.members:
                suffixes = spec.options.setdefault("sidecars", {}).setdefault(image, [])
                suffixes.append(path[len(stem(image)):])
                return

    def shards_holding(self, paths: set[str]) -> set[str]:
        """The shards that hold any of `paths` (escaped; a sidecar belongs to its image's shard, a metadata
        file to the shards it serves)."""
        found = {self.metadata[p] for p in paths if p in self.metadata and self.metadata[p]}
        for spec in self.shards:
            if spec.layout != "folder":
                if spec.file in paths:
                    found.add(spec.shard_id)
                continue
            sidecars = spec.options.get("sidecars", {})
            if any(m in paths or any(stem(m) + s in paths for s in sidecars.get(m, ())) for m in spec.members):
                found.add(spec.shard_id)
        return found

    def to_table(self, settings: dict[str, Any] | None = None) -> pa.Table:
        """One row per planned file (inputs, their sidecars, metadata files): its shard, its escaped path
        relative to the input root and what the listing said of it."""
        columns: dict[str, list] = {name: [] for name in PLAN.names()}

        def add(shard_id: str, path: str, role: str, options: dict | None) -> None:
            size, version, kind = self.files.get(path, (None, None, "file"))
            for name, value in (("shard_id", shard_id), ("path", path), ("role", role), ("size", size),
                                ("version", version), ("kind", kind), ("schema_version", PLAN.version),
                                ("options", json.dumps(options, sort_keys=True) if options else None)):
                columns[name].append(value)

        served: dict[str, list[str]] = {}
        for path, shard in self.metadata.items():
            served.setdefault(shard, []).append(path)
        for spec in self.shards:
            options = {k: v for k, v in spec.options.items() if k not in ("sidecars", "kind", "metadata")}
            if spec.layout != self.layout:
                options["layout"] = spec.layout
            if spec.layout != "folder":
                add(spec.shard_id, spec.file, "input", options)
            else:
                sidecars = spec.options.get("sidecars", {})
                for i, member in enumerate(spec.members):
                    add(spec.shard_id, member, "input", options if i == 0 else None)
                    for suffix in sidecars.get(member, []):
                        add(spec.shard_id, stem(member) + suffix, "sidecar", None)
            for path in served.pop(spec.shard_id, []):
                add(spec.shard_id, path, "metadata", None)
        for shard, paths in served.items():  # metadata serving no planned shard (img2dataset stats of an empty shard)
            for path in paths:
                add(shard, path, "metadata", None)
        meta = {"input": self.input, "layout": self.layout, "base": self.base, "plan_version": self.version,
                "settings": settings or {}, "found": self.found, "shard_size": self.shard_size}
        return pa.table(columns, schema=PLAN.schema(meta))

    @classmethod
    def from_table(cls, table: pa.Table) -> InputPlan:
        meta = PLAN.metadata(table.schema)
        layout, base = meta["layout"], meta["base"]
        shards: list[ShardSpec] = []
        files: dict[str, tuple[int | None, str | None, str]] = {}
        metadata: dict[str, str] = {}
        current: ShardSpec | None = None
        names = ("shard_id", "path", "role", "size", "version", "kind", "options")
        for shard_id, path, role, size, version, kind, options in zip(*(table.column(n).to_pylist() for n in names)):
            files[path] = (size, version, kind)
            if role == "metadata":
                metadata[path] = shard_id
                if current is not None and current.shard_id == shard_id and path.endswith(".parquet"):
                    current.options["metadata"] = _join_uri(base, path)
                continue
            if current is None or current.shard_id != shard_id:
                opts = json.loads(options) if options else {}
                shard_layout = opts.pop("layout", layout)
                if shard_layout == "folder":
                    current = ShardSpec(shard_id, "folder", base, options={**opts, "sidecars": {}})
                else:
                    current = ShardSpec(shard_id, shard_layout, _join_uri(base, path), options=opts, path=path)
                shards.append(current)
            if role == "sidecar":
                owner = current.members[-1]
                current.options["sidecars"].setdefault(owner, []).append(path[len(stem(owner)):])
            elif current.layout == "folder":
                current.members.append(path)
            elif kind != "file":
                current.options["kind"] = kind
        chosen = meta.get("shard_size") or meta.get("settings", {}).get("shard_size")
        return cls(meta["input"], layout, base, shards, files, metadata, meta.get("found", ""),
                   int(meta.get("plan_version", 1)), chosen if isinstance(chosen, int) else None)

    @classmethod
    def from_legacy_json(cls, saved: dict[str, Any]) -> InputPlan:
        """A plan.json of stores made before plans were Parquet tables (no sizes or versions recorded:
        sidecars are looked for when read)."""
        shards = [ShardSpec(s["shard_id"], s["layout"], s["uri"], [escape_name(m) for m in s.get("members", [])],
                            dict(s.get("options") or {})) for s in saved["shards"]]
        layout = shards[0].layout if shards else "folder"
        base = (shards[0].uri if layout == "folder" else posixpath.dirname(shards[0].uri)) if shards else ""
        root = saved.get("input", "").rstrip("/")
        for spec in shards:  # these plans kept each shard's full URI: its path follows
            if spec.layout != "folder" and root and spec.uri.startswith(root + "/"):
                base, spec.path = root, spec.uri[len(root) + 1:]
        return cls(saved.get("input", ""), layout, base, shards)

    def nested_paths_unknown(self) -> list[str]:
        """Shards of a version-1 plan whose file may be nested (the plan kept only its base name): their
        ids do not follow from that name. Empty for current plans."""
        if self.version >= 2:
            return []
        basenames = [s.file for s in self.shards if s.layout != "folder"]
        repeated = {n for n in basenames if basenames.count(n) > 1}
        return [s.shard_id for s in self.shards if s.layout != "folder" and (
            s.file in repeated or not (s.shard_id == flat_shard_name(container_stem(s.file), "")
                                       or s.shard_id.startswith(flat_shard_name(container_stem(s.file), "") + "-")))]

    def migrate_paths(self, listing: Listing) -> list[str]:
        """A version-1 plan's tar and Parquet shards given their paths relative to the input root, found in a
        fresh listing as planning named them then; returns the shards whose file cannot be told (refused)."""
        if self.version >= 2:
            return []
        listed = listing.entries()
        containers = [p for p in listed if container_kind(p) is not None]
        by_id = {}
        for kind in ("tar", "parquet"):
            paths = [p for p in containers if container_kind(p) == kind]
            by_id.update(zip(unique_shard_ids(paths, f".{kind}"), paths))
        unknown = []
        for spec in self.shards:
            if spec.layout == "folder":
                continue
            path = by_id.get(spec.shard_id)
            if path is None or posixpath.basename(path) != spec.file:
                unknown.append(spec.shard_id)
                continue
            if path != spec.file:
                self.files[path] = self.files.pop(spec.file, listed.get(path, (None, None, "file")))
            spec.path, spec.uri = path, _join_uri(self.base, path)
        if not unknown:
            self.version = PLAN_VERSION
        return unknown


def _join_uri(base: str, relative: str) -> str:
    return f"{base.rstrip('/')}/{relative}"


def plan_input(settings: InputSettings, *, listing: Listing | None = None, actors: int = 1) -> InputPlan:
    """The plan of `settings.input`; a ValueError naming --input when it does not exist or holds nothing."""
    return plan_dataset(settings.input, setting="--input", listing=listing, layout=settings.input_format,
                        shard_size=settings.shard_size, image_column=settings.image_column,
                        id_column=settings.id_column, on_duplicate_id=settings.on_duplicate_id, actors=actors)


def list_dataset(uri: str, *, setting: str, layout: str = "auto", skip: Iterable[str] = ()) -> Listing:
    """list_input(uri), refusing with a ValueError naming `setting` (--input, --data, ...) a dataset that
    does not exist or holds nothing."""
    try:
        listing = list_input(uri, layout, skip=skip)
    except NotADirectoryError:
        raise ValueError(f"{setting} {uri} is a single file, not a dataset: put it in a folder and point {setting} "
                         "at the folder (or give a .tar or .parquet shard)") from None
    except FileNotFoundError:
        raise ValueError(f"{setting} {uri} does not exist: point {setting} at a folder of images, .tar shards or "
                         ".parquet files (local or any fsspec URI)") from None
    if not listing.paths:
        raise ValueError(f"{setting} {uri} holds no inputs (no files, .tar shards or .parquet files)")
    return listing


def plan_dataset(uri: str, *, setting: str, listing: Listing | None = None, layout: str = "auto",
                 **options: Any) -> InputPlan:
    """plan_listing of the dataset at `uri`, refusing with a ValueError naming `setting` one that does not
    exist or holds nothing."""
    listing = listing or list_dataset(uri, setting=setting, layout=layout)
    return plan_listing(listing, **options)


def plan_shards(uri: str, *, layout: str = "auto", **options: Any) -> list[ShardSpec]:
    """The shards of an input dataset, in a deterministic order."""
    return plan_listing(list_input(uri, layout), **options).shards


@dataclass
class _Classified:
    """What each new file of a listing is: a shard of its own, a folder input, or metadata."""

    containers: list[str] = field(default_factory=list)  # tar and Parquet shards (escaped paths)
    parquet: dict[str, ParquetColumns] = field(default_factory=dict)
    folder: list[str] = field(default_factory=list)  # folder inputs and their sidecars
    metadata: dict[str, str | None] = field(default_factory=dict)  # metadata file -> container stem it serves
    skipped: list[str] = field(default_factory=list)  # files an explicit --input-format leaves out


def _classify(listing: Listing, files: dict[str, tuple[int | None, str | None, str]], new: list[str],
              image_column: str, id_column: str | None) -> _Classified:
    """Each file decided on its own (not by what else the folder holds): tars and Parquet files with an
    image column are shards; img2dataset's metadata Parquet and `_stats.json` beside a shard (or beside
    a folder of its `files` output) are metadata; everything else is a folder input."""
    found = _Classified()
    stems = {container_stem(p) for p in files if container_kind(p) == "tar"}
    container_stems = {container_stem(p) for p in files if container_kind(p) is not None}
    folders = {posixpath.dirname(p) for p in files if container_kind(p) is None}
    for path in new:
        kind = container_kind(path)
        if kind == "parquet" and files[path][2] == "file":
            columns = inspect_parquet(_join_uri(listing.base, path), image_column, id_column)
            beside = container_stem(path) in stems or container_stem(path) in folders
            if columns.image_column is None and "key" in columns.columns and beside:
                found.metadata[path] = container_stem(path)
                continue
            found.parquet[path] = columns
        if path.endswith(STATS_SUFFIX) and kind is None:
            owner = path[: -len(STATS_SUFFIX)]
            if owner in container_stems or owner in folders:
                found.metadata[path] = None
                continue
        if kind is not None:
            wanted = listing.layout in ("auto", kind)
            (found.containers if wanted else found.skipped).append(path)
        elif listing.layout in ("auto", "folder"):
            found.folder.append(path)
        else:
            found.skipped.append(path)
    if listing.layout == "folder":  # every file is a folder input, as asked
        found.folder = sorted([*found.folder, *found.containers, *found.metadata])
        found.containers, found.parquet, found.metadata = [], {}, {}
    return found


def auto_shard_size(inputs: int, actors: int) -> int:
    """Folder inputs per shard for `--shard-size auto`: SHARDS_PER_ACTOR shards for each actor, at most
    MAX_AUTO_SHARD inputs each (so large inputs get many shards, and small ones keep every actor busy)."""
    return max(1, min(MAX_AUTO_SHARD, -(-inputs // (SHARDS_PER_ACTOR * max(1, actors)))))


def plan_listing(listing: Listing, *, shard_size: int | str = "auto", image_column: str = DEFAULT_IMAGE_COLUMN,
                 id_column: str | None = None, on_duplicate_id: str = "suffix",
                 after: InputPlan | None = None, actors: int = 1) -> InputPlan:
    """The plan of a listing; with `after`, a plan of the inputs `after` does not hold, whose shard ids
    and input ids are unique against `after`'s too. `shard_size` "auto" sizes folder shards for
    `actors` actors (after an earlier plan: that plan's size)."""
    files = listing.entries()
    known = set(after.files) if after is not None else set()
    taken = after.shard_ids() if after is not None else []
    new = [p for p in files if p not in known]
    found = _classify(listing, files, new, image_column, id_column)

    image_stems = {stem(p) for p in files if sidecar_stem(p) is None}
    inputs = [p for p in found.folder if not is_sidecar_name(p, image_stems)]
    serving = {stem: path for path, stem in found.metadata.items() if stem is not None}
    auto = shard_size == "auto"
    if auto:
        shard_size = (after.shard_size if after is not None and after.shard_size else
                      auto_shard_size(len(inputs), actors))
    shard_size = int(shard_size)
    groups: dict[str | None, list[str]] = {}  # folder inputs by the metadata file that serves them
    for member in inputs:
        groups.setdefault(serving.get(posixpath.dirname(member)), []).append(member)
    chunks = [(meta, members[i: i + shard_size]) for meta, members in groups.items()
              for i in range(0, len(members), shard_size)]
    natural = [f"folder-{len(taken) + i:05d}" for i in range(len(chunks))]
    shards: list[ShardSpec] = []
    metadata: dict[str, str] = {}
    for shard_id, (meta, members) in zip(unique_names(natural, taken=taken), chunks):
        sidecars = {m: own for m in members if (own := [s for s in SIDECAR_SUFFIXES if stem(m) + s in files])}
        options: dict[str, Any] = {"sidecars": sidecars}
        if meta is not None:
            options["metadata"] = _join_uri(listing.base, meta)
            metadata[meta] = shard_id
        shards.append(ShardSpec(shard_id, "folder", listing.base, members, options=options))
    folder_tops = {m.split("/", 1)[0] for m in inputs}  # container ids never equal a folder input's top folder
    container_ids = unique_shard_ids([container_stem(p) for p in found.containers], "",
                                     taken=[*taken, *(s.shard_id for s in shards), *folder_tops])
    for shard_id, path in zip(container_ids, found.containers):
        kind = container_kind(path)
        options = {}
        if kind == "parquet":
            columns = found.parquet.get(path) or ParquetColumns(image_column=image_column, id_column=id_column)
            options = {"image_column": columns.image_column or image_column, "id_column": columns.id_column}
            if columns.problem:
                options["problem"] = columns.problem
        if files[path][2] != "file":
            options["kind"] = files[path][2]
        meta_path = serving.get(container_stem(path))
        if kind == "tar" and meta_path is not None:
            options["metadata"] = _join_uri(listing.base, meta_path)
            metadata[meta_path] = shard_id
        shards.append(ShardSpec(shard_id, kind, _join_uri(listing.base, path), options=options, path=path))
    shard_of_stem = {container_stem(s.file): s.shard_id for s in shards if s.layout != "folder"}
    for path, owner in found.metadata.items():
        metadata.setdefault(path, shard_of_stem.get(owner, ""))
    if any(s.layout == "parquet" and s.options.get("id_column") for s in shards):
        _rename_duplicate_ids(shards, after, inputs, on_duplicate_id)
    layouts = {s.layout for s in shards} or {"folder" if listing.layout == "auto" else listing.layout}
    planned = set(found.folder) | set(found.containers) | set(found.metadata)
    plan = InputPlan(listing.uri, layouts.pop() if len(layouts) == 1 else "mixed", listing.base, shards,
                     {p: files[p] for p in new if p in planned}, metadata)
    plan.shard_size = shard_size
    plan.found = describe_found(plan, found, inputs)
    if auto and inputs and after is None:
        plan.found += f" (--shard-size auto: {shard_size} per shard, for {actors} actor{'s' if actors != 1 else ''})"
    return plan


def describe_found(plan: InputPlan, found: _Classified, inputs: list[str]) -> str:
    """What planning found, in a line: the layout recognised and its numbers."""
    tars = [s for s in plan.shards if s.layout == "tar"]
    parquets = [s for s in plan.shards if s.layout == "parquet"]
    stats = [p for p in found.metadata if p.endswith(STATS_SUFFIX)]
    parts = []
    if stats:
        successes, attempted = _img2dataset_counts(plan.base, stats)
        what = "webdataset" if tars else "parquet" if parquets else "files"
        parts.append(f"img2dataset {what} output: {len(stats)} shards"
                     + (f", {successes:,} samples ({attempted:,} downloads attempted)" if successes is not None else "")
                     + (f", planned as {len(plan.shards)} shards" if len(plan.shards) != len(stats) else ""))
    else:
        if tars:
            parts.append(f"{len(tars)} tar shard{'s' if len(tars) != 1 else ''} (webdataset samples: members "
                         "sharing a key)")
        if parquets:
            rows = [found.parquet[s.file].rows for s in parquets if s.file in found.parquet]
            kinds = sorted({("Hugging Face " if found.parquet[s.file].huggingface else "") + "Parquet"
                            for s in parquets if s.file in found.parquet} or {"Parquet"})
            parts.append(f"{len(parquets)} {'/'.join(kinds)} file{'s' if len(parquets) != 1 else ''}"
                         + (f", {sum(r or 0 for r in rows):,} rows" if rows else ""))
        if inputs:
            folder_shards = sum(s.layout == "folder" for s in plan.shards)
            parts.append(f"{len(inputs):,} files in {folder_shards} folder shard{'s' if folder_shards != 1 else ''}")
    if found.skipped:
        parts.append(f"{len(found.skipped):,} files left out by --input-format ({', '.join(found.skipped[:3])})")
    return "; ".join(parts) or "nothing to plan"


def _img2dataset_counts(base: str, stats: list[str]) -> tuple[int | None, int | None]:
    successes = attempted = 0
    for path in stats:
        try:
            fs, local = _fs(_join_uri(base, path))
            with fs.open(local, "rb") as f:
                record = json.load(f)
            successes += int(record["successes"])
            attempted += int(record["count"])
        except Exception:  # statistics are a courtesy
            return None, None
    return successes, attempted


def _parquet_ids(spec: ShardSpec) -> list[str] | None:
    """The natural id of each row of a Parquet shard with an id column (its value, or the default for a
    null), before any rename; None where its reader will say why it cannot be read."""
    id_column = spec.options.get("id_column")
    if not id_column or spec.options.get("problem") or spec.options.get("kind"):
        return None
    fs, path = _fs(spec.uri)
    try:
        with fs.open(path, "rb") as f:
            values = pq.read_table(f, columns=[id_column]).column(id_column).to_pylist()
    except Exception:  # unreadable or without the column: its reader makes the row that says so
        return None
    return [default_id(spec.shard_id, row) if v is None else id_text(v) for row, v in enumerate(values)]


def _rename_duplicate_ids(shards: list[ShardSpec], after: InputPlan | None, folder_ids: list[str],
                          policy: str) -> None:
    """Parquet ids unique against everything the store holds: each id that repeats another row's, a
    folder input's, an id an earlier plan assigned (its suffixes included), or that lies under another
    shard's own ids ('<shard>/...': its default and failure rows) gets the first 'id~n' that no id has
    (recorded per shard as `renamed_ids`); or the plan is refused (`on_duplicate_id="error"`)."""
    taken: set[str] = set(folder_ids)
    if after is not None:
        for spec in after.shards:
            if spec.layout == "folder":
                taken.update(spec.members)
            elif spec.layout == "parquet":
                renamed = spec.options.get("renamed_ids") or {}
                taken.update(renamed.get(str(row), i) for row, i in enumerate(_parquet_ids(spec) or ()))
    every = [*shards, *(after.shards if after is not None else [])]
    tars = {s.shard_id for s in every if s.layout == "tar"}
    containers = {s.shard_id for s in every if s.layout != "folder"}
    rows: list[tuple[ShardSpec, int]] = []
    natural: list[str] = []
    for spec in shards:
        ids = _parquet_ids(spec) if spec.layout == "parquet" else None
        if ids is None:
            continue
        spec.options.pop("renamed_ids", None)
        for row, value in enumerate(ids):
            rows.append((spec, row))
            natural.append(value)
            shard, _, rest = value.partition("/")
            if value != default_id(spec.shard_id, row) and (shard in tars or (shard in containers and
                                                                            rest.startswith("<"))):
                taken.add(value)  # a tar member's id, or a failure row's: never kept as given
    unique = unique_names(natural, taken=taken)
    repeated = sorted({n for n, u in zip(natural, unique) if n != u})
    if repeated and policy == "error":
        sample = ", ".join(repeated[:5])
        raise ValueError(f"--id-column: {len(repeated)} ids appear more than once or are taken ({sample}); "
                         "rerun with --on-duplicate-id suffix to keep every row (repeats become 'id~1', 'id~2', ...)")
    for (spec, row), before, now in zip(rows, natural, unique):
        if before != now:
            spec.options.setdefault("renamed_ids", {})[str(row)] = now


@dataclass
class InputChanges:
    """What a fresh listing says of a saved plan."""

    new: list[str] = field(default_factory=list)  # escaped paths the plan does not hold
    new_sidecars: dict[str, str] = field(default_factory=dict)  # a new mask or JSON -> the planned image it is for
    missing: list[str] = field(default_factory=list)  # planned paths the listing no longer has
    changed: list[str] = field(default_factory=list)  # planned paths whose size or version differ

    def __bool__(self) -> bool:
        return bool(self.new or self.missing or self.changed)

    def describe(self) -> list[str]:
        def some(paths: list[str]) -> str:
            return ", ".join(paths[:5]) + (f" and {len(paths) - 5:,} more" if len(paths) > 5 else "")
        lines = []
        if self.new:
            lines.append(f"{len(self.new):,} new input files since the store was made ({some(self.new)})")
        if self.missing:
            lines.append(f"{len(self.missing):,} planned input files are gone ({some(self.missing)})")
        if self.changed:
            lines.append(f"{len(self.changed):,} input files changed since they were planned (size or modification "
                         f"time: {some(self.changed)})")
        return lines


def compare_listing(plan: InputPlan, listing: Listing) -> InputChanges:
    """New, missing and changed files of `listing` against the saved `plan`: a cheap comparison of paths,
    sizes, versions and kinds (no file is opened). A new sidecar of a planned image changes that image.
    A legacy plan without recorded files compares the paths of inputs only."""
    fresh = listing.entries()
    if listing.layout in ("tar", "parquet"):
        fresh = {p: v for p, v in fresh.items() if container_kind(p) == listing.layout or p in plan.files}
    planned = plan.files or {p: (None, None, "file") for spec in plan.shards
                             for p in (spec.members if spec.layout == "folder" else [spec.file])}
    changes = InputChanges()
    planned_stems = ({stem(p): p for p in planned if sidecar_stem(p) is None and container_kind(p) is None}
                     if plan.layout in ("folder", "mixed") else {})
    for path, (size, version, kind) in fresh.items():
        old = planned.get(path)
        if old is not None:
            if old[0] is not None and old != (size, version, kind):
                changes.changed.append(path)
        elif plan.files and (owner := planned_stems.get(sidecar_stem(path) or "")) is not None:
            changes.new_sidecars[path] = owner  # a new mask or JSON for an image already planned
            changes.changed.append(owner)
        elif plan.files or sidecar_stem(path) is None or sidecar_stem(path) not in planned_stems:
            changes.new.append(path)
    changes.missing = [p for p in planned if p not in fresh]
    return changes

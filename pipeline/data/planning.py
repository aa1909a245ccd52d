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

from pipeline.data.names import default_id, escape_name, id_text, unique_names, unique_shard_ids
from pipeline.data.sources import MASK_SUFFIX, ShardSpec, is_sidecar_name, kind_of_mode, sidecar_stem, stem
from pipeline.settings import setting
from pipeline.store.plan_schema import PLAN

INPUT_FORMATS = ("auto", "folder", "tar", "parquet")
DUPLICATE_ID_POLICIES = ("suffix", "error")
CHANGED_INPUT_POLICIES = ("refuse", "redo", "keep")
SIDECAR_SUFFIXES = (MASK_SUFFIX, ".json")
PLAN_VERSION = 1


@dataclass(kw_only=True)
class InputSettings:
    """How an input URI becomes shards of records."""

    input: str = setting(MISSING, "Dataset URI: a folder of images (recursive), a folder or file of webdataset "
                                  ".tar shards, or .parquet files; local or any fsspec URI.")
    input_format: str = setting("auto", "Input layout; auto looks at the files.", choices=INPUT_FORMATS)
    shard_size: int = setting(1000, "Images per shard for folder inputs.", minimum=1)
    image_column: str = setting("image", "Parquet column holding image bytes.")
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


def _walk_local(root: str) -> Iterable[tuple[str, int | None, str | None, str]]:
    """(relative path, size, mtime, kind) of every non-hidden entry under a local root, streamed."""
    stack = [""]
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
                stack.append(relative)
                continue
            yield relative, info.st_size, str(info.st_mtime_ns), kind_of_mode(info.st_mode)


def _walk(fs: fsspec.AbstractFileSystem, root: str) -> Iterable[tuple[str, int | None, str | None, str]]:
    if fs.protocol in ("file", "local") or "file" in (fs.protocol if isinstance(fs.protocol, tuple) else ()):
        yield from _walk_local(root)
        return
    for path, info in sorted(fs.find(root, detail=True).items()):
        relative = posixpath.relpath(path, root)
        if _is_hidden(relative):
            continue
        kind = "file" if info.get("type") == "file" else kind_of_mode(info.get("mode")) if info.get("mode") else "other"
        yield relative, info.get("size"), _version(info), kind


def list_input(uri: str, layout: str = "auto") -> Listing:
    """Every file of the dataset at `uri` (FileNotFoundError if there is none), and its layout."""
    if layout not in INPUT_FORMATS:
        raise ValueError(f"--input-format must be one of {INPUT_FORMATS}, got {layout!r}")
    fs, root = _fs(uri)
    root = root.rstrip("/") or root
    if root.endswith((".tar", ".parquet")) and not fs.isdir(root):
        if not fs.exists(root):
            raise FileNotFoundError(uri)
        info = fs.info(root)
        base = posixpath.dirname(root)
        kind = "file" if info.get("type") == "file" else kind_of_mode(info.get("mode"))
        found = "tar" if root.endswith(".tar") else "parquet"
        return Listing(uri, found if layout == "auto" else layout, fs.unstrip_protocol(base),
                       [posixpath.basename(root)], [info.get("size")], [_version(info)], [kind])
    if not fs.isdir(root):
        raise FileNotFoundError(uri)
    listing = Listing(uri, layout, fs.unstrip_protocol(root))
    for relative, size, version, kind in _walk(fs, root):
        listing.paths.append(relative)
        listing.sizes.append(size)
        listing.versions.append(version)
        listing.kinds.append(kind)
    order = sorted(range(len(listing.paths)), key=lambda i: listing.paths[i])
    for name in ("paths", "sizes", "versions", "kinds"):
        values = getattr(listing, name)
        setattr(listing, name, [values[i] for i in order])
    if layout == "auto":
        paths = listing.paths
        listing.layout = ("tar" if paths and all(p.endswith(".tar") for p in paths) else
                          "parquet" if paths and all(p.endswith(".parquet") for p in paths) else "folder")
    return listing


def detect_layout(uri: str) -> str:
    return list_input(uri).layout


@dataclass
class InputPlan:
    """The shards of an input, as saved with a store (plan.parquet) and followed by every run."""

    input: str
    layout: str
    base: str
    shards: list[ShardSpec]
    files: dict[str, tuple[int | None, str | None, str]] = field(default_factory=dict)  # escaped path -> listing

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
        """The shards that hold any of `paths` (escaped; a sidecar belongs to its image's shard)."""
        found = set()
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
        """One row per planned file (inputs and their sidecars): its shard, its escaped path and what
        the listing said of it."""
        columns: dict[str, list] = {name: [] for name in PLAN.names()}

        def add(shard_id: str, path: str, role: str, options: dict | None) -> None:
            size, version, kind = self.files.get(path, (None, None, "file"))
            for name, value in (("shard_id", shard_id), ("path", path), ("role", role), ("size", size),
                                ("version", version), ("kind", kind), ("schema_version", PLAN.version),
                                ("options", json.dumps(options, sort_keys=True) if options else None)):
                columns[name].append(value)

        for spec in self.shards:
            options = {k: v for k, v in spec.options.items() if k not in ("sidecars", "kind")}
            if spec.layout != "folder":
                add(spec.shard_id, spec.file, "input", options)
                continue
            sidecars = spec.options.get("sidecars", {})
            for i, member in enumerate(spec.members):
                add(spec.shard_id, member, "input", options if i == 0 else None)
                for suffix in sidecars.get(member, []):
                    add(spec.shard_id, stem(member) + suffix, "sidecar", None)
        meta = {"input": self.input, "layout": self.layout, "base": self.base, "plan_version": PLAN_VERSION,
                "settings": settings or {}}
        return pa.table(columns, schema=PLAN.schema(meta))

    @classmethod
    def from_table(cls, table: pa.Table) -> InputPlan:
        meta = PLAN.metadata(table.schema)
        layout, base = meta["layout"], meta["base"]
        shards: list[ShardSpec] = []
        files: dict[str, tuple[int | None, str | None, str]] = {}
        current: ShardSpec | None = None
        names = ("shard_id", "path", "role", "size", "version", "kind", "options")
        for shard_id, path, role, size, version, kind, options in zip(*(table.column(n).to_pylist() for n in names)):
            files[path] = (size, version, kind)
            if current is None or current.shard_id != shard_id:
                current = ShardSpec(shard_id, layout, base if layout == "folder" else _join_uri(base, path),
                                    options=json.loads(options) if options else {})
                if layout == "folder":
                    current.options["sidecars"] = {}
                shards.append(current)
            if role == "sidecar":
                owner = current.members[-1]
                current.options["sidecars"].setdefault(owner, []).append(path[len(stem(owner)):])
            elif layout == "folder":
                current.members.append(path)
            elif kind != "file":
                current.options["kind"] = kind
        return cls(meta["input"], layout, base, shards, files)

    @classmethod
    def from_legacy_json(cls, saved: dict[str, Any]) -> InputPlan:
        """A plan.json of stores made before plans were Parquet tables (no sizes or versions recorded:
        sidecars are looked for when read)."""
        shards = [ShardSpec(s["shard_id"], s["layout"], s["uri"], [escape_name(m) for m in s.get("members", [])],
                            dict(s.get("options") or {})) for s in saved["shards"]]
        layout = shards[0].layout if shards else "folder"
        base = (shards[0].uri if layout == "folder" else posixpath.dirname(shards[0].uri)) if shards else ""
        return cls(saved.get("input", ""), layout, base, shards)


def _join_uri(base: str, relative: str) -> str:
    return f"{base.rstrip('/')}/{relative}"


def plan_input(settings: InputSettings, *, listing: Listing | None = None) -> InputPlan:
    """The plan of `settings.input`; a ValueError naming --input when it does not exist or holds nothing."""
    return plan_dataset(settings.input, setting="--input", listing=listing, layout=settings.input_format,
                        shard_size=settings.shard_size, image_column=settings.image_column,
                        id_column=settings.id_column, on_duplicate_id=settings.on_duplicate_id)


def list_dataset(uri: str, *, setting: str, layout: str = "auto") -> Listing:
    """list_input(uri), refusing with a ValueError naming `setting` (--input, --data, ...) a dataset that
    does not exist or holds nothing."""
    try:
        listing = list_input(uri, layout)
    except FileNotFoundError:
        raise ValueError(f"{setting} {uri}: no such file or directory; point {setting} at a folder of images, "
                         ".tar shards or .parquet files (local or any fsspec URI)") from None
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


def plan_listing(listing: Listing, *, shard_size: int = 1000, image_column: str = "image", id_column: str | None = None,
                 on_duplicate_id: str = "suffix", after: InputPlan | None = None) -> InputPlan:
    """The plan of a listing; with `after`, a plan of the inputs `after` does not hold, whose shard ids
    (and Parquet ids) are unique against `after`'s too."""
    files = listing.entries()
    known = set(after.files) if after is not None else set()
    taken = after.shard_ids() if after is not None else []
    new = [p for p in files if p not in known]
    if listing.layout in ("tar", "parquet"):
        suffix = f".{listing.layout}"
        new = [p for p in new if p.endswith(suffix)]
        shards = []
        for shard_id, path in zip(unique_shard_ids(new, suffix, taken=taken), new):
            options: dict[str, Any] = {"image_column": image_column, "id_column": id_column}
            if files[path][2] != "file":
                options["kind"] = files[path][2]
            shards.append(ShardSpec(shard_id, listing.layout, _join_uri(listing.base, path), options=options))
        if listing.layout == "parquet" and id_column:
            _rename_duplicate_ids([*(after.shards if after is not None else []), *shards], id_column, on_duplicate_id)
        return InputPlan(listing.uri, listing.layout, listing.base, shards, {p: files[p] for p in new})
    image_stems = {stem(p) for p in files if sidecar_stem(p) is None}
    inputs = [p for p in new if not is_sidecar_name(p, image_stems)]
    natural = [f"folder-{len(taken) + i:05d}" for i in range(-(-len(inputs) // shard_size))]
    shards = []
    for i, shard_id in enumerate(unique_names(natural, taken=taken)):
        members = inputs[i * shard_size: (i + 1) * shard_size]
        sidecars = {m: found for m in members if (found := [s for s in SIDECAR_SUFFIXES if stem(m) + s in files])}
        shards.append(ShardSpec(shard_id, "folder", listing.base, members, options={"sidecars": sidecars}))
    return InputPlan(listing.uri, listing.layout, listing.base, shards,
                     {p: files[p] for p in new if p in set(inputs) or is_sidecar_name(p, image_stems)})


def _rename_duplicate_ids(shards: list[ShardSpec], id_column: str, policy: str) -> None:
    """Ids that repeat across the plan (a null id stands for its default '<shard>/<row>'): the first
    keeps its spelling, each repeat gets the first 'id~n' that no other id has (recorded per shard)."""
    rows: list[tuple[int, int]] = []  # (shard index, row) of each id, in plan order
    natural: list[str] = []
    for s, spec in enumerate(shards):
        fs, path = _fs(spec.uri)
        try:
            with fs.open(path, "rb") as f:
                ids = pq.read_table(f, columns=[id_column]).column(id_column).to_pylist()
        except (OSError, ValueError, KeyError, pa.ArrowException):  # unreadable or without the column: its reader says so
            continue
        spec.options.pop("renamed_ids", None)
        for row, value in enumerate(ids):
            rows.append((s, row))
            natural.append(default_id(spec.shard_id, row) if value is None else id_text(value))
    unique = unique_names(natural)
    repeated = sorted({n for n, u in zip(natural, unique) if n != u})
    if repeated and policy == "error":
        sample = ", ".join(repeated[:5])
        raise ValueError(f"--id-column {id_column}: {len(repeated)} ids appear more than once ({sample}); "
                         "rerun with --on-duplicate-id suffix to keep every row (repeats become 'id~1', 'id~2', ...)")
    for (s, row), before, after in zip(rows, natural, unique):
        if before != after:
            shards[s].options.setdefault("renamed_ids", {})[str(row)] = after


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
        fresh = {p: v for p, v in fresh.items() if p.endswith(f".{listing.layout}")}
    planned = plan.files or {p: (None, None, "file") for spec in plan.shards
                             for p in (spec.members if spec.layout == "folder" else [spec.file])}
    changes = InputChanges()
    planned_stems = {stem(p): p for p in planned if sidecar_stem(p) is None} if plan.layout == "folder" else {}
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

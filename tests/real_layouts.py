"""Datasets laid out by the real tools our users run, for testing the project's readers against them.

Hand-written fixtures (tests/datasets.py) encode what *we* think a WebDataset shard or an image Parquet
file looks like. The builders here instead run the producers themselves -- img2dataset, the
`webdataset` library's TarWriter, Hugging Face `datasets`, GNU tar -- so a reader test fails when our
idea of the format and the tools' actual output part ways (member order, key naming, extra files per
shard, hardlink members, struct columns...). Each builder writes under a given tmp folder, is
deterministic from its seed, and returns a small frozen dataclass saying what it made.

The images are tiny (24-48 px), distinct per sample, and made with numpy + PIL. Nothing here imports
the project's own readers. img2dataset, webdataset and datasets are optional test tools (see the
report in the test module); tests that need one should `pytest.importorskip` it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------------------------------
# images


def make_image(seed: int, size: int | tuple[int, int] = 32) -> Image.Image:
    """A small RGB image that is distinct for every seed: a random 4x4 colour grid, smoothly upscaled
    (smooth, so JPEG keeps it recognisable), with a seed-dependent diagonal stripe."""
    w, h = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    arr = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BILINEAR)).copy()
    yy, xx = np.mgrid[0:h, 0:w]
    arr[(xx + yy + seed) % 11 == 0] = rng.integers(0, 256, 3, dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def image_bytes(img: Image.Image, fmt: Literal["PNG", "JPEG"] = "PNG", **save_kwargs: object) -> bytes:
    """`img` encoded as PNG or JPEG (quality 95 unless given)."""
    if fmt == "JPEG":
        save_kwargs.setdefault("quality", 95)
    buffer = io.BytesIO()
    img.save(buffer, fmt, **save_kwargs)
    return buffer.getvalue()


def _size_for(seed: int) -> tuple[int, int]:
    """Sizes vary between samples (24..48 px, not always square) so readers cannot assume one shape."""
    return 24 + (seed * 7) % 25, 24 + (seed * 13) % 25


# --------------------------------------------------------------------------------------------------
# 1. a loopback HTTP server


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@contextlib.contextmanager
def serve_folder(folder: str | os.PathLike[str]) -> Iterator[str]:
    """Serve `folder` read-only over HTTP on 127.0.0.1 at a free port, from a daemon thread, without
    request logging; yields the base URL (no trailing slash). Missing files answer 404.

    Downloaders (img2dataset) need a real URL; binding the loopback address only means nothing off this
    machine can reach the server and the tests never touch the internet."""
    handler = functools.partial(_QuietHandler, directory=os.fspath(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="serve_folder", daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------------------------------
# 2. img2dataset


@dataclass(frozen=True)
class Img2DatasetOutput:
    """What `img2dataset_output` made.

    folder: img2dataset's output folder. Per shard NNNNN it holds NNNNN_stats.json and NNNNN.parquet, plus
        NNNNN.tar (webdataset) or a NNNNN/ folder of KEY.jpg/.txt/.json files (files); for "parquet" the
        NNNNN.parquet is the data itself (image bytes in a `jpg` column). It also writes a top-level
        stats/state file or two depending on the version: see `top_level_files`.
    keys: the keys img2dataset gave the successful samples, in input order (from its own metadata
        Parquet, status == "success"). Keys are zero-padded shard id + position in the shard, so failed
        downloads leave gaps in the numbering.
    failed: key -> the URL of each sample that failed to download (the 404s), from the same metadata.
    shard_keys: shard name -> its successful keys in the order img2dataset wrote them (the order of
        its metadata rows and of the tar members). img2dataset's threads write in completion order
        (imap_unordered), so with thread_count > 1 this is NOT always key order, and may differ per run.
    captions, labels, urls: per successful key. `labels` is empty when extra_columns was False.
    sha256: per successful key, of the bytes served; img2dataset's own `sha256` column hashes the same
        (downloaded) bytes, while the image it stores is re-encoded as JPEG.
    """

    folder: Path
    url_list: Path
    output_format: str
    n_ok: int
    n_broken: int
    samples_per_shard: int
    shards: tuple[str, ...]  # shard names ("00000", ...) that img2dataset wrote
    keys: tuple[str, ...]
    shard_keys: Mapping[str, tuple[str, ...]]
    failed: Mapping[str, str]
    captions: Mapping[str, str]
    labels: Mapping[str, int]
    urls: Mapping[str, str]
    sha256: Mapping[str, str]  # of the bytes served for each successful key (img2dataset re-encodes them)
    extra_columns: tuple[str, ...]
    top_level_files: tuple[str, ...]
    seconds: float  # wall time of the img2dataset run itself
    log: str = field(repr=False)  # its stdout + stderr


# Run in a child interpreter: img2dataset spawns a logger process and a multiprocessing pool with the
# "spawn" start method and prints progress to stdout; in a subprocess that noise is captured, the
# spawned children re-import a tiny `-c` script instead of pytest, and proxy settings are pinned.
_IMG2DATASET_SCRIPT = """
import json, sys
from img2dataset import download
download(**json.loads(sys.argv[1]))
"""


def img2dataset_output(
    tmp: str | os.PathLike[str],
    *,
    n_ok: int = 25,
    n_broken: int = 3,
    output_format: Literal["webdataset", "parquet", "files"] = "webdataset",
    samples_per_shard: int = 10,
    extra_columns: bool = True,
    input_format: Literal["parquet", "csv"] = "parquet",
    thread_count: int = 2,
    seed: int = 0,
    timeout_s: float = 120,
) -> Img2DatasetOutput:
    """Run the real `img2dataset.download` on `n_ok` served images plus `n_broken` URLs that 404.

    The URL list (url, caption and, with extra_columns, a `label` column kept via
    save_additional_columns) goes into tmp/urls.parquet or .csv; the served images (JPEG and PNG
    alternately, 24-48 px) into tmp/served/; the output into tmp/img2dataset/. The broken URLs are spread
    through the list, so a shard has both successes and failures. resize_mode="no", one process,
    `thread_count` threads (use 1 for a deterministic order inside shards); everything else is
    img2dataset's default (jpg re-encoding, caption .txt, .json meta, the per-shard metadata .parquet and
    _stats.json). Takes about 7-13 s on 2 cores, nearly all of it img2dataset's spawned processes
    importing it (its logger process and a one-process pool)."""
    import pandas as pd
    import pyarrow.parquet as pq

    tmp = Path(tmp)
    served = tmp / "served"
    served.mkdir(parents=True, exist_ok=True)
    out = tmp / "img2dataset"
    if out.exists():
        raise FileExistsError(out)

    total = n_ok + n_broken
    broken_at = {round((i + 0.5) * total / n_broken) for i in range(n_broken)} if n_broken else set()
    assert len(broken_at) == n_broken and max(broken_at, default=0) < total
    rows: list[dict[str, object]] = []
    digests: dict[str, str] = {}  # url path -> sha256 of what is served
    good = 0
    for row in range(total):
        if row in broken_at:
            name = f"missing_{row:03d}.jpg"  # never written: the server answers 404
        else:
            fmt = "JPEG" if good % 2 == 0 else "PNG"
            name = f"img_{row:03d}.{'jpg' if fmt == 'JPEG' else 'png'}"
            data = image_bytes(make_image(seed * 1000 + row, _size_for(row)), fmt)
            (served / name).write_bytes(data)
            digests[name] = hashlib.sha256(data).hexdigest()
            good += 1
        rows.append({"name": name, "caption": f"sample {row}: a picture", "label": row % 5})

    with serve_folder(served) as base:
        table = pd.DataFrame({
            "url": [f"{base}/{r['name']}" for r in rows],
            "caption": [r["caption"] for r in rows],
            **({"label": [r["label"] for r in rows]} if extra_columns else {}),
        })
        url_list = tmp / f"urls.{input_format}"
        if input_format == "parquet":
            table.to_parquet(url_list, index=False)
        else:
            table.to_csv(url_list, index=False)
        kwargs = dict(
            url_list=str(url_list), input_format=input_format, url_col="url", caption_col="caption",
            save_additional_columns=["label"] if extra_columns else None,
            output_folder=str(out), output_format=output_format, number_sample_per_shard=samples_per_shard,
            processes_count=1, thread_count=thread_count, resize_mode="no", timeout=5, retries=0,
            enable_wandb=False, distributor="multiprocessing",
        )
        env = dict(os.environ, no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost",
                   PYTHONUNBUFFERED="1", NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled",
                   WANDB_SILENT="true")  # albumentations (imported by img2dataset) checks PyPI on import
        for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
            env.pop(var, None)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _IMG2DATASET_SCRIPT, json.dumps(kwargs)], cwd=tmp, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout_s)
        seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"img2dataset failed ({proc.returncode}):\n{proc.stdout[-4000:]}")

    stats = sorted(out.glob("*_stats.json"))
    shards = tuple(p.name[: -len("_stats.json")] for p in stats)
    columns = ["key", "status", "url", "caption", "error_message"] + (["label"] if extra_columns else [])
    per_shard = {s: pq.read_table(out / f"{s}.parquet", columns=columns).to_pandas() for s in shards}
    shard_keys = {s: tuple(str(k) for k in m.loc[m["status"] == "success", "key"])
                  for s, m in per_shard.items()}
    meta = pd.concat(list(per_shard.values()), ignore_index=True)
    meta = meta.sort_values("key", kind="stable").reset_index(drop=True)
    ok = meta[meta["status"] == "success"]
    bad = meta[meta["status"] != "success"]
    keys = tuple(str(k) for k in ok["key"])
    name_of = {str(k): str(u).rsplit("/", 1)[-1] for k, u in zip(meta["key"], meta["url"])}
    if len(keys) != n_ok or len(bad) != n_broken:
        raise RuntimeError(f"img2dataset gave {len(keys)} successes and {len(bad)} failures, expected "
                           f"{n_ok} and {n_broken}:\n{bad[['key', 'url', 'error_message']]}\n{proc.stdout[-4000:]}")
    return Img2DatasetOutput(
        folder=out, url_list=url_list, output_format=output_format, n_ok=n_ok, n_broken=n_broken,
        samples_per_shard=samples_per_shard, shards=shards, keys=keys, shard_keys=shard_keys,
        failed={str(k): str(u) for k, u in zip(bad["key"], bad["url"])},
        captions={str(k): str(c) for k, c in zip(ok["key"], ok["caption"])},
        labels={str(k): int(v) for k, v in zip(ok["key"], ok["label"])} if extra_columns else {},
        urls={str(k): str(u) for k, u in zip(ok["key"], ok["url"])},
        sha256={k: digests[name_of[k]] for k in keys},
        extra_columns=("label",) if extra_columns else (),
        top_level_files=tuple(sorted(p.name for p in out.iterdir()
                                     if p.is_file() and not any(p.name.startswith(s) for s in shards))),
        seconds=seconds, log=proc.stdout,
    )


# --------------------------------------------------------------------------------------------------
# 3. webdataset's TarWriter


@dataclass(frozen=True)
class WebDatasetTree:
    """What `webdataset_tree` made: shard path relative to `folder` -> its sample keys in written order.
    Every sample has one member per part (KEY.jpg, KEY.json, KEY.cls ...); `labels[(shard, key)]` is the
    integer in its .cls, and its .json holds {"key", "shard", "label", "width", "height"}."""

    folder: Path
    shards: Mapping[str, tuple[str, ...]]
    parts: tuple[str, ...]
    labels: Mapping[tuple[str, str], int]
    sizes: Mapping[tuple[str, str], tuple[int, int]]  # (width, height) of each image

    @property
    def n(self) -> int:
        return sum(len(keys) for keys in self.shards.values())


def webdataset_tree(
    tmp: str | os.PathLike[str],
    shards: Mapping[str, int] | None = None,
    parts: Sequence[str] = ("jpg", "json", "cls"),
    *,
    unique_keys: bool = True,
    seed: int = 0,
) -> WebDatasetTree:
    """Shards written by the `webdataset` library's own TarWriter, in nested folders whose shards share
    base names (train/00000.tar, val/00000.tar), each sample a group of members KEY.<part>.

    With unique_keys (default) keys run on across shards ("sample000000", ...); without, every shard
    restarts at "sample000000", as many real pipelines do, so only (shard, key) identifies a sample.
    Image parts (jpg/jpeg/png/webp) get the image encoded in that format; other parts: cls -> label,
    txt -> caption, json -> metadata."""
    import webdataset as wds

    shards = dict(shards or {"train/00000.tar": 4, "val/00000.tar": 3})
    folder = Path(tmp) / "webdataset"
    result: dict[str, tuple[str, ...]] = {}
    labels: dict[tuple[str, str], int] = {}
    sizes: dict[tuple[str, str], tuple[int, int]] = {}
    counter = 0
    for rel, count in shards.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = []
        with wds.TarWriter(str(path)) as sink:
            for i in range(count):
                index = counter if unique_keys else i
                key = f"sample{index:06d}"
                image_seed = seed * 100_000 + counter
                size = _size_for(counter)
                img = make_image(image_seed, size)
                label = counter % 7
                sample: dict[str, object] = {"__key__": key}
                for part in parts:
                    if part in ("jpg", "jpeg"):
                        sample[part] = image_bytes(img, "JPEG")
                    elif part == "png":
                        sample[part] = image_bytes(img, "PNG")
                    elif part == "webp":
                        sample[part] = image_bytes(img, "WEBP")  # type: ignore[arg-type]
                    elif part == "cls":
                        sample[part] = str(label).encode()
                    elif part == "txt":
                        sample[part] = f"picture {counter} in {rel}".encode()
                    elif part == "json":
                        sample[part] = json.dumps({"key": key, "shard": rel, "label": label,
                                                   "width": size[0], "height": size[1]}).encode()
                    else:
                        raise ValueError(f"no content defined for part {part!r}")
                sink.write(sample)
                keys.append(key)
                labels[(rel, key)] = label
                sizes[(rel, key)] = size
                counter += 1
        result[rel] = tuple(keys)
    return WebDatasetTree(folder=folder, shards=result, parts=tuple(parts), labels=labels, sizes=sizes)


# --------------------------------------------------------------------------------------------------
# 4. Hugging Face datasets


@dataclass(frozen=True)
class HFImageParquet:
    """What `hf_image_parquet` made. The `image` column is datasets' Image feature as stored in Parquet:
    a struct {bytes: binary, path: string} (path null: the images were in memory); the schema metadata
    carries datasets' feature description under the b"huggingface" key."""

    path: Path
    n: int
    columns: tuple[str, ...]
    labels: tuple[int, ...]
    sizes: tuple[tuple[int, int], ...]  # (width, height) per row
    image_format: str  # the encoding datasets used for the in-memory PIL images


def hf_image_parquet(tmp: str | os.PathLike[str], n: int = 6, *, seed: int = 0) -> HFImageParquet:
    """A Parquet file written by Hugging Face `datasets` (Dataset.from_dict with PIL images, cast to
    datasets.Image(), then .to_parquet): the layout `load_dataset(...)`/`push_to_hub` users hand us."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets
    import pyarrow.parquet as pq

    if not hasattr(datasets, "Dataset"):  # tests/ itself on sys.path: tests/datasets.py shadows the library
        raise ImportError(f"`import datasets` found {datasets.__file__}, not Hugging Face datasets; import this "
                          "module as tests.real_layouts, without tests/ on sys.path")

    images = [make_image(seed * 1000 + i, _size_for(i)) for i in range(n)]
    labels = [i % 3 for i in range(n)]
    ds = datasets.Dataset.from_dict({"image": images, "label": labels})
    ds = ds.cast_column("image", datasets.Image())
    path = Path(tmp) / "hf" / "train.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # to_parquet draws a tqdm bar on stderr
    try:
        ds.to_parquet(str(path))
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    table = pq.read_table(path)
    first = table.column("image")[0].as_py()["bytes"] if n else b""
    fmt = Image.open(io.BytesIO(first)).format if n else ""
    return HFImageParquet(path=path, n=n, columns=tuple(table.column_names), labels=tuple(labels),
                          sizes=tuple(img.size for img in images), image_format=str(fmt))


# --------------------------------------------------------------------------------------------------
# 5. GNU tar with a hardlink and a symlink


@dataclass(frozen=True)
class GnuTarWithLinks:
    """What `gnu_tar_with_links` made, as read back with Python's tarfile.

    kinds: member name -> "dir" | "file" | "hardlink" | "symlink" (archive order).
    links: for link members, what the archive says they point to: a hardlink's target is another
        member's name ("images/c.png"); a symlink's is its text, relative to its own folder ("a.png").
    content: every member name that resolves to an image (files and both links) -> the image's bytes.
    """

    path: Path
    kinds: Mapping[str, str]
    links: Mapping[str, str]
    content: Mapping[str, bytes] = field(repr=False)

    @property
    def hardlink(self) -> str:
        return next(name for name, kind in self.kinds.items() if kind == "hardlink")

    @property
    def symlink(self) -> str:
        return next(name for name, kind in self.kinds.items() if kind == "symlink")


def gnu_tar_with_links(tmp: str | os.PathLike[str], *, seed: int = 0) -> GnuTarWithLinks:
    """An archive made by the system `tar` (GNU tar, its default format) of a folder images/ with 3
    PNGs, a second name for c.png (a hardlink, stored as a link member with no data) and a symlink to
    a.png: what `tar cf` of a deduplicated or hand-curated image folder gives. --sort=name makes the
    member order deterministic: images/, a.png, b.png, c.png, c_hardlink.png, link_to_a.png."""
    src = Path(tmp) / "tar_src"
    images = src / "images"
    images.mkdir(parents=True)
    data = {}
    for i, stem in enumerate("abc"):
        data[stem] = image_bytes(make_image(seed * 1000 + i, _size_for(i)), "PNG")
        (images / f"{stem}.png").write_bytes(data[stem])
    os.link(images / "c.png", images / "c_hardlink.png")
    os.symlink("a.png", images / "link_to_a.png")
    path = Path(tmp) / "links.tar"
    subprocess.run(["tar", "--sort=name", "-cf", str(path), "-C", str(src), "images"], check=True,
                   capture_output=True)

    kinds: dict[str, str] = {}
    links: dict[str, str] = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            kinds[m.name] = ("dir" if m.isdir() else "hardlink" if m.islnk() else "symlink" if m.issym()
                             else "file" if m.isfile() else "other")
            if m.islnk() or m.issym():
                links[m.name] = m.linkname
    if sorted(kinds.values()) != ["dir", "file", "file", "file", "hardlink", "symlink"]:
        raise RuntimeError(f"unexpected members from tar: {kinds}")
    content = {f"images/{s}.png": data[s] for s in "abc"}
    content["images/c_hardlink.png"] = data["c"]
    content["images/link_to_a.png"] = data["a"]
    return GnuTarWithLinks(path=path, kinds=kinds, links=links, content=content)


# --------------------------------------------------------------------------------------------------
# 6. a tar with one huge member


@dataclass(frozen=True)
class BigTar:
    """What `big_tar` made: small image members around one member of `member_bytes` bytes.

    names: member names in archive order; big_name is among them (not a decodable image: zeros or noise).
    disk_bytes: the blocks the file really occupies (far below apparent_bytes for fill="zeros" where the
    file system supports holes)."""

    path: Path
    member_bytes: int
    big_name: str
    names: tuple[str, ...]
    small: Mapping[str, bytes] = field(repr=False)
    apparent_bytes: int = 0
    disk_bytes: int = 0


class _NoiseReader(io.RawIOBase):
    """`size` deterministic pseudo-random bytes, produced on demand (never all in memory)."""

    def __init__(self, size: int, seed: int) -> None:
        self._left = size
        self._rng = np.random.default_rng(seed)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._left)
        buffer[:n] = self._rng.bytes(n)
        self._left -= n
        return n


def big_tar(
    tmp: str | os.PathLike[str],
    *,
    member_bytes: int,
    n_small: int = 3,
    big_index: int = 1,
    fill: Literal["zeros", "noise"] = "zeros",
    seed: int = 0,
) -> BigTar:
    """A POSIX (pax) tar with `n_small` small PNG samples and, at position `big_index`, one member
    `big_<seed>.png` of `member_bytes` bytes, for testing that readers stay memory-bounded on multi-GB
    shards (the big member sits between small ones, so a reader must get past it).

    Written streaming: the builder never holds the big member. fill="zeros" leaves it as a file hole
    (seek), so even a 10 GB member is instant and costs almost no disk; "noise" streams deterministic
    random bytes in 1 MiB chunks (real disk and time)."""
    path = Path(tmp) / f"big_{member_bytes}.tar"
    small: dict[str, bytes] = {}
    names: list[str] = []
    big_name = f"big_{seed}.png"
    order = [f"small_{i:03d}.png" for i in range(n_small)]
    order.insert(min(big_index, n_small), big_name)
    with open(path, "wb") as f:
        for name in order:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            info.mode = 0o644
            if name == big_name:
                info.size = member_bytes
                f.write(info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"))
                if fill == "zeros":
                    f.seek(member_bytes, os.SEEK_CUR)
                else:
                    reader = _NoiseReader(member_bytes, seed)
                    chunk = bytearray(1 << 20)
                    while n := reader.readinto(memoryview(chunk)):
                        f.write(memoryview(chunk)[:n])
            else:
                data = image_bytes(make_image(seed * 1000 + len(small), _size_for(len(small))), "PNG")
                small[name] = data
                info.size = len(data)
                f.write(info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"))
                f.write(data)
            names.append(name)
            pad = -info.size % tarfile.BLOCKSIZE
            if pad:
                f.seek(pad - 1, os.SEEK_CUR)  # zero padding; the write below materialises the hole
                f.write(b"\0")
        end = f.tell() + 2 * tarfile.BLOCKSIZE  # two zero blocks, then pad to a whole record like tarfile
        end += -end % tarfile.RECORDSIZE
        f.seek(end - 1)
        f.write(b"\0")
    st = path.stat()
    return BigTar(path=path, member_bytes=member_bytes, big_name=big_name, names=tuple(names), small=small,
                  apparent_bytes=st.st_size, disk_bytes=getattr(st, "st_blocks", 0) * 512)

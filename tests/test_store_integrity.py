"""The store survives the real world: odd inputs, reruns with other recipes, concurrent writers,
damaged files, hostile ids and failing storage. Stores are built with the shard processor directly
(no Ray); the Ray runs are in tests/test_store_chaos.py."""

from __future__ import annotations

import io
import json
import os
import random
import stat
import struct
from pathlib import Path

import fsspec
from fsspec.implementations.memory import MemoryFileSystem
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFile

from pipeline.data.planning import plan_shards
from pipeline.models.bundle import write_bundle
from pipeline.invert import shard_processor
from pipeline.invert.config import InvertConfig
from pipeline.invert.preflight import preflight_invert
from pipeline.runtime.local_runner import run_shards_here
from pipeline.invert.shard_processor import ShardProcessor
from jobs.invert import run as run_invert
from pipeline.store.file_names import safe_file_name
from pipeline.store.layout import shard_file
from tests.stores import manifest_entries
from pipeline.store.store import read_latents
from pipeline.store.store_lock import StoreLockedError, claim_store
from pipeline.store.store_recipe import StoreRecipeMismatch
from pipeline.store.verify import repair_store, verify_store
from pipeline.store.writer import claim
from tests.conftest import tiny_discriminator, tiny_generator
from tests.datasets import colorful, png_bytes
from tests.stores import invert_here


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("models") / "g.safetensors"
    write_bundle(str(path), {"G_ema": tiny_generator(16), "D": tiny_discriminator(16)})
    return str(path)


def config(generator: str, input: Path, output: Path, **overrides) -> InvertConfig:
    base = dict(input=str(input), output=str(output), generator=generator, stages=("refine",), steps=1,
                perceptual="none", shard_size=8, batch_size=8, progress=False, decode_threads=2)
    return InvertConfig(**{**base, **overrides})


def folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def good(n: int, seed: int = 0) -> dict[str, bytes]:
    return {f"good_{i}.png": png_bytes(colorful(seed=seed + i)) for i in range(n)}


# ---- per-input isolation ------------------------------------------------------------------------

class _Boom(ImageFile.ImageFile):
    """A Pillow plugin whose decoder raises the exception named in the file: b'BOOM' + name."""

    format = "BOOM"

    def _open(self) -> None:
        self._size, self._mode = (32, 32), "RGB"
        self.tile = []
        self.raises = self.fp.read(64)[4:].decode().strip()

    def load(self):
        raise _EXCEPTIONS[self.raises]


_EXCEPTIONS = {
    "NotImplementedError": NotImplementedError("DXGI format 99 not implemented"),
    "KeyError": KeyError("tile"), "IndexError": IndexError("list index out of range"),
    "ZeroDivisionError": ZeroDivisionError("division by zero"), "AssertionError": AssertionError("bad header"),
    "struct.error": struct.error("unpack requires a buffer of 4 bytes"), "TypeError": TypeError("bad operand"),
    "AttributeError": AttributeError("no attribute 'mode'"), "OverflowError": OverflowError("too big"),
    "RecursionError": RecursionError("maximum recursion depth exceeded"), "MemoryError": MemoryError(),
    "RuntimeError": RuntimeError("decoder state"), "EOFError": EOFError("no more data"),
    "UnicodeDecodeError": UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
}


@pytest.fixture()
def boom_plugin():
    Image.register_open(_Boom.format, _Boom, lambda prefix: prefix[:4] == b"BOOM")
    yield
    Image.OPEN.pop(_Boom.format, None)
    Image.ID.remove(_Boom.format)


def test_any_exception_while_decoding_one_input_is_that_inputs_error_row(boom_plugin, generator, tmp_path):
    files = {**good(3), **{f"boom_{name}.dds": b"BOOM" + name.encode() for name in _EXCEPTIONS}}
    frame = invert_here(config(generator, folder(tmp_path / "in", files), tmp_path / "store", shard_size=100))
    assert len(frame) == len(files)
    rows = frame.set_index("image_id")
    assert (rows.loc[[f"good_{i}.png" for i in range(3)], "status"] == "ok").all()
    for name, exc in _EXCEPTIONS.items():
        row = rows.loc[f"boom_{name}.dds"]
        assert row["status"] == "error"
        # the decoder's own classification keeps OSError/ValueError families as 'corrupt'
        expected = "corrupt: " if isinstance(exc, (OSError, ValueError)) else f"decoder failed: {type(exc).__name__}"
        assert row["error"].startswith(expected), row["error"]


def _corpus(rng: random.Random) -> dict[str, bytes]:
    """Every format Pillow writes here (animated ones too), each whole, truncated and bit-flipped."""
    base = colorful(size=48, seed=3)
    frames = [colorful(size=48, seed=s) for s in range(3)]
    originals: dict[str, bytes] = {}
    for fmt, ext, kwargs in [("PNG", "png", {}), ("JPEG", "jpg", {}), ("BMP", "bmp", {}), ("TIFF", "tif", {}),
                             ("TIFF", "lzw.tif", {"compression": "tiff_lzw"}), ("TIFF", "jpeg.tif", {"compression": "jpeg"}),
                             ("ICO", "ico", {}), ("DDS", "dds", {}), ("TGA", "tga", {}), ("PPM", "ppm", {}),
                             ("PCX", "pcx", {}), ("SGI", "sgi", {}), ("JPEG2000", "jp2", {}), ("EPS", "eps", {}),
                             ("MPO", "mpo", {}), ("WEBP", "webp", {}), ("QOI", "qoi", {}), ("ICNS", "icns", {}),
                             ("IM", "im", {}), ("BLP", "blp", {}), ("PDF", "pdf", {})]:
        try:
            originals[f"x.{ext}"] = png_bytes(base, fmt, **kwargs)
        except (OSError, KeyError, ValueError):  # a codec missing from this Pillow build
            continue
    for fmt, ext in [("GIF", "gif"), ("WEBP", "anim.webp"), ("PNG", "apng.png"), ("TIFF", "multi.tif")]:
        originals[f"anim.{ext}"] = png_bytes(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50)
    corpus = {}
    for name, data in originals.items():
        corpus[f"whole/{name}"] = data
        for cut in (0.1, 0.5, 0.9):
            corpus[f"cut{cut}/{name}"] = data[: int(len(data) * cut)]
        flipped = bytearray(data)
        for _ in range(max(1, len(data) // 200)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        corpus[f"flip/{name}"] = bytes(flipped)
    return corpus


def test_a_fuzzed_corpus_of_every_format_yields_one_row_per_file_and_keeps_good_rows(generator, tmp_path):
    corpus = _corpus(random.Random(0))
    files = {**corpus, **good(4)}
    frame = invert_here(config(generator, folder(tmp_path / "in", files), tmp_path / "store", shard_size=64,
                               batch_size=16))
    assert sorted(frame["image_id"]) == sorted(files)
    rows = frame.set_index("image_id")
    assert (rows.loc[[f"good_{i}.png" for i in range(4)], "status"] == "ok").all()
    readable = [n for n in corpus if n.startswith("whole/") and not n.endswith((".eps", ".pdf"))]  # write-only here
    assert (rows.loc[readable, "status"] == "ok").all()
    errors = rows[rows["status"] == "error"]
    assert errors["error"].notna().all() and len(errors) > 0


def test_a_failing_batch_is_bisected_down_to_the_inputs_that_cause_it(generator, tmp_path, monkeypatch):
    real = shard_processor.invert_batch

    def failing_on_poison(models, settings, images, masks, ids, **kwargs):
        if "poison.png" in ids:
            raise RuntimeError("a stage failed on this input (simulated)")
        return real(models, settings, images, masks, ids, **kwargs)

    monkeypatch.setattr(shard_processor, "invert_batch", failing_on_poison)
    files = {**good(7), "poison.png": png_bytes(colorful(seed=99))}
    frame = invert_here(config(generator, folder(tmp_path / "in", files), tmp_path / "store"))
    rows = frame.set_index("image_id")
    assert rows.loc["poison.png", "status"] == "error"
    assert rows.loc["poison.png", "error"] == "stage failed: RuntimeError: a stage failed on this input (simulated)"
    assert (rows.drop("poison.png")["status"] == "ok").all()


# ---- one recipe per store ------------------------------------------------------------------------

def test_a_rerun_with_other_settings_is_refused_listing_each_difference(generator, tmp_path):
    source = folder(tmp_path / "in", good(3))
    invert_here(config(generator, source, tmp_path / "store"))
    manifest_before = (tmp_path / "store" / "store.json").read_text()
    with pytest.raises(StoreRecipeMismatch) as info:
        invert_here(config(generator, source, tmp_path / "store", steps=2, stages=("refine",), tau=2.0))
    message = str(info.value)
    assert "--steps: 1 in the store, 2 now" in message and "--tau: 3.0 in the store, 2.0 now" in message
    assert "--overwrite" in message and "new --output" in message
    assert (tmp_path / "store" / "store.json").read_text() == manifest_before


def test_a_setting_added_after_a_store_was_made_differs_only_off_its_default(generator, tmp_path):
    source = folder(tmp_path / "in", good(2))
    invert_here(config(generator, source, tmp_path / "store"))
    recipe_file = tmp_path / "store" / "store.json"
    recipe = json.loads(recipe_file.read_text())
    del recipe["settings"]["early_stop_patience"]  # as a store made before the setting existed records it
    recipe_file.write_text(json.dumps(recipe))
    invert_here(config(generator, source, tmp_path / "store"))  # at its default (0): the same recipe
    with pytest.raises(StoreRecipeMismatch, match="--early-stop-patience: <unset> in the store, 5 now"):
        invert_here(config(generator, source, tmp_path / "store", early_stop_patience=5))


def test_resuming_with_another_generator_is_refused(generator, tmp_path):
    other = str(tmp_path / "other.safetensors")
    write_bundle(other, {"G_ema": tiny_generator(16, seed=5)})
    source = folder(tmp_path / "in", good(3))
    invert_here(config(generator, source, tmp_path / "store"))
    with pytest.raises(StoreRecipeMismatch, match="generator model: .* in the store, .* now"):
        invert_here(config(other, source, tmp_path / "store"))


def test_execution_settings_are_not_part_of_the_recipe_and_overwrite_takes_a_new_one(generator, tmp_path):
    source = folder(tmp_path / "in", good(3))
    invert_here(config(generator, source, tmp_path / "store"))
    invert_here(config(generator, source, tmp_path / "store", batch_size=2, decode_threads=1, concurrency=3))
    frame = invert_here(config(generator, source, tmp_path / "store", steps=2, overwrite=True))
    assert (frame["refine_steps"] == 2).all() and len(frame) == 3


def test_a_second_writer_is_refused_naming_the_holder(generator, tmp_path):
    source = folder(tmp_path / "in", good(2))
    with claim_store(str(tmp_path / "store")) as holder:
        with pytest.raises(StoreLockedError) as info:
            invert_here(config(generator, source, tmp_path / "store"))
    assert f"pid {holder['pid']}" in str(info.value) and "--wait" in str(info.value)
    assert len(invert_here(config(generator, source, tmp_path / "store"))) == 2  # released


def test_a_lease_on_an_object_store_is_exclusive_until_released(tmp_path):
    store = "memory://leased-store"
    with claim_store(store) as holder:
        with pytest.raises(StoreLockedError, match=f"pid {holder['pid']}"):
            with claim_store(store):
                pass
    with claim_store(store):
        pass


# ---- verify and repair ---------------------------------------------------------------------------

def test_verify_finds_a_truncated_shard_and_repair_makes_the_next_run_redo_it(generator, tmp_path):
    source = folder(tmp_path / "in", good(12))
    cfg = config(generator, source, tmp_path / "store", shard_size=6)
    invert_here(cfg)
    assert verify_store(cfg.output).ok
    damaged = Path(shard_file(cfg.output, "folder-00001"))
    damaged.write_bytes(damaged.read_bytes()[:200])
    report = verify_store(cfg.output)
    assert not report.ok and [p.shard for p in report.damaged] == ["folder-00001"]
    assert "folder-00001" in "\n".join(report.lines())
    with claim(cfg.output) as writer:
        repair_store(writer, report)
    assert "folder-00001" not in manifest_entries(cfg.output)
    frame = invert_here(cfg)
    assert sorted(frame["image_id"]) == sorted(good(12)) and verify_store(cfg.output).ok


def test_resume_redoes_a_shard_whose_file_was_deleted(generator, tmp_path):
    cfg = config(generator, folder(tmp_path / "in", good(12)), tmp_path / "store", shard_size=6)
    invert_here(cfg)
    Path(shard_file(cfg.output, "folder-00000")).unlink()
    frame = invert_here(cfg)
    assert sorted(frame["image_id"]) == sorted(good(12))


# ---- ids and names -------------------------------------------------------------------------------

def test_two_input_files_never_share_a_shard_id(tmp_path):
    import tarfile

    for name in ("sub/a.tar", "sub_a.tar"):
        path = tmp_path / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w") as archive:
            data = png_bytes(colorful())
            info = tarfile.TarInfo("k.png")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    ids = [s.shard_id for s in plan_shards(str(tmp_path / "in"))]
    assert len(set(ids)) == 2 and all(i.startswith("sub_a") for i in ids)


def _parquet(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "image": [png_bytes(colorful(seed=i)) for i in range(len(ids))]}), path)


def test_duplicate_ids_get_a_deterministic_suffix_or_are_refused(generator, tmp_path):
    _parquet(tmp_path / "in" / "a.parquet", ["x", "y", "x"])
    _parquet(tmp_path / "in" / "b.parquet", ["y", "z"])
    cfg = config(generator, tmp_path / "in", tmp_path / "store", id_column="id")
    frame = invert_here(cfg)
    assert sorted(frame["image_id"]) == ["x", "x~1", "y", "y~1", "z"]
    with pytest.raises(ValueError, match="--id-column: 2 ids appear more than once"):
        invert_here(config(generator, tmp_path / "in", tmp_path / "store2", id_column="id", on_duplicate_id="error"))


def test_file_names_made_from_ids_are_safe_bounded_and_distinct():
    long = "a" * 300
    names = [safe_file_name(i, ".png") for i in ("../x", "a/b", "a_b", long, long + "b", "\x00evil", "ok-1.2")]
    assert len(set(names)) == len(names)
    assert all(len(n) <= 130 and not n.startswith(".") and "/" not in n and "\x00" not in n for n in names)
    assert safe_file_name("ok-1.2") == "ok-1.2"


def test_reconstruct_writes_hostile_ids_as_safe_files(generator, tmp_path):
    from click.testing import CliRunner

    from latentmill.cli import main

    _parquet(tmp_path / "in" / "a.parquet", ["../escape", "b" * 300, "fine"])
    cfg = config(generator, tmp_path / "in", tmp_path / "store", id_column="id")
    invert_here(cfg)
    out = tmp_path / "recon"
    result = CliRunner().invoke(main, ["reconstruct", cfg.output, "--ids", f"../escape,{'b' * 300},fine", "--out",
                                       str(out)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 3 and all(not n.startswith(".") and len(n) < 160 for n in names)
    assert not (tmp_path / "escape.refined.png").exists()


def test_an_orphan_sidecar_is_a_row_that_says_so(generator, tmp_path):
    files = {**good(2), "lonely.mask.png": png_bytes(colorful().convert("L")), "notes.json": b"{}"}
    frame = invert_here(config(generator, folder(tmp_path / "in", files), tmp_path / "store"))
    rows = frame.set_index("image_id")
    assert len(frame) == 4
    assert rows.loc["lonely.mask.png", "error"].startswith("orphan sidecar: no image lonely.*")
    assert rows.loc["notes.json", "error"].startswith("orphan sidecar: no image notes.*")


# ---- arguments -----------------------------------------------------------------------------------

@pytest.mark.parametrize("change,message", [
    (dict(decode_threads=0), "--decode-threads must be at least 1, got 0"),
    (dict(max_pixels=0), "--max-pixels must be at least 64, got 0"),
    (dict(cpus_per_actor=0), "--cpus-per-actor must be above 0, got 0"),
    (dict(num_gpus=-1), "--num-gpus must be at least 0, got -1"),
    (dict(lr=float("nan")), "--lr: nan is not a finite number"),
    (dict(pixel_weight=float("inf")), "--pixel-weight: inf is not a finite number"),
    (dict(early_stop_patience=-5), "--early-stop-patience must be at least 0, got -5"),
    (dict(read_timeout=0.0), "--read-timeout must be above 0, got 0"),
])
def test_bad_counts_and_limits_are_one_line_errors_before_work(generator, tmp_path, change, message):
    cfg = config(generator, folder(tmp_path / "in", good(1)), tmp_path / "store", **change)
    with pytest.raises(ValueError, match=message):
        preflight_invert(cfg)
    assert not (tmp_path / "store").exists()


def test_an_empty_input_and_an_unusable_output_are_errors_before_work(generator, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="--input .* holds no inputs"):
        preflight_invert(config(generator, tmp_path / "empty", tmp_path / "store"))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="--output .* is a file"):
        preflight_invert(config(generator, folder(tmp_path / "in", good(1)), tmp_path / "afile"))


def test_an_output_on_a_read_only_filesystem_is_an_error_before_work(generator, tmp_path):
    """A real read-only mount (root ignores permission bits, so chmod proves nothing): a tmpfs mounted
    read-only inside a private mount namespace, with the command run there."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is needed to mount a read-only filesystem")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    source = folder(tmp_path / "in", good(1))
    command = (f"mount -t tmpfs -o ro tmpfs {readonly} && {sys.executable} -m latentmill invert --input {source} "
               f"--output {readonly}/store --generator {generator} --stages refine --perceptual none --no-progress")
    result = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", command], capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    if "mount:" in result.stderr and "store" not in result.stderr:
        pytest.skip(f"cannot mount here: {result.stderr.strip()}")
    assert result.returncode == 2, result.stderr
    assert "--output" in result.stderr and "is not writable" in result.stderr and "Traceback" not in result.stderr


# ---- storage faults and permissions ----------------------------------------------------------------

class _FullDisk(MemoryFileSystem):
    """An in-memory filesystem whose writes fail once `budget` bytes have been written (disk full)."""

    protocol = "fulldisk"
    budget = 10**9

    def pipe_file(self, path, value, **kwargs):
        type(self).budget -= len(value)
        if type(self).budget < 0:
            raise OSError(28, "No space left on device")
        return super().pipe_file(path, value, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode, **kwargs)
        if "w" in mode:
            original = f.write

            def write(data):
                type(self).budget -= len(data)
                if type(self).budget < 0:
                    raise OSError(28, "No space left on device")
                return original(data)

            f.write = write
        return f


def test_a_full_disk_leaves_no_partial_shard_and_the_rerun_completes(generator, tmp_path):
    fsspec.register_implementation("fulldisk", _FullDisk, clobber=True)
    source = folder(tmp_path / "in", good(12))
    cfg = config(generator, source, "fulldisk://store", shard_size=6, max_retries=0)

    class FillsTheDisk(ShardProcessor):
        def process(self, spec, attempt=1):
            if spec.shard_id == "folder-00001":
                _FullDisk.budget = 100
            return super().process(spec, attempt)

    with pytest.raises(OSError, match="No space left"):
        run_invert(cfg, processor_class=FillsTheDisk, runner=run_shards_here)
    assert set(manifest_entries(cfg.output)) == {"folder-00000"}
    fs = fsspec.filesystem("fulldisk")
    assert not fs.exists(shard_file(cfg.output, "folder-00001").removeprefix("fulldisk://"))
    _FullDisk.budget = 10**9
    run_invert(cfg, runner=run_shards_here)
    assert sorted(read_latents(cfg.output)["image_id"]) == sorted(good(12))


def test_store_files_honour_the_umask(generator, tmp_path):
    old = os.umask(0o022)
    try:
        invert_here(config(generator, folder(tmp_path / "in", good(1)), tmp_path / "store"))
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "store").rglob("*") if p.is_file() and p.name != ".lock"]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in files), \
        {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}


def test_every_store_file_is_readable_by_teammates(tmp_path):
    from pipeline.uris import write_bytes

    old = os.umask(0o002)
    try:
        write_bytes(str(tmp_path / "a" / "b.json"), b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "b.json").stat().st_mode) == 0o664

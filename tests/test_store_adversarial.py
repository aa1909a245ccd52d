"""The store against an adversary, round two: each case is what someone tried and what must then hold.

Names that are not text, files that are not files, ids that collide only after suffixing, bytes
flipped where the footer cannot see them, shards swapped in from other stores, torn and garbage
metadata, inputs that grow or change under a store, failures that are not the inputs', writers that
lose their claim. Runs use the CLI's own orchestrator with the shards run in this process (Ray's pool
is tested in test_store_chaos.py)."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import threading
import time
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.invert import EveryRowFailedError
from jobs.invert import run as run_invert
from pipeline.models.bundle import write_bundle
from pipeline.invert import shard_processor
from pipeline.invert.config import InvertConfig
from pipeline.runtime.local_runner import run_shards_here
from pipeline.store import layout
from pipeline.store.parquet_files import DamagedFileError
from pipeline.store.store import StoreDamagedError, open_store
from pipeline.store.store_lock import StoreClaimLostError, StoreLockedError, _heartbeat, claim_store
from pipeline.store.verify import repair_store, verify_store
from pipeline.store.writer import claim
from tests.conftest import tiny_generator
from tests.datasets import colorful, png_bytes
from tests.stores import invert_here, manifest_entries


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("models") / "g.safetensors"
    write_bundle(str(path), {"G_ema": tiny_generator(16)})
    return str(path)


@pytest.fixture(scope="module")
def other_generator(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("models") / "other.safetensors"
    write_bundle(str(path), {"G_ema": tiny_generator(16, seed=3)})
    return str(path)


def config(generator: str, input: Path, output: Path, **overrides) -> InvertConfig:
    base = dict(input=str(input), output=str(output), generator=generator, stages=("refine",), steps=1,
                perceptual="none", shard_size=4, batch_size=4, progress=False, decode_threads=2, precision="fp32")
    return InvertConfig(**{**base, **overrides})


def image(seed: int = 0) -> bytes:
    return png_bytes(colorful(seed=seed))


def folder(root: Path, n: int, start: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        (root / f"img{i:02d}.png").write_bytes(image(i))
    return root


def tar_file(path: Path, members: list[tuple[bytes | str, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name if isinstance(name, str) else name.decode("latin-1"))
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


# ---- names that are not text, files that are not files -------------------------------------------

def test_a_file_name_that_is_not_utf8_is_a_row_with_an_escaped_id(generator, tmp_path):
    source = folder(tmp_path / "in", 3)
    with open(os.fsencode(source) + b"/caf\xe9.png", "wb") as f:  # a Latin-1 name, as old Samba shares hold
        f.write(image(9))
    frame = invert_here(config(generator, source, tmp_path / "store"))
    assert len(frame) == 4 and (frame["status"] == "ok").all(), frame[["image_id", "error"]]
    assert "caf\\xe9.png" in set(frame["image_id"])
    from pipeline.data.names import raw_name

    assert raw_name("caf\\xe9.png") == b"caf\xe9.png"  # the id gives the file's bytes back


def test_a_latin1_tar_member_is_a_row_with_an_escaped_id(generator, tmp_path):
    tar_file(tmp_path / "in" / "shard.tar", [(b"caf\xe9.png", image(1)), ("plain.png", image(2))])
    frame = invert_here(config(generator, tmp_path / "in", tmp_path / "store"))
    assert sorted(frame["image_id"]) == ["shard/caf\\xe9", "shard/plain"]
    assert (frame["status"] == "ok").all()


def test_a_fifo_named_like_an_image_is_an_error_row_not_a_hang(generator, tmp_path):
    source = folder(tmp_path / "in", 2)
    os.mkfifo(source / "x.png")
    started = time.monotonic()
    frame = invert_here(config(generator, source, tmp_path / "store")).set_index("image_id")
    assert time.monotonic() - started < 60
    assert frame.loc["x.png", "status"] == "error" and frame.loc["x.png", "error"] == "not a regular file: a fifo"
    assert (frame.drop("x.png")["status"] == "ok").all()


def test_a_read_that_hangs_is_an_error_row_after_the_read_timeout(generator, tmp_path, monkeypatch):
    source = folder(tmp_path / "in", 3)
    from fsspec.implementations.local import LocalFileSystem

    real = LocalFileSystem._open

    def hangs_on_one(self, path, *args, **kwargs):  # a hung mount: the open never answers
        if str(path).endswith("img01.png"):
            time.sleep(30)
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "_open", hangs_on_one)
    frame = invert_here(config(generator, source, tmp_path / "store", read_timeout=1.0)).set_index("image_id")
    assert frame.loc["img01.png", "error"].startswith("read timeout: no answer within 1 s")
    assert (frame.drop("img01.png")["status"] == "ok").all()


# ---- ids unique by construction -------------------------------------------------------------------

def test_tars_whose_names_flatten_alike_and_a_suffix_look_alike_keep_every_row(generator, tmp_path):
    import hashlib

    look_alike = f"sub_a-{hashlib.sha256(b'sub_a.tar').hexdigest()[:8]}.tar"  # the suffix a collision gets
    for i, name in enumerate(("sub/a.tar", "sub_a.tar", look_alike, "SUB_A.tar")):
        tar_file(tmp_path / "in" / name, [("k.png", image(i)), ("j.png", image(10 + i))])
    summary = run_invert(config(generator, tmp_path / "in", tmp_path / "store"), runner=run_shards_here)
    frame = open_store(str(tmp_path / "store")).to_pandas()
    assert summary.rows == len(frame) == 8 and frame["image_id"].is_unique
    assert verify_store(str(tmp_path / "store")).ok


def test_parquet_ids_that_look_like_suffixes_and_null_ids_stay_unique(generator, tmp_path):
    (tmp_path / "in").mkdir()
    ids = ["dupid", "dupid", "dupid~1", None, "a/3", "a/1"]
    pq.write_table(pa.table({"id": ids, "image": [image(i) for i in range(len(ids))]}), tmp_path / "in" / "a.parquet")
    frame = invert_here(config(generator, tmp_path / "in", tmp_path / "store", id_column="id"))
    assert len(frame) == len(ids) and frame["image_id"].is_unique
    assert {"dupid", "dupid~1", "dupid~2", "a/3"} <= set(frame["image_id"])


def test_a_repeated_tar_key_is_an_error_row_with_on_duplicate_id_error(generator, tmp_path):
    tar_file(tmp_path / "in" / "s.tar", [("k.png", image(1)), ("k.png", image(2)), ("k~1.png", image(3))])
    # streamed: the repeat takes the first free suffix (k~1), and the later key spelled k~1 gets one itself
    suffixed = invert_here(config(generator, tmp_path / "in", tmp_path / "store"))
    assert sorted(suffixed["image_id"]) == ["s/k", "s/k~1", "s/k~1~1"] and (suffixed["status"] == "ok").all()
    refused = invert_here(config(generator, tmp_path / "in", tmp_path / "store2", on_duplicate_id="error"))
    rows = refused.set_index("image_id")
    assert rows.loc["s/k~1", "error"].startswith("duplicate id: the tar holds k more than once")
    assert rows.loc["s/k", "status"] == "ok" and rows.loc["s/k~1~1", "status"] == "ok"


# ---- shards you can trust ---------------------------------------------------------------------------

def _flip_inside_a_page(path: Path, column: str = "w_refined") -> None:
    """Flip a byte in the middle of a column's data page: the footer (and so the row count) stays intact."""
    meta = pq.ParquetFile(path).metadata.row_group(0)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema.startswith(column))
    data = bytearray(path.read_bytes())
    data[chunk.data_page_offset + chunk.total_compressed_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_bytes_flipped_inside_a_data_page_are_found_named_and_redone(generator, tmp_path):
    from click.testing import CliRunner

    from latentmill.cli import main

    cfg = config(generator, folder(tmp_path / "in", 8), tmp_path / "store")
    invert_here(cfg)
    damaged = tmp_path / "store" / layout.shard_file_name("folder-00001")
    _flip_inside_a_page(damaged)
    with pytest.raises(DamagedFileError, match=f"{damaged}.*latentmill verify --repair"):
        open_store(cfg.output).to_pandas()
    result = CliRunner().invoke(main, ["reconstruct", cfg.output, "--ids", "img00.png", "--output",
                                       str(tmp_path / "out")])
    assert result.exit_code == 2 and "verify --repair" in result.output and "Traceback" not in result.output
    report = verify_store(cfg.output)
    assert [p.shard for p in report.damaged] == ["folder-00001"]
    with claim(cfg.output) as writer:
        repair_store(writer, report)
    frame = invert_here(cfg)
    assert sorted(frame["image_id"]) == [f"img{i:02d}.png" for i in range(8)] and verify_store(cfg.output).ok


def test_a_shard_swapped_in_from_a_store_of_other_steps_is_found_by_resume_and_verify(generator, tmp_path):
    source = folder(tmp_path / "in", 8)
    invert_here(config(generator, source, tmp_path / "store"))
    invert_here(config(generator, source, tmp_path / "other", steps=3))
    for name in (layout.shard_file_name("folder-00001"), layout.entry_name("folder-00001")):
        shutil.copy(tmp_path / "other" / name, tmp_path / "store" / name)  # the file and its entry, together
    report = verify_store(str(tmp_path / "store"))
    assert [p.shard for p in report.damaged] == ["folder-00001"]
    assert "another recipe" in report.damaged[0].problem
    frame = invert_here(config(generator, source, tmp_path / "store"))  # resume redoes it
    assert set(frame["refine_steps"]) == {1} and verify_store(str(tmp_path / "store")).ok


def test_a_shard_of_another_generator_swapped_in_is_found_by_resume_and_verify(generator, other_generator, tmp_path):
    source = folder(tmp_path / "in", 8)
    invert_here(config(generator, source, tmp_path / "store"))
    invert_here(config(other_generator, source, tmp_path / "other"))
    shutil.copy(tmp_path / "other" / layout.shard_file_name("folder-00000"),
                tmp_path / "store" / layout.shard_file_name("folder-00000"))  # the file alone
    report = verify_store(str(tmp_path / "store"))
    assert [p.shard for p in report.damaged] == ["folder-00000"]
    invert_here(config(generator, source, tmp_path / "store"))
    frame = open_store(str(tmp_path / "store")).to_pandas()
    assert frame["model_fingerprint"].nunique() == 1 and verify_store(str(tmp_path / "store")).ok


def test_a_torn_manifest_entry_is_named_repaired_and_redone(generator, tmp_path):
    cfg = config(generator, folder(tmp_path / "in", 8), tmp_path / "store")
    invert_here(cfg)
    entry = tmp_path / "store" / layout.entry_name("folder-00000")
    entry.write_bytes(entry.read_bytes()[:25])
    report = verify_store(cfg.output)
    assert not report.ok and "folder-00000" in "\n".join(report.lines()) and "torn" in "\n".join(report.lines())
    with claim(cfg.output) as writer:
        repair_store(writer, report)
    assert len(invert_here(cfg)) == 8 and verify_store(cfg.output).ok


@pytest.mark.parametrize("name,garbage", [(layout.PLAN, b"PAR1 not a plan"), (layout.RECIPE, b"[]"),
                                          (layout.RECIPE, b'{"settings": '), (layout.PRECISION, b"\x00\x01")])
def test_garbage_metadata_is_named_and_repair_leaves_a_store_the_next_run_completes(generator, tmp_path, name,
                                                                                    garbage):
    cfg = config(generator, folder(tmp_path / "in", 8), tmp_path / "store")
    invert_here(cfg)
    (tmp_path / "store" / layout.entry_name("folder-00001")).unlink()  # one shard still to run
    (tmp_path / "store" / name).write_bytes(garbage)
    report = verify_store(cfg.output)
    assert name in report.damaged_files and not report.ok
    if name != layout.PRECISION:
        with pytest.raises(StoreDamagedError, match=f"{name}.*verify --repair"):
            invert_here(cfg)
    with claim(cfg.output) as writer:
        repair_store(writer, report)
    frame = invert_here(cfg)
    assert sorted(frame["image_id"]) == [f"img{i:02d}.png" for i in range(8)] and verify_store(cfg.output).ok


# ---- a changed input is seen ----------------------------------------------------------------------

def test_files_added_to_the_input_become_new_shards_and_the_run_says_so(generator, tmp_path, capsys):
    source = folder(tmp_path / "in", 8)
    cfg = config(generator, source, tmp_path / "store")
    invert_here(cfg)
    folder(source, 3, start=8)
    frame = invert_here(cfg)
    assert sorted(frame["image_id"]) == [f"img{i:02d}.png" for i in range(11)]
    assert "3 new input files since the store was made: planned as 1 new shards (folder-00002)" in \
        capsys.readouterr().err
    assert verify_store(cfg.output).ok


def test_an_input_changed_under_a_finished_shard_is_refused_then_redone_on_request(generator, tmp_path):
    from pipeline.invert.invert_store import InputChangedError

    source = folder(tmp_path / "in", 8)
    invert_here(config(generator, source, tmp_path / "store"))
    (source / "img05.png").write_bytes(image(99))
    with pytest.raises(InputChangedError, match="(?s)img05.png.*folder-00001.*--on-changed-input redo"):
        invert_here(config(generator, source, tmp_path / "store"))
    before = {e["sha256"] for e in manifest_entries(str(tmp_path / "store")).values()}
    invert_here(config(generator, source, tmp_path / "store", on_changed_input="redo"))
    after = manifest_entries(str(tmp_path / "store"))
    assert after["folder-00000"]["sha256"] in before and after["folder-00001"]["sha256"] not in before


# ---- failures that are not the inputs' --------------------------------------------------------------

def test_a_failure_of_the_whole_batch_fails_the_shard_for_a_retry_not_into_error_rows(generator, tmp_path,
                                                                                      monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("a bug in a stage")

    monkeypatch.setattr(shard_processor, "invert_batch", broken)
    cfg = config(generator, folder(tmp_path / "in", 8), tmp_path / "store", max_retries=1)
    summary = run_invert(cfg, runner=run_shards_here)
    assert summary.shards_failed == ["folder-00000", "folder-00001"] and summary.rows == 0
    assert manifest_entries(cfg.output) == {}  # no finished shard of error rows that no rerun would retry
    failure = json.loads((tmp_path / "store" / layout.entry_name("folder-00000", failed=True)).read_text())
    assert failure["attempts"] == 2 and "every part of a batch failed alike" in failure["error"]
    assert len(calls) == 2 * 2 * 3  # per attempt: the batch and its two halves, no deeper bisection


def test_out_of_memory_fails_the_shard_at_once_and_a_fresh_processor_retries_it(generator, tmp_path, monkeypatch):
    real, failures = shard_processor.invert_batch, []

    def out_of_memory_once(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(shard_processor, "invert_batch", out_of_memory_once)
    frame = invert_here(config(generator, folder(tmp_path / "in", 4), tmp_path / "store"))
    assert (frame["status"] == "ok").all() and len(failures) == 1
    assert manifest_entries(str(tmp_path / "store"))["folder-00000"]["attempt"] == 2


def test_a_run_whose_every_row_failed_exits_non_zero_and_says_why(generator, tmp_path):
    from click.testing import CliRunner

    from latentmill.cli import main

    (tmp_path / "in").mkdir()
    for i in range(3):
        (tmp_path / "in" / f"bad{i}.png").write_bytes(b"not an image at all")
    args = ["invert", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "store"), "--generator", generator,
            "--stages", "refine", "--perceptual", "none", "--runner", "local", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "every one of the 3 rows this run made is an error (3 not an image)" in result.output
    with pytest.raises(EveryRowFailedError):
        run_invert(config(generator, tmp_path / "in", tmp_path / "store2"), runner=run_shards_here)


# ---- one writer, with a claim it can lose ------------------------------------------------------------

def test_curate_rebalance_and_report_claim_the_store(generator, tmp_path):
    from jobs.curate import run as curate
    from pipeline.report.html_report import build_report
    from pipeline.curation.curation_settings import CurateConfig

    cfg = config(generator, folder(tmp_path / "in", 4), tmp_path / "store")
    invert_here(cfg)
    with claim_store(cfg.output):
        with pytest.raises(StoreLockedError, match="is being written by the run of pid"):
            curate(CurateConfig(store=cfg.output, progress=False))
        with pytest.raises(StoreLockedError):
            build_report(cfg.output, in_domain=0, curve_images=0)
    assert not (tmp_path / "store" / layout.FLAGS).exists()


def test_a_lease_taken_over_by_another_run_stops_this_runs_writes():
    store = "memory://contested-store"
    with claim(store) as writer:
        fs = fsspec.filesystem("memory")
        lease = "/contested-store/" + layout.LEASE
        stop = threading.Event()
        thread = threading.Thread(target=_heartbeat, args=(fs, lease, writer.claim, stop, 0.05, 1.0))
        thread.start()
        writer.write_json("note.json", {"mine": True})
        fs.pipe_file(lease, json.dumps({"token": "someone else", "heartbeat": time.time(), "pid": 1}).encode())
        deadline = time.time() + 5
        while not writer.claim.lost.is_set() and time.time() < deadline:
            time.sleep(0.05)
        stop.set()
        thread.join()
        with pytest.raises(StoreClaimLostError, match="lost its claim.*stopped writing"):
            writer.write_json("note.json", {"mine": False})
        assert json.loads(fs.cat_file("/contested-store/note.json")) == {"mine": True}


def test_a_heartbeat_that_cannot_renew_says_so_and_gives_the_claim_up(capsys):
    from pipeline.store.store_lock import StoreClaim

    class Failing:
        def cat_file(self, path):
            raise OSError("the bucket is unreachable")

    held = StoreClaim("s3://bucket/store", {"token": "t"})
    stop = threading.Event()
    thread = threading.Thread(target=_heartbeat, args=(Failing(), "p", held, stop, 0.05, 0.2))
    thread.start()
    thread.join(timeout=5)
    assert held.lost.is_set() and "could not be renewed" in held.why_lost
    assert "could not renew the lease on s3://bucket/store" in capsys.readouterr().err

"""Datasets as the field writes them, each input exactly one row: folders made by img2dataset itself,
nested trees written by the webdataset library, Parquet written by Hugging Face datasets, tars made
by GNU tar (hardlinks, symlinks), multi-GB members, symlink loops, stores inside their input, and the
store's own files against links and full disks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.planning import InputPlan, compare_listing, list_input, plan_listing
from pipeline.data.sources import read_shard
from pipeline.models.bundle import write_bundle
from pipeline.invert.config import InvertConfig
from pipeline.store import layout
from pipeline.store.store import open_store
from pipeline.store.store_lock import StoreLinkError
from pipeline.store.verify import repair_store, verify_store
from pipeline.store.writer import claim
from tests import real_layouts
from tests.conftest import tiny_generator
from tests.datasets import colorful, png_bytes
from tests.stores import invert_here

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("models") / "g.safetensors"
    write_bundle(str(path), {"G_ema": tiny_generator(16)})
    return str(path)


def config(generator: str, input: Path, output: Path, **overrides) -> InvertConfig:
    base = dict(input=str(input), output=str(output), generator=generator, stages=("refine",), steps=1,
                perceptual="none", shard_size=4, batch_size=4, progress=False, decode_threads=2, precision="fp32")
    return InvertConfig(**{**base, **overrides})


def plan_of(folder: Path, **options):
    return plan_listing(list_input(str(folder)), **options)


def records_of(folder: Path, **options):
    plan = plan_of(folder, **options)
    return plan, [r for spec in plan.shards for r in read_shard(spec)]


# ---- img2dataset's three output formats ------------------------------------------------------------

@pytest.fixture(scope="module", params=["webdataset", "parquet", "files"])
def downloaded(request, tmp_path_factory) -> real_layouts.Img2DatasetOutput:
    """25 images and 3 broken URLs fetched by img2dataset from a loopback server."""
    return real_layouts.img2dataset_output(tmp_path_factory.mktemp(f"i2d-{request.param}"), n_ok=25, n_broken=3,
                                           output_format=request.param, samples_per_shard=10)


def test_img2dataset_output_gives_every_downloaded_image_its_row_with_its_metadata(downloaded):
    plan, records = records_of(downloaded.folder)
    images = [r for r in records if r.error is None]
    assert len(images) == downloaded.n_ok == 25
    for record in images:
        key = record.image_id.rsplit("/", 1)[-1].removesuffix(".jpg")
        assert record.meta["caption"] == downloaded.captions[key]
        assert record.meta["url"] == downloaded.urls[key]
        assert record.meta["label"] == downloaded.labels[key]  # a column of the URL list, carried by img2dataset
        if downloaded.output_format != "parquet":  # its .txt part or sidecar: the caption as written
            assert record.meta["txt"] == downloaded.captions[key]
    errors = [r for r in records if r.error is not None]
    if downloaded.output_format == "parquet":  # the failed downloads are rows of its Parquet: said as such
        assert len(errors) == 3 and all(r.error.startswith("not downloaded: HTTP Error 404") for r in errors)
        assert {r.image_id for r in images} == set(downloaded.keys)  # img2dataset's keys are the ids
    else:  # metadata Parquet and _stats.json are not rows
        assert errors == []
    assert plan.found.startswith(f"img2dataset {downloaded.output_format} output: {len(downloaded.shards)} shards, "
                                 "25 samples (28 downloads attempted)")
    saved = InputPlan.from_table(plan.to_table())
    assert not compare_listing(saved, list_input(str(downloaded.folder))), "a rerun finds nothing new or changed"


@pytest.mark.parametrize("downloaded", ["webdataset"], indirect=True)  # the reader test covers every format
def test_img2dataset_webdataset_output_inverts_to_25_ok_rows_and_says_what_it_found(downloaded, generator, tmp_path,
                                                                                     capsys):
    frame = invert_here(config(generator, downloaded.folder, tmp_path / "store", progress=False))
    assert len(frame) == 25 and (frame["status"] == "ok").all()
    assert "input: img2dataset webdataset output: 3 shards, 25 samples" in capsys.readouterr().err
    assert json.loads(frame["meta"].iloc[0])["status"] == "success"


# ---- the webdataset library's nested trees ----------------------------------------------------------

def test_nested_shards_with_equal_names_are_distinct_stable_and_redone_from_their_own_file(generator, tmp_path):
    tree = real_layouts.webdataset_tree(tmp_path / "shards", shards={"train/00000.tar": 4, "val/00000.tar": 3})
    store = tmp_path / "store"
    first = invert_here(config(generator, tree.folder, store))
    again = invert_here(config(generator, tree.folder, store))
    assert len(first) == len(again) == tree.n == 7, "a rerun plans nothing new"
    plan = open_store(str(store)).input_plan
    assert sorted(s.file for s in plan.shards) == ["train/00000.tar", "val/00000.tar"]
    # lose the val shard, repair, rerun: it is redone from val/00000.tar, not from train's tar of the same name
    val = next(s.shard_id for s in plan.shards if s.file == "val/00000.tar")
    (store / layout.shard_file_name(val)).write_bytes(b"lost")
    with claim(str(store)) as writer:
        repair_store(writer, verify_store(str(store)))
    redone = invert_here(config(generator, tree.folder, store)).set_index("image_id")
    assert len(redone) == 7 and verify_store(str(store)).ok
    for key in tree.shards["val/00000.tar"]:
        row = redone.loc[f"{val}/{key}"]
        assert row["source_uri"].endswith(f"val/00000.tar#{key}")
        assert json.loads(row["meta"])["cls"] == str(tree.labels[("val/00000.tar", key)])


def test_a_store_planned_by_base_names_is_upgraded_or_refused_with_the_way_out(generator, tmp_path):
    tree = real_layouts.webdataset_tree(tmp_path / "in", shards={"a.tar": 2, "sub/b.tar": 2})
    store = tmp_path / "store"
    invert_here(config(generator, tree.folder, store))
    table = pq.read_table(store / layout.PLAN)  # as the earlier version wrote it: base names, plan version 1
    meta = json.loads(table.schema.metadata[b"latentmill"])
    meta["plan_version"] = 1
    paths = [p.rsplit("/", 1)[-1] for p in table.column("path").to_pylist()]
    old = table.set_column(table.schema.get_field_index("path"), "path", pa.array(paths)) \
        .replace_schema_metadata({**table.schema.metadata, b"latentmill": json.dumps(meta).encode()})
    pq.write_table(old, store / layout.PLAN)
    with pytest.raises(Exception, match="rerun the store's `latentmill invert` command once"):
        open_store(str(store)).plan
    assert len(invert_here(config(generator, tree.folder, store))) == 4
    assert sorted(s.file for s in open_store(str(store)).input_plan.shards) == ["a.tar", "sub/b.tar"]


# ---- Hugging Face Parquet, GNU tar links ----------------------------------------------------------------

def test_a_hugging_face_image_parquet_is_read_with_its_label(tmp_path):
    made = real_layouts.hf_image_parquet(tmp_path / "hf", n=6)
    plan, records = records_of(made.path.parent)
    assert len(records) == 6 and all(r.error is None for r in records)
    assert [r.meta["label"] for r in records] == list(made.labels)
    assert "Hugging Face Parquet file, 6 rows" in plan.found


def test_gnu_tar_links_a_hardlink_gives_its_targets_bytes_a_symlink_is_a_row_saying_so(tmp_path):
    made = real_layouts.gnu_tar_with_links(tmp_path / "links")
    _, records = records_of(made.path)
    by_key = {r.image_id.split("/", 1)[1]: r for r in records}
    hard = by_key[made.hardlink.rsplit(".", 1)[0]]
    assert hard.error is None and hard.data == made.content[made.links[made.hardlink]]
    sym = by_key[made.symlink.rsplit(".", 1)[0]]
    assert sym.data is None and sym.error.startswith("a symlink member")
    files = [n for n, kind in made.kinds.items() if kind != "dir"]
    assert len(records) == len(files), "every member that is not a folder is one row"


# ---- bounded memory on multi-GB shards -----------------------------------------------------------------

READ_PEAK = """
import resource, sys
from pipeline.data.planning import InputPlan, compare_listing, list_input, plan_listing
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
plan = plan_listing(list_input(sys.argv[1]))
rows = [(r.image_id, r.error) for spec in plan.shards for r in read_shard(spec, max_input_bytes=int(sys.argv[2]))]
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, len(rows), sum(e is not None for _, e in rows))
""".replace("import resource, sys", "import resource, sys\nfrom pipeline.data.sources import read_shard")


def _read_peak_kib(folder: Path, limit: int) -> tuple[int, int, int]:
    out = subprocess.run([sys.executable, "-c", READ_PEAK, str(folder), str(limit)], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.split()
    return int(out[0]), int(out[1]), int(out[2])


def test_a_member_past_the_limit_is_a_too_large_row_never_read(tmp_path):
    (tmp_path / "big").mkdir(), (tmp_path / "small").mkdir()
    big = real_layouts.big_tar(tmp_path / "big", member_bytes=1_600_000_000)  # a 1.5 GiB member (a file hole)
    small = real_layouts.big_tar(tmp_path / "small", member_bytes=1000)
    peak_big, rows, errors = _read_peak_kib(big.path, 64 << 20)
    peak_small, _, _ = _read_peak_kib(small.path, 64 << 20)
    assert rows == len(big.names) and errors == 1
    assert peak_big - peak_small < 64 * 1024, "reading past a 1.5 GiB member costs no more than a small tar"
    [too_large] = [r for r in read_shard(plan_of(big.path).shards[0], max_input_bytes=64 << 20) if r.error]
    assert too_large.error.startswith("too large") and "--max-input-bytes" in too_large.error


def test_a_compressed_tar_damaged_part_way_keeps_the_rows_before_the_damage(tmp_path):
    (tmp_path / "in").mkdir()
    with tarfile.open(tmp_path / "in" / "s.tar.gz", "w:gz") as archive:
        for i in range(9):
            data = png_bytes(colorful(seed=i).resize((64, 64)))
            info = tarfile.TarInfo(f"k{i}.png")
            info.size = len(data)
            archive.addfile(info, __import__("io").BytesIO(data))
    data = bytearray((tmp_path / "in" / "s.tar.gz").read_bytes())
    cut = len(data) * 2 // 3
    data[cut: cut + 64] = bytes(64)  # damaged two-thirds in
    (tmp_path / "in" / "s.tar.gz").write_bytes(bytes(data))
    _, records = records_of(tmp_path / "in")
    kept = [r for r in records if r.error is None]
    assert 3 <= len(kept) < 9 and records[-1].image_id == "s/<rest of shard>"
    assert records[-1].error.startswith("unreadable tar")


def test_a_sidecar_nested_too_deep_for_the_parser_is_marked_not_the_shards_failure(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(png_bytes(colorful()))
    (tmp_path / "in" / "a.json").write_text("[" * 200_000 + "]" * 200_000)
    _, [record] = records_of(tmp_path / "in")
    assert record.error is None and record.meta == {"_unparsable_json": True}


# ---- trees as they are ------------------------------------------------------------------------------------

def test_symlink_loops_list_each_image_once_and_end(tmp_path):
    for i in range(3):
        (tmp_path / "in" / "sub").mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / "sub" / f"{i}.png").write_bytes(png_bytes(colorful(seed=i)))
    os.symlink(".", tmp_path / "in" / "self")
    os.symlink("..", tmp_path / "in" / "sub" / "up")
    listing = list_input(str(tmp_path / "in"))
    assert listing.paths == ["sub/0.png", "sub/1.png", "sub/2.png"]
    assert any("symlink loop" in note for note in listing.notes)


def test_a_store_inside_its_input_is_left_out_of_the_input(generator, tmp_path, capsys):
    for i in range(3):
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data" / f"{i}.png").write_bytes(png_bytes(colorful(seed=i)))
    for _ in range(3):
        frame = invert_here(config(generator, tmp_path / "data", tmp_path / "data" / "out"))
    assert len(frame) == 3 and (frame["status"] == "ok").all()
    assert "out/ left out: it is the output store" in capsys.readouterr().err


# ---- ids unique against everything the store holds ---------------------------------------------------------

def test_ids_added_later_never_equal_suffixes_an_earlier_plan_gave(generator, tmp_path):
    (tmp_path / "in").mkdir()
    img = [png_bytes(colorful(seed=i)) for i in range(4)]
    pq.write_table(pa.table({"id": ["x", "x"], "image": img[:2]}), tmp_path / "in" / "a.parquet")
    invert_here(config(generator, tmp_path / "in", tmp_path / "store", id_column="id"))
    pq.write_table(pa.table({"id": ["x~1", "x"], "image": img[2:]}), tmp_path / "in" / "b.parquet")
    frame = invert_here(config(generator, tmp_path / "in", tmp_path / "store", id_column="id"))
    assert len(frame) == 4 and frame["image_id"].is_unique
    assert verify_store(str(tmp_path / "store")).ok


def test_a_truncated_tars_failure_row_never_takes_a_members_id(tmp_path):
    (tmp_path / "in").mkdir()
    with tarfile.open(tmp_path / "in" / "s.tar", "w") as archive:
        for name in ("<rest of shard>.png", "a.png", "b.png"):
            data = png_bytes(colorful(seed=len(name)).resize((96, 96)))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, __import__("io").BytesIO(data))
    whole = (tmp_path / "in" / "s.tar").read_bytes()
    (tmp_path / "in" / "s.tar").write_bytes(whole[: len(whole) // 2])
    _, records = records_of(tmp_path / "in")
    ids = [r.image_id for r in records]
    assert len(ids) == len(set(ids)) and ids[-1] == "s/<rest of shard>~1"


# ---- verify sees misplaced rows --------------------------------------------------------------------------------

def test_verify_names_swapped_shards_and_repair_quarantines_a_forged_one(generator, tmp_path):
    tree = real_layouts.webdataset_tree(tmp_path / "in", shards={"a.tar": 2, "b.tar": 2})
    store = tmp_path / "store"
    invert_here(config(generator, tree.folder, store))
    for name in (layout.shard_file_name, layout.entry_name):  # swap data files and entries together
        a, b = store / name("a"), store / name("b")
        tmp = a.with_suffix(".swap")
        a.rename(tmp), b.rename(a), tmp.rename(b)
    report = verify_store(str(store))
    assert {p.shard for p in report.damaged} == {"a", "b"} and not report.ok
    assert "holds rows of shard" in report.damaged[0].problem
    shutil.copy(store / layout.shard_file_name("a"), store / layout.shard_file_name("forged"))
    shutil.copy(store / layout.entry_name("a"), store / layout.entry_name("forged"))
    with claim(str(store)) as writer:
        done = repair_store(writer, verify_store(str(store)))
    assert any(line.startswith("shard forged: moved aside (not a shard of the plan)") for line in done)
    assert len(invert_here(config(generator, tree.folder, store))) == 4
    assert verify_store(str(store)).ok


# ---- a store touches only itself ------------------------------------------------------------------------------------

def test_a_lock_that_is_a_symlink_is_refused_and_its_target_untouched(generator, tmp_path):
    (tmp_path / "store").mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / "store" / layout.LOCK)
    with pytest.raises(StoreLinkError, match=r"\.lock is a symlink"):
        invert_here(config(generator, tmp_path, tmp_path / "store"))
    assert victim.read_text() == "precious"


def _latentmill(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "latentmill"), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600)


@pytest.mark.slow
def test_a_full_disk_is_one_error_line_and_the_same_command_resumes(generator, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        for i in range(12):
            (tmp_path / "in").mkdir(exist_ok=True)
            (tmp_path / "in" / f"{i}.png").write_bytes(png_bytes(colorful(seed=i)))
        command = ["invert", "--input", str(tmp_path / "in"), "--output", str(disk / "store"), "--generator", generator,
                   "--stages", "refine", "--steps", "1", "--perceptual", "none", "--shard-size", "3", "--no-progress",
                   "--precision", "fp32", "--runner", "local"]  # the subject is the store's writes, not Ray
        full = _latentmill(*command)
        assert full.returncode == 1 and "Traceback" not in full.stderr
        assert full.stderr.strip().splitlines()[-1].startswith("error: no space left on the device")
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        resumed = _latentmill(*command)
        assert resumed.returncode == 0, resumed.stderr
        assert verify_store(str(disk / "store")).ok and len(open_store(str(disk / "store")).to_pandas()) == 12
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.parametrize("command", [["verify", "{file}"], ["curate", "{file}"], ["report", "{file}"],
                                     ["convert", "{generator}", "{folder}"]])
def test_a_file_where_a_folder_belongs_and_the_reverse_are_one_error_line(command, generator, tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "afolder").mkdir()
    args = [a.format(file=tmp_path / "afile", folder=tmp_path / "afolder", generator=generator) for a in command]
    result = _latentmill(*args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")


# ---- retries and settings ---------------------------------------------------------------------------------------------

def test_retry_errors_redoes_only_transient_error_rows(generator, tmp_path, monkeypatch):
    from fsspec.implementations.local import LocalFileSystem

    for i in range(4):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"{i}.png").write_bytes(png_bytes(colorful(seed=i)))
    (tmp_path / "in" / "bad.png").write_bytes(b"not an image")
    real = LocalFileSystem._open

    def fails_once(self, path, *args, **kwargs):  # a storage hiccup on one file during the first run
        if str(path).endswith("2.png"):
            raise OSError(5, "Input/output error")
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "_open", fails_once)
    first = invert_here(config(generator, tmp_path / "in", tmp_path / "store")).set_index("image_id")
    assert first.loc["2.png", "error"].startswith("unreadable: OSError")
    monkeypatch.setattr(LocalFileSystem, "_open", real)
    again = invert_here(config(generator, tmp_path / "in", tmp_path / "store", retry_errors=True)).set_index("image_id")
    assert again.loc["2.png", "status"] == "ok"
    assert again.loc["bad.png", "error"] == first.loc["bad.png", "error"], "a content error is not retried"
    for kept in ("0.png", "1.png", "3.png"):
        assert list(again.loc[kept, "w_refined"]) == list(first.loc[kept, "w_refined"])
    assert verify_store(str(tmp_path / "store")).ok


def test_an_absurd_read_timeout_is_refused_like_nan(generator, tmp_path):
    problems = config(generator, tmp_path, tmp_path / "store", read_timeout=1e300).problems()
    assert any(p.startswith("--read-timeout must be at most") for p in problems)


def test_reconstruct_names_extension_and_case_twins_apart_and_reads_ids_one_per_line(generator, tmp_path):
    for name in ("both.png", "both.jpg", "Face.png", "face.png", "with space.png"):
        (tmp_path / "in").mkdir(exist_ok=True)
        image = colorful(seed=len(name)).convert("RGB")
        image.save(tmp_path / "in" / name, format="PNG" if name.endswith("png") else "JPEG")
    invert_here(config(generator, tmp_path / "in", tmp_path / "store"))
    (tmp_path / "ids.txt").write_text("both.png\nboth.jpg\nFace.png\nface.png\nwith space.png\n")
    result = _latentmill("reconstruct", str(tmp_path / "store"), "--ids", f"@{tmp_path / 'ids.txt'}",
                         "--output", str(tmp_path / "renders"), "--column", "w_refined")
    assert result.returncode == 0, result.stderr
    names = {n.lower() for n in os.listdir(tmp_path / "renders")}
    assert len(names) == 5, "one file per id, distinct even where case does not count"


def test_an_encoder_checkpoint_with_malformed_opts_is_a_checkpoint_error_naming_it(tmp_path):
    import torch

    from pipeline.errors import CheckpointError
    from pipeline.models.checkpoints import read_checkpoint

    path = tmp_path / "psp.pt"
    torch.save({"state_dict": {"encoder.w": torch.zeros(2)}, "opts": {"encoder_type": ["GradualStyleEncoder"]}}, path)
    with pytest.raises(CheckpointError, match="opts or entries are malformed"):
        read_checkpoint(str(path))


def test_device_and_fifo_members_of_a_tar_are_rows_saying_what_they_are(tmp_path):
    import io

    (tmp_path / "in").mkdir()
    with tarfile.open(tmp_path / "in" / "s.tar", "w") as archive:
        data = png_bytes(colorful())
        info = tarfile.TarInfo("a.png")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
        for name, kind in (("pipe.png", tarfile.FIFOTYPE), ("tty.png", tarfile.CHRTYPE), ("disk.png", tarfile.BLKTYPE)):
            special = tarfile.TarInfo(name)
            special.type = kind
            archive.addfile(special)
    _, records = records_of(tmp_path / "in")
    errors = {r.image_id: r.error for r in records}
    assert errors["s/a"] is None
    assert errors["s/pipe"].startswith("a fifo member") and errors["s/tty"].startswith("a device member")
    assert errors["s/disk"].startswith("a device member") and len(records) == 4


def test_curate_on_a_finished_store_whose_lock_is_a_symlink_refuses_and_touches_nothing(generator, tmp_path):
    from click.testing import CliRunner

    from latentmill.cli import main

    (tmp_path / "in").mkdir()
    for i in range(3):
        (tmp_path / "in" / f"{i}.png").write_bytes(png_bytes(colorful(seed=i)))
    invert_here(config(generator, tmp_path / "in", tmp_path / "store"))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "store" / layout.LOCK).unlink(missing_ok=True)
    os.symlink(victim, tmp_path / "store" / layout.LOCK)
    result = CliRunner().invoke(main, ["curate", str(tmp_path / "store"), "--device", "cpu", "--no-progress"])
    assert result.exit_code == 2 and ".lock is a symlink" in result.output
    assert victim.read_text() == "precious"

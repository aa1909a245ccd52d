"""The builders in tests/real_layouts.py make what they say they make. These tests check the builders
only (file counts, members, columns); the project's readers are tested against them elsewhere."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests import real_layouts as rl


def _get(url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    with opener.open(url, timeout=5) as response:
        return response.read()


def test_images_are_deterministic_and_distinct():
    assert rl.image_bytes(rl.make_image(3)) == rl.image_bytes(rl.make_image(3))
    assert len({rl.image_bytes(rl.make_image(s)) for s in range(20)}) == 20
    assert rl.make_image(1, (24, 40)).size == (24, 40)


def test_serve_folder(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png bytes")
    with rl.serve_folder(tmp_path) as base:
        assert base.startswith("http://127.0.0.1:")
        assert _get(f"{base}/a.png") == b"png bytes"
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(f"{base}/missing.png")
        assert err.value.code == 404
    with pytest.raises(OSError):  # shut down on exit
        _get(f"{base}/a.png")


def test_webdataset_tree(tmp_path):
    pytest.importorskip("webdataset")
    tree = rl.webdataset_tree(tmp_path)
    assert set(tree.shards) == {"train/00000.tar", "val/00000.tar"} and tree.n == 7
    assert [len(k) for k in tree.shards.values()] == [4, 3]
    for rel, keys in tree.shards.items():
        with tarfile.open(tree.folder / rel) as tf:
            names = [m.name for m in tf.getmembers()]
            assert sorted(names) == sorted(f"{k}.{p}" for k in keys for p in ("jpg", "json", "cls"))
            for key in keys:
                assert int(tf.extractfile(f"{key}.cls").read()) == tree.labels[(rel, key)]
                assert json.loads(tf.extractfile(f"{key}.json").read())["key"] == key
                assert Image.open(tf.extractfile(f"{key}.jpg")).size == tree.sizes[(rel, key)]
    same = rl.webdataset_tree(tmp_path / "again", {"a/x.tar": 2, "b/x.tar": 2}, ("png", "txt"), unique_keys=False)
    assert same.shards == {"a/x.tar": ("sample000000", "sample000001"), "b/x.tar": ("sample000000", "sample000001")}


def test_hf_image_parquet(tmp_path):
    pytest.importorskip("datasets")
    out = rl.hf_image_parquet(tmp_path, n=6)
    table = pq.read_table(out.path)
    assert table.num_rows == out.n == 6 and table.column_names == list(out.columns) == ["image", "label"]
    assert b"huggingface" in table.schema.metadata
    rows = table.to_pylist()
    assert [r["label"] for r in rows] == list(out.labels)
    assert [Image.open(io.BytesIO(r["image"]["bytes"])).size for r in rows] == list(out.sizes)
    assert out.image_format == "PNG"


@pytest.mark.skipif(shutil.which("tar") is None, reason="no tar command")
def test_gnu_tar_with_links(tmp_path):
    if b"GNU tar" not in subprocess.run(["tar", "--version"], capture_output=True).stdout:
        pytest.skip("tar is not GNU tar")
    out = rl.gnu_tar_with_links(tmp_path)
    assert list(out.kinds.values()) == ["dir", "file", "file", "file", "hardlink", "symlink"]
    assert out.hardlink == "images/c_hardlink.png" and out.links[out.hardlink] == "images/c.png"
    assert out.symlink == "images/link_to_a.png" and out.links[out.symlink] == "a.png"
    with tarfile.open(out.path) as tf:
        assert tf.getmember(out.hardlink).size == 0  # a link member carries no data of its own
        assert tf.extractfile(out.hardlink).read() == out.content["images/c.png"]  # tarfile follows it
    assert len(out.content) == 5


@pytest.mark.parametrize("fill", ["zeros", "noise"])
def test_big_tar(tmp_path, fill):
    size = 3 * 2**20 + 5  # small here; the readers' tests pass GBs (fill="zeros" makes those instant)
    out = rl.big_tar(tmp_path, member_bytes=size, n_small=3, fill=fill)
    with tarfile.open(out.path) as tf:
        members = tf.getmembers()
        assert [m.name for m in members] == list(out.names) == ["small_000.png", out.big_name, "small_001.png",
                                                                  "small_002.png"]
        assert tf.getmember(out.big_name).size == size
        big = tf.extractfile(out.big_name).read()
        for name, data in out.small.items():
            assert tf.extractfile(name).read() == data
    assert len(big) == size and (big.count(0) == size) == (fill == "zeros")
    assert out.apparent_bytes == out.path.stat().st_size and out.apparent_bytes % tarfile.RECORDSIZE == 0


def test_big_tar_multi_gb_is_sparse(tmp_path):
    out = rl.big_tar(tmp_path, member_bytes=5 * 2**30)
    assert out.apparent_bytes > 5 * 2**30
    with tarfile.open(out.path) as tf:  # headers only: tarfile seeks over the member
        assert [m.size for m in tf.getmembers()][1] == 5 * 2**30
    if out.disk_bytes >= out.apparent_bytes:
        pytest.skip("this file system has no holes; the file really is 5 GiB")
    assert out.disk_bytes < 2**20

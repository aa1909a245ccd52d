"""Reading inputs: every input yields exactly one record, and decoding failures are named."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.data.decode import decode_image, decode_mask
from pipeline.data.planning import detect_layout, plan_shards
from pipeline.data.sources import read_shard
from tests.datasets import colorful, messy_folder, parquet_files, png_bytes, tar_shards


def records(uri, **kwargs):
    return [r for spec in plan_shards(uri, **kwargs) for r in read_shard(spec)]


def test_every_file_of_a_messy_folder_decodes_or_names_its_problem(tmp_path):
    expected = messy_folder(tmp_path / "in")
    found = {}
    for record in records(str(tmp_path / "in"), shard_size=5):
        decoded = decode_image(record.data, resolution=32)
        found[record.image_id] = record.error or ("ok" if decoded.ok else decoded.error)
    assert set(found) == set(expected), "exactly one record per input file"
    for name, status in expected.items():
        assert found[name].startswith(status), (name, found[name])


def test_decoded_images_have_the_generator_shape_and_range(tmp_path):
    expected = messy_folder(tmp_path / "in")
    for name, status in expected.items():
        if status == "ok":
            image = decode_image((tmp_path / "in" / name).read_bytes(), resolution=32).image
            assert image.shape == (3, 32, 32) and image.dtype == np.float32
            assert -1.0 <= image.min() and image.max() <= 1.0


def test_exif_orientation_is_applied():
    img = colorful().resize((40, 20))
    exif = img.getexif()
    exif[0x0112] = 6
    decoded = decode_image(png_bytes(img, "JPEG", exif=exif.tobytes()), resolution=32, policy="stretch")
    assert decoded.original_size == (40, 20)
    upright = decode_image(png_bytes(img.transpose(Image.Transpose.ROTATE_270), "JPEG"), resolution=32,
                           policy="stretch")
    assert np.abs(decoded.image - upright.image).mean() < 0.05


@pytest.mark.parametrize("policy", ["center-crop", "pad", "stretch"])
def test_resize_policies_produce_squares(policy):
    decoded = decode_image(png_bytes(colorful().resize((60, 30))), resolution=16, policy=policy)
    assert decoded.image.shape == (3, 16, 16)
    if policy == "pad":
        assert decoded.valid[0, 0].sum() == 0 and decoded.valid[0, 8].sum() == 16  # border rows unknown


def test_sidecars_are_attached_not_counted(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.png").write_bytes(png_bytes(colorful()))
    (root / "a.mask.png").write_bytes(png_bytes(Image.new("L", (40, 40), 255)))
    (root / "a.json").write_text('{"label": 3}')
    (root / ".hidden.png").write_bytes(b"x")
    [record] = records(str(root))
    assert record.image_id == "a.png" and record.meta == {"label": 3}
    assert decode_mask(record.mask, resolution=16).sum() == 256


def test_tar_shards_group_members_by_key(tmp_path):
    ids = tar_shards(tmp_path / "tars")
    assert detect_layout(str(tmp_path / "tars")) == "tar"
    specs = plan_shards(str(tmp_path / "tars"))
    assert [s.shard_id for s in specs] == ["shard-00000", "shard-00001"]
    found = records(str(tmp_path / "tars"))
    assert [r.image_id for r in found] == ids
    assert found[0].mask is not None and found[1].mask is None and found[1].meta == {"label": 1}


def test_a_truncated_tar_keeps_what_it_can_and_reports_the_rest(tmp_path):
    tar_shards(tmp_path / "tars", n_shards=1, per_shard=4)
    path = tmp_path / "tars" / "shard-00000.tar"
    path.write_bytes(path.read_bytes()[:2500])
    found = records(str(tmp_path / "tars"))
    assert found[-1].error.startswith("unreadable tar")


def test_parquet_rows_are_inputs_with_their_ids(tmp_path):
    ids = parquet_files(tmp_path / "pq")
    found = records(str(tmp_path / "pq"), id_column="id")
    assert [r.image_id for r in found] == ids
    assert not decode_image(found[2].data, resolution=16).ok  # the planted garbage row


def test_parquet_without_the_named_image_column_is_one_row_saying_so(tmp_path):
    parquet_files(tmp_path / "pq", n_files=1)
    [row] = records(str(tmp_path / "pq"), image_column="pixels")
    assert row.error.startswith("no image column") and "'pixels'" in row.error and "--image-column" in row.error


def test_fsspec_memory_filesystem_works_as_input():
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/dataset/x.png", png_bytes(colorful()))
    fs.pipe("/dataset/sub/y.png", png_bytes(colorful(seed=1)))
    assert [r.image_id for r in records("memory://dataset")] == ["sub/y.png", "x.png"]


def test_face_alignment_turns_faceless_images_into_named_errors():
    from pipeline.data.align import FaceAligner

    decoded = decode_image(png_bytes(colorful(size=160)), resolution=32, aligner=FaceAligner())
    assert not decoded.ok and decoded.error.startswith("no face")


def test_numbered_tar_shards_are_what_the_webdataset_library_reads(tmp_path):
    """latentmill's one tar shard writer (rebalance, make-demo-data, the demo bundle): numbered shards of
    shard_size samples; the webdataset library reads back every sample with its parts; a crash leaves
    only whole shards."""
    import webdataset as wds

    from pipeline.data.webdataset import TarShardWriter

    with TarShardWriter(str(tmp_path / "out"), "part", 2) as writer:
        shards = [writer.add(f"k{i}", {"png": bytes([i]) * 10, "json": b'{"i": %d}' % i}) for i in range(5)]
    assert shards == ["part-00000", "part-00000", "part-00001", "part-00001", "part-00002"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["part-00000.tar", "part-00001.tar", "part-00002.tar"]
    urls = [str(tmp_path / "out" / f"part-{i:05d}.tar") for i in range(3)]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"k{i}" for i in range(5)]
    assert all(s["png"] == bytes([i]) * 10 and s["json"] == b'{"i": %d}' % i for i, s in enumerate(samples))

    with pytest.raises(RuntimeError):
        with TarShardWriter(str(tmp_path / "crash"), "part", 2) as writer:
            for i in range(3):
                writer.add(f"k{i}", {"png": b"x"})
            raise RuntimeError("killed")
    assert [p.name for p in (tmp_path / "crash").iterdir()] == ["part-00000.tar"]

"""The offline demo data: colour emoji rendered into webdataset shards that invert can read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs.make_demo_data import DEFAULT_FONT, emoji_catalog, load_font, run
from pipeline.data.decode import decode_image
from pipeline.data.planning import plan_shards
from pipeline.data.sources import read_shard


@pytest.fixture(scope="module")
def font():
    """scripts/setup.sh installs fonts-noto-color-emoji where it can; CI must have it."""
    if not Path(DEFAULT_FONT).is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{DEFAULT_FONT} missing: scripts/setup.sh should have installed fonts-noto-color-emoji")
        pytest.skip("fonts-noto-color-emoji is not installed")
    return load_font(DEFAULT_FONT)


def test_the_font_draws_over_a_thousand_emoji_with_faces_among_them(font):
    catalog = emoji_catalog(font)
    assert len(catalog) > 1000
    assert sum("FACE" in name for _, name in catalog) > 100


def test_shards_hold_labelled_images_of_the_requested_size(font, tmp_path):
    shards = run(str(tmp_path / "emoji"), resolution=32, shard_size=16, limit=40)
    assert [p.name for p in shards] == ["emoji-00000.tar", "emoji-00001.tar", "emoji-00002.tar"]
    records = [r for spec in plan_shards(str(tmp_path / "emoji")) for r in read_shard(spec)]
    assert len(records) == 40
    for record in records:
        decoded = decode_image(record.data, resolution=32)
        assert decoded.ok and decoded.original_size == (32, 32)
        assert record.meta["group"] in ("face", "other") and record.meta["codepoint"].startswith("U+")


def test_a_missing_font_names_the_package_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="fonts-noto-color-emoji"):
        load_font(str(tmp_path / "none.ttf"))

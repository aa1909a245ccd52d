"""The store in one line: each reading one-liner of schemas/README.md, run as written on a real store."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.invert.config import InvertConfig
from tests.stores import invert_here

README = Path(__file__).resolve().parents[1] / "schemas" / "README.md"


def one_liners() -> list[str]:
    text = README.read_text()
    section = text[text.index("### Reading a store in one line"):]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def store(tmp_path_factory, fixture_dir):
    from pipeline.models.bundle import write_bundle
    from pipeline.models.checkpoints import load_generator
    from tests.datasets import colorful, png_bytes

    root = tmp_path_factory.mktemp("one-liners")
    (root / "in").mkdir()
    for i in range(5):
        (root / "in" / f"img{i}.png").write_bytes(png_bytes(colorful(seed=i)))
        (root / "in" / f"img{i}.json").write_text(json.dumps({"group": "a" if i < 2 else "b", "source": {"id": i}}))
    (root / "in" / "broken.png").write_bytes(b"nope")
    generator = str(root / "G.safetensors")
    write_bundle(generator, {"G_ema": load_generator(str(fixture_dir / "sg2ada_32px.pkl"))})
    invert_here(InvertConfig(input=str(root / "in"), output=str(root / "store"), generator=generator,
                             stages=["refine"], steps=1, perceptual="none", shard_size=3, progress=False))
    return str(root / "store")


def run_line(line: str, store: str):
    scope: dict = {}
    exec(line.replace("STORE", store), scope)  # the documented line, verbatim but for the path
    return scope["frame"]


def test_the_readme_has_the_four_one_liners():
    assert [line.split(";")[0].split()[1] for line in one_liners()] == ["pipeline.store", "pandas", "ray", "duckdb"]


@pytest.mark.parametrize("index", [0, 1, pytest.param(2, marks=pytest.mark.slow), 3])
def test_each_documented_one_liner_reads_every_row(store, index):
    frame = run_line(one_liners()[index], store)
    if index == 3:  # the SQL line selects the ok rows
        assert sorted(frame["image_id"]) == [f"img{i}.png" for i in range(5)]
        return
    assert len(frame) == 6 and set(frame["status"]) == {"ok", "error"}


def test_open_store_gives_latent_arrays_and_expanded_sidecars(store):
    frame = run_line(one_liners()[0], store).set_index("image_id")
    latent = frame.loc["img0.png", "w_refined"]
    assert isinstance(latent, np.ndarray) and latent.ndim == 2
    assert frame.loc["img3.png", "meta.group"] == "b" and frame.loc["img3.png", "meta.source.id"] == 3
    assert "meta" not in frame


def test_the_documented_reshape_of_a_flat_reader_gives_the_stores_latents(store):
    from pipeline.store import open_store

    text = README.read_text()
    section = text[text.index("The flat readers reshape"):]
    line = re.search(r"```python\n(.*?)```", section, re.S).group(1).strip()
    opened = open_store(store)
    num_ws, w_dim = opened.latent_shape
    scope: dict = {}
    exec(line.replace("STORE", store).replace("NUM_WS", str(num_ws)).replace("W_DIM", str(w_dim)), scope)
    expected = opened.to_pandas(latents_as_arrays=True)
    expected = np.stack(expected.loc[expected.status == "ok", "w_refined"].to_numpy())
    np.testing.assert_array_equal(scope["ws"], expected)

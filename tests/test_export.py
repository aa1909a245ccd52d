"""Exporting a store for other teams: a Lance dataset with a vector index, exactly once; nearest rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import lance
import pytest
from click.testing import CliRunner

from latentmill.cli import main
from pipeline.store.store import open_store
from tests.test_augment import _ws, add_shard
from tests.stores import synthetic_store


REPO = Path(__file__).resolve().parents[1]


def export(store: str, out: Path, *extra: str):
    result = CliRunner().invoke(main, ["export", store, "--format", "lance", "--output", str(out), "--no-progress",
                                       *extra])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture
def store(G, prior, tmp_path):
    return synthetic_store(tmp_path, G, prior, _ws(G, 40, 0))


def test_every_ok_row_once_with_its_latent_as_a_fixed_size_vector_and_its_shape_recorded(store, G, tmp_path):
    out = tmp_path / "latents.lance"
    result = export(store, out)
    dataset = lance.dataset(str(out))
    table = dataset.to_table()
    assert table.num_rows == 40 and table.column("image_id").to_pylist() == [f"img{i:03d}" for i in range(40)]
    assert dataset.schema.field("w_refined").type == pa.list_(pa.float32(), G.num_ws * G.w_dim)
    assert "status" not in table.column_names and "mse" in table.column_names
    meta = json.loads(dataset.schema.metadata[b"latentmill"])
    assert meta["latent_shape"] == [G.num_ws, G.w_dim] and meta["column"] == "w_refined"
    stored = open_store(store).to_pandas(["image_id", "w_refined"], latents_as_arrays=True)
    assert np.array_equal(np.stack(table.column("w_refined").to_numpy(zero_copy_only=False)),
                          np.stack(stored["w_refined"]).reshape(40, -1))
    assert "40 rows, version 2; appended 40 rows of 1 store shards; no index yet" in result.output  # rows, id index


def test_an_unchanged_store_changes_nothing_and_a_grown_one_appends_only_its_new_shards(store, G, tmp_path):
    out = tmp_path / "latents.lance"
    export(store, out)
    first = lance.dataset(str(out)).version
    again = export(store, out)
    assert "nothing to append" in again.output and lance.dataset(str(out)).version == first
    add_shard(store, G, _ws(G, 7, 5), "s1", first=40)
    export(store, out)
    dataset = lance.dataset(str(out))
    ids = dataset.to_table(columns=["image_id"]).column("image_id").to_pylist()
    assert dataset.version > first and len(ids) == 47 and len(set(ids)) == 47
    assert all(i.num_rows_indexed == 47 for i in dataset.describe_indices()), "new rows folded into the id index"
    assert open_store(store).nearest("img046", k=1)["image_id"].iloc[0] == "img046"


def test_an_export_killed_between_commits_resumes_without_duplicates(G, prior, tmp_path, monkeypatch):
    import pipeline.export.lance_export as lance_export

    store = synthetic_store(tmp_path, G, prior, _ws(G, 30, 1))
    for shard, first in (("s1", 30), ("s2", 60), ("s3", 90)):
        add_shard(store, G, _ws(G, 30, first), shard, first=first)
    monkeypatch.setattr(lance_export, "APPEND_ROWS", 60)  # two store shards a commit
    real = lance_export.shard_batches

    def dying(store_, shards, *args):
        if "s2" in shards:
            raise KeyboardInterrupt("killed mid-export")  # the second commit never happens
        yield from real(store_, shards, *args)

    monkeypatch.setattr(lance_export, "shard_batches", dying)
    with pytest.raises((KeyboardInterrupt, OSError), match="killed mid-export"):  # Lance wraps it
        lance_export.export_lance(open_store(store), str(tmp_path / "x.lance"), progress=False)
    assert lance.dataset(str(tmp_path / "x.lance")).count_rows() == 60, "only whole commits are there"
    monkeypatch.setattr(lance_export, "shard_batches", real)
    result = lance_export.export_lance(open_store(store), str(tmp_path / "x.lance"), progress=False)
    ids = lance.dataset(str(tmp_path / "x.lance")).to_table(columns=["image_id"]).column("image_id").to_pylist()
    assert result.appended_shards == 2 and sorted(ids) == [f"img{i:03d}" for i in range(120)]


def test_an_export_of_another_store_or_column_is_refused(store, G, prior, tmp_path):
    out = tmp_path / "latents.lance"
    export(store, out)
    (tmp_path / "other").mkdir()
    other = synthetic_store(tmp_path / "other", G, prior, _ws(G, 5, 2))
    result = CliRunner().invoke(main, ["export", other, "--format", "lance", "--output", str(out), "--no-progress"])
    assert result.exit_code == 2 and "never mixes stores" in result.output and "store:" in result.output


@pytest.mark.slow
def test_the_index_is_built_at_scale_and_nearest_answers_from_it_exactly_after_reranking(tmp_path):
    from benchmarks.store_readers import write_store

    store = write_store(tmp_path, 6000, 1500)  # the demo model's 8 x 64 latents, 2% error rows
    out = tmp_path / "latents.lance"
    result = export(store, out)
    assert "IVF_PQ index on w_refined" in result.output
    from pipeline.store import nearest as nearest_module

    opened = open_store(store)
    assert nearest_module.usable_export(opened, "w_refined") == str(out)
    record = json.loads((Path(store) / "exports.json").read_text())
    assert record[str(out)]["index"]["type"] == "IVF_PQ"
    for query in ("img000000000", "img000003001"):
        found = opened.nearest(query, k=10)  # from the export's index
        vector, _ = nearest_module.query_latent(opened, query, "w_refined")
        exact = nearest_module._scan(opened, vector, 10, "w_refined")  # every row, exactly
        assert found["image_id"].iloc[0] == exact["image_id"].iloc[0] == query and found["distance"].iloc[0] == 0
        assert list(found["distance"]) == sorted(found["distance"]), "nearest first"
        recall = len(set(found["image_id"]) & set(exact["image_id"])) / 10
        assert recall >= 0.9, recall
        common = exact.merge(found, on="image_id", suffixes=("_exact", "_index"))
        assert np.allclose(common["distance_exact"], common["distance_index"], rtol=1e-4, atol=1e-4), \
            "re-ranked: the index's distances are the exact ones"


def test_nearest_without_an_export_scans_the_store_exactly(store, G):
    opened = open_store(store)
    latents = opened.to_pandas(["image_id", "w_refined"], latents_as_arrays=True)
    ws = np.stack(latents["w_refined"]).reshape(len(latents), -1)
    query = ws[7] + 0.01
    found = opened.nearest(query, k=5)
    expected = np.argsort(np.linalg.norm(ws - query, axis=1))[:5]
    assert list(found["image_id"]) == list(latents["image_id"].iloc[expected])
    assert np.allclose(found["distance"], np.linalg.norm(ws - query, axis=1)[expected], rtol=1e-5)
    with pytest.raises(KeyError, match="not an ok row"):
        opened.nearest("nobody", k=5)

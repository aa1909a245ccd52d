"""Rebalancing: target sizes, groups, part masks, and the job reaching its targets with provenance."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from latentmill.cli import main
from pipeline.curation.rebalance import kmeans, part_masks, target_counts
from tests.stores import synthetic_store


def test_targets_remove_nobody_and_follow_the_shares():
    assert target_counts({"face": 11, "other": 85}) == {"face": 85, "other": 85}
    assert target_counts({"a": 10, "b": 30, "c": 60}, {"a": 0.2, "b": 0.3, "c": 0.5}) == {"a": 24, "b": 36, "c": 60}
    assert target_counts({"a": 50, "b": 10}, {"a": 1, "b": 1}) == {"a": 50, "b": 50}, "shares need not sum to 1"
    with pytest.raises(ValueError, match="does not have"):
        target_counts({"a": 1, "b": 1}, {"a": 0.5, "z": 0.5})
    with pytest.raises(ValueError, match="no share"):
        target_counts({"a": 1, "b": 1}, {"a": 1.0})


def test_kmeans_separates_clear_clusters_reproducibly():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(40, 3, generator=g) + 6, torch.randn(60, 3, generator=g) - 6])
    labels, centers = kmeans(x, 2, seed=1)
    assert len(set(labels[:40].tolist())) == 1 and len(set(labels[40:].tolist())) == 1 and labels[0] != labels[-1]
    assert torch.equal(labels, kmeans(x, 2, seed=1)[0])


def test_part_masks_keep_the_documented_share_of_the_member():
    g = torch.Generator().manual_seed(0)
    for kind, (lo, hi) in {"half": (0.5, 0.5), "quadrants": (0.75, 0.75), "blob": (0.38, 0.72)}.items():
        masks, kinds = part_masks(8, 16, generator=g, kinds=[kind])
        fractions = masks.mean(dim=(1, 2, 3))
        assert kinds == [kind] * 8 and ((fractions >= lo) & (fractions <= hi)).all(), kind
        assert set(masks.unique().tolist()) <= {0.0, 1.0}


@pytest.fixture
def labelled_store(G, prior, tmp_path):
    torch.manual_seed(0)
    with torch.no_grad():
        ws = G.mapping(torch.randn(45, G.z_dim), None)
    store = synthetic_store(tmp_path, G, prior, ws)
    labels = pd.DataFrame({"image_id": [f"img{i:03d}" for i in range(40)],
                           "kind": ["common"] * 30 + ["rare"] * 10})  # img040..044 have no label
    labels.to_csv(tmp_path / "labels.csv", index=False)
    return store, str(tmp_path / "labels.csv")


def test_rebalance_reaches_the_target_and_every_new_row_names_its_sources(labelled_store, G, tmp_path):
    store, labels = labelled_store
    out = tmp_path / "rebalanced"
    result = CliRunner().invoke(main, ["rebalance", store, "--groups", f"labels:kind:{labels}", "--method", "sample",
                                       "--nll-percentile", "100", "--output", str(out), "--device", "cpu",
                                       "--batch-size", "8", "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["before"] == {"common": 30, "rare": 10} and summary["unlabeled"] == 5
    assert summary["after"] == summary["target_counts"] == {"common": 30, "rare": 30}
    # the filter's bound is printed on the prior-NLL scale users read elsewhere: a typical latent scores w_dim
    assert summary["nll_typical"] == G.w_dim
    assert f"quality filter: prior NLL at most {summary['nll_cut']:,.0f} (p100 of the store's w_refined; " in result.output
    samples = pd.read_parquet(out / "samples.parquet")
    accepted = samples[samples["accepted"]]
    assert len(accepted) == 20 and (accepted["group"] == "rare").all()
    rare = {f"img{i:03d}" for i in range(30, 40)}
    assert all(len(s) and set(s) <= rare for s in accepted["source_ids"]), "sources are members of the group"
    assert samples.loc[~samples["accepted"], "rejected_because"].notna().all(), "every rejection has a reason"
    with tarfile.open(out / "images" / "rebalance-00000.tar") as tar:
        names = tar.getnames()
        provenance = json.loads(tar.extractfile(f"{accepted['sample_id'].iloc[0]}.json").read())
    assert sorted(n[:-4] for n in names if n.endswith(".png")) == sorted(accepted["sample_id"])
    assert provenance["source_ids"] == list(accepted["source_ids"].iloc[0])
    assert len(accepted["w"].iloc[0]) == G.num_ws * G.w_dim
    assert json.loads((Path(store) / "rebalance" / "summary.json").read_text())["after"]["rare"] == 30


def test_bad_group_specs_are_usage_errors(labelled_store, tmp_path):
    store, _ = labelled_store
    for spec, message in (("colour:x", "use labels"), ("kmeans:many", "kmeans:K"),
                          ("attribute:nolayer/1:0.5", "unknown StyleSpace layers")):
        result = CliRunner().invoke(main, ["rebalance", store, "--groups", spec, "--output", str(tmp_path / "o"),
                                           "--method", "sample", "--device", "cpu"])
        assert result.exit_code == 2 and message in result.output, (spec, result.output)


def _rebalance(store: str, groups: str, out: Path, *extra: str):
    result = CliRunner().invoke(main, ["rebalance", store, "--groups", groups, "--method", "sample",
                                       "--nll-percentile", "100", "--output", str(out), "--device", "cpu",
                                       "--batch-size", "8", "--no-progress", *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text()), pd.read_parquet(out / "samples.parquet")


def test_a_store_larger_than_its_samples_groups_every_row_and_draws_from_a_sample_of_a_large_group(
        labelled_store, tmp_path, monkeypatch):
    import pipeline.curation.store_rebalance as rebalance

    store, labels = labelled_store
    monkeypatch.setattr(rebalance, "BATCH_ROWS", 7)  # batches that split the groups
    monkeypatch.setattr(rebalance, "KMEANS_SAMPLE_ROWS", 20)  # k-means fitted on 20 of the 45 rows
    summary, _ = _rebalance(store, "kmeans:2", tmp_path / "k")
    assert sum(summary["before"].values()) == 45 and summary["unlabeled"] == 0
    monkeypatch.setattr(rebalance, "POOL_ROWS_PER_GROUP", 4)  # candidates from 4 of the 10 rare members
    summary, samples = _rebalance(store, f"labels:kind:{labels}", tmp_path / "l")
    assert summary["before"] == {"common": 30, "rare": 10} and summary["after"]["rare"] == 30
    sources = {s for row in samples["source_ids"] for s in row}
    assert sources <= {f"img{i:03d}" for i in range(30, 40)} and len(sources) <= 4


def test_batching_does_not_change_the_groups_or_the_samples(labelled_store, tmp_path, monkeypatch):
    """Reading the store in batches of 4 rows and making candidates 3 at a time, not 8, gives the same
    groups and the same samples: each candidate draws from its own stream (seed, group, index)."""
    import pipeline.curation.store_rebalance as rebalance

    store, _ = labelled_store
    whole = _rebalance(store, "kmeans:3", tmp_path / "whole")
    monkeypatch.setattr(rebalance, "BATCH_ROWS", 4)
    batched = _rebalance(store, "kmeans:3", tmp_path / "batched", "--batch-size", "3")
    assert whole[0]["before"] == batched[0]["before"] and whole[0]["added"] == batched[0]["added"]
    assert sum(whole[0]["added"].values()) > 0 and len(whole[1]) == len(batched[1])
    columns = ["sample_id", "group", "seed", "accepted", "rejected_because"]
    pd.testing.assert_frame_equal(whole[1][columns], batched[1][columns])
    assert all(list(a) == list(b) for a, b in zip(whole[1]["source_ids"], batched[1]["source_ids"]))
    assert np.allclose(np.stack(whole[1]["w"]), np.stack(batched[1]["w"]), atol=1e-5)


def test_rebalance_writes_which_group_each_store_row_is_in(labelled_store, tmp_path):
    store, labels = labelled_store
    summary, _ = _rebalance(store, f"labels:kind:{labels}", tmp_path / "out")
    groups = pd.read_parquet(tmp_path / "out" / "groups.parquet")
    assert len(groups) == 45 and groups["image_id"].is_unique
    assert groups.set_index("image_id")["group"].astype(str).to_dict() == {
        **{f"img{i:03d}": "common" for i in range(30)}, **{f"img{i:03d}": "rare" for i in range(30, 40)},
        **{f"img{i:03d}": "(unlabeled)" for i in range(40, 45)}}
    assert summary["groups_file"].endswith("groups.parquet")


def test_a_grouping_that_gives_no_groups_says_why_and_what_to_use(labelled_store, tmp_path):
    store, _ = labelled_store
    result = CliRunner().invoke(main, ["rebalance", store, "--groups", "meta:group", "--output", str(tmp_path / "o"),
                                       "--method", "sample", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 2
    assert "no ok row's meta has the key 'group'" in result.output and "kmeans:K" in result.output


def test_exclude_flagged_leaves_curates_flagged_rows_out_of_every_group_and_source(labelled_store, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.store import layout
    from pipeline.store.flags_schema import FLAGS

    store, labels = labelled_store
    flagged = {f"img{i:03d}" for i in range(30, 35)}  # half of the rare group
    ids = [f"img{i:03d}" for i in range(45)]
    def filler(field: pa.Field) -> pa.Array:  # what curate writes where this test does not care
        if field.nullable:
            return pa.nulls(len(ids), field.type)
        value = False if pa.types.is_boolean(field.type) else "" if pa.types.is_string(field.type) else 0
        return pa.array([value] * len(ids), field.type)

    columns = {f.name: filler(f) for f in FLAGS.schema()}
    columns.update(image_id=pa.array(ids), shard=pa.array(["s"] * len(ids)),
                   flagged=pa.array([i in flagged for i in ids]))
    (Path(store) / layout.CURATION).mkdir(exist_ok=True)
    pq.write_table(pa.table([columns[f.name] for f in FLAGS.schema()], schema=FLAGS.schema()),
                   Path(store) / layout.FLAGS)
    summary, samples = _rebalance(store, f"labels:kind:{labels}", tmp_path / "out", "--exclude-flagged")
    assert summary["before"] == {"common": 30, "rare": 5} and summary["flagged_excluded"] == 5
    accepted = samples[samples["accepted"]]
    assert not flagged & {s for sources in accepted["source_ids"] for s in sources}, "a flagged row is never a source"

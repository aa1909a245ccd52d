"""Augmenting a store: the edits as defined, every ok row's K variants with provenance, exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner

from latentmill.cli import main
from pipeline.augment.edits import (attribute_direction, edited_styles, jitter, mix, parse_edit, parse_edits,
                                    pick_donors, style_slots)
from pipeline.store.schema import SCHEMA_VERSION, latents_schema
from pipeline.store.store import open_store
from pipeline.store.writer import claim
from tests.stores import synthetic_store

REPO = Path(__file__).resolve().parents[1]
EDITS = "jitter:0.3,mix:2-4,attribute:b8.conv1/3+b16.conv1/5:2"
COMPARED = ["sample_id", "source_id", "edit", "params", "variant", "seed", "accepted", "rejected_because", "key",
            "prior_nll", "mse_to_source"]


# --- the edits ---

def test_edits_are_parsed_or_refused_naming_the_bad_one():
    edits = parse_edits("jitter:0.3, mix:8-17,attribute:b16.conv0/42+b32.conv1/7:-3,compose:blob")
    assert [e.kind for e in edits] == ["jitter", "mix", "attribute", "compose"]
    assert edits[0].params == {"sigma": 0.3} and edits[1].params == {"first_layer": 8, "last_layer": 17}
    assert edits[2].params == {"channels": ["b16.conv0/42", "b32.conv1/7"], "alpha": -3.0}
    assert edits[3].params == {"part": "blob"}
    for bad in ("jitter:-1", "jitter:x", "mix:5-2", "mix:3", "attribute:b16.conv0:2", "compose:eyes", "blur:2"):
        with pytest.raises(ValueError, match=f"'{bad}' is not an edit"):
            parse_edit(bad)
    with pytest.raises(ValueError, match="twice"):
        parse_edits("jitter:0.3,jitter:0.3")


def test_mix_takes_exactly_its_layers_from_the_donor_and_never_the_source_itself():
    ws, donors = torch.zeros(2, 6, 4), torch.ones(2, 6, 4)
    mixed = mix(ws, donors, (2, 4))
    assert (mixed[:, 2:5] == 1).all() and (mixed[:, :2] == 0).all() and (mixed[:, 5:] == 0).all()
    streams = [torch.Generator().manual_seed(s) for s in range(50)]
    picks = pick_donors(["b"] * 50, ["a", "b"], streams)
    assert set(picks) == {0}, "the source is never its own donor"


def test_jitter_moves_a_latent_by_sigma_in_the_whitened_space_from_its_own_stream(G, prior):
    ws = G.mapping(torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(0)), None).detach()
    streams = [torch.Generator().manual_seed(s) for s in range(4)]
    moved = jitter(prior, ws, 0.25, streams)
    step = (prior.whiten(moved) - prior.whiten(ws)).flatten(1)
    assert torch.allclose(step.std(1), torch.full((4,), 0.25), rtol=0.15)
    alone = jitter(prior, ws[2:3], 0.25, [torch.Generator().manual_seed(2)])
    assert torch.allclose(alone, moved[2:3], atol=1e-5), "a variant does not depend on the others beside it"


def test_an_attribute_edit_moves_only_its_channels_and_its_w_renders_them_where_the_slot_allows(G):
    ws = G.mapping(torch.randn(3, G.z_dim, generator=torch.Generator().manual_seed(1)), None).detach()
    std = {name: torch.rand(a.weight.shape[0]) + 0.5 for name, a in G.synthesis.affine_layers().items()}
    slots = style_slots(G)
    alone = [name for name, slot in slots.items() if list(slots.values()).count(slot) == 1][0]  # feeds one layer
    edit = parse_edit(f"attribute:{alone}/3:2")
    direction = attribute_direction(G, edit, std)
    styles, edited = G.styles(ws), edited_styles(G, ws, direction, torch.full((3,), 2.0))
    for name in styles:
        change = edited[name] - styles[name]
        expected = torch.zeros_like(change)
        if name == alone:
            expected[:, 3] = 2 * std[name][3]
        assert torch.allclose(change, expected, atol=1e-5), name
    assert direction.residual < 1e-4
    moved = G.styles(ws + 2 * direction.w)
    assert all(torch.allclose(moved[n], edited[n], atol=1e-3) for n in styles), "exact: its w renders the edit"
    shared = [name for name, slot in slots.items() if list(slots.values()).count(slot) > 1][0]
    assert attribute_direction(G, parse_edit(f"attribute:{shared}/0:1"), std).residual > 0, \
        "a slot feeding more style channels than w_dim holds is least squares, and says so"


# --- the job ---

def _ws(G, n: int, seed: int) -> torch.Tensor:
    with torch.no_grad():
        return G.mapping(torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed)), None)


def add_shard(store: str, G, ws: torch.Tensor, shard: str, first: int) -> None:
    """Another finished shard of ok rows img<first>... (as invert adds for new inputs)."""
    opened = open_store(store)
    schema = latents_schema(G.num_ws, G.w_dim, metadata=opened.metadata)
    n = len(ws)
    ids = [f"img{first + i:03d}" for i in range(n)]
    columns = {f.name: [None] * n for f in schema}
    columns.update(image_id=ids, source_uri=ids, shard=[shard] * n, status=["ok"] * n,
                   w_refined=list(ws.flatten(1).numpy()), model_fingerprint=["x"] * n,
                   schema_version=[SCHEMA_VERSION] * n)
    table = pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in schema}, schema=schema)
    with claim(store) as writer:
        writer.shard_writer(None).write(shard, table, {"shard": shard, "rows": n, "ok": n, "errors": 0})


@pytest.fixture
def store(G, prior, tmp_path):
    return synthetic_store(tmp_path, G, prior, _ws(G, 20, 0))


def augment(store: str, out: Path, *extra: str, edits: str = EDITS) -> tuple[CliRunner, object]:
    result = CliRunner().invoke(main, ["augment", store, "--output", str(out), "--edits", edits, "--variants", "2",
                                       "--device", "cpu", "--no-progress", *extra])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def samples(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "samples.parquet").sort_values("sample_id").reset_index(drop=True)


def same_samples(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a[COMPARED], b[COMPARED], check_exact=False, rtol=1e-5)
    assert np.allclose(np.stack(a["w"]), np.stack(b["w"]), atol=1e-5)


def test_every_ok_row_gets_k_variants_of_each_edit_with_provenance_a_data_loader_reads(store, tmp_path):
    import webdataset as wds

    out = tmp_path / "augmented"
    result = augment(store, out, "--runner", "local", "--shard-size", "8")
    table = samples(out)
    assert len(table) == 20 * 3 * 2 and table.groupby(["source_id", "edit"]).size().eq(2).all()
    assert "20 sources: 120 variants" in result.output
    assert table.loc[~table["accepted"], "rejected_because"].isin(["prior_nll", "identity"]).all()
    assert (table.loc[table["accepted"], "prior_nll"] <= json.loads((out / "augment.json").read_text())
            ["reference"]["nll_cut"]["w_refined"]).all()
    mixed = table[table["edit"] == "mix:2-4"]
    assert all(json.loads(p)["donor_id"] != s for p, s in zip(mixed["params"], mixed["source_id"]))
    alphas = sorted({json.loads(p)["alpha"] for p in table.loc[table["edit"].str.startswith("attribute"), "params"]})
    assert alphas == [1.0, 2.0], "variant v of K moves the channels ALPHA*(v+1)/K"
    shards = sorted(str(p) for p in (out / "images").glob("augment-*.tar"))
    assert len(shards) == 3, "a tar shard per unit of at most --shard-size sources"
    loaded = list(wds.WebDataset(shards, shardshuffle=False).decode("pil").to_tuple("__key__", "png", "json"))
    accepted = table[table["accepted"]].set_index("key")
    assert sorted(key for key, _, _ in loaded) == sorted(accepted.index)
    key, image, meta = loaded[0]
    assert image.size == (16, 16) and meta["sample_id"] == accepted.loc[key, "sample_id"]
    assert meta["source_id"] == accepted.loc[key, "source_id"] and meta["seed"] == accepted.loc[key, "seed"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["variants"] == 120 and summary["accepted"] == len(accepted)
    assert json.loads((Path(store) / "augment" / "summary.json").read_text())["accepted"] == len(accepted)


def test_the_samples_do_not_depend_on_batch_size_unit_size_or_placement(store, tmp_path, ray_local):
    augment(store, tmp_path / "local", "--runner", "local", "--batch-size", "5", "--shard-size", "8")
    augment(store, tmp_path / "ray", "--runner", "ray", "--concurrency", "2", "--batch-size", "3",
            "--shard-size", "6")
    same_samples(samples(tmp_path / "local"), samples(tmp_path / "ray"))


def test_a_unit_whose_worker_dies_runs_again_on_a_fresh_one_and_is_written_once(store, tmp_path, ray_local):
    from jobs.augment import AugmentConfig, run
    from pipeline.augment.augment_processor import AugmentProcessor
    from tests.fault_injection import crashing_once_on

    augment(store, tmp_path / "whole", "--runner", "local", "--shard-size", "8")
    cfg = AugmentConfig(store=store, output=str(tmp_path / "crashed"), edits=EDITS, variants=2, shard_size=8,
                        concurrency=2, device="cpu", progress=False)
    summary = run(cfg, processor_class=crashing_once_on(["s0.00001"], base=AugmentProcessor))
    assert summary["units_done"] == 3 and not summary["units_failed"]
    assert summary["last_run"]["retries"] + summary["last_run"]["requeued_after_node_loss"] == 1
    same_samples(samples(tmp_path / "crashed"), samples(tmp_path / "whole"))


def test_a_worker_that_cannot_start_stops_the_run_with_its_reason_at_once(store, tmp_path, ray_local):
    from jobs.augment import AugmentConfig, run
    from pipeline.augment.augment_processor import AugmentProcessor
    from pipeline.errors import WeightsNotFoundError

    class NoWeightsOnThisNode(AugmentProcessor):
        def _load(self):
            raise WeightsNotFoundError("the store's generator: /models/G.safetensors is missing on this node")

    cfg = AugmentConfig(store=store, output=str(tmp_path / "out"), edits="jitter:0.3", variants=1, device="cpu",
                        progress=False, placement_timeout=120)
    started = time.monotonic()
    with pytest.raises(WeightsNotFoundError, match="missing on this node"):
        run(cfg, processor_class=NoWeightsOnThisNode)
    assert time.monotonic() - started < 60, "not retried until the placement timeout"


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file() and p.name != ".lock"}


def test_a_rerun_with_nothing_to_do_says_so_and_changes_no_file(store, tmp_path):
    out = tmp_path / "augmented"
    augment(store, out, "--runner", "local")
    before = snapshot(out)
    again = augment(store, out, "--runner", "local", "--batch-size", "3")  # batching is not part of the recipe
    assert "already augmented" in again.output and "nothing to do" in again.output
    assert snapshot(out) == before


def test_after_the_store_grew_only_its_new_rows_get_variants(store, G, tmp_path):
    out = tmp_path / "augmented"
    augment(store, out, "--runner", "local", "--shard-size", "8")
    first = samples(out)
    ledger = {p.name: p.read_bytes() for p in (out / "ledger").iterdir()}
    add_shard(store, G, _ws(G, 5, 9), "s1", first=20)
    result = augment(store, out, "--runner", "local", "--shard-size", "8")
    assert "found 3 of 4 units done; resuming with 1" in result.output
    grown = samples(out)
    assert set(grown["source_id"]) == {f"img{i:03d}" for i in range(25)}
    same_samples(grown[grown["source_id"].isin(first["source_id"])].reset_index(drop=True), first)
    assert all((out / "ledger" / name).read_bytes() == data for name, data in ledger.items()), "old units untouched"


def test_other_settings_into_the_same_output_are_refused_naming_them(store, tmp_path):
    out = tmp_path / "augmented"
    augment(store, out, "--runner", "local")
    result = CliRunner().invoke(main, ["augment", store, "--output", str(out), "--edits", EDITS, "--variants", "3",
                                       "--runner", "local", "--no-progress"])
    assert result.exit_code == 2 and "--variants: 2 there, 3 now" in result.output
    assert "Traceback" not in result.output


def test_edits_the_generator_cannot_take_are_refused_before_any_work(store, tmp_path):
    for edits, message in (("mix:2-40", "W+ has layers 0-"), ("attribute:b99.conv0/1:2", "no StyleSpace layer"),
                           ("compose:half", "without --encoder")):
        result = CliRunner().invoke(main, ["augment", store, "--output", str(tmp_path / "x"), "--edits", edits,
                                           "--runner", "local", "--no-progress"])
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "x" / "samples.parquet").exists()


@pytest.mark.slow
def test_a_killed_run_resumes_without_duplicates_or_losses(G, prior, tmp_path):
    store = synthetic_store(tmp_path, G, prior, _ws(G, 240, 3))
    command = [sys.executable, "-m", "latentmill", "augment", store, "--edits", EDITS, "--variants", "2",
               "--runner", "local", "--shard-size", "8", "--batch-size", "4", "--device", "cpu", "--no-progress"]
    subprocess.run([*command, "--output", str(tmp_path / "whole")], cwd=REPO, check=True, capture_output=True)
    killed = subprocess.Popen([*command, "--output", str(tmp_path / "killed")], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger = tmp_path / "killed" / "ledger"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(ledger.glob("*.json"))) < 3:
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    done = len(list(ledger.glob("*.json")))
    assert 3 <= done < 30, f"the kill must land mid-run ({done} of 30 units done)"
    resumed = subprocess.run([*command, "--output", str(tmp_path / "killed")], cwd=REPO, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"found {done} of 30 units done" in resumed.stderr or f"found {done + 1} of 30 units done" in resumed.stderr
    whole, again = samples(tmp_path / "whole"), samples(tmp_path / "killed")
    assert again["sample_id"].is_unique and len(again) == 240 * 3 * 2
    same_samples(again, whole)
    assert not list((tmp_path / "killed" / "parts").glob("*.parquet")), "every part was gathered"


@pytest.mark.slow
def test_compose_pastes_a_donor_part_through_e_and_g_and_the_identity_filter_says_why(fixture_dir, tmp_path):
    from tests.stores import small_inverted_store

    store = Path(small_inverted_store(tmp_path, fixture_dir)["uri"])
    unfiltered = tmp_path / "unfiltered"
    augment(str(store), unfiltered, "--runner", "local", "--nll-percentile", "100", edits="compose:half,jitter:0.5")
    table = samples(unfiltered)
    ok = open_store(str(store)).manifest.totals()["ok"]
    assert len(table) == ok * 2 * 2 and table["identity_to_source"].notna().all()
    composed = table[table["edit"] == "compose:half"]
    params = [json.loads(p) for p in composed["params"]]
    assert all(p["donor_id"] != s for p, s in zip(params, composed["source_id"]))
    assert all(abs(p["mask_fraction"] - 0.5) < 1e-6 for p in params), "half: half of the pixels from the donor"
    values = np.sort(np.unique(table.loc[table["accepted"], "identity_to_source"].to_numpy(np.float64)))
    threshold = float((values[len(values) // 2 - 1] + values[len(values) // 2]) / 2)  # between two variants
    out = tmp_path / "augmented"
    augment(str(store), out, "--runner", "local", "--nll-percentile", "100", "--min-identity", repr(threshold),
            edits="compose:half,jitter:0.5")
    filtered = samples(out)
    passed_nll = table["accepted"]  # the prior-NLL test comes first, as before
    low = passed_nll & (filtered["identity_to_source"] < threshold)
    assert low.any() and (passed_nll & ~low).any(), "the median splits these variants"
    assert (filtered.loc[low, "rejected_because"] == "identity").all()
    assert filtered.loc[passed_nll & ~low, "accepted"].all()
    assert (filtered.loc[~passed_nll, "rejected_because"] == "prior_nll").all()
    same = ["sample_id", "seed", "params", "prior_nll", "identity_to_source"]
    pd.testing.assert_frame_equal(filtered[same], table[same])

    from pipeline.report.html_report import build_report

    page = Path(build_report(str(store), in_domain=0, curve_images=4)).read_text()
    assert 'id="augmentation"' in page and "compose:half" in page and "augment-preview" in page

    rows = open_store(str(store)).to_pandas(["image_id", "source_uri", "status"])
    gone = rows[rows["status"] == "ok"].iloc[0]
    Path(gone["source_uri"].removeprefix("file://")).unlink()  # an input deleted since its row was made
    augment(str(store), tmp_path / "later", "--runner", "local", "--nll-percentile", "100",
            edits="compose:half,jitter:0.5")
    later = samples(tmp_path / "later")
    unmade = later["rejected_because"] == "input_unreadable"
    expected = (table["edit"] == "compose:half") & ((table["source_id"] == gone["image_id"]) | table["params"].map(
        lambda p: json.loads(p).get("donor_id") == gone["image_id"]))
    assert (unmade == expected).all() and unmade.sum() >= 2, "its own compose variants, and those it was donor of"
    assert later.loc[unmade, "w"].isna().all()
    same_samples(later[~unmade].reset_index(drop=True), table[~expected].reset_index(drop=True))
    assert len(later) == len(table), "every variant still has its row"

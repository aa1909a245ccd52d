"""`latentmill curate`: planted near-duplicates and outliers are found, nothing else is flagged by them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from latentmill.cli import main
from pipeline.curation.curate import duplicate_groups, near_duplicate_pairs, percentile_rank
from pipeline.store import layout
from tests.stores import synthetic_store


def test_blockwise_search_finds_exactly_the_pairs_of_the_full_matrix():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 32, generator=g)
    x[10] = x[3] + 0.01 * torch.randn(32, generator=g)  # a pair across ...
    x[250] = x[3] + 0.01 * torch.randn(32, generator=g)  # ... block boundaries, making a triple
    x[77] = x[76] * 2  # same direction, other scale
    pairs = near_duplicate_pairs(x, 0.9, block_size=64)
    found = set(zip(pairs.first.tolist(), pairs.second.tolist()))
    normed = torch.nn.functional.normalize(x, dim=1)
    full = torch.triu(normed @ normed.T, diagonal=1)
    assert found == {tuple(p) for p in torch.nonzero(full >= 0.9).tolist()}
    assert found == {(3, 10), (3, 250), (10, 250), (76, 77)}
    groups = duplicate_groups(300, pairs)
    assert groups[10] == groups[250] == groups[3] == 3 and groups[77] == 76 and groups[5] == 5


def test_percentile_rank_orders_values_and_keeps_nan():
    ranks = percentile_rank(np.array([3.0, np.nan, 1.0, 2.0]))
    assert np.isnan(ranks[1]) and ranks[2] < ranks[3] < ranks[0]


@pytest.fixture
def planted_store(G, prior, tmp_path):
    """A store of 200 latents sampled from G's mapping, plus planted near-duplicates and outliers."""
    torch.manual_seed(0)
    with torch.no_grad():
        ws = G.mapping(torch.randn(200, G.z_dim), None)
    ws[50] = ws[20] + 0.001 * torch.randn_like(ws[20])  # duplicate of row 20
    ws[150] = ws[120].clone()  # exact duplicate of row 120
    direction = torch.randn(G.w_dim)
    ws[90] = G.w_avg + 8 * direction / direction.norm() * ws.std()  # far outside the prior
    ws[91] = G.w_avg - 8 * direction / direction.norm() * ws.std()
    mse = np.linspace(0.01, 0.2, 200)
    mse[7] = 5.0  # a terrible reconstruction
    return synthetic_store(tmp_path, G, prior, ws, mse=mse)


def test_curate_flags_planted_duplicates_and_outliers(planted_store):
    result = CliRunner().invoke(main, ["curate", planted_store, "--outlier-percentile", "99",
                                       "--mse-percentile", "99.5", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    import pandas as pd

    flags = pd.read_parquet(Path(planted_store) / "curation" / "flags.parquet").set_index("image_id")
    assert set(flags.index[flags["duplicate"]]) == {"img050", "img150"}
    assert flags.loc["img050", "duplicate_of"] == "img020" and flags.loc["img150", "duplicate_of"] == "img120"
    assert not flags.loc["img020", "duplicate"], "the first member is kept"
    assert set(flags.index[flags["outlier"]]) == {"img090", "img091"}
    assert flags.loc["img090", "prior_nll_percentile"] > 99
    assert list(flags.index[flags["bad_reconstruction"]]) == ["img007"]
    assert flags.loc["img007", "bad_reasons"] == "mse"
    summary = json.loads((Path(planted_store) / "curation" / "summary.json").read_text())
    assert summary["flagged"] == 5 and summary["duplicate_groups"] == 2


def test_a_search_resumed_from_its_progress_finds_the_same_pairs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 16, generator=g)
    x[400] = x[5] + 0.01 * torch.randn(16, generator=g)
    x[300] = x[299] * 3
    full = near_duplicate_pairs(x, 0.9, block_size=50)
    reports = []
    near_duplicate_pairs(x, 0.9, block_size=50, on_progress=reports.append, progress_every_s=0)
    midway = reports[3]  # rows 0-199 done: holds the (5, 400) pair, not yet (299, 300)
    assert midway.next_row == 200 and (5, 400) in set(zip(midway.pairs.first.tolist(), midway.pairs.second.tolist()))
    resumed = near_duplicate_pairs(x, 0.9, block_size=64, resume=midway)  # another block size is fine
    as_set = lambda p: set(zip(p.first.tolist(), p.second.tolist()))  # noqa: E731
    assert as_set(resumed) == as_set(full) == {(5, 400), (299, 300)}


def test_curate_resumes_an_interrupted_search_and_reuses_unchanged_results(planted_store, monkeypatch):
    import jobs.curate as curate_job
    import pipeline.curation.store_curation as curation
    from jobs.curate import CurateConfig

    cfg = CurateConfig(store=planted_store, block_size=16)
    saved = {}
    real_save = curation.save_search

    def save_then_die(uri, key, rows, progress):  # the first checkpoint is the last thing this run does
        real_save(uri, key, rows, progress)
        saved["next_row"] = progress.next_row
        raise KeyboardInterrupt

    monkeypatch.setattr(curation, "near_duplicate_pairs",
                        lambda *a, **k: near_duplicate_pairs(*a, **{**k, "progress_every_s": 0}))
    monkeypatch.setattr(curation, "save_search", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        curate_job.run(cfg)
    assert saved["next_row"] == 16 and (Path(planted_store) / layout.SEARCH_PROGRESS).exists()
    monkeypatch.setattr(curation, "save_search", real_save)
    result = CliRunner().invoke(main, ["curate", planted_store, "--block-size", "16", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "resuming the near-duplicate search at row 16 of 200" in result.output
    assert not (Path(planted_store) / layout.SEARCH_PROGRESS).exists()
    import pandas as pd

    flags = pd.read_parquet(Path(planted_store) / "curation" / "flags.parquet").set_index("image_id")
    assert set(flags.index[flags["duplicate"]]) == {"img050", "img150"}
    again = CliRunner().invoke(main, ["curate", planted_store, "--block-size", "16", "--device", "cpu"])
    assert "its inputs are unchanged since the last run; reusing" in again.output


@pytest.fixture(scope="module")
def inverted_store(tmp_path_factory):
    """A store of real inverted latents: the demo encoder's W+ of the demo sample (96 emoji), mixed three
    at a time (with a little noise, in the prior's whitened space) into 12,000 rows, with near-duplicates
    planted at cosines above and below the threshold 0.95."""
    from pipeline.data.image_pool import load_image_pool
    from pipeline.demo import DemoBundle
    from pipeline.models.checkpoints import load_generator
    from pipeline.models.encoder import encode, load_encoder
    from pipeline.priors.load import load_prior

    bundle = DemoBundle.locate()
    G = load_generator(bundle.generator)
    prior, E = load_prior(bundle.prior, generator=G), load_encoder(bundle.encoder, generator=G)
    images = load_image_pool(bundle.sample, resolution=G.img_resolution).images
    with torch.no_grad():
        real = encode(E, images)  # [96, num_ws, w_dim]
        g = torch.Generator().manual_seed(0)
        sources = prior.whiten(real)  # [96, num_ws, w_dim]
        pick = torch.randint(0, len(real), (12_000, 3), generator=g)
        weights = torch.distributions.Dirichlet(torch.ones(3)).sample((12_000,))
        mixed = (weights[:, :, None, None] * sources[pick]).sum(dim=1)
        mixed += 0.5 * torch.randn(mixed.shape, generator=g) * sources.std()
        ws = prior.unwhiten(mixed)
        whitened = prior.whiten(ws).flatten(1)
        planted = {}
        for k, rho in enumerate([0.9999] * 20 + [0.995] * 20 + [0.975] * 20 + [0.96] * 20 + [0.94] * 20):
            i, j = k, 11_000 + k  # row j becomes row i's copy at cosine rho
            base = whitened[i]
            noise = torch.randn(base.shape, generator=g)
            noise -= (noise @ base) / (base @ base) * base
            c = rho * base + (1 - rho**2) ** 0.5 * noise * base.norm() / noise.norm()
            ws[j] = prior.unwhiten(c.reshape(ws.shape[1:]))
            planted[(i, j)] = rho
    store = synthetic_store(tmp_path_factory.mktemp("inverted"), G, prior, ws)
    return store, planted


def _pairs(store: str, search: str) -> set[tuple[int, int]]:
    from pipeline.curation.store_curation import find_pairs
    from pipeline.store.writer import claim
    from jobs.curate import CurateConfig

    with claim(store) as writer:
        cfg = CurateConfig(store=store, search=search, progress=False, device="cpu")
        models = writer.load_models("cpu", prior=True)
        _, pairs, info = find_pairs(writer, cfg, f"test-{search}", torch.device("cpu"), models)
    assert info["search"] == search
    return set(zip(pairs.first.tolist(), pairs.second.tolist()))


def test_the_approximate_search_finds_what_the_exact_one_finds_on_inverted_latents(inverted_store):
    store, planted = inverted_store
    exact, approximate = _pairs(store, "exact"), _pairs(store, "approximate")
    above = {pair for pair, rho in planted.items() if rho >= 0.95}
    below = {pair for pair, rho in planted.items() if rho < 0.95}
    assert above <= exact and not below & exact  # the reference sees the planted cosines
    assert above <= approximate, sorted(above - approximate)  # every planted pair above the threshold
    assert not below & approximate
    recall = len(exact & approximate) / len(exact)
    precision = len(exact & approximate) / len(approximate)
    assert recall >= 0.95 and precision >= 0.95, (recall, precision, len(exact), len(approximate))


def test_auto_searches_exactly_while_it_is_cheap_and_approximately_beyond():
    from jobs.curate import CurateConfig
    from pipeline.curation.store_curation import choose_search

    cfg, cpu = CurateConfig(store="s"), torch.device("cpu")
    assert choose_search(cfg, 10_000, 512, cpu) == "exact"
    assert choose_search(cfg, 1_000_000, 512, cpu) == "approximate"
    assert choose_search(cfg, 50_000, 18 * 512, cpu) == "approximate"  # FFHQ's W+: memory decides
    assert choose_search(CurateConfig(store="s", search="exact"), 10**7, 512, cpu) == "exact"


def test_curate_flags_the_same_rows_with_the_approximate_search(planted_store):
    import pandas as pd

    flags = {}
    for search in ("exact", "approximate"):
        result = CliRunner().invoke(main, ["curate", planted_store, "--search", search, "--device", "cpu",
                                           "--no-progress"])
        assert result.exit_code == 0, result.output
        flags[search] = pd.read_parquet(Path(planted_store) / layout.FLAGS).set_index("image_id")
    columns = ["duplicate", "duplicate_group", "duplicate_of", "outlier", "flagged"]
    pd.testing.assert_frame_equal(flags["exact"][columns], flags["approximate"][columns])
    assert flags["approximate"].loc["img050", "duplicate_of"] == "img020"


def test_the_feature_file_returns_the_rows_written_by_range_and_by_sorted_index(tmp_path, monkeypatch):
    import pipeline.curation.similarity_search as search
    from pipeline.curation.similarity_search import FeatureFile

    monkeypatch.setattr(search, "IO_CHUNK_BYTES", 1000)  # many calls per read and write, as beyond 2 GiB
    values = np.random.default_rng(0).standard_normal((70_000, 8)).astype(np.float16)
    features = FeatureFile(tmp_path / "f.f16", len(values), 8)
    for lo in range(0, len(values), 30_000):
        features.write(lo, values[lo : lo + 30_000])
    picked = np.sort(np.random.default_rng(1).choice(len(values), 500, replace=False))
    np.testing.assert_array_equal(features[65_000:70_000], values[65_000:])
    np.testing.assert_array_equal(features[picked], values[picked])
    assert features[5:5].shape == (0, 8) and features.shape == values.shape
    with pytest.raises(ValueError, match="sorted"):
        features[np.array([5, 3])]
    features.close()


def test_each_rows_bad_reasons_are_joined_in_order_and_null_without_one():
    from pipeline.curation.store_curation import _joined_reasons

    reasons = [("mse", np.array([1, 0, 1, 0], bool)), ("perceptual", np.array([1, 0, 0, 0], bool)),
               ("identity", np.array([0, 0, 1, 1], bool))]
    assert _joined_reasons(reasons, 4).to_pylist() == ["mse,perceptual", None, "mse,identity", "identity"]
    assert _joined_reasons([], 2).to_pylist() == [None, None]


# --- near-duplicates across stores (curate --against) ---

def _two_stores(G, prior, root: Path, leaked: list[int]) -> tuple[str, str]:
    """A 'train' store of 60 rows and a 'test' store of 30 whose rows `leaked` are copies (up to a tiny jitter) of
    train rows 2 * k."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        train = G.mapping(torch.randn(60, G.z_dim, generator=g), None)
        test = G.mapping(torch.randn(30, G.z_dim, generator=g), None)
    for k in leaked:
        test[k] = train[2 * k] + 1e-3 * torch.randn(train[2 * k].shape, generator=g)
    (root / "train").mkdir()
    (root / "test").mkdir()
    return synthetic_store(root / "train", G, prior, train), synthetic_store(root / "test", G, prior, test)


@pytest.mark.parametrize("search", ["exact", "approximate"])
def test_against_flags_the_rows_leaked_from_another_store_naming_their_twin(G, prior, tmp_path, search, monkeypatch):
    import pandas as pd

    import pipeline.curation.similarity_search as similarity_search

    if search == "approximate":  # the faiss IVF index beyond small stores, as at scale
        monkeypatch.setattr(similarity_search, "EXACT_BASE_VALUES", 0)
        monkeypatch.setattr(similarity_search, "MIN_TRAINING_ROWS", 60)
    train, test = _two_stores(G, prior, tmp_path, leaked=[1, 4, 7])
    result = CliRunner().invoke(main, ["curate", test, "--against", train, "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"3 rows have a near-duplicate in {train}" in result.output
    flags = pd.read_parquet(Path(test) / layout.FLAGS).set_index("image_id")
    crossed = flags[flags["cross_duplicate"]]
    assert list(crossed.index) == ["img001", "img004", "img007"]
    assert list(crossed["cross_duplicate_of"]) == ["img002", "img008", "img014"]
    assert (crossed["cross_duplicate_store"] == train).all() and (crossed["cross_duplicate_cosine"] > 0.99).all()
    assert crossed["flagged"].all() and flags.loc[~flags["cross_duplicate"], "cross_duplicate_of"].isna().all()


def test_against_is_refused_for_a_store_of_another_generator_and_reruns_when_the_other_store_changes(G, prior,
                                                                                                  tmp_path):
    from tests.conftest import tiny_generator
    from tests.test_augment import add_shard

    train, test = _two_stores(G, prior, tmp_path, leaked=[1])
    first = CliRunner().invoke(main, ["curate", test, "--against", train, "--device", "cpu", "--no-progress"])
    assert "1 rows have a near-duplicate" in first.output
    add_shard(train, G, _latent_of(test, "img005"), "s1", first=60)  # the other store now holds a copy of img005
    again = CliRunner().invoke(main, ["curate", test, "--against", train, "--device", "cpu", "--no-progress"])
    assert "2 rows have a near-duplicate" in again.output, again.output

    other_G = tiny_generator(16, seed=5)
    from pipeline.priors.gaussian import GaussianizedPrior

    (tmp_path / "elsewhere").mkdir()
    foreign = synthetic_store(tmp_path / "elsewhere", other_G,
                              GaussianizedPrior.fit(other_G, num_samples=5000, batch_size=5000, progress=False),
                              other_G.mapping(torch.randn(5, other_G.z_dim), None).detach())
    refused = CliRunner().invoke(main, ["curate", test, "--against", foreign, "--device", "cpu", "--no-progress"])
    assert refused.exit_code == 2 and "another generator" in refused.output and "--duplicates-by identity" in \
        refused.output


def _latent_of(store: str, image_id: str) -> torch.Tensor:
    from pipeline.store.store import open_store

    frame = open_store(store).to_pandas(["image_id", "w_refined"], latents_as_arrays=True).set_index("image_id")
    return torch.from_numpy(np.asarray(frame.loc[image_id, "w_refined"]))[None]


@pytest.mark.slow
def test_the_report_shows_each_row_beside_its_twin_in_the_other_store(fixture_dir, tmp_path):
    from pipeline.report.html_report import build_report
    from tests.stores import small_inverted_store

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    mine = small_inverted_store(tmp_path / "a", fixture_dir)["uri"]
    theirs = small_inverted_store(tmp_path / "b", fixture_dir)["uri"]  # the same images, inverted again
    result = CliRunner().invoke(main, ["curate", mine, "--against", theirs, "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    import pandas as pd

    flags = pd.read_parquet(Path(mine) / layout.FLAGS)
    assert flags["cross_duplicate"].all() and (flags["cross_duplicate_cosine"] > 0.999).all()
    page = Path(build_report(mine, in_domain=0, curve_images=4)).read_text()
    assert "Near-duplicates in another store" in page
    section = page[page.index("Near-duplicates in another store"):]
    assert section.count("cross-duplicates") >= 2 * min(len(flags), 12), "each row beside its twin"

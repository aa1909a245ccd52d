"""Progress that moves: rows finished inside a shard are reported as batches finish, with the stage."""

from __future__ import annotations

from pipeline.models.bundle import write_bundle
from pipeline.invert.config import InvertConfig
from pipeline.data.planning import plan_input
from pipeline.runtime.progress_board import ProgressBoard
from pipeline.invert.shard_processor import ShardProcessor
from pipeline.store.writer import claim
from tests.conftest import tiny_generator
from tests.datasets import colorful, png_bytes


def test_a_shard_reports_its_rows_batch_by_batch_with_the_stage(tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(10):
        (tmp_path / "in" / f"img{i}.png").write_bytes(png_bytes(colorful(seed=i)))
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    write_bundle(str(tmp_path / "G.safetensors"), {"G_ema": tiny_generator(16)})
    cfg = InvertConfig(input=str(tmp_path / "in"), output=str(tmp_path / "store"), generator=str(tmp_path / "G.safetensors"),
                       stages=["refine"], steps=1, perceptual="none", batch_size=4, shard_size=100, progress=False)
    shard = plan_input(cfg).shards[0]
    reports = []
    with claim(cfg.output) as writer:
        ShardProcessor(cfg, writer.shard_writer(None), device="cpu",
                       progress=lambda *report: reports.append(report)).process(shard)
    rows = [r for _, r, _, _ in reports]
    assert rows == sorted(rows) and rows[-1] == 11, "monotonic, ending at every row of the shard"
    assert len({r for r in rows if 0 < r < 11}) >= 2, "it moves before the shard is done (batches of 4)"
    stages = [s for _, _, s, _ in reports if s]
    assert stages[0] == "decode" and "refine" in stages and stages[-1] == "write"
    assert "refine step 1/1" in stages, "the running batch's refinement step is shown"
    assert {shard_id for shard_id, _, _, _ in reports} == {shard.shard_id}
    oks = [ok for _, _, _, ok in reports]
    assert oks == sorted(oks) and oks[-1] == 10 and 0 < oks[len(oks) // 2] < 10, "ok rows counted as they finish"


def test_the_board_counts_a_retried_shard_once():
    board = ProgressBoard()
    board.report("a", 5, "refine", ok=4)
    board.report("b", 3, None, ok=3)
    board.restart("a")  # a new attempt at shard a
    board.report("a", 2, "encode", ok=2)
    assert board.read() == (5, 5, "encode")


def test_progress_in_a_log_is_plain_lines_at_each_tenth_without_escapes(capsys, monkeypatch):
    from pipeline.progress import PLAIN_ENV, progress_bar

    monkeypatch.setenv(PLAIN_ENV, "1")
    bar = progress_bar(total=200, desc="images", unit="img")
    for i in range(200):
        bar.set_postfix(ok=i + 1, errors=0, refresh=False)
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10, "a line at each tenth (the last one is the end's), not one per update"
    assert not any("\r" in line or "\x1b" in line for line in lines)
    assert lines[-1].startswith("images: 200/200 img (100%)") and "ETA" in lines[-1] and "ok 200" in lines[-1]


def test_progress_in_a_log_also_writes_a_line_every_interval(capsys):
    from pipeline.progress import PlainProgress

    bar = PlainProgress(total=10**6, desc="refine", unit="step", interval=0.0)
    bar.update(1)
    bar.update(1)
    assert len(capsys.readouterr().err.splitlines()) == 2, "due by time, though no tenth was crossed"


def test_a_terminal_gets_a_moving_bar(monkeypatch):
    from tqdm.auto import tqdm

    from pipeline.progress import PLAIN_ENV, progress_bar

    monkeypatch.setenv(PLAIN_ENV, "0")
    bar = progress_bar(total=3, desc="x", enabled=False)
    assert isinstance(bar, tqdm)

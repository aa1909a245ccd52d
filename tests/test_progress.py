"""Progress that moves: rows finished inside a shard are reported as batches finish, with the stage."""

from __future__ import annotations

from pipeline.models.bundle import write_bundle
from pipeline.runtime.config import InvertConfig
from pipeline.data.planning import plan_input
from pipeline.runtime.progress_board import ProgressBoard
from pipeline.runtime.shard_processor import ShardProcessor
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
    rows = [r for _, r, _ in reports]
    assert rows == sorted(rows) and rows[-1] == 11, "monotonic, ending at every row of the shard"
    assert len({r for r in rows if 0 < r < 11}) >= 2, "it moves before the shard is done (batches of 4)"
    stages = [s for _, _, s in reports if s]
    assert stages[0] == "decode" and "refine" in stages and stages[-1] == "write"
    assert {shard_id for shard_id, _, _ in reports} == {shard.shard_id}


def test_the_board_counts_a_retried_shard_once():
    board = ProgressBoard()
    board.report("a", 5, "refine")
    board.report("b", 3, None)
    board.restart("a")  # a new attempt at shard a
    board.report("a", 2, "encode")
    assert board.read() == (5, "encode")

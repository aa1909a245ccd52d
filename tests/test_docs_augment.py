"""docs/augment.md runs as written: its command on a store of the demo model, then its Python blocks on the
output (the webdataset library and a torch DataLoader, pandas)."""

from __future__ import annotations

import contextlib
import io
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from latentmill.cli import main
from tests.markdown_blocks import code_blocks, shell_commands

PAGE = Path(__file__).resolve().parents[1] / "docs" / "augment.md"


@pytest.mark.slow
def test_every_block_of_the_augmentation_page_runs_as_written(ray_local, tmp_path, monkeypatch):
    from benchmarks.store_readers import write_store

    (tmp_path / "out").mkdir()
    write_store(tmp_path / "out", 60, 20)  # out/store: the demo model's latents, 2% error rows
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LATENTMILL_PLAIN_PROGRESS", "1")
    blocks = code_blocks(PAGE)
    assert [language for language, _ in blocks] == ["bash", "python", "python"]
    for language, code in blocks:
        if language == "bash":
            for command in shell_commands(code):
                args = shlex.split(command)
                assert args[0] == "latentmill"
                result = CliRunner().invoke(main, args[1:])
                assert result.exit_code == 0, result.output + repr(result.exception)
        else:
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(code, str(PAGE), "exec"), {})
            assert printed.getvalue().strip(), "each block shows what it read"
            print(printed.getvalue())

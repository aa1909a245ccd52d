"""docs/export.md runs as written: its command on a store of the demo model, then every Python block."""

from __future__ import annotations

import contextlib
import io
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from latentmill.cli import main
from tests.markdown_blocks import code_blocks, shell_commands

PAGE = Path(__file__).resolve().parents[1] / "docs" / "export.md"


@pytest.mark.slow
def test_every_block_of_the_export_page_runs_as_written(ray_local, tmp_path, monkeypatch):
    from benchmarks.store_readers import write_store

    (tmp_path / "out").mkdir()
    write_store(tmp_path / "out", 5000, 1000)  # out/store: enough rows for the index
    (tmp_path / "test").mkdir()
    Path(write_store(tmp_path / "test", 500, 250, seed=1)).rename(tmp_path / "out" / "test-store")
    monkeypatch.chdir(tmp_path)
    blocks = code_blocks(PAGE)
    assert [language for language, _ in blocks] == ["bash", "python", "bash", "python", "python"]
    for language, code in blocks:
        if language == "bash":
            for command in shell_commands(code):
                result = CliRunner().invoke(main, shlex.split(command)[1:])
                assert result.exit_code == 0, result.output + repr(result.exception)
                assert "IVF_PQ index" in result.output or "cross_duplicate" in result.output, result.output
            continue
        for line in (code.splitlines() if code.startswith("import lance;") else [code]):
            scope: dict = {}
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(line, str(PAGE), "exec"), scope)
            found = scope.get("table", scope.get("frame", scope.get("rows")))
            assert printed.getvalue().strip() or len(found) > 0, line

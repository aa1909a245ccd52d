"""The README and every page of docs/ are true as written: each shell and Python block runs, in page order, in
a user's folder (the demo model under the names the pages give a user's checkpoints, demo images as photos/);
a block that needs what a CI machine lacks (a GPU, a cloud bucket, public weights, hours) says so on the line
before it (`<!-- not run: REASON -->`). docs/augment.md and docs/export.md have their own tests, on the stores
their blocks read (tests/test_docs_augment.py, tests/test_docs_export.py)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from latentmill.cli import main
from tests.markdown_blocks import shell_commands
from tests.user_files import put_downloaded_weights, put_user_files

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN_ELSEWHERE = {"augment.md": "tests/test_docs_augment.py", "export.md": "tests/test_docs_export.py"}
BLOCK = re.compile(r"^(?:<!-- not run: (?P<reason>[^\n]*?) -->\n)?```(?P<language>\w*)\n(?P<code>.*?)^```", re.S | re.M)
RUNNABLE = ("bash", "python")


def blocks(page: Path) -> list[tuple[str, str, str | None]]:
    """(language, code, the reason it is not run or None) of every fenced block, in page order."""
    return [(m["language"], m["code"], m["reason"]) for m in BLOCK.finditer(page.read_text())]


def test_every_block_is_run_or_says_what_it_needs():
    for page in PAGES:
        for language, code, reason in blocks(page):
            assert language in (*RUNNABLE, ""), f"{page.name}: a block in {language!r}, which no test runs"
            if language == "":
                assert reason is None and not re.search(r"^\s*(latentmill|python|ray|import|from) ", code, re.M), \
                    f"{page.name}: an untagged block that looks like code:\n{code[:300]}"
            assert reason is None or len(reason) > 10, f"{page.name}: say what the block needs: {reason!r}"
    assert sum(reason is None and language in RUNNABLE for page in PAGES for language, _, reason in blocks(page)) >= 12


def run_block(language: str, code: str, namespace: dict, where: str) -> str:
    """A shell block's `latentmill` commands in this process (the subject is the page, not the CLI's process),
    or a Python block in the page's namespace; what it printed."""
    if language == "bash":
        printed = []
        for command in shell_commands(code):
            args = shlex.split(command)
            assert Path(args[0]).name == "latentmill", f"{where}: `{command}` is not a latentmill command: mark it"
            result = CliRunner().invoke(main, args[1:], prog_name="latentmill")
            assert result.exit_code == 0, f"{where}: `{command}`\n{result.output[-3000:]}\n{result.exception!r}"
            printed.append(result.output)
        return "".join(printed)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, where, "exec"), namespace)
    return printed.getvalue()


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory, ray_local):
    """A user's folder where the README's own blocks have run (its store, out/store, is what the topic pages'
    commands read), as the working folder with the user's environment while the module's tests run."""
    root = tmp_path_factory.mktemp("user")
    put_user_files(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("TORCH_HOME", str(root / "torch"))
        patch.setenv("LATENTMILL_PLAIN_PROGRESS", "1")
        put_downloaded_weights()
        readme = {}
        for language, code, reason in blocks(REPO / "README.md"):
            if reason is None:
                run_block(language, code, readme, "README.md")
        yield root


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if p.name not in RUN_ELSEWHERE], ids=lambda p: p.name)
def test_every_block_of_the_page_runs_as_written(page, user_folder):
    if page.name == "README.md":  # run by the folder's fixture: what it promised is there
        assert (user_folder / "out" / "store" / "report.html").is_file()
        return
    namespace: dict = {}
    for index, (language, code, reason) in enumerate(blocks(page)):
        if reason is None and language in RUNNABLE:
            printed = run_block(language, code, namespace, f"{page.name}, block {index + 1}")
            assert language == "bash" or printed.strip(), f"{page.name}, block {index + 1}: shows what it made"

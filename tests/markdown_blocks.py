"""The fenced code blocks of a Markdown page, to run them as a reader would."""

from __future__ import annotations

import re
from pathlib import Path

FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def code_blocks(page: Path) -> list[tuple[str, str]]:
    """(language, code) of every fenced block, in page order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(page.read_text())]


def shell_commands(code: str) -> list[str]:
    """A shell block's commands: continuation lines joined, comments and blank lines left out."""
    commands, line = [], ""
    for raw in code.splitlines():
        line += raw.rstrip()
        if line.endswith("\\"):
            line = line[:-1] + " "
            continue
        command = line.split(" #", 1)[0].strip()
        if command and not command.startswith("#"):
            commands.append(command)
        line = ""
    return commands


def readme_cluster_commands(readme: Path) -> list[str]:
    """The commands of the README's cluster recipe ("## On a cluster"), as a user copies them."""
    text = readme.read_text()
    section = text[text.index("## On a cluster"):text.index("## Reading the store")]
    return shell_commands(FENCE.search(section).group(2))

"""Every `latentmill ...` example in every command's --help names options and arguments the command has:
each line is parsed by the command line itself, as a user would type it (files it names need not exist)."""

from __future__ import annotations

import shlex

import click
import pytest

from latentmill.cli import main


def examples() -> list[tuple[str, str]]:
    """(command, example line) for every example in every --help, continuation lines joined, comments cut."""
    found = []
    for name, command in main.commands.items():
        lines = (command.help or "").splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1].rstrip() + " " + lines[i].strip()
            if line.startswith("latentmill "):
                for part in line.split("&&"):
                    part = part.split("#", 1)[0].strip()
                    if part.startswith("latentmill ") and "..." not in part:
                        found.append((name, part))
            i += 1
    return found


def test_every_command_with_options_shows_an_example():
    shown = {name for name, _ in examples()}
    assert {"demo", "invert", "verify", "report", "curate", "rebalance", "reconstruct", "channels", "evaluate",
            "fit-prior", "fit-flow", "train-encoder", "train-generator", "train-identity", "inspect", "convert",
            "generate", "make-demo-data", "align"} <= shown


@pytest.mark.parametrize("line", [line for _, line in examples()], ids=lambda line: line[:60])
def test_each_example_parses_as_written(line):
    args = shlex.split(line)[1:]
    command = main.commands[args[0]]
    try:
        with command.make_context(args[0], args[1:], parent=click.Context(main, info_name="latentmill")) as ctx:
            assert ctx.params is not None
    except click.UsageError as exc:
        pytest.fail(f"`{line}` does not parse: {exc.format_message()}")

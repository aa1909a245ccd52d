"""Command-line options generated from a job's settings dataclass (pipeline/settings.py).

A field becomes `--field-name` with the field's type, default, choices and help; a bool that
defaults to True becomes `--name/--no-name`; a tuple becomes a comma-separated list; a field
without a default is required (a positional argument where it is declared `positional`). The
command receives the fields as keyword arguments and builds the dataclass from them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

import click

from pipeline.settings import option_name


class _IntOrWord(click.ParamType):
    """An integer, or a word such as 'auto' (the field's default), for `int | str` settings."""

    name = "integer"

    def __init__(self, word: str) -> None:
        self.word = word

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int) or value == self.word:
            return value
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is neither an integer nor {self.word!r}", param, ctx)


def _base_type(hint: Any, default: Any = None, metavar: str | None = None) -> Any:
    """str | None -> str; int | str -> an integer or the word (the default, or the word of a metavar
    such as N|auto); tuple[int, ...] stays."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        word = default if isinstance(default, str) else (metavar or "").rpartition("|")[2] or None
        if set(args) == {int, str} and word:
            return _IntOrWord(word)
        return args[0] if len(args) == 1 else str
    return hint


def _comma_list(item_type: type) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def parse(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None or isinstance(value, tuple):
            return value
        try:
            return tuple(item_type(v.strip()) for v in str(value).split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(f"a comma-separated list of {item_type.__name__} values") from None
    return parse


def _parameter(f: dataclasses.Field, hint: Any) -> Callable[[Callable], Callable]:
    meta, name = f.metadata, option_name(f.name)
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    default = None if required else (f.default if f.default is not dataclasses.MISSING else f.default_factory())
    kind = _base_type(hint, default, meta.get("metavar"))
    kwargs: dict[str, Any] = {"help": meta.get("help", "")}
    if meta.get("metavar"):
        kwargs["metavar"] = meta["metavar"]
    if meta.get("positional"):
        return click.argument(f.name, metavar=name.upper().replace("-", "_"))
    if kind is bool:
        decls = [f"--{name}/--no-{name}"] if default else [f"--{name}"]
        kwargs.update(is_flag=True, default=bool(default))
        if default:
            kwargs["show_default"] = False
    elif typing.get_origin(kind) is tuple and meta.get("repeatable"):
        decls = [f"--{name}"]
        kwargs.update(type=str, multiple=True, default=tuple(default or ()))
    elif typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        decls = [f"--{name}"]
        kwargs.update(type=str, callback=_comma_list(item), show_default=True,
                      default=None if default is None else ",".join(map(str, default)))
        if meta.get("choices"):
            kwargs["help"] += f"  [from: {','.join(meta['choices'])}]"
    else:
        decls = [f"--{name}"]
        kwargs["type"] = click.Choice(list(meta["choices"])) if meta.get("choices") else kind
        kwargs.update(default=default, show_default=default is not None)
    kwargs["required"] = required
    if meta.get("old_spellings"):
        decls += list(meta["old_spellings"])
        kwargs["cls"] = OldSpellings
    return click.option(*decls, f.name, **kwargs)


def options_from(cls: type, *, first: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Decorate a click command with one parameter per command-line field of `cls`; `first` names the
    fields --help lists first (the rest follow in declaration order)."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init and f.metadata.get("cli", False)]
    # positional arguments first, then options in declaration order (click applies decorators bottom-up)
    rank = {name: i for i, name in enumerate(first)}
    fields.sort(key=lambda f: (not f.metadata.get("positional"), rank.get(f.name, len(rank))))

    def decorate(command: Callable) -> Callable:
        for f in reversed(fields):
            command = _parameter(f, hints[f.name])(command)
        return command
    return decorate


class OldSpellings(click.Option):
    """An option whose later names are old spellings: accepted, never shown in --help (one name per
    concept across commands: `--output`, not `--out` here and `--output` there)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None:
            return None
        names, text = record
        shown = self.opts[0] + names[len(", ".join(self.opts)):] if names.startswith(", ".join(self.opts)) else names
        return shown, text

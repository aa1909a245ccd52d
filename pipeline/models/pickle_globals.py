"""List the globals a pickle stream imports, by running its opcodes on a model of the unpickler's stack:
nothing is imported or executed.

The model follows the unpickler exactly (CPython's MARK starts a new stack and pops back to the old one,
POP on an empty stack drops a mark, memo PUT and GET copy values), so the strings a STACK_GLOBAL takes are
the ones the real machine would take, however the pickle shuffles them with memo, DUP and POP. A global
whose name the model cannot read (not a string, an extension-registry code) is reported as unreadable and
refused by the caller: the scan never guesses.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickletools

UNREADABLE = ("?", "?")  # a global named by something other than two strings the pickle itself pushed

_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
               "SHORT_BINSTRING"}
_MEMO_GETS = {"GET", "BINGET", "LONG_BINGET"}
_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_EXTENSIONS = {"EXT1", "EXT2", "EXT4"}  # copyreg's extension registry: a global named by a number


class PickleStackError(ValueError):
    """The stream would fail in the real unpickler too (stack or memo underflow)."""


def python3_name(module: str, name: str) -> tuple[str, str]:
    """What an unpickler with fix_imports resolves a protocol-2 (Python 2) global to."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _Machine:
    """The unpickler's stack, metastack (one stack per open MARK) and memo, holding the strings pushed and
    None for every other value."""

    def __init__(self) -> None:
        self.stack: list[object] = []
        self.metastack: list[list[object]] = []
        self.memo: dict[int, object] = {}
        self.proto = 0

    def pop(self) -> object:
        if not self.stack:
            raise PickleStackError("stack underflow")
        return self.stack.pop()

    def pop_mark(self) -> list[object]:
        if not self.metastack:
            raise PickleStackError("no MARK to pop to")
        items, self.stack = self.stack, self.metastack.pop()
        return items

    def top(self) -> object:
        if not self.stack:
            raise PickleStackError("memo PUT on an empty stack")
        return self.stack[-1]

    def resolve(self, module: object, name: object) -> tuple[str, str]:
        if not isinstance(module, str) or not isinstance(name, str):
            return UNREADABLE
        return python3_name(module, name) if self.proto < 3 else (module, name)


def pickle_globals(stream: io.BytesIO) -> list[tuple[str, str]]:
    """(module, name) of every global the next pickle of `stream` would import, in order; UNREADABLE for
    one the scan cannot name. Names are as Python 3 resolves them (protocol-2 pickles spell builtins
    as __builtin__). Raises PickleStackError (a ValueError) for a stream the unpickler would reject."""
    found: list[tuple[str, str]] = []
    m = _Machine()
    for op, arg, _ in pickletools.genops(stream):
        name = op.name
        if name == "PROTO":
            m.proto = int(arg)
        elif name == "MARK":
            m.metastack.append(m.stack)
            m.stack = []
        elif name == "POP":
            m.pop() if m.stack else m.pop_mark()
        elif name == "DUP":
            m.stack.append(m.top())
        elif name in _STRING_OPS:
            m.stack.append(arg if isinstance(arg, str) else None)
        elif name in _MEMO_PUTS:
            m.memo[int(arg)] = m.top()
        elif name == "MEMOIZE":
            m.memo[len(m.memo)] = m.top()
        elif name in _MEMO_GETS:
            if int(arg) not in m.memo:
                raise PickleStackError(f"memo key {arg} was never stored")
            m.stack.append(m.memo[int(arg)])
        elif name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            found.append(m.resolve(module, attr))
            m.stack.append(None)
        elif name == "INST":  # protocol 0: GLOBAL and instantiate in one opcode
            module, _, attr = str(arg).partition(" ")
            found.append(m.resolve(module, attr))
            m.pop_mark()
            m.stack.append(None)
        elif name == "STACK_GLOBAL":
            attr, module = m.pop(), m.pop()
            found.append(m.resolve(module, attr))
            m.stack.append(None)
        elif name in _EXTENSIONS:
            found.append(UNREADABLE)
            m.stack.append(None)
        else:
            _generic(m, op)
    return found


def _generic(m: _Machine, op: pickletools.OpcodeInfo) -> None:
    """Every other opcode by its declared stack effect: values it consumes are popped (a mark and what lies
    above it in one step) and each value it leaves is unknown."""
    before = [s.name for s in op.stack_before]
    if "mark" in before:
        m.pop_mark()
        for _ in range(before.index("mark")):
            m.pop()
    else:
        for _ in before:
            m.pop()
    m.stack.extend(None for _ in op.stack_after)

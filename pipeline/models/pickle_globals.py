"""List the globals a pickle stream imports, by reading its opcodes: nothing is executed.

Used to refuse a torch checkpoint that names anything outside an allow-list, with the exact
`module.name` in the error, before `torch.load(weights_only=True)` (the second line of defence)
ever sees it.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickletools

_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
               "SHORT_BINSTRING"}
_MEMO_GETS = {"GET", "BINGET", "LONG_BINGET"}
_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


def python3_name(module: str, name: str) -> tuple[str, str]:
    """What an unpickler with fix_imports resolves a protocol-2 (Python 2) global to."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def pickle_globals(stream: io.BytesIO) -> list[tuple[str, str]]:
    """(module, name) of every GLOBAL / STACK_GLOBAL in the next pickle of `stream`, in order.

    Names are given as Python 3 resolves them (protocol-2 pickles spell e.g. builtins as __builtin__).
    """
    found: list[tuple[str, str]] = []
    memo: dict[int, object] = {}
    recent: list[object] = []  # the last two pushed values (strings or None), for STACK_GLOBAL
    for op, arg, _ in pickletools.genops(stream):
        name = op.name
        if name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            found.append(python3_name(module, attr))
            recent.append(None)
        elif name == "STACK_GLOBAL":
            module, attr = (recent[-2:] + [None, None])[:2] if len(recent) >= 2 else (None, None)
            found.append((str(module), str(attr)))
            recent.append(None)
        elif name in _STRING_OPS:
            recent.append(arg)
        elif name in _MEMO_GETS:
            recent.append(memo.get(arg))
        elif name in _MEMO_PUTS:
            memo[arg] = recent[-1] if recent else None
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif op.stack_after and name not in ("MARK",):
            recent.append(None)
        recent = recent[-2:]
    return found

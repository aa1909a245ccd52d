"""Input names as ids: text even where a name is not, and unique by construction.

Names come from filesystems and archives that promise nothing: a Samba share or an old tar holds
Latin-1 bytes that are not UTF-8 (Python hands them over as surrogate escapes, which Arrow cannot
store), names differ only by case or by Unicode normalisation, and a suffix appended to make one
name unique can be the literal name of another file. Two rules follow:

- `escape_name`: a name becomes valid UTF-8 text, each undecodable byte written `\\xNN` and each
  backslash doubled; `raw_name` gives the original bytes back. Names without either are left
  exactly as they are (all but a few in practice).
- `unique_names`: names that are unique keep their spelling; every repeat gets the first suffix
  that is no other name's, checked against the whole set (and every name already in use), never
  pair by pair.
"""

from __future__ import annotations

import codecs
import hashlib
import itertools
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence


def is_escaped(name: str) -> bool:
    """True if `name` holds bytes that are not UTF-8 (surrogate escapes from os or tarfile)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def escape_name(name: str) -> str:
    """`name` as valid UTF-8 text that `raw_name` reverses exactly: each byte that is not UTF-8 (a
    surrogate escape, as os and tarfile hand them over) written `\\xNN`, each backslash doubled."""
    if "\\" not in name and not is_escaped(name):
        return name
    out = []
    for char in name:
        if char == "\\":
            out.append("\\\\")
        elif "\udc80" <= char <= "\udcff":
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        else:
            out.append(char)
    return "".join(out)


def raw_name(escaped: str) -> bytes:
    """The original bytes of an escaped name."""
    return codecs.escape_decode(escaped.encode("utf-8"))[0]


def os_name(escaped: str) -> str:
    """An escaped name back as the str os functions take (surrogate escapes for undecodable bytes)."""
    if "\\" not in escaped:
        return escaped
    return raw_name(escaped).decode("utf-8", "surrogateescape")


def same_file_key(name: str) -> str:
    """What two names must differ in to be two files everywhere: not only in case (macOS, Windows,
    SMB shares) and not only in Unicode normalisation (macOS)."""
    return unicodedata.normalize("NFKC", name).casefold()


def unique_names(names: Sequence[str], *, taken: Iterable[str] = (),
                 suffixes: Callable[[int, str], Iterable[str]] | None = None,
                 key: Callable[[str], str] = lambda name: name) -> list[str]:
    """Each of `names` made unique under `key`, in order: a name that occurs once (and is not taken)
    keeps its spelling; each later repeat gets the first of `suffixes(i, name)` that no other name
    (given, natural or already assigned) has. Default suffixes: 'name~1', 'name~2', ..."""
    suffixes = suffixes or (lambda i, name: (f"{name}~{n}" for n in itertools.count(1)))
    used = {key(t) for t in taken}
    natural = {key(n) for n in names}
    out: list[str] = []
    for i, name in enumerate(names):
        k = key(name)
        if k not in used:  # the first of its spelling keeps it
            used.add(k)
            out.append(name)
            continue
        for candidate in suffixes(i, name):
            ck = key(candidate)
            if ck not in used and ck not in natural:
                used.add(ck)
                out.append(candidate)
                break
        else:
            raise RuntimeError(f"no unique name found for {name!r}")
    return out


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def flat_shard_name(relative: str, suffix: str) -> str:
    """A shard's natural id from its file's (escaped) path: 'sub/a.tar' -> 'sub_a', safe in a file name."""
    flat = _UNSAFE.sub("_", relative.removesuffix(suffix).replace("/", "_")).strip("._-")
    return flat or "shard"


def unique_shard_ids(relative: Sequence[str], suffix: str, *, taken: Iterable[str] = ()) -> list[str]:
    """Shard ids for files at (escaped) `relative` paths: their flat names, and where two collide (under case
    folding, as on case-insensitive filesystems) or collide with `taken`, the flat name and a hash of
    the path ('sub_a-1f2e3d4c'), lengthened until it is unique too."""
    flats = [flat_shard_name(r, suffix) for r in relative]

    def hashed(i: int, flat: str):
        path = relative[i].encode()
        for n in range(1, 1000):
            digest = hashlib.sha256(path + (b"" if n == 1 else b"#%d" % n)).hexdigest()
            yield f"{flat}-{digest[: 8 if n == 1 else 12]}"

    return unique_names(flats, taken=taken, suffixes=hashed, key=same_file_key)


def default_id(shard_id: str, row: int) -> str:
    """The id of a Parquet row without one."""
    return f"{shard_id}/{row}"


def id_text(value: object) -> str:
    """An id column's value as text (bytes that are not UTF-8 escaped, like file names)."""
    if isinstance(value, (bytes, bytearray)):
        return escape_name(bytes(value).decode("utf-8", "surrogateescape"))
    return str(value)

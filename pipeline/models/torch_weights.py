"""`torch.load` for files latentmill did not write: tensors and plain containers only.

Every torch file (rosinality generators, pSp/e4e/ReStyle encoders, LPIPS, FaceNet, ArcFace and identity
weights) passes two guards. First the globals its pickle imports are read without running it
(pickle_globals models the unpickler's stack) and any name off the allow-list is refused by name; then
it is read with `weights_only=True`. Errors name the file, the global that was refused and the safe way
forward, and never pass on torch's own advice to retry with `weights_only=False`, which would run
whatever the file names.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import CheckpointError, UnsafeCheckpointError
from pipeline.models.pickle_globals import UNREADABLE, pickle_globals

_TORCH_STORAGES = {"FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "IntStorage",
                   "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage", "UntypedStorage"}
_TORCH_REBUILDERS = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                     "_rebuild_parameter_with_state"}
_TORCH_DTYPES = {"float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"}
# what torch.save writes for tensors, parameters and state dicts (files of 2017's torch onwards, as torch's
# own weights_only unpickler allows them); callers add their own plain types
TORCH_FILE_GLOBALS = frozenset({("collections", "OrderedDict"), ("torch", "Size"), ("torch", "device")}
                               | {("torch._utils", n) for n in _TORCH_REBUILDERS}
                               | {("torch", n) for n in _TORCH_STORAGES | _TORCH_DTYPES})

_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def refused_global(message: str) -> str | None:
    """The `module.name` torch's weights-only unpickler refused, from its error message."""
    match = _REFUSED_GLOBAL.search(message)
    return match.group(1) if match else None


def load_weights(file: bytes | str | Path, *, source: str, safe_globals: Iterable[Any] = (), mmap: bool = False) -> Any:
    """torch.load(weights_only=True) of raw bytes or a local path; errors name `source` (the setting and URI).
    mmap (a zip-format file at a path): tensors map the file's pages instead of being read into memory
    first, so a 1 GB checkpoint loads about as fast as the disk cache hands it over."""
    head = file[:4] if isinstance(file, bytes) else _read_head(file)
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise CheckpointError(f"{source}: not a readable torch state dict (a torch.save file starts with a zip or "
                              f"pickle header; this one starts with {head!r})")
    safe_globals = list(safe_globals)
    refuse_unlisted_globals(file, source=source,
                            allowed=TORCH_FILE_GLOBALS | {(g.__module__, g.__qualname__) for g in safe_globals})
    stream = io.BytesIO(file) if isinstance(file, bytes) else file
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            if mmap and not isinstance(file, bytes) and head.startswith(b"PK\x03\x04"):
                return torch.load(stream, map_location="cpu", weights_only=True, mmap=True)
            return torch.load(stream, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        name = refused_global(str(exc))
        detail = str(exc).partition("WeightsUnpickler error:")[2].strip().split("\n")[0].strip()
        what = f"the global '{name}'" if name else f"content that is not a tensor or a plain container ({detail})"
        raise UnsafeCheckpointError(_refusal(source, what)) from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, KeyError, OSError, IndexError) as exc:
        raise CheckpointError(f"{source}: truncated or corrupt torch file ({_first_line(exc)})") from None


def refuse_unlisted_globals(file: bytes | str | Path, *, source: str, allowed: frozenset[tuple[str, str]]) -> None:
    """Refuse, by name, any global the file's pickles import that is not `allowed` (nothing runs)."""
    try:
        names = [g for stream in _pickles_of(file) for g in pickle_globals(stream)]
    except (ValueError, EOFError, zipfile.BadZipFile, KeyError, OSError) as exc:
        raise CheckpointError(f"{source}: truncated or corrupt torch file ({type(exc).__name__}: {exc})") from None
    for module, name in names:
        if (module, name) == UNREADABLE:
            raise UnsafeCheckpointError(_refusal(source, "a global named by computed or registered values, not by "
                                                         "strings"))
        if (module, name) not in allowed:
            raise UnsafeCheckpointError(_refusal(source, f"the global '{module}.{name}'"))


def _refusal(source: str, what: str) -> str:
    """One message for every refused torch file: what was refused and the safe way forward."""
    return (f"{source}: refused to load {what}: latentmill reads weight files as data only, and unpickling it "
            "could run code. Save the weights as a plain state dict (torch.save(model.state_dict(), path)) or "
            "as safetensors with the code that made them, or use the file the library itself downloads.")


def _pickles_of(file: bytes | str | Path) -> list[io.BytesIO]:
    """The pickle streams of a torch.save file: data.pkl of a zip (read alone, not the tensors beside it),
    or the 4 leading pickles of a legacy file, read back to back from one stream."""
    if isinstance(file, bytes) and not file.startswith(b"PK\x03\x04"):
        return [io.BytesIO(file)] * 4
    source = io.BytesIO(file) if isinstance(file, bytes) else file
    if not zipfile.is_zipfile(source):
        data = io.BytesIO(Path(file).read_bytes())
        return [data] * 4
    with zipfile.ZipFile(source) as archive:
        return [io.BytesIO(archive.read(n)) for n in archive.namelist() if n.endswith("data.pkl")]


def _read_head(path: str | Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(4)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _first_line(exc: BaseException) -> str:
    """The exception's type and first line, leaving out any line of torch's weights_only advice."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and "weights_only" not in line]
    return type(exc).__name__ + (f": {lines[0]}" if lines else "")

"""`torch.load` for files latentmill did not write: tensors and plain containers only.

Every torch checkpoint (rosinality generators, LPIPS and FaceNet backbones, the tensor storages
inside NVlabs pickles) is read with `weights_only=True`. Its errors are rewritten: they name the
file, the global that was refused and the safe way forward, and never pass on torch's own advice
to retry with `weights_only=False`, which would run whatever the file names.
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
        raise UnsafeCheckpointError(
            f"{source}: refused to load {what}: latentmill reads weight files as data only, and unpickling it "
            "could run code. Save the weights as a plain state dict (torch.save(model.state_dict(), path)) or "
            "as safetensors with the code that made them, or use the file the library itself downloads.") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, KeyError, OSError, IndexError) as exc:
        raise CheckpointError(f"{source}: truncated or corrupt torch file ({_first_line(exc)})") from None


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

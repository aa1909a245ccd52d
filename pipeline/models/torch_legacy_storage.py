"""Read one tensor storage saved in torch's legacy (non-zip) `torch.save` format, as data.

NVlabs pickles store every tensor's storage as such a stream (`torch.storage._load_from_bytes`).
The stream is five small pickles (magic number, protocol, system info, the storage's persistent id,
the key list) followed by an 8-byte element count and the raw little-endian bytes. Parsing it here
takes one copy of the bytes, against three through `torch.load`, and resolves nothing but the
storage type names: the small pickles are read by an unpickler that refuses every other global.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch

from pipeline.errors import CheckpointError, UnsafeCheckpointError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
                  "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                  "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                  "BoolStorage": torch.bool}


class _StorageIdUnpickler(pickle.Unpickler):
    """Plain values, storage type names and ('storage', type, key, location, numel, view) ids only."""

    def __init__(self, stream: io.BytesIO) -> None:
        super().__init__(stream)
        self.storages: dict[str, tuple[torch.dtype, int]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        raise UnsafeCheckpointError(f"refusing global '{module}.{name}' inside a tensor storage stream")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"unexpected persistent id {pid!r} in a tensor storage stream")
        _, dtype, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise CheckpointError("storage views in legacy torch streams are not supported")
        if not isinstance(dtype, torch.dtype) or not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"malformed storage id {pid!r}")
        self.storages[str(key)] = (dtype, numel)
        return str(key)


def read_legacy_storage(blob: bytes) -> torch.Tensor:
    """The storage of a legacy `torch.save(storage)` stream, as a flat tensor of its dtype."""
    stream = io.BytesIO(blob)
    try:
        header = [_StorageIdUnpickler(stream).load() for _ in range(3)]  # magic, protocol, sys_info
        if header[0] != LEGACY_MAGIC:
            raise CheckpointError("a tensor storage stream lacks torch's legacy magic number")
        if isinstance(header[2], dict) and header[2].get("little_endian") is False:
            raise CheckpointError("big-endian tensor storages are not supported")
        ids = _StorageIdUnpickler(stream)
        root = ids.load()
        keys = _StorageIdUnpickler(stream).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"a tensor storage stream is corrupt ({type(exc).__name__}: {exc})") from None
    if not isinstance(root, str) or root not in ids.storages or keys != [root]:
        raise CheckpointError("a tensor storage stream does not hold exactly one storage")
    dtype, numel = ids.storages[root]
    start = stream.tell() + 8
    count = int.from_bytes(blob[start - 8 : start], "little")
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if count != numel or start + nbytes > len(blob):
        raise CheckpointError(f"a tensor storage is truncated ({len(blob) - start} of {nbytes} bytes)")
    if numel == 0:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(memoryview(blob)[start : start + nbytes]), dtype=dtype)


def rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2 for a flat storage tensor: a view with bounds checked."""
    if not isinstance(storage, torch.Tensor) or storage.ndim != 1:
        raise UnsafeCheckpointError("a pickled tensor refers to something that is not a tensor storage")
    try:
        return storage.as_strided(tuple(size), tuple(stride), int(offset))
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"a pickled tensor does not fit its storage ({exc})") from None

"""Read NVlabs network pickles (stylegan2-ada-pytorch, stylegan3) as plain data, never as code.

An official pickle rebuilds each network by calling
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, whose `meta["module_src"]` is Python
source that the official loader executes. Here a restricted `pickle.Unpickler` resolves only an
allow-list of globals: that function becomes one returning the meta as a `PersistentRecord`, tensors
are rebuilt through `torch.load(weights_only=True)`, and any other global (os.system, builtins.eval,
subprocess, importlib, ...) stops unpickling with `UnsafeCheckpointError` before it can be called.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.errors import CheckpointError, UnsafeCheckpointError
from pipeline.models.network_record import NetworkRecord


@dataclass
class PersistentRecord:
    """What `_reconstruct_persistent_obj(meta)` would have rebuilt, kept as data.

    `class_name` is e.g. 'training.networks.Generator'; `state` is the module's `__dict__`
    (`_parameters`, `_buffers`, `_modules`, `_init_kwargs`, plain attributes).
    """

    class_name: str
    state: dict[str, Any]
    version: int | None = None
    module_src_chars: int = 0

    @property
    def short_class_name(self) -> str:
        return self.class_name.rsplit(".", 1)[-1]

    @property
    def init_kwargs(self) -> dict[str, Any]:
        return to_plain(self.state.get("_init_kwargs", {}))

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Flatten parameters and buffers of this module and its children, PyTorch-style names."""
        out: dict[str, torch.Tensor] = {}
        for group in ("_parameters", "_buffers"):
            for name, tensor in (self.state.get(group) or {}).items():
                if tensor is not None:
                    out[prefix + name] = tensor
        for name, child in (self.state.get("_modules") or {}).items():
            if isinstance(child, PersistentRecord):
                out.update(child.state_dict(f"{prefix}{name}."))
            elif child is not None:
                raise CheckpointError(f"submodule {prefix}{name} is a {type(child).__name__}, not a network record")
        return out


class _PlainDict(dict):
    """Stands in for dnnlib.util.EasyDict: a dict that also accepts pickled attribute state."""


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise CheckpointError("a persistent object in the pickle has malformed metadata")
    return PersistentRecord(class_name=str(meta.get("class_name")), state=meta["state"], version=meta.get("version"),
                            module_src_chars=len(meta.get("module_src") or ""))


def _load_tensor_storage(blob: bytes) -> Any:
    # The blob is a small legacy `torch.save` stream; weights_only refuses anything but storages.
    try:
        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt streams
        raise CheckpointError(f"a tensor storage inside the pickle is corrupt ({exc})") from None


def _rebuild_parameter(data: torch.Tensor, requires_grad: bool, backward_hooks: Any, *_: Any) -> torch.Tensor:
    return data  # parameters come back as plain tensors; the model owns the nn.Parameter objects


def _numpy_scalar(dtype: np.dtype, data: bytes | None = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsafeCheckpointError(f"refusing numpy scalar of dtype {dtype!r}: only plain numeric scalars are allowed")
    return np.frombuffer(data, dtype=dtype)[0].item()


def _numpy_dtype(spec: Any, *args: Any) -> np.dtype:
    if not isinstance(spec, str):
        raise UnsafeCheckpointError(f"refusing numpy dtype spec {spec!r}")
    dtype = np.dtype(spec)
    if dtype.hasobject:
        raise UnsafeCheckpointError("refusing numpy object dtype")
    return dtype


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _PlainDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _load_tensor_storage,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only `ALLOWED_GLOBALS`; everything else is refused by name."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to load global '{module}.{name}': it is not on latentmill's allow-list of "
                "plain-data types, and loading it could run arbitrary code. If this is a legitimate "
                "checkpoint, convert it with its original code into a state dict or safetensors file."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(f"refusing persistent id {pid!r} in a plain pickle")


def load_nvlabs_pickle(data: bytes, *, source: str) -> dict[str, Any]:
    """Unpickle an NVlabs snapshot (a dict of networks and settings) without running its code."""
    try:
        obj = RestrictedUnpickler(io.BytesIO(data)).load()
    except (UnsafeCheckpointError, CheckpointError) as exc:
        raise type(exc)(f"{source}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, RuntimeError, MemoryError, OverflowError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{source}: not a readable pickle, or truncated ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a pickled dict of networks, found {type(obj).__name__}")
    return obj


def to_plain(value: Any) -> Any:
    """Turn EasyDicts and OrderedDicts into dicts and numpy scalars into Python numbers, recursively."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def network_records(snapshot: dict[str, Any], *, source: str) -> dict[str, NetworkRecord]:
    """The persistent networks of an unpickled snapshot (G, G_ema, D, ...), by key."""
    records = {}
    for key, value in snapshot.items():
        if isinstance(value, PersistentRecord):
            if value.state.get("_init_args"):
                raise CheckpointError(f"{source}: network {key} was built with positional arguments; unsupported")
            records[str(key)] = NetworkRecord(value.class_name, value.init_kwargs, value.state_dict())
    if not records:
        raise CheckpointError(f"{source}: the pickle holds no networks (keys: {sorted(map(str, snapshot))})")
    return records

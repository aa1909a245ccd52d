"""Read NVlabs network pickles (stylegan2-ada-pytorch, stylegan3) as plain data, never as code.

An official pickle rebuilds each network by calling
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, whose `meta["module_src"]` is Python
source that the official loader executes. Here a restricted `pickle.Unpickler` resolves only an
allow-list of globals: that function becomes one returning the meta as a `PersistentRecord`, tensors
are rebuilt from their raw bytes (torch_legacy_storage), and any other global (os.system, builtins.eval,
subprocess, importlib, ...) stops unpickling with `UnsafeCheckpointError` before it can be called.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np
import torch

from pipeline.errors import CheckpointError, UnsafeCheckpointError
from pipeline.models.network_record import NetworkRecord
from pipeline.models.torch_legacy_storage import read_legacy_storage, rebuild_tensor
from pipeline.models.nvlabs_layouts import (ADA, STYLEGAN3, STYLEGAN3_REPO_SG2, describe_layout, describe_stylegan3,
                                            detect_code_base, latentmill_kwargs)


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

    def walk(self) -> Iterator[PersistentRecord]:
        """This module and every submodule, depth first."""
        yield self
        for child in (self.state.get("_modules") or {}).values():
            if isinstance(child, PersistentRecord):
                yield from child.walk()

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


def _load_tensor_storage(blob: bytes) -> torch.Tensor:
    if not isinstance(blob, bytes):
        raise UnsafeCheckpointError(f"a tensor storage inside the pickle is a {type(blob).__name__}, not bytes")
    return read_legacy_storage(blob)


def _rebuild_parameter(data: torch.Tensor, requires_grad: bool, backward_hooks: Any, *_: Any) -> torch.Tensor:
    return data  # parameters come back as plain tensors; the model owns the nn.Parameter objects


def _numpy_scalar(dtype: np.dtype, data: bytes | None = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsafeCheckpointError(f"refusing numpy scalar of dtype {dtype!r}: only plain numeric scalars are allowed")
    return np.frombuffer(data, dtype=dtype)[0].item()


class _NumpyArray:
    """Stands in for `numpy.ndarray` in a pickle: only plain numeric arrays are rebuilt, from raw bytes.

    StyleGAN3 layers keep sizes and sampling rates as small numpy arrays; a pickled array is
    `_reconstruct(ndarray, shape, dtype)` followed by a state of (version, shape, dtype, fortran, bytes).
    """

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5:
            raise UnsafeCheckpointError("refusing a numpy array with an unexpected pickled state")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(raw, bytes) \
                or not all(isinstance(n, int) for n in shape):
            raise UnsafeCheckpointError("refusing a numpy array that is not plain numeric data")
        self.array = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


def _numpy_reconstruct(cls: Any, shape: Any, dtype_code: Any) -> _NumpyArray:
    if cls is not _NumpyArray:
        raise UnsafeCheckpointError(f"refusing to rebuild numpy subclass {cls!r}")
    return _NumpyArray()


def _refuse_tensorflow(module: str, name: str) -> None:
    raise CheckpointError(
        f"an original TensorFlow StyleGAN2 pickle ({module}.{name}); convert it to the PyTorch format first, with "
        "the official converter of NVlabs/stylegan2-ada-pytorch or NVlabs/stylegan3: "
        "python legacy.py --source=IN.pkl --dest=OUT.pkl (it runs the repository's own code), then load OUT.pkl")


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
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _load_tensor_storage,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy", "ndarray"): _NumpyArray,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only `ALLOWED_GLOBALS`; everything else is refused by name."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("dnnlib.tflib"):
            _refuse_tensorflow(module, name)
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


def load_nvlabs_pickle(data: bytes | BinaryIO, *, source: str) -> dict[str, Any]:
    """Unpickle an NVlabs snapshot (a dict of networks and settings) without running its code."""
    try:
        obj = RestrictedUnpickler(io.BytesIO(data) if isinstance(data, bytes) else data).load()
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
    if isinstance(value, _NumpyArray):
        return value.array.tolist() if value.array is not None else None
    return value


def network_records(snapshot: dict[str, Any], *, source: str) -> dict[str, NetworkRecord]:
    """The persistent networks of an unpickled snapshot (G, G_ema, D, ...), by key, with their
    constructor arguments rearranged into latentmill's layout (see nvlabs_layouts)."""
    networks = {str(k): v for k, v in snapshot.items() if isinstance(v, PersistentRecord)}
    bases = {key: detect_code_base(value) for key, value in networks.items()}
    # One snapshot comes from one code base: a D without the telling attributes follows its G.
    base = STYLEGAN3_REPO_SG2 if any(b is STYLEGAN3_REPO_SG2 or b == STYLEGAN3 for b in bases.values()) else ADA
    info = {k: to_plain(v) for k, v in snapshot.items() if not isinstance(v, PersistentRecord)}
    records = {}
    for key, value in networks.items():
        if value.state.get("_init_args"):
            raise CheckpointError(f"{source}: network {key} was built with positional arguments; unsupported")
        kind = value.short_class_name
        if bases[key] == STYLEGAN3:
            records[key] = NetworkRecord("StyleGAN3Generator", value.init_kwargs, value.state_dict(),
                                         layout=describe_stylegan3(value.init_kwargs))
            continue
        records[key] = NetworkRecord(f"{base.module}.{kind}", latentmill_kwargs(kind, value.init_kwargs, base),
                                     value.state_dict(), layout=describe_layout(kind, value.init_kwargs, base, info))
    if not records:
        raise CheckpointError(f"{source}: the pickle holds no networks (keys: {sorted(map(str, snapshot))})")
    return records

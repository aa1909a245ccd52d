"""Regenerate the pSp / e4e / ReStyle / ArcFace parity checkpoints from their committed specs.

The official encoder checkpoints are hundreds of MB (an IR-SE50 backbone plus 512-channel style
heads), far too big to commit. ``tests/fixtures/encoders/<name>.json`` therefore commits no weights:
it lists every tensor of the checkpoint (key, shape, dtype and an init rule) and the file's exact
top-level layout, and ``<name>_outputs.npz`` holds what the official code computed from those
weights. A test rebuilds the very same checkpoint here, deterministically, and compares.

Determinism is the whole point, so:

* every tensor comes from its own ``numpy.random.RandomState`` seeded with ``(seed, crc32(key))``.
  The legacy RandomState stream is frozen by NumPy's compatibility policy (unlike ``Generator`` or
  torch's RNG), and seeding per key makes a tensor independent of the order or the presence of the
  other keys;
* samples are drawn in float64 and rounded to float32 once; only +, *, / and sqrt touch them after the
  RNG (IEEE-exact everywhere, unlike libm's tanh or exp);
* nothing here depends on torch's RNG, thread count or BLAS.

``tests/fixtures/make_encoder_fixtures.py`` wrote the specs, loaded ``synthetic_state_dict`` into the
official networks with ``strict=True``, and checked in a fresh process that a checkpoint written by
``write_checkpoint`` and loaded the official way reproduces every recorded array bit-exactly.
"""

from __future__ import annotations

import contextlib
import json
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "encoders"

_DTYPES = {"float32": (np.float32, torch.float32), "int64": (np.int64, torch.int64)}


def load_fixture(name: str) -> dict[str, Any]:
    """The committed description of fixture ``name`` (spec, opts, layout, config, output keys)."""
    return json.loads((FIXTURE_DIR / f"{name}.json").read_text())


def load_outputs(name: str) -> dict[str, np.ndarray]:
    """The reference arrays the official code computed (float32 and unicode arrays only)."""
    with np.load(FIXTURE_DIR / f"{name}_outputs.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def fixture_names() -> list[str]:
    """Every committed encoder fixture."""
    return sorted(p.stem for p in FIXTURE_DIR.glob("*.json"))


def _tensor_seed(seed: int, key: str) -> list[int]:
    # RandomState(init_by_array) mixes both words; crc32 is stable across Python runs (hash() is not).
    return [seed & 0xFFFFFFFF, zlib.crc32(key.encode("utf-8"))]


def synthetic_tensor(entry: dict[str, Any], seed: int) -> torch.Tensor:
    """One tensor from a spec entry ``{key, shape, dtype, init}``.

    ``init`` is one of ``{"dist": "normal", "mean", "std"}``, ``{"dist": "uniform", "low", "high"}``
    or ``{"dist": "value", "value"}`` (a literal nested list or scalar, for fixed buffers such as the
    StyleGAN2 blur ``kernel`` and for ``num_batches_tracked``).
    """
    np_dtype, torch_dtype = _DTYPES[entry["dtype"]]
    shape = tuple(entry["shape"])
    init = entry["init"]
    dist = init["dist"]
    if dist == "value":
        array = np.asarray(init["value"], dtype=np_dtype).reshape(shape)
    else:
        rs = np.random.RandomState(_tensor_seed(seed, entry["key"]))
        if dist == "normal":
            array = rs.standard_normal(shape) * float(init["std"]) + float(init["mean"])
        elif dist == "uniform":
            array = rs.uniform(float(init["low"]), float(init["high"]), shape)
        else:
            raise ValueError(f"unknown init {dist!r} for {entry['key']}")
        array = np.asarray(array, dtype=np.float64).astype(np_dtype)
    # (not np.ascontiguousarray: it turns the 0-d num_batches_tracked into shape [1])
    tensor = torch.from_numpy(np.array(array, dtype=np_dtype, order="C", copy=True)).to(torch_dtype)
    assert tuple(tensor.shape) == shape, (entry["key"], tuple(tensor.shape), shape)
    return tensor


def synthetic_state_dict(spec: list[dict[str, Any]], seed: int,
                         metadata: dict[str, dict[str, Any]] | None = None) -> dict[str, torch.Tensor]:
    """Deterministic weights for every spec entry, in spec order (= the official state_dict order).

    ``metadata`` (``{module prefix: {"version": n}}``) becomes the ``_metadata`` attribute that
    ``nn.Module.state_dict()`` attaches and ``torch.save`` pickles with it (BatchNorm is version 2).
    """
    state = OrderedDict((entry["key"], synthetic_tensor(entry, seed)) for entry in spec)
    if metadata is not None:
        state._metadata = OrderedDict((k, dict(v)) for k, v in metadata.items())  # type: ignore[attr-defined]
    return state


def _optimizer_state(entry: dict[str, Any], seed: int) -> dict[str, Any]:
    """A small optimizer ``state_dict()`` laid out like torch's: int param ids, tuple betas."""
    groups = []
    for group in entry["param_groups"]:
        group = dict(group)
        for key in entry.get("tuple_keys", []):
            if key in group:
                group[key] = tuple(group[key])
        group["params"] = list(range(*group.pop("params_range")))
        groups.append(group)
    state: dict[int, dict[str, Any]] = {}
    for item in entry["state"]:
        values: dict[str, Any] = dict(item.get("values", {}))
        for name, tensor_entry in item.get("tensors", {}).items():
            values[name] = synthetic_tensor(tensor_entry, seed)
        state[int(item["index"])] = values
    return {"state": state, "param_groups": groups}


def build_checkpoint(fixture: dict[str, Any], seed: int | None = None) -> Any:
    """The object the official training code would have handed to ``torch.save``."""
    seed = fixture["seed"] if seed is None else seed
    layout = fixture["checkpoint"]
    if layout["layout"] == "state_dict_only":  # e.g. model_ir_se50.pth: the file *is* a state_dict
        return synthetic_state_dict(fixture["spec"], seed, layout.get("metadata"))
    out: dict[str, Any] = {}
    for entry in layout["entries"]:
        kind = entry["kind"]
        if kind == "state_dict":
            out[entry["key"]] = synthetic_state_dict(entry.get("spec", fixture["spec"]), seed, entry.get("metadata"))
        elif kind == "value":
            out[entry["key"]] = entry["value"]
        elif kind == "tensor":
            out[entry["key"]] = synthetic_tensor(entry["tensor"], seed)
        elif kind == "optimizer":
            out[entry["key"]] = _optimizer_state(entry, seed)
        else:
            raise ValueError(f"unknown checkpoint entry kind {kind!r}")
    return out


@contextlib.contextmanager
def _storage_location(location: str | None):
    """Make torch.save tag every storage with `location` (e.g. 'cuda:0'), as a save from a GPU does.

    The official Coaches save `net.state_dict()` and `latent_avg` of a network living on 'cuda:0', so
    the real files name that device and only load on a CPU with `map_location`. torch.save asks the
    module-level `torch.serialization.location_tag` for each storage's tag; the tensors stay on CPU.
    """
    if location is None:
        yield
        return
    original = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: location
    try:
        yield
    finally:
        torch.serialization.location_tag = original


def write_checkpoint(path: str | Path, fixture: dict[str, Any], seed: int | None = None,
                     legacy_format: bool | None = None, storage_location: str | None = "fixture") -> Path:
    """Write the checkpoint as the official code saves it (``torch.save``), and return its path.

    ``legacy_format`` overrides the fixture's ``checkpoint.serialization`` ("zip" for torch >= 1.6,
    which the three repositories pin; "legacy" for files saved by older torch, as TreB1eN's
    ``model_ir_se50.pth`` most likely was). ``storage_location`` overrides the fixture's
    ``checkpoint.storage_location`` ('cuda:0' for the encoder checkpoints; None or 'cpu' for plain CPU tags).
    """
    path = Path(path)
    layout = fixture["checkpoint"]
    if legacy_format is None:
        legacy_format = layout.get("serialization", "zip") == "legacy"
    if storage_location == "fixture":
        storage_location = layout.get("storage_location")
    with _storage_location(None if storage_location == "cpu" else storage_location):
        torch.save(build_checkpoint(fixture, seed), path, _use_new_zipfile_serialization=not legacy_format)
    if storage_location not in (None, "cpu") and not legacy_format:
        with zipfile.ZipFile(path) as zf:  # the tag sits in data.pkl; fail loudly if torch stops honouring it
            pkl = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
            assert storage_location.encode() in zf.read(pkl), "storage location tag was not written"
    return path


def _resize_bilinear(x: np.ndarray, size: int) -> np.ndarray:
    """align_corners=True bilinear resize of [..., h, w] float64 arrays, in NumPy (no torch kernels)."""
    def weights(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.linspace(0.0, n_in - 1.0, size)
        lo = np.clip(np.floor(pos).astype(np.int64), 0, n_in - 2)
        return lo, lo + 1, pos - lo
    y0, y1, fy = weights(x.shape[-2])
    x0, x1, fx = weights(x.shape[-1])
    rows = x[..., y0, :] * (1.0 - fy)[:, None] + x[..., y1, :] * fy[:, None]
    return rows[..., x0] * (1.0 - fx) + rows[..., x1] * fx


def input_images(seed: int, n: int = 2, size: int = 256, channels: int = 3) -> torch.Tensor:
    """Deterministic, smooth, image-like inputs in (-1, 1): NCHW float32.

    Two octaves of Gaussian noise (8x8 and 32x32, bilinearly upsampled) squashed by x / sqrt(1 + x^2)
    (tanh-like, but IEEE-exact on every platform), so the images have large smooth regions and some
    texture, like the normalised face crops that the official transforms (Resize 256, ToTensor,
    Normalize(0.5, 0.5)) produce. Computed in NumPy float64 from ``RandomState(seed)``, so the tests
    need not store them.
    """
    rs = np.random.RandomState(seed)
    coarse = rs.standard_normal((n, channels, 8, 8))
    fine = rs.standard_normal((n, channels, 32, 32))
    x = 1.2 * _resize_bilinear(coarse, size) + 0.6 * _resize_bilinear(fine, size)
    img = x / np.sqrt(1.0 + x * x)
    return torch.from_numpy(img.astype(np.float32))


def fixture_inputs(fixture: dict[str, Any], which: str = "x") -> torch.Tensor:
    """The input batch ``which`` (a key of ``fixture["inputs"]``) that the official code was run on."""
    spec = fixture["inputs"][which]
    return input_images(spec["seed"], spec["n"], spec["size"], spec.get("channels", 3))

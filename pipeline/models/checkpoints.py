"""Load StyleGAN2 networks from any supported checkpoint file, safely, from any fsspec URI.

Formats, told apart by their first bytes:
- NVlabs pickles (stylegan2-ada-pytorch / stylegan3 snapshots): restricted unpickler, no code runs;
- rosinality `.pt` files (torch.save zip or legacy): `torch.load(weights_only=True)` allowing only
  `argparse.Namespace` beyond tensors and containers;
- latentmill bundles (safetensors + JSON config).
Every format becomes `NetworkRecord`s, then latentmill modules loaded with `strict=True`.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from pipeline.errors import CheckpointError
from pipeline.models import rosinality
from pipeline.models.bundle import read_bundle, write_bundle
from pipeline.models.embedding import EmbeddingNet
from pipeline.models.regressor import Encoder
from pipeline.models.fingerprint import fingerprint
from pipeline.models.network_record import NetworkRecord
from pipeline.models.nvlabs_pickle import load_nvlabs_pickle, network_records
from pipeline.models.pretrained_encoder import PretrainedEncoder, is_encoder_file, read_encoder_file
from pipeline.models.stylegan2 import Discriminator, Generator, uninitialized_weights
from pipeline.models.stylegan3 import StyleGAN3Generator
from pipeline.models.torch_weights import load_weights
from pipeline.priors.flow import FlowPrior
from pipeline.uris import local_path

NETWORK_CLASSES: dict[str, type[nn.Module]] = {"Generator": Generator, "StyleGAN3Generator": StyleGAN3Generator,
                                               "Discriminator": Discriminator, "Encoder": Encoder,
                                               "PretrainedEncoder": PretrainedEncoder,
                                               "EmbeddingNet": EmbeddingNet, "FlowPrior": FlowPrior}
GENERATORS = (Generator, StyleGAN3Generator)

# torch.save writes this number first in its legacy (non-zip) format.
_TORCH_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


@dataclass
class Checkpoint:
    """The networks of a checkpoint file, as data, with where they came from."""

    source: str
    format: str  # 'nvlabs-pickle' | 'rosinality' | 'latentmill-bundle'
    records: dict[str, NetworkRecord]
    info: dict[str, Any] = field(default_factory=dict)
    layout: str = ""  # the code base and layout that wrote the file, as detected


def _looks_like_safetensors(data: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then that many bytes of JSON object."""
    if len(data) < 10 or data[8:9] != b"{":
        return False
    header_len = int.from_bytes(data[:8], "little")
    return 8 + header_len <= len(data) and data[8 : 8 + header_len].rstrip().endswith(b"}")


def sniff_format(data: bytes, *, source: str) -> str:
    if not data:
        raise CheckpointError(f"{source}: the file is empty")
    if data[:4] == b"PK\x03\x04":
        return "torch-zip"
    if _looks_like_safetensors(data):  # before pickles: a header length of 128 + 256k also starts with 0x80
        return "safetensors"
    if data[:1] == b"\x80" and _TORCH_LEGACY_MAGIC in data[:16]:
        return "torch-legacy"
    if data[:1] == b"\x80":
        return "pickle"
    raise CheckpointError(f"{source}: not a StyleGAN2 checkpoint (expected an NVlabs .pkl, a rosinality .pt "
                          f"or a latentmill .safetensors bundle; the file starts with {data[:8]!r})")


def _torch_load_restricted(data: bytes | Path, *, source: str) -> Any:
    """A torch.save file as data (rosinality's args are an argparse.Namespace); a zip-format file at a path
    is memory-mapped, not read whole first."""
    return load_weights(data, source=source, safe_globals=[argparse.Namespace], mmap=isinstance(data, Path))


def _rosinality_records(obj: Any, *, source: str) -> tuple[dict[str, NetworkRecord], dict[str, Any]]:
    if not isinstance(obj, Mapping) or not any(k in obj for k in ("g_ema", "g")):
        keys = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{source}: a torch checkpoint without 'g_ema' or 'g' generator weights ({keys}); "
                              "latentmill reads NVlabs and rosinality generators, latentmill bundles, and the "
                              "encoders of pSp, e4e and ReStyle")
    args = obj.get("args")
    records, info = {}, {"args": vars(args) if isinstance(args, argparse.Namespace) else None}
    for theirs, ours in (("g_ema", "G_ema"), ("g", "G")):
        if theirs not in obj:
            continue
        records[ours], info["w_avg_source"] = rosinality.generator_record(obj[theirs], obj.get("latent_avg"), args,
                                                                          source=source, name=theirs)
    if isinstance(args, argparse.Namespace):
        info["layout"] = "rosinality/stylegan2-pytorch, train.py checkpoint"
    elif set(obj) <= {"g_ema", "g", "d", "latent_avg"}:
        info["layout"] = "rosinality/stylegan2-pytorch, convert_weight.py output (weights converted from TensorFlow)"
    else:
        info["layout"] = "rosinality/stylegan2-pytorch state dicts"
    skipped = sorted(k for k in ("d", "g_optim", "d_optim") if k in obj)
    if skipped:
        info["not_loaded"] = skipped  # rosinality's discriminator layout is not supported
    return records, info


def read_state_dict(uri: str, *, setting: str, cache_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """A plain `torch.save`d state dict (torchvision, facenet-pytorch weights) behind a weights URI,
    loaded with weights_only=True; errors name the setting."""
    path = local_path(uri, setting=setting, cache_dir=cache_dir)
    state = load_weights(path, source=f"{setting} {uri}")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{setting} {uri}: expected a state dict, found {type(state).__name__}")
    return dict(state)


def _nvlabs_checkpoint(stream: BinaryIO, uri: str) -> Checkpoint:
    snapshot = load_nvlabs_pickle(stream, source=uri)
    info = {k: v for k, v in snapshot.items() if isinstance(v, (dict, str, int, float)) and k != "augment_pipe"}
    records = network_records(snapshot, source=uri)
    main = records.get("G_ema") or next(iter(records.values()))
    return Checkpoint(uri, "nvlabs-pickle", records, info, main.layout or "")


def read_checkpoint(uri: str, *, setting: str = "checkpoint", cache_dir: str | Path | None = None) -> Checkpoint:
    """Read a checkpoint's networks as records, without building modules.

    NVlabs pickles are unpickled from the open file (streamed, as the official loader does), so
    a large pickle is never held in memory twice; other formats are read whole.
    """
    path = local_path(uri, setting=setting, cache_dir=cache_dir)
    with open(path, "rb") as f:
        head = f.read(16)
        if head[:1] == b"\x80" and head[8:9] != b"{" and _TORCH_LEGACY_MAGIC not in head:
            f.seek(0)
            return _nvlabs_checkpoint(f, uri)
        data = None if head[:4] == b"PK\x03\x04" else head + f.read()  # a torch zip file is mapped, not read
    kind = "torch-zip" if data is None else sniff_format(data, source=uri)
    if kind == "pickle":
        return _nvlabs_checkpoint(io.BytesIO(data), uri)
    if kind == "safetensors":
        records, info = read_bundle(data, source=uri)
        origin = info.get("converted_from")
        return Checkpoint(uri, "latentmill-bundle", records, info,
                          "latentmill bundle" + (f" (converted from {origin})" if origin else ""))
    obj = _torch_load_restricted(Path(path) if data is None else data, source=uri)
    if is_encoder_file(obj):
        records, info = read_encoder_file(obj, source=uri)
        return Checkpoint(uri, info["family"], records, info, info["layout"])
    records, info = _rosinality_records(obj, source=uri)
    return Checkpoint(uri, "rosinality", records, info, info["layout"])


def _finite(tensor: torch.Tensor) -> bool:
    """No NaN or infinity in `tensor`: its min and max in one pass (NaN propagates into both), without
    materialising a mask as large as a 1 GB checkpoint."""
    if tensor.numel() == 0 or not tensor.is_floating_point():
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def build_network(record: NetworkRecord, *, source: str, name: str = "network") -> nn.Module:
    """Construct a latentmill module from a record and load its weights strictly.

    The module is built without drawing random weights and takes the record's tensors as its
    parameters (`assign=True`): no initialisation to overwrite and no second copy of the weights,
    which was most of the time a large pickle took to load.
    """
    cls = NETWORK_CLASSES.get(record.short_class_name)
    if cls is None:
        raise CheckpointError(f"{source}: {name} has unsupported class {record.class_name!r}")
    try:
        with uninitialized_weights(), torch.device("meta" if getattr(cls, "BUILT_ON_META", False) else "cpu"):
            module = cls(**record.init_kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: cannot build {name} from its recorded arguments: {exc}") from None
    own = module.state_dict()
    fixed = {k: v for k, v in module.named_buffers() if k not in own}  # non-persistent FIR filters
    state = dict(record.state_dict)
    for key in [k for k in state if k in fixed]:
        if state[key].shape != fixed[key].shape or not torch.allclose(state[key].float(), fixed[key], atol=1e-6):
            raise CheckpointError(f"{source}: {name}.{key} differs from the filter its arguments imply")
        del state[key]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{source}: {name} weights do not match its architecture: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise CheckpointError(f"{source}: {name}.{key} has shape {list(tensor.shape)}, expected "
                                  f"{list(own[key].shape)}")
        if tensor.is_floating_point() != own[key].is_floating_point():
            raise CheckpointError(f"{source}: {name}.{key} holds {tensor.dtype} values, expected {own[key].dtype}")
        state[key] = tensor.to(own[key].dtype).contiguous()
    if not all(_finite(t) for t in state.values()):
        bad = next(k for k, t in state.items() if not _finite(t))
        raise CheckpointError(f"{source}: {name}.{bad} contains NaN or infinite values")
    module.load_state_dict(state, strict=True, assign=True)
    if record.expected_fingerprint and fingerprint(module) != record.expected_fingerprint:
        raise CheckpointError(f"{source}: {name} weights do not match the fingerprint recorded in the file")
    return module.eval().requires_grad_(False)


def load_networks(uri: str, *, device: str | torch.device = "cpu", setting: str = "checkpoint",
                  cache_dir: str | Path | None = None) -> dict[str, nn.Module]:
    """Every network in the file (e.g. {'G': ..., 'G_ema': ..., 'D': ...}), in eval mode on `device`."""
    ckpt = read_checkpoint(uri, setting=setting, cache_dir=cache_dir)
    return {name: build_network(rec, source=uri, name=name).to(device) for name, rec in ckpt.records.items()}


def generator_of(networks: Mapping[str, nn.Module], *, source: str, setting: str = "--generator") -> Generator:
    """The generator to use from a checkpoint's networks: G_ema when present, else its one Generator."""
    G = networks.get("G_ema") or next((n for n in networks.values() if isinstance(n, GENERATORS)), None)
    if not isinstance(G, GENERATORS):
        raise ValueError(f"{setting} {source}: the checkpoint holds no generator")
    return G


def load_generator(uri: str, *, which: str = "G_ema", device: str | torch.device = "cpu",
                   setting: str = "--generator", cache_dir: str | Path | None = None) -> Generator:
    """One generator of a checkpoint: 'G_ema' (the averaged weights, for inference) or 'G'."""
    ckpt = read_checkpoint(uri, setting=setting, cache_dir=cache_dir)
    if which not in ckpt.records:
        raise CheckpointError(f"{uri}: no network {which!r}; the file holds {sorted(ckpt.records)}")
    module = build_network(ckpt.records[which], source=uri, name=which)
    if not isinstance(module, GENERATORS):
        raise CheckpointError(f"{uri}: {which} is a {type(module).__name__}, not a Generator")
    return module.to(device)


def describe_checkpoint(uri: str, *, cache_dir: str | Path | None = None, setting: str = "checkpoint") -> dict[str, Any]:
    """What `latentmill inspect` prints: format, and per network its architecture and fingerprint."""
    ckpt = read_checkpoint(uri, cache_dir=cache_dir, setting=setting)
    networks = {}
    for name, rec in ckpt.records.items():
        module = build_network(rec, source=uri, name=name)
        entry: dict[str, Any] = {"class": type(module).__name__, "layout": rec.layout or ckpt.layout,
                                 "init_kwargs": module.init_kwargs,
                                 "parameters": sum(p.numel() for p in module.parameters()),
                                 "fingerprint": fingerprint(module)}
        if isinstance(module, PretrainedEncoder):
            entry.update(family=module.family, encoder_type=module.encoder_type, num_ws=module.num_ws,
                         w_dim=module.w_dim, output_size=module.img_resolution, input_size=module.resolution,
                         iterations=ckpt.info.get("iterations"))
        if isinstance(module, GENERATORS):
            entry.update(num_ws=module.num_ws, w_dim=module.w_dim, z_dim=module.z_dim, c_dim=module.c_dim,
                         img_resolution=module.img_resolution, img_channels=module.img_channels,
                         stylespace_channels=sum(a.weight.shape[0] for a in module.synthesis.affine_layers().values()))
        networks[name] = entry
    return {"uri": uri, "format": ckpt.format, "layout": ckpt.layout, "networks": networks, "info": ckpt.info}


def convert_checkpoint(src: str, dst: str, *, cache_dir: str | Path | None = None,
                       setting: str = "checkpoint") -> dict[str, str]:
    """Write every network of `src` into a latentmill safetensors bundle at `dst`; returns fingerprints."""
    ckpt = read_checkpoint(src, cache_dir=cache_dir, setting=setting)
    networks = {name: build_network(rec, source=src, name=name) for name, rec in ckpt.records.items()}
    write_bundle(dst, networks, info={"converted_from": src, "source_format": ckpt.format,
                                      "source_info": ckpt.info})
    return {name: fingerprint(module) for name, module in networks.items()}

"""latentmill bundles: one safetensors file holding one or more networks and their configs.

Tensors are named '<network>.<parameter>' (e.g. 'G_ema.mapping.fc0.weight'). The header metadata
holds JSON under 'latentmill.networks' (class, constructor kwargs, fingerprint per network) and
'latentmill.info' (provenance: source file, training settings, ...). Nothing in it is code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import safetensors
import safetensors.torch
from torch import nn

from pipeline.errors import CheckpointError
from pipeline.models.fingerprint import fingerprint
from pipeline.models.network_record import NetworkRecord
from pipeline.uris import write_bytes

BUNDLE_FORMAT = "latentmill-bundle/1"


def bundle_bytes(networks: Mapping[str, nn.Module], *, info: Mapping[str, Any] | None = None) -> bytes:
    """Serialize modules that carry an `init_kwargs` attribute (the constructor's arguments)."""
    tensors, configs = {}, {}
    for name, module in networks.items():
        if not hasattr(module, "init_kwargs"):
            raise TypeError(f"network {name!r} ({type(module).__name__}) has no init_kwargs to record")
        for key, tensor in module.state_dict().items():
            tensors[f"{name}.{key}"] = tensor.detach().cpu().contiguous().clone()
        configs[name] = {"class": type(module).__name__, "init_kwargs": module.init_kwargs,
                         "fingerprint": fingerprint(module)}
    metadata = {"format": BUNDLE_FORMAT, "latentmill.networks": json.dumps(configs),
                "latentmill.info": json.dumps(dict(info or {}), default=str)}
    return safetensors.torch.save(tensors, metadata=metadata)


def write_bundle(uri: str, networks: Mapping[str, nn.Module], *, info: Mapping[str, Any] | None = None) -> None:
    """Write a bundle to any fsspec URI; local files appear atomically (temp file + rename)."""
    write_bytes(uri, bundle_bytes(networks, info=info))


def read_bundle(data: bytes, *, source: str) -> tuple[dict[str, NetworkRecord], dict[str, Any]]:
    """Networks (as records) and provenance info of a bundle's bytes."""
    try:
        tensors = safetensors.torch.load(data)
        header = safetensors_metadata(data)
        configs = json.loads(header["latentmill.networks"])
        info = json.loads(header.get("latentmill.info", "{}"))
    except (safetensors.SafetensorError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{source}: not a valid latentmill safetensors bundle ({exc})") from None
    records = {}
    for name, config in configs.items():
        prefix = f"{name}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        records[name] = NetworkRecord(config["class"], config["init_kwargs"], state, config.get("fingerprint"))
    return records, info


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The string metadata of a safetensors file's header (empty if it has none)."""
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    return header.get("__metadata__") or {}

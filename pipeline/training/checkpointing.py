"""Resume points and logs shared by the training jobs (encoder, generator).

A checkpoint directory holds `model.safetensors` (a bundle of the networks), one `<name>.pt` per
optimizer state (plain tensors, loadable with weights_only=True) and `state.json` (the step, written
last: a directory without it is incomplete). Checkpoints are built in a temporary directory and
published atomically under OUTPUT/checkpoints/step-XXXXXXXX.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_PREFIX = "step-"


def latest_checkpoint(output: str | Path) -> Path | None:
    directory = Path(output) / "checkpoints"
    steps = sorted(directory.glob(f"{CHECKPOINT_PREFIX}*")) if directory.is_dir() else []
    complete = [d for d in steps if (d / "state.json").is_file()]  # state.json is written last
    return complete[-1] if complete else None


def checkpoint_state(directory: Path) -> dict[str, Any]:
    """The step and any extra state a checkpoint saved (e.g. the path-length mean)."""
    return json.loads((directory / "state.json").read_text())


def checkpoint_step(directory: Path) -> int:
    return checkpoint_state(directory)["step"]


def save_checkpoint(directory: Path, networks: Mapping[str, nn.Module], optimizers: Mapping[str, Any], step: int,
                    info: dict[str, Any], extra_state: dict[str, Any] | None = None) -> None:
    from pipeline.models.bundle import write_bundle

    directory.mkdir(parents=True, exist_ok=True)
    write_bundle(str(directory / "model.safetensors"), networks, info=info)
    for name, optimizer in optimizers.items():
        torch.save(optimizer.state_dict(), directory / f"{name}.pt")
    (directory / "state.json").write_text(json.dumps({"step": step, **(extra_state or {})}))


def publish_checkpoint(src: Path, output: Path, step: int, keep: int, *, final_name: str) -> Path:
    """Copy a finished checkpoint into output/checkpoints atomically, expose its bundle as
    output/<final_name>, and keep the newest `keep` checkpoints."""
    root = output / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{CHECKPOINT_PREFIX}{step:08d}"
    staging = root / f".{final.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(src, staging)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    shutil.copy2(final / "model.safetensors", output / f".{final_name}.tmp")
    os.replace(output / f".{final_name}.tmp", output / final_name)
    for old in sorted(root.glob(f"{CHECKPOINT_PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


class TrainingLogs:
    """CSV logs (and TensorBoard when installed), appended across resumes; write from rank 0 only."""

    def __init__(self, output: Path) -> None:
        self.output = output
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(output / "tensorboard"))
        except ImportError:
            self.tensorboard = None

    def write(self, name: str, step: int, values: dict[str, float]) -> None:
        path = self.output / name
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", *values])
            if new:
                writer.writeheader()
            writer.writerow({"step": step, **values})
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key, value, step)

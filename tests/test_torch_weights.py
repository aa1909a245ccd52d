"""Weight files that are not plain tensors are refused with the file, the global and the way forward."""

from __future__ import annotations

import argparse

import pytest
import torch

from pipeline.errors import CheckpointError, UnsafeCheckpointError
from pipeline.models.checkpoints import read_state_dict


def test_a_refused_global_is_named_and_torchs_unsafe_advice_is_not_passed_on(tmp_path):
    path = tmp_path / "vgg16.pth"
    torch.save({"features.0.weight": torch.zeros(2), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        read_state_dict(str(path), setting="--lpips-weights")
    message = str(info.value)
    assert message.startswith(f"--lpips-weights {path}: refused to load the global 'argparse.Namespace'")
    assert "state_dict" in message and "safetensors" in message
    assert "weights_only" not in message and "trust" not in message


def test_a_truncated_weight_file_names_the_setting_and_file(tmp_path):
    path = tmp_path / "facenet.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=f"--facenet-weights {path}: truncated or corrupt") as info:
        read_state_dict(str(path), setting="--facenet-weights")
    assert "weights_only" not in str(info.value)

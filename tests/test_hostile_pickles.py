"""Checkpoints that try to run code are refused by name, and nothing they ask for runs.

Each hostile payload, if executed, would create a marker file; every test checks both the error
(which names the refused global) and that the marker does not exist afterwards.
"""

from __future__ import annotations

import builtins
import collections
import importlib
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from pipeline.errors import UnsafeCheckpointError
from pipeline.models.checkpoints import load_networks


class Payload:
    """Pickles as a call to `func(*args)`: what a malicious checkpoint contains."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def qualified(func) -> str:
    return f"{func.__module__}.{func.__name__}"


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "payload-ran"


@pytest.fixture
def fake_persistence(monkeypatch):
    """Registers a stand-in `torch_utils.persistence` so that the test can *write* NVlabs-style pickles."""

    def _reconstruct_persistent_obj(meta):  # never called by latentmill's loader
        raise AssertionError("the real persistence function must not be reached")

    torch_utils = types.ModuleType("torch_utils")
    persistence = types.ModuleType("torch_utils.persistence")
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    torch_utils.persistence = persistence
    monkeypatch.setitem(sys.modules, "torch_utils", torch_utils)
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", persistence)
    return _reconstruct_persistent_obj


def write_pickle(path: Path, obj) -> str:
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return str(path)


def payloads(marker: Path, tmp_path: Path) -> dict[str, Payload]:
    module_dir = tmp_path / "mods"
    module_dir.mkdir(exist_ok=True)
    (module_dir / "evil_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    sys.path.insert(0, str(module_dir))
    return {
        "os.system": Payload(os.system, f"touch {marker}"),
        "builtins.eval": Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        "builtins.exec": Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.Popen": Payload(subprocess.Popen, ["touch", str(marker)]),
        "importlib.import_module": Payload(importlib.import_module, "evil_module"),
    }


ATTACKS = ["os.system", "builtins.eval", "builtins.exec", "subprocess.Popen", "importlib.import_module"]


@pytest.mark.parametrize("attack", ATTACKS)
def test_top_level_payload_is_refused_by_name(attack, marker, tmp_path):
    payload = payloads(marker, tmp_path)[attack]
    path = write_pickle(tmp_path / "evil.pkl", payload)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_networks(path)
    assert qualified(payload.func) in str(err.value)
    assert path in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("attack", ATTACKS)
def test_payload_nested_in_allowed_containers_is_refused(attack, marker, tmp_path):
    payload = payloads(marker, tmp_path)[attack]
    snapshot = {"G_ema": collections.OrderedDict(weights=[{"deep": (payload,)}])}
    path = write_pickle(tmp_path / "nested.pkl", snapshot)
    with pytest.raises(UnsafeCheckpointError, match=qualified(payload.func)):
        load_networks(path)
    assert not marker.exists()


@pytest.mark.parametrize("attack", ATTACKS)
def test_payload_inside_a_persistent_network_state_is_refused(attack, marker, tmp_path, fake_persistence):
    payload = payloads(marker, tmp_path)[attack]
    meta = {"type": "class", "version": 6, "module_src": "import os\nos.system('touch x')\n",
            "class_name": "training.networks.Generator",
            "state": {"_parameters": collections.OrderedDict(), "_buffers": collections.OrderedDict(),
                      "_modules": collections.OrderedDict(), "_init_kwargs": {"z_dim": payload}}}
    path = write_pickle(tmp_path / "persistent.pkl", {"G_ema": Payload(fake_persistence, meta)})
    with pytest.raises(UnsafeCheckpointError, match=qualified(payload.func)):
        load_networks(path)
    assert not marker.exists()


def test_module_source_stored_in_a_pickle_is_never_executed(tmp_path, marker, fake_persistence):
    meta = {"type": "class", "version": 6, "module_src": f"open({str(marker)!r}, 'w').close()\n",
            "class_name": "training.networks.Generator",
            "state": {"_parameters": {}, "_buffers": {}, "_modules": {}, "_init_kwargs": {"z_dim": 1}}}
    path = write_pickle(tmp_path / "src.pkl", {"G_ema": Payload(fake_persistence, meta)})
    with pytest.raises(Exception):  # an empty network is refused later; the point is the marker
        load_networks(path)
    assert not marker.exists()


def test_object_dtype_numpy_scalar_is_refused(tmp_path):
    import numpy as np

    path = write_pickle(tmp_path / "np.pkl", {"x": np.array([1], dtype=object)})
    with pytest.raises(UnsafeCheckpointError, match="numpy"):
        load_networks(path)


@pytest.mark.parametrize("attack", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_torch_zip_checkpoint_with_payload_is_refused_by_name(attack, marker, tmp_path):
    payload = payloads(marker, tmp_path)[attack]
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": {}, "args": payload}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_networks(str(path))
    assert qualified(payload.func) in str(err.value)
    assert not marker.exists()


def test_legacy_torch_file_with_payload_is_refused_by_name(marker, tmp_path):
    payload = payloads(marker, tmp_path)["os.system"]
    path = tmp_path / "legacy.pt"
    torch.save({"g_ema": {}, "args": payload}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match=qualified(os.system)):
        load_networks(str(path))
    assert not marker.exists()


def shuffled_stack_pickle(command: str) -> bytes:
    """A pickle that calls posix.system (os.system) while the two strings pushed last before its STACK_GLOBAL
    are 'collections' and 'OrderedDict': they sit above a MARK that POP_MARK drops, so the real machine
    takes the two strings beneath. A scanner that does not model the stack names an allowed global."""
    def text(value: str) -> bytes:
        return b"\x8c" + bytes([len(value)]) + value.encode()  # SHORT_BINUNICODE

    return (b"\x80\x04" + text("posix") + text("system") + b"(" + text("collections") + text("OrderedDict")
            + b"1" + b"\x93" + text(command) + b"\x85" + b"R" + b".")  # POP_MARK, STACK_GLOBAL, TUPLE1, REDUCE


def zip_torch_file(path: Path, data_pkl: bytes) -> str:
    """A torch.save zip file whose object pickle is `data_pkl`."""
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", data_pkl)
        archive.writestr("evil/version", "3\n")
        archive.writestr("evil/byteorder", "little")
    return str(path)


def test_the_shuffled_stack_pickle_really_runs_its_payload(marker):
    """The fixture below is a real attack: plain pickle.loads runs it."""
    pickle.loads(shuffled_stack_pickle(f"touch {marker}"))
    assert marker.exists()


def test_a_global_hidden_by_a_shuffled_stack_is_refused_by_its_real_name(marker, tmp_path):
    path = zip_torch_file(tmp_path / "evil.pt", shuffled_stack_pickle(f"touch {marker}"))
    with pytest.raises(UnsafeCheckpointError, match="'posix.system'"):
        load_networks(path)
    assert not marker.exists()


@pytest.mark.parametrize("setting", ["--lpips-weights", "--facenet-weights", "--identity-weights"])
def test_every_weight_file_passes_the_same_guard(setting, marker, tmp_path):
    """LPIPS, FaceNet, ArcFace and identity weights are read by read_state_dict: scanned by name too."""
    from pipeline.models.checkpoints import read_state_dict

    path = zip_torch_file(tmp_path / "weights.pth", shuffled_stack_pickle(f"touch {marker}"))
    with pytest.raises(UnsafeCheckpointError, match=f"{setting} .*'posix.system'"):
        read_state_dict(path, setting=setting)
    assert not marker.exists()


def test_a_global_named_by_an_extension_code_is_refused(tmp_path):
    import copyreg

    copyreg.add_extension("posix", "system", 240)
    try:
        data = pickle.dumps(os.system, protocol=2)
    finally:
        copyreg.remove_extension("posix", "system", 240)
    assert b"\x82" in data  # EXT1
    with pytest.raises(UnsafeCheckpointError, match="computed or registered"):
        load_networks(zip_torch_file(tmp_path / "ext.pt", data))


def test_plain_state_dicts_of_every_torch_format_pass_the_guard(tmp_path):
    from pipeline.models.checkpoints import read_state_dict

    state = {"conv.weight": torch.randn(2, 3), "bn.num_batches_tracked": torch.tensor(3),
             "half": torch.randn(2).half(), "p": torch.nn.Parameter(torch.ones(1))}
    for zipped in (True, False):
        path = tmp_path / f"state-{zipped}.pth"
        torch.save(state, path, _use_new_zipfile_serialization=zipped)
        loaded = read_state_dict(str(path), setting="--lpips-weights")
        assert torch.equal(loaded["conv.weight"], state["conv.weight"]) and loaded["half"].dtype == torch.float16

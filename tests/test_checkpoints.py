"""Loading, converting and fingerprinting checkpoints; broken files give clear errors."""

from __future__ import annotations

import argparse
import os
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from pipeline.errors import CheckpointError, WeightsNotFoundError
from pipeline.models.bundle import write_bundle
from pipeline.models.checkpoints import (convert_checkpoint, describe_checkpoint, load_generator,
                                         load_networks)
from pipeline.models.fingerprint import fingerprint
from pipeline.models.rosinality import to_rosinality
from tests.conftest import tiny_discriminator, tiny_generator


@torch.no_grad()
def same_outputs(a, b, *, atol: float = 0.0) -> bool:
    z = torch.randn(3, a.z_dim, generator=torch.Generator().manual_seed(0))
    return torch.allclose(a(z), b(z), rtol=0, atol=atol)


@pytest.mark.parametrize("name", ["sg2ada_32px.pkl", "rosinality_32px.pt"])
def test_convert_round_trip_keeps_outputs_and_fingerprints(fixture_dir, tmp_path, name):
    src = str(fixture_dir / name)
    dst = str(tmp_path / "bundle.safetensors")
    fingerprints = convert_checkpoint(src, dst)
    original, converted = load_networks(src), load_networks(dst)
    assert set(converted) == set(original) == set(fingerprints)
    for key in original:
        assert fingerprint(converted[key]) == fingerprint(original[key]) == fingerprints[key]
    assert same_outputs(original["G_ema"], converted["G_ema"])


def test_bundle_records_provenance_and_architecture(fixture_dir, tmp_path):
    dst = tmp_path / "b.safetensors"
    convert_checkpoint(str(fixture_dir / "sg2ada_32px.pkl"), str(dst))
    desc = describe_checkpoint(str(dst))
    assert desc["format"] == "latentmill-bundle"
    assert desc["info"]["source_format"] == "nvlabs-pickle"
    assert desc["networks"]["G_ema"]["num_ws"] == 8
    assert desc["networks"]["G_ema"]["init_kwargs"]["synthesis_kwargs"]["conv_clamp"] == 256


def test_load_generator_picks_the_requested_network(fixture_dir):
    path = str(fixture_dir / "sg2ada_32px.pkl")
    G_ema, G = load_generator(path), load_generator(path, which="G")
    assert fingerprint(G_ema) != fingerprint(G)
    with pytest.raises(CheckpointError, match="no network 'G_smooth'"):
        load_generator(path, which="G_smooth")
    with pytest.raises(CheckpointError, match="not a Generator"):
        load_generator(path, which="D")


def test_loaded_networks_are_frozen_in_eval_mode(fixture_dir):
    for net in load_networks(str(fixture_dir / "sg2ada_32px.pkl")).values():
        assert not net.training
        assert not any(p.requires_grad for p in net.parameters())


def test_fsspec_uris_load_through_the_cache(fixture_dir, tmp_path):
    import fsspec

    data = (fixture_dir / "sg2ada_32px.pkl").read_bytes()
    with fsspec.open("memory://bucket/ffhq.pkl", "wb") as f:
        f.write(data)
    cache = tmp_path / "cache"
    G = load_generator("memory://bucket/ffhq.pkl", cache_dir=cache)
    assert any(cache.iterdir()), "the remote file was cached"
    assert fingerprint(G) == fingerprint(load_generator(f"file://{fixture_dir / 'sg2ada_32px.pkl'}"))


def test_missing_weights_name_the_setting(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="--generator"):
        load_generator(str(tmp_path / "nope.pkl"))
    with pytest.raises(WeightsNotFoundError, match="--generator"):
        load_generator("memory://bucket/absent.pkl", cache_dir=tmp_path)


def test_empty_file_is_named_as_empty(tmp_path):
    path = tmp_path / "empty.pkl"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"{path}.*empty"):
        load_networks(str(path))


@pytest.mark.parametrize("name", ["sg2ada_32px.pkl", "rosinality_32px.pt"])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.97])
def test_truncated_checkpoints_give_a_clear_error(fixture_dir, tmp_path, name, fraction):
    data = (fixture_dir / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match=str(path)):
        load_networks(str(path))


def test_truncated_bundle_gives_a_clear_error(tmp_path):
    path = tmp_path / "g.safetensors"
    write_bundle(str(path), {"G_ema": tiny_generator()})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="not a valid latentmill safetensors bundle"):
        load_networks(str(path))


def test_files_of_other_formats_are_refused(tmp_path):
    from PIL import Image

    png = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(png)
    with pytest.raises(CheckpointError, match="not a StyleGAN2 checkpoint"):
        load_networks(str(png))
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a StyleGAN2 checkpoint"):
        load_networks(str(text))


def test_a_torch_file_without_generator_weights_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="without 'g_ema' or 'g'"):
        load_networks(str(path))


def test_wrong_shaped_tensor_is_named(tmp_path):
    G = tiny_generator()
    good = tmp_path / "good.safetensors"
    write_bundle(str(good), {"G_ema": G})
    tensors = safetensors.torch.load_file(good)
    tensors["G_ema.synthesis.b8.conv0.weight"] = torch.zeros(16, 16, 1, 1)
    with open(good, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    bad = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(tensors, bad, metadata=header["__metadata__"])
    with pytest.raises(CheckpointError, match=r"synthesis\.b8\.conv0\.weight has shape \[16, 16, 1, 1\]"):
        load_networks(str(bad))


def test_nan_weights_are_refused(tmp_path):
    G = tiny_generator()
    with torch.no_grad():
        G.mapping.fc0.weight[0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    write_bundle(str(path), {"G_ema": G})
    with pytest.raises(CheckpointError, match="mapping.fc0.weight contains NaN"):
        load_networks(str(path))


def test_tampered_bundle_weights_fail_the_recorded_fingerprint(tmp_path):
    path = tmp_path / "g.safetensors"
    write_bundle(str(path), {"G_ema": tiny_generator()})
    tensors = safetensors.torch.load_file(path)
    tensors["G_ema.mapping.fc1.bias"] += 1
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    safetensors.torch.save_file(tensors, path, metadata=header["__metadata__"])
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_networks(str(path))


def test_rosinality_file_without_latent_avg_estimates_w_avg(tmp_path):
    G = tiny_generator(resolution=16, conv_clamp=None)
    state = to_rosinality({k: v for k, v in G.state_dict().items() if k != "mapping.w_avg"}, 16, 2)
    path = tmp_path / "ros.pt"
    torch.save({"g_ema": state, "args": argparse.Namespace(size=16, lr_mlp=0.01)}, path)
    loaded = load_generator(str(path))
    with torch.no_grad():
        z = torch.randn(4096, 16, generator=torch.Generator().manual_seed(1))
        sample_mean = G.mapping(z)[:, 0].mean(0)
    assert (loaded.w_avg - sample_mean).abs().max() < 0.1 * sample_mean.abs().max()
    G.mapping.w_avg.copy_(loaded.w_avg)
    assert same_outputs(G, loaded, atol=1e-5)  # the weight scale is folded in and out in float32


def test_rosinality_args_size_must_match_the_weights(tmp_path):
    G = tiny_generator(resolution=16, conv_clamp=None)
    state = to_rosinality({k: v for k, v in G.state_dict().items() if k != "mapping.w_avg"}, 16, 2)
    path = tmp_path / "ros.pt"
    torch.save({"g_ema": state, "latent_avg": torch.zeros(16), "args": argparse.Namespace(size=256)}, path)
    with pytest.raises(CheckpointError, match="args.size=256"):
        load_generator(str(path))


def test_generator_and_discriminator_bundle_loads_both(tmp_path):
    path = str(tmp_path / "gd.safetensors")
    G, D = tiny_generator(), tiny_discriminator()
    write_bundle(path, {"G_ema": G, "D": D})
    nets = load_networks(path)
    assert fingerprint(nets["D"]) == fingerprint(D)
    img = torch.randn(4, 3, 16, 16)
    assert torch.equal(nets["D"](img), D(img))


def test_a_bundle_write_that_dies_midway_leaves_the_old_bundle_and_no_temp_files(tmp_path, monkeypatch):
    target = tmp_path / "g.safetensors"
    write_bundle(str(target), {"G_ema": tiny_generator()})
    before = target.read_bytes()

    class DiskFull(OSError):
        pass

    real_fdopen = os.fdopen

    def fdopen_that_fails_after_half(fd, mode="r", *args, **kwargs):
        file = real_fdopen(fd, mode, *args, **kwargs)
        real_write = file.write

        def write(data):
            real_write(data[: len(data) // 2])
            raise DiskFull("no space left on device")
        file.write = write
        return file

    monkeypatch.setattr(os, "fdopen", fdopen_that_fails_after_half)
    with pytest.raises(DiskFull):
        write_bundle(str(target), {"G_ema": tiny_generator(seed=1)})
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["g.safetensors"], "the half-written temp file is removed"
    assert target.read_bytes() == before, "readers never see a half-written bundle"


def test_converted_bundle_is_plain_safetensors(tmp_path, fixture_dir):
    dst = tmp_path / "b.safetensors"
    convert_checkpoint(str(fixture_dir / "sg2ada_32px.pkl"), str(dst))
    tensors = safetensors.torch.load_file(dst)
    assert "G_ema.mapping.w_avg" in tensors and "D.b4.out.weight" in tensors
    assert Path(dst).stat().st_size < 2 * (fixture_dir / "sg2ada_32px.pkl").stat().st_size


def test_legacy_torch_save_format_loads(fixture_dir, tmp_path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(fixture_dir / "rosinality_32px.pt", map_location="cpu", weights_only=True)
    legacy = tmp_path / "legacy.pt"
    torch.save(ckpt, legacy, _use_new_zipfile_serialization=False)
    assert same_outputs(load_generator(str(legacy)), load_generator(str(fixture_dir / "rosinality_32px.pt")))


def test_a_safetensors_header_length_starting_with_the_pickle_byte_is_still_safetensors():
    from pipeline.models.checkpoints import sniff_format

    for pad in range(300):  # some header length is 128 + 256k: its first byte is 0x80, like a pickle's
        data = safetensors.torch.save({"x": torch.zeros(2)}, metadata={"pad": "a" * pad})
        if data[:1] == b"\x80":
            break
    assert data[:1] == b"\x80"
    assert sniff_format(data, source="test") == "safetensors"

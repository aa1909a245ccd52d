"""Every StyleGAN2 checkpoint layout users have loads and reproduces the official code's outputs.

Fixtures in tests/fixtures were written by the official code bases themselves (see
tests/fixtures/make_checkpoint_fixtures.py): the stylegan3 repository's StyleGAN2 (its train.py
layout, conditional too), TensorFlow pickles converted by either repository's legacy.py, the
stylegan2-ada model-zoo configurations, rosinality's convert_weight.py output, and StyleGAN3-T/R
networks; shapes.json lists the full-size official networks' tensors.
"""

from __future__ import annotations

import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import CheckpointError, UnsafeCheckpointError
from pipeline.models.checkpoints import build_network, describe_checkpoint, load_generator, load_networks, read_checkpoint
from pipeline.models.network_record import NetworkRecord
from pipeline.models.nvlabs_layouts import ADA, STYLEGAN3_REPO_SG2, latentmill_kwargs
from pipeline.models.rosinality import _expected_fixed_kernel
from pipeline.models.stylegan2 import Discriminator, Generator, uninitialized_weights
from tests.conftest import IMAGE_TOL, LATENT_TOL, max_diff

FIXTURES = Path(__file__).parent / "fixtures"

# fixture -> what `latentmill inspect` must say the file is
NVLABS_FIXTURES = {
    "sg3repo_stylegan2_32px": "NVlabs/stylegan3 (StyleGAN2 networks), training.networks_stylegan2.Generator, "
                              "train.py --cfg=stylegan2",
    "sg3repo_stylegan2_cond_32px": "NVlabs/stylegan3 (StyleGAN2 networks), training.networks_stylegan2.Generator, "
                                   "train.py --cfg=stylegan2",
    "tf_converted_sg3repo_32px": "NVlabs/stylegan3 (StyleGAN2 networks), training.networks_stylegan2.Generator, "
                                 "converted from TensorFlow by legacy.py",
    "tf_converted_ada_32px": "NVlabs/stylegan2-ada-pytorch, training.networks.Generator, converted from TensorFlow "
                             "by legacy.py",
    "ada_cifar_32px": "NVlabs/stylegan2-ada-pytorch, training.networks.Generator",
    "ada_paper_32px": "NVlabs/stylegan2-ada-pytorch, training.networks.Generator",
}


def off_by(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs difference relative to the reference's scale (at least 1): the fixtures drive
    activations past the clamp on purpose, so their images reach a few hundred."""
    return max_diff(ours, ref) / max(1.0, ref.abs().max().item())


def reference(name: str) -> dict[str, torch.Tensor]:
    with np.load(FIXTURES / f"{name}_outputs.npz", allow_pickle=False) as npz:
        return {k: torch.from_numpy(v) for k, v in npz.items()}


@pytest.fixture(scope="module", params=sorted(NVLABS_FIXTURES))
def loaded(request):
    name = request.param
    return name, load_networks(str(FIXTURES / f"{name}.pkl")), reference(name)


@torch.no_grad()
def test_mapping_matches_the_official_code(loaded):
    _, nets, ref = loaded
    G, c = nets["G_ema"], ref["c"] if ref["c"].shape[1] else None
    assert max_diff(G.mapping(ref["z"], c), ref["ws"]) < LATENT_TOL
    assert max_diff(G.mapping(ref["z"], c, truncation_psi=0.7), ref["ws_trunc07"]) < LATENT_TOL


@pytest.mark.parametrize("fused", [True, False])
@torch.no_grad()
def test_synthesis_matches_the_official_code(loaded, fused):
    _, nets, ref = loaded
    G = nets["G_ema"]
    assert off_by(G.synthesis(ref["ws"], noise_mode="const", fused_modconv=fused), ref["img_const"]) < IMAGE_TOL
    assert off_by(G.synthesis(ref["ws"], noise_mode="none", fused_modconv=fused), ref["img_none"]) < IMAGE_TOL


@torch.no_grad()
def test_training_generator_and_discriminator_match_the_official_code(loaded):
    _, nets, ref = loaded
    c = ref["c"] if ref["c"].shape[1] else None
    assert off_by(nets["G"](ref["z"], c, noise_mode="const"), ref["img_G_const"]) < IMAGE_TOL
    assert off_by(nets["D"](ref["d_img"], c), ref["d_logits"]) < LATENT_TOL
    assert off_by(nets["D"](ref["img_const"], c), ref["d_logits_img_const"]) < LATENT_TOL


def test_inspect_names_the_code_base_and_layout(loaded):
    name, _, _ = loaded
    desc = describe_checkpoint(str(FIXTURES / f"{name}.pkl"))
    assert desc["layout"] == NVLABS_FIXTURES[name]
    assert desc["networks"]["D"]["layout"].startswith(NVLABS_FIXTURES[name].split(",")[0])


@pytest.mark.parametrize("name", ["sg3repo_stylegan2_32px", "ada_paper_32px"])
@torch.no_grad()
def test_the_activation_clamp_matters_in_the_fixtures(name):
    """The fixtures push activations past 256, so a loader that took another code base's
    conv_clamp default (None instead of 256) would fail the parity tests above."""
    ckpt = read_checkpoint(str(FIXTURES / f"{name}.pkl"))
    record = ckpt.records["G_ema"]
    assert record.init_kwargs["synthesis_kwargs"]["conv_clamp"] == 256
    unclamped = dict(record.init_kwargs, synthesis_kwargs={**record.init_kwargs["synthesis_kwargs"], "conv_clamp": None})
    G = build_network(NetworkRecord("Generator", unclamped, record.state_dict), source=name)
    ref = reference(name)
    assert off_by(G.synthesis(ref["ws"]), ref["img_const"]) > 1e-2


def test_stylegan3_repo_defaults_fill_what_its_train_py_leaves_out():
    ckpt = read_checkpoint(str(FIXTURES / "sg3repo_stylegan2_32px.pkl"))
    synthesis = ckpt.records["G_ema"].init_kwargs["synthesis_kwargs"]
    assert synthesis["conv_clamp"] == 256 and synthesis["num_fp16_res"] == 4
    assert synthesis["channel_base"] == 1024 and synthesis["channel_max"] == 32
    assert ckpt.records["D"].init_kwargs["conv_clamp"] == 256


def test_each_code_base_fills_in_its_own_defaults_never_another_s():
    flat = {"z_dim": 8, "c_dim": 0, "w_dim": 8, "img_resolution": 16, "img_channels": 3, "channel_base": 128}
    sg3 = latentmill_kwargs("Generator", flat, STYLEGAN3_REPO_SG2)
    assert sg3["synthesis_kwargs"] == {"channel_base": 128, "conv_clamp": 256, "num_fp16_res": 4}
    ada = latentmill_kwargs("Generator", {**flat, "synthesis_kwargs": {"channel_base": 128}}, ADA)
    assert ada["synthesis_kwargs"] == {"channel_base": 128, "conv_clamp": None, "num_fp16_res": 0}
    explicit = latentmill_kwargs("Generator", {**flat, "conv_clamp": None}, STYLEGAN3_REPO_SG2)
    assert explicit["synthesis_kwargs"]["conv_clamp"] is None  # train.py --fp32 records None: kept


def test_conditional_generator_uses_its_labels():
    nets = load_networks(str(FIXTURES / "sg3repo_stylegan2_cond_32px.pkl"))
    ref = reference("sg3repo_stylegan2_cond_32px")
    other = torch.roll(ref["c"], 1, dims=1)
    assert nets["G_ema"].c_dim == 5
    assert max_diff(nets["G_ema"].mapping(ref["z"], other), ref["ws"]) > 1e-3


@pytest.mark.parametrize("config", ["t", "r"])
def test_stylegan3_pickles_load_as_stylegan3_and_inspect_names_them(config):
    desc = describe_checkpoint(str(FIXTURES / f"stylegan3_{config}_16px.pkl"))
    assert desc["layout"] == f"NVlabs/stylegan3, training.networks_stylegan3.Generator (StyleGAN3-{config.upper()})"
    assert desc["networks"]["G_ema"]["class"] == "StyleGAN3Generator"
    assert desc["networks"]["D"]["class"] == "Discriminator"


def _tensorflow_pickle(path: Path) -> None:
    """A pickle in the layout of the original TensorFlow StyleGAN2 releases (dnnlib.tflib Networks)."""
    module = types.ModuleType("dnnlib.tflib.network")

    class Network:
        def __init__(self, name: str) -> None:
            self.__dict__.update(version=4, name=name, static_kwargs={"resolution": 16}, components={},
                                 build_module_src="", build_func_name="training.networks_stylegan2.G_main",
                                 variables=[("dlatent_avg", np.zeros(8, np.float32))])

    Network.__module__, Network.__qualname__ = module.__name__, "Network"
    module.Network = Network
    added = {name: types.ModuleType(name) for name in ("dnnlib", "dnnlib.tflib") if name not in sys.modules}
    sys.modules.update(added, **{module.__name__: module})
    try:
        path.write_bytes(pickle.dumps((Network("G"), Network("D"), Network("Gs"))))
    finally:
        for name in [*added, module.__name__]:
            del sys.modules[name]


def test_original_tensorflow_pickles_are_refused_with_the_command_that_converts_them(tmp_path):
    path = tmp_path / "stylegan2-ffhq-config-f.pkl"
    _tensorflow_pickle(path)
    with pytest.raises(CheckpointError) as info:
        load_generator(str(path))
    message = str(info.value)
    assert "TensorFlow StyleGAN2 pickle" in message and "python legacy.py --source=" in message
    assert not isinstance(info.value, UnsafeCheckpointError)


def test_numpy_object_arrays_stay_refused(tmp_path):
    """StyleGAN3 needs plain numeric numpy arrays as data; object arrays would run code, and are refused."""
    path = tmp_path / "hostile.pkl"
    path.write_bytes(pickle.dumps({"G": np.array([print], dtype=object)}))
    with pytest.raises(UnsafeCheckpointError):
        load_generator(str(path))


@torch.no_grad()
def test_rosinality_convert_weight_output_matches_rosinality():
    path = FIXTURES / "rosinality_converted_16px.pt"
    ckpt = read_checkpoint(str(path))
    assert ckpt.layout.endswith("convert_weight.py output (weights converted from TensorFlow)")
    assert ckpt.info["w_avg_source"] == "latent_avg"
    G = load_generator(str(path))
    ref = reference("rosinality_converted_16px")
    assert max_diff(G.mapping(ref["z"])[:, 0], ref["w"]) < LATENT_TOL
    assert off_by(G(ref["z"], noise_mode="const"), ref["img"]) < IMAGE_TOL


SHAPES = json.loads((FIXTURES / "shapes.json").read_text())


@pytest.mark.parametrize("name", sorted(k for k in SHAPES if not k.startswith("rosinality")))
def test_full_size_official_networks_map_onto_latentmill_modules(name):
    """Every tensor of the full-size model-zoo networks (names and shapes recorded from the official
    code) has its place in the latentmill module built from the recorded arguments."""
    entry = SHAPES[name]
    base = STYLEGAN3_REPO_SG2 if name.startswith("sg3repo") else ADA
    kind = entry["class_name"].rsplit(".", 1)[-1]
    with uninitialized_weights():
        module = {"Generator": Generator, "Discriminator": Discriminator}[kind](
            **latentmill_kwargs(kind, entry["init_kwargs"], base))
    ours = {k: list(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: v for k, v in entry["tensors"].items() if not k.endswith("resample_filter")}
    assert ours == theirs


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(k for k in SHAPES if k.startswith("rosinality")))
@torch.no_grad()
def test_rosinality_checkpoints_of_any_size_and_channel_multiplier_load(tmp_path, name):
    entry = SHAPES[name]
    gen = torch.Generator().manual_seed(0)
    state = {k: (_expected_fixed_kernel() if k.endswith(".kernel") else 0.1 * torch.randn(shape, generator=gen))
             for k, shape in entry["tensors"].items()}
    path = tmp_path / "ckpt.pt"
    torch.save({"g_ema": state, "latent_avg": torch.zeros(512)}, path)
    G = load_generator(str(path))
    assert G.img_resolution == entry["init_kwargs"]["size"]
    assert G.num_ws == 2 * int(np.log2(G.img_resolution)) - 2
    assert G.synthesis(torch.zeros(1, G.num_ws, 512)).shape == (1, 3, G.img_resolution, G.img_resolution)


@pytest.mark.slow
def test_a_stylegan3_repo_stylegan2_pickle_inverts_end_to_end_with_the_cli(tmp_path):
    """`latentmill fit-prior` then `latentmill invert` (refine, compress; D features as the perceptual
    term), on an embedded Ray, on images the fixture's own generator made."""
    import subprocess

    import pandas as pd
    from PIL import Image

    generator = str(FIXTURES / "sg3repo_stylegan2_32px.pkl")
    G = load_generator(generator)
    with torch.no_grad():
        images = G(torch.randn(3, G.z_dim, generator=torch.Generator().manual_seed(1)))
    images = images / images.abs().amax(dim=(1, 2, 3), keepdim=True)  # the clamp-testing biases saturate them
    (tmp_path / "in").mkdir()
    for i, img in enumerate(images):
        pixels = ((img.permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().numpy()
        Image.fromarray(pixels).save(tmp_path / "in" / f"{i}.png")
    cli = [sys.executable, "-m", "latentmill"]
    run = dict(check=True, capture_output=True, text=True, timeout=600)
    subprocess.run([*cli, "fit-prior", "--generator", generator, "--output", str(tmp_path / "prior.safetensors"),
                    "--num-samples", "5000", "--batch-size", "5000"], **run)
    subprocess.run([*cli, "invert", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "store"),
                    "--generator", generator, "--prior", str(tmp_path / "prior.safetensors"), "--stages",
                    "refine,compress", "--perceptual", "discriminator", "--steps", "5", "--batch-size", "3",
                    "--runner", "local", "--no-progress"], **run)
    rows = pd.read_parquet(tmp_path / "store" / "latents")
    assert sorted(rows["image_id"]) == ["0.png", "1.png", "2.png"]
    assert (rows["status"] == "ok").all()
    assert all(len(w) == G.num_ws * G.w_dim for w in rows["w_refined"])

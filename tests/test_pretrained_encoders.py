"""The encoders users already have: pSp, e4e and ReStyle checkpoints load as their training code saves
them, give the official code's W+ (and ReStyle's codes after every iteration) to 1e-4, and drive the
pipeline; ArcFace IR-SE50 scores identity as pSp's id_loss does.

The reference outputs were made by the official repositories (tests/fixtures/make_encoder_fixtures.py)
on weights that tests/encoder_checkpoints.py regenerates here: the real IR-SE50 backbone and heads, a
small rosinality decoder (16 or 32 px, 32 channels)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import CheckpointError, GeneratorMismatchError, UnsafeCheckpointError
from pipeline.models.checkpoints import describe_checkpoint, load_generator
from pipeline.models.encoder import encode, load_encoder
from pipeline.models.pretrained_encoder import PretrainedEncoder
from tests.encoder_checkpoints import fixture_inputs, fixture_names, load_fixture, load_outputs, write_checkpoint

TOLERANCE = 1e-4  # the bar for W+; images too
SMALL = ("psp_w_16px", "e4e_single_w_16px", "restyle_psp_resnet_16px")  # the quick ones run in the fast loop
ENCODERS = [n for n in fixture_names() if not n.startswith("arcface")]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Each fixture's checkpoint, written once as its repository's training saves it."""
    root = tmp_path_factory.mktemp("encoders")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = write_checkpoint(root / f"{name}.pt", load_fixture(name))
        return cache[name]
    return get


def _marks(name: str):
    return [] if name in SMALL else [pytest.mark.slow]


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in ENCODERS])
def test_the_official_checkpoint_gives_the_official_w_plus(name, checkpoints):
    fixture, expected = load_fixture(name), load_outputs(name)
    E = load_encoder(str(checkpoints(name)))
    G = load_generator(str(checkpoints(name)))  # the same file is the generator too: its decoder
    x = fixture_inputs(fixture)
    with torch.no_grad():
        if E.family != "restyle":
            ws = encode(E, x)
            torch.testing.assert_close(ws, torch.from_numpy(expected["latents"]), rtol=0, atol=TOLERANCE)
            images = G.synthesis(ws, noise_mode="const")
            torch.testing.assert_close(images, torch.from_numpy(expected["images_raw"]), rtol=0, atol=TOLERANCE)
            return
        torch.testing.assert_close(E.average_image(G)[0], torch.from_numpy(expected["avg_image"]), rtol=0,
                                   atol=TOLERANCE)
        iterations = list(E.iterate(x, iterations=fixture["n_iters_per_batch"]))
        for step, ws in enumerate(iterations):  # the codes after every iteration of the official loop
            torch.testing.assert_close(ws, torch.from_numpy(expected[f"latent_iter{step}"]), rtol=0, atol=TOLERANCE)
        torch.testing.assert_close(encode(E, x, iterations=1), iterations[0], rtol=0, atol=0)  # --encoder-iterations
        torch.testing.assert_close(G.synthesis(ws, noise_mode="const"),
                                   torch.from_numpy(expected[f"y_hat_iter{step}"]), rtol=0, atol=TOLERANCE)


def test_arcface_embeds_as_psps_id_loss_does(checkpoints):
    from pipeline.models.identity import ARCFACE_NAME, load_identity_model

    fixture, expected = load_fixture("arcface_ir_se50"), load_outputs("arcface_ir_se50")
    path = str(checkpoints("arcface_ir_se50"))
    model, name = load_identity_model(f"arcface:{path}")
    assert name == ARCFACE_NAME and load_identity_model(path)[1] == ARCFACE_NAME  # the file alone is read as ArcFace
    for which in ("x", "y", "z"):
        torch.testing.assert_close(model.embed(fixture_inputs(fixture, which)),
                                   torch.from_numpy(expected[f"feats_{which}"]), rtol=0, atol=1e-5)


def test_inspect_names_the_format_encoder_styles_and_output_size(checkpoints, tmp_path):
    def with_training_state(obj):  # as e4e's --save_training_data leaves beside the weights
        obj.update(global_step=5000, best_val_loss=None, optimizer={"state": {}, "param_groups": []},
                   discriminator_state_dict={"mlp.0.weight": torch.zeros(2, 2)})
    path = _resave(checkpoints("e4e_single_w_16px"), tmp_path / "e4e.pt", with_training_state)
    described = describe_checkpoint(str(path))
    assert described["format"] == "e4e" and "omertov/encoder4editing" in described["layout"]
    E = described["networks"]["E"]
    assert E["class"] == "PretrainedEncoder" and E["encoder_type"] == "SingleStyleCodeEncoder"
    assert E["num_ws"] == 6 and E["output_size"] == 16 and E["input_size"] == 256
    assert described["networks"]["G_ema"]["img_resolution"] == 16
    assert {"global_step", "optimizer"} <= set(described["info"]["not_loaded"])  # training state, ignored
    restyle = describe_checkpoint(str(checkpoints("restyle_psp_resnet_16px")))
    assert restyle["networks"]["E"]["iterations"] == 5 and restyle["format"] == "restyle"


def _resave(source: Path, target: Path, change) -> Path:
    """The checkpoint loaded plainly, changed, and saved again as torch.save writes it."""
    obj = torch.load(source, map_location="cpu", weights_only=True)
    change(obj)
    torch.save(obj, target)
    return target


@pytest.mark.parametrize("shape", ["n_styles", "one_row", "flat", "absent"])
def test_latent_avg_of_every_saved_shape_gives_the_same_w_plus(checkpoints, tmp_path, shape):
    source = checkpoints("e4e_single_w_16px")
    reference = torch.load(source, map_location="cpu", weights_only=True)["latent_avg"]  # [n_styles, 512]
    row = reference[0]

    def change(obj):
        if shape == "absent":
            del obj["latent_avg"]
        else:
            obj["latent_avg"] = {"n_styles": row.expand_as(reference).clone(), "one_row": row[None].clone(),
                                 "flat": row.clone()}[shape]
    path = _resave(source, tmp_path / "e4e.pt", change)
    E = load_encoder(str(path))
    if shape == "absent":  # e4e would draw one at random; the decoder's w_avg is that estimate, reproducibly
        assert torch.allclose(E.latent_avg, E.generator.w_avg.expand_as(E.latent_avg))
    else:
        torch.testing.assert_close(E.latent_avg, row.expand_as(reference))


def test_unknown_pixels_do_not_change_the_codes(checkpoints):
    E = load_encoder(str(checkpoints("psp_w_16px")))
    x = fixture_inputs(load_fixture("psp_w_16px"))
    mask = torch.ones(2, 1, 256, 256)
    mask[:, :, :, 128:] = 0  # the right half unknown
    other = x.clone()
    other[:, :, :, 128:] = torch.rand_like(other[:, :, :, 128:]) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(encode(E, x, mask), encode(E, other, mask))
        nan_filled = x.clone()
        nan_filled[:, :, :, 128:] = float("nan")  # NaN marks missing pixels too
        torch.testing.assert_close(encode(E, nan_filled), encode(E, x, mask))


def test_a_generator_other_than_the_encoders_decoder_is_refused_an_equal_one_accepted(checkpoints, tmp_path):
    from pipeline.models.bundle import write_bundle
    from pipeline.models.checkpoints import convert_checkpoint

    path = str(checkpoints("psp_w_16px"))
    converted = tmp_path / "decoder.safetensors"
    convert_checkpoint(path, str(converted))  # the same decoder in another format
    G = load_generator(str(converted))
    assert load_encoder(path, generator=G).generator is G
    other = G.__class__(**G.init_kwargs)
    other.load_state_dict({k: v + 0.01 if v.is_floating_point() else v for k, v in G.state_dict().items()})
    write_bundle(str(tmp_path / "other.safetensors"), {"G_ema": other})
    with pytest.raises(GeneratorMismatchError, match="own decoder differs from the generator given beyond float "
                                                     "rounding"):
        load_encoder(path, generator=load_generator(str(tmp_path / "other.safetensors")))


def test_an_encoder_for_another_output_size_is_refused(checkpoints):
    E = load_encoder(str(checkpoints("psp_w_16px")))  # 16 px, 6 styles
    G32 = load_generator(str(checkpoints("e4e_single_w_16px")))
    G32.img_resolution, G32.num_ws = 32, 8  # what a 32 px generator reports
    with pytest.raises(GeneratorMismatchError, match="6 x 512 latents for a 16 px generator.*8 x 512 at 32 px"):
        E.check_generator(G32)


def test_a_truncated_file_an_unknown_encoder_type_and_a_hostile_pickle_are_one_clear_error(checkpoints, tmp_path):
    source = checkpoints("psp_w_16px")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_encoder(str(truncated))

    def unknown(obj):
        obj["opts"]["encoder_type"] = "HyperNetworkEncoder"
    with pytest.raises(CheckpointError, match="unknown encoder type 'HyperNetworkEncoder'"):
        load_encoder(str(_resave(source, tmp_path / "unknown.pt", unknown)))

    class Payload:  # what a hostile file carries: a callable the unpickler would run
        def __reduce__(self):  # eval: a builtin no library in the process replaces (Ray patches print)
            return (eval, ("print('this ran')",))
    hostile = tmp_path / "hostile.pt"
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(hostile, "w") as out:
        for item in archive.infolist():
            data = archive.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = pickle.dumps({"state_dict": {}, "opts": {}, "evil": Payload()}, protocol=2)
            out.writestr(item, data)
    with pytest.raises(UnsafeCheckpointError, match="builtins.eval"):
        load_encoder(str(hostile))


def test_a_w_space_encoders_one_w_fills_every_layer(checkpoints):
    E = load_encoder(str(checkpoints("psp_w_16px")))
    with torch.no_grad():
        ws = encode(E, fixture_inputs(load_fixture("psp_w_16px")))
    assert isinstance(E, PretrainedEncoder) and ws.shape == (2, 6, 512)
    assert torch.equal(ws - E.latent_avg, (ws - E.latent_avg)[:, :1].expand_as(ws))


@pytest.mark.slow
def test_invert_runs_an_encoder_file_as_encoder_and_generator_with_one_render_per_row(checkpoints, tmp_path):
    from pipeline.invert.config import InvertConfig
    from pipeline.store.store import open_store
    from tests.datasets import colorful, png_bytes
    from tests.stores import invert_here

    path = str(checkpoints("restyle_psp_resnet_16px"))
    (tmp_path / "in").mkdir()
    for i in range(3):
        (tmp_path / "in" / f"img{i}.png").write_bytes(png_bytes(colorful(size=300, seed=i)))
    config = InvertConfig(input=str(tmp_path / "in"), output=str(tmp_path / "store"), generator=path, encoder=path,
                          stages=("encode",), encoder_iterations=2, progress=False, precision="fp32")
    frame = invert_here(config).sort_values("image_id")
    store = open_store(config.output)
    assert (frame["status"] == "ok").all()
    assert store.metadata["encoder_kind"] == "restyle:ResNetBackboneEncoder"
    assert store.metadata["encoder_iterations"] == 2 and store.metadata["encoder_input"].startswith("256 px RGB")
    images = torch.stack([t for _, t in sorted(store.read_inputs(frame["shard"].tolist(),
                                                                 frame["image_id"].tolist()).items())])
    E = load_encoder(path)
    with torch.no_grad():
        expected = encode(E, images, iterations=2).flatten(1).numpy()
    np.testing.assert_allclose(np.stack(frame["w_encoded"]), expected, atol=1e-4)
    assert frame["mse"].equals(frame["mse_encoded"])  # the encoded latent's render, made once

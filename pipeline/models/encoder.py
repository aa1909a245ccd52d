"""Encoders: one `load_encoder` for every encoder file latentmill reads, one `encode` for all of them.

- latentmill's own latent regressor (pipeline/models/regressor.py), from `latentmill train-encoder`:
  E(x * m, m) -> W+, masked pixels allowed;
- the encoders users already have (pipeline/models/pretrained_encoder.py): pSp, e4e and ReStyle
  checkpoints as their training code saves them, with the rosinality decoder they were trained with.

    E = load_encoder("e4e_ffhq_encode.pt")                    # the checkpoint's own decoder attached
    ws = encode(E, images)                                     # [N, 3, 256, 256] in [-1, 1] -> [N, 18, 512]
    ws = encode(load_encoder("restyle_e4e_ffhq_encode.pt"), images, iterations=5)

An encoder given beside a separate generator (`--generator ffhq.pkl`) is checked against it: a
pSp/e4e/ReStyle file's decoder must be the same network (equal weights up to float rounding after
conversion), or the encoder is refused, with the reason.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import CheckpointError, GeneratorMismatchError
from pipeline.models.checkpoints import build_network, read_checkpoint
from pipeline.models.fingerprint import fingerprint
from pipeline.models.network_record import NetworkRecord
from pipeline.models.pretrained_encoder import PretrainedEncoder
from pipeline.models.regressor import ConvNetBackbone, Encoder, TorchvisionBackbone, prepare_inputs
from pipeline.models.stylegan2 import Generator

__all__ = ["Encoder", "PretrainedEncoder", "ConvNetBackbone", "TorchvisionBackbone", "encode", "load_encoder",
           "prepare_inputs", "check_same_generator"]

AnyEncoder = Encoder | PretrainedEncoder
SAME_WEIGHTS_TOLERANCE = 1e-5  # relative to a tensor's largest value: float rounding of a format conversion


def encode(E: AnyEncoder, images: torch.Tensor, masks: torch.Tensor | None = None, *, iterations: int | None = None,
           generator: nn.Module | None = None) -> torch.Tensor:
    """One encoding: images [N, C, R, R] in [-1, 1] (NaN = missing), masks [N, 1, R, R] -> W+ [N, num_ws, w_dim].
    `iterations`: ReStyle's iterations (its default 5), ignored by the others; `generator`: what ReStyle
    renders each iteration with (default: the one load_encoder attached)."""
    if isinstance(E, PretrainedEncoder):
        return E.encode(images, masks, iterations=iterations, generator=generator)
    if images.shape[-1] != E.resolution or images.shape[-2] != E.resolution:
        raise ValueError(f"the encoder expects {E.resolution}x{E.resolution} images, got {list(images.shape[-2:])}")
    x, m = prepare_inputs(images.to(E.w_avg.device), None if masks is None else masks.to(E.w_avg.device))
    return E(x, m)


def load_encoder(uri: str, *, generator: Generator | None = None, device: str | torch.device = "cpu",
                 setting: str = "--encoder") -> AnyEncoder:
    """The encoder of a file (a latentmill bundle, or a pSp, e4e or ReStyle checkpoint); with `generator`,
    refuse an encoder made for another generator. A pSp/e4e/ReStyle encoder gets `generator` (checked to be
    its decoder) or its own decoder attached, to render ReStyle's iterations."""
    ckpt = read_checkpoint(uri, setting=setting)
    if "E" not in ckpt.records:
        raise CheckpointError(f"{setting} {uri}: no encoder ('E') in this file; it holds {sorted(ckpt.records)}")
    E = encoder_from_records(ckpt.records, generator=generator, source=f"{setting} {uri}").to(device)
    if isinstance(E, PretrainedEncoder) and E.generator is not None:
        E.generator.to(device)
    return E


def encoder_from_records(records: dict[str, NetworkRecord], *, generator: nn.Module | None, source: str,
                         generator_is_decoder: bool = False) -> AnyEncoder:
    """The encoder `E` of a file's records, checked against `generator`. A pSp/e4e/ReStyle encoder gets
    `generator` attached once it is checked to be its decoder (`G_ema` of the same records; no check when
    `generator_is_decoder`: it was built from them), or without a generator that decoder."""
    E = build_network(records["E"], source=source, name="E")
    if generator is not None:
        E.check_generator(generator)
    if isinstance(E, PretrainedEncoder):
        decoder = None
        if "G_ema" in records and not (generator is not None and generator_is_decoder):
            decoder = build_network(records["G_ema"], source=source, name="decoder")
        if generator is not None and decoder is not None:
            check_same_generator(decoder, generator, what=f"{source}'s own decoder")
        attached = generator if generator is not None else decoder
        if attached is not None:
            E.attach_generator(attached)
    return E


def check_same_generator(decoder: nn.Module, G: nn.Module, *, what: str) -> None:
    """Refuse a generator that is not `decoder`: every weight equal up to float rounding (the running
    average w_avg, a statistic, aside); GeneratorMismatchError naming the first that differs."""
    if fingerprint(decoder) == fingerprint(G):
        return
    ours, theirs = decoder.state_dict(), G.state_dict()
    if type(decoder) is not type(G) or set(ours) != set(theirs):
        raise GeneratorMismatchError(f"{what} is a {type(decoder).__name__} with other layers than the generator "
                                     f"given; use the generator the encoder was trained with")
    for name in sorted(ours):
        a, b = ours[name].detach().float().cpu(), theirs[name].detach().float().cpu()
        if name == "mapping.w_avg":
            continue
        if a.shape != b.shape:
            raise GeneratorMismatchError(f"{what} differs from the generator given: {name} is {list(a.shape)} there, "
                                         f"{list(b.shape)} here; use the generator the encoder was trained with")
        difference = float((a - b).abs().max()) if a.numel() else 0.0
        if difference > SAME_WEIGHTS_TOLERANCE * max(1.0, float(b.abs().max()) if b.numel() else 0.0):
            raise GeneratorMismatchError(
                f"{what} differs from the generator given beyond float rounding ({name} by {difference:.3g}): the "
                "encoder was trained with another generator; give the encoder file itself as --generator, or the "
                "generator it was trained with")

"""The encoders users already have: pSp, e4e and ReStyle checkpoints, read as data and run in pure torch.

Their training code saves `{'state_dict', 'opts', 'latent_avg', ...}` with `torch.save`: the encoder
under `encoder.*`, a rosinality StyleGAN2 decoder under `decoder.*`, `opts` a plain dict, sometimes
an optimizer, a latent discriminator and `global_step` beside them (ignored). The file is read with
latentmill's restricted loader (tensors and plain containers only, nothing runs). `read_encoder_file`
turns it into two records: `E`, a `PretrainedEncoder`, and `G_ema`, the decoder as a latentmill
Generator, so the same file serves as `--encoder` and as `--generator`.

What the official forward does, and `PretrainedEncoder.encode` with it:
- preprocessing: RGB, resized to 256x256, in [-1, 1] (the official transforms: Resize((256, 256)),
  ToTensor, Normalize(0.5, 0.5)); images of another size are resized here (bilinear, antialiased).
  These encoders take no mask: unknown pixels are set to 0 (mid-grey) before encoding, so two images
  that differ only there get the same codes; refinement then fits the known pixels only.
- pSp: W+ = E(x) + latent_avg when the run started from it (`start_from_latent_avg`); a W-space encoder's
  one w is repeated to every layer. e4e: W+ = E(x) + latent_avg.
- ReStyle: iteration 0 encodes [x, the average image] (the decoder's image of latent_avg, pooled to
  256) and adds latent_avg; each later iteration encodes [x, the previous reconstruction pooled to 256]
  and adds the previous W+. Each iteration is one batched generator pass.
`latent_avg` is stored as [n_styles, 512], whatever shape the file holds it in ([n_styles, 512],
[1, 512] or [512], which the official code broadcasts the same way).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import CheckpointError, GeneratorMismatchError
from pipeline.models.network_record import NetworkRecord
from pipeline.models.rosinality import generator_record
from pipeline.models.style_encoders import (STYLE_DIM, BackboneToW, BackboneToWPlus, IterativeBackboneEncoder,
                                            PyramidEncoder)

INPUT_SIZE = 256  # what every official encoder is trained on
FAMILIES = ("psp", "e4e", "restyle")
# encoder_type (as the checkpoints' opts name it) -> the family that trains it
ENCODER_TYPES = {
    "GradualStyleEncoder": ("psp", "e4e", "restyle"), "Encoder4Editing": ("e4e",),
    "BackboneEncoderUsingLastLayerIntoW": ("psp",), "SingleStyleCodeEncoder": ("e4e",),
    "BackboneEncoderUsingLastLayerIntoWPlus": ("psp",), "BackboneEncoder": ("restyle",),
    "ProgressiveBackboneEncoder": ("restyle",), "ResNetBackboneEncoder": ("restyle",),
    "ResNetProgressiveBackboneEncoder": ("restyle",),
}
PROGRESSIVE_RESTYLE = ("ProgressiveBackboneEncoder", "ResNetProgressiveBackboneEncoder")
DEFAULT_ITERATIONS = 5  # ReStyle's n_iters_per_batch
REPOSITORIES = {"psp": "eladrich/pixel2style2pixel", "e4e": "omertov/encoder4editing",
                "restyle": "yuval-alaluf/restyle-encoder"}


def _network(family: str, encoder_type: str, n_styles: int, input_nc: int) -> nn.Module:
    if encoder_type == "GradualStyleEncoder":
        return PyramidEncoder(n_styles, input_nc)
    if encoder_type == "Encoder4Editing":
        return PyramidEncoder(n_styles, input_nc, progressive=True)
    if encoder_type == "BackboneEncoderUsingLastLayerIntoW":
        return BackboneToW(input_nc)
    if encoder_type == "SingleStyleCodeEncoder":
        return BackboneToW(input_nc, repeat=n_styles)
    if encoder_type == "BackboneEncoderUsingLastLayerIntoWPlus":
        return BackboneToWPlus(n_styles, input_nc)
    return IterativeBackboneEncoder(n_styles, input_nc, progressive=encoder_type in PROGRESSIVE_RESTYLE,
                                    backbone="resnet34" if encoder_type.startswith("ResNet") else "ir_se50")


class PretrainedEncoder(nn.Module):
    """A pSp, e4e or ReStyle encoder and its latent_avg: images -> W+ [N, n_styles, 512]."""

    BUILT_ON_META = True  # every tensor is a loaded weight or buffer: the loader builds it without memory

    def __init__(
        self,
        family: str,  # 'psp', 'e4e' or 'restyle': whose forward (and iterations) to follow
        encoder_type: str,  # the official class name, as the checkpoint's opts say
        n_styles: int,  # = the decoder's num_ws: 2 * log2(output_size) - 2
        img_resolution: int,  # the decoder's output size
        input_nc: int = 3,  # 3 (an image), 6 for ReStyle (the image and the previous reconstruction)
        add_latent_avg: bool = True,  # pSp's start_from_latent_avg (always on for e4e and ReStyle)
        generator_fingerprint: str | None = None,  # the decoder it was trained with
    ) -> None:
        if family not in FAMILIES:
            raise ValueError(f"encoder family must be one of {FAMILIES}, got {family!r}")
        if family not in ENCODER_TYPES.get(encoder_type, ()):
            raise ValueError(f"{family} has no encoder type {encoder_type!r}")
        super().__init__()
        self.init_kwargs: dict[str, Any] = dict(family=family, encoder_type=encoder_type, n_styles=n_styles,
                                                img_resolution=img_resolution, input_nc=input_nc,
                                                add_latent_avg=add_latent_avg,
                                                generator_fingerprint=generator_fingerprint)
        self.family, self.encoder_type, self.input_nc = family, encoder_type, input_nc
        self.num_ws, self.w_dim, self.img_resolution = n_styles, STYLE_DIM, img_resolution
        self.resolution = INPUT_SIZE
        self.add_latent_avg = add_latent_avg or family != "psp"
        self.generator_fingerprint = generator_fingerprint
        self.net = _network(family, encoder_type, n_styles, input_nc)
        self.register_buffer("latent_avg", torch.zeros(n_styles, STYLE_DIM))
        self.__dict__["generator"] = None  # the decoder ReStyle iterates with: set by load_encoder, not a weight

    @property
    def iterative(self) -> bool:
        return self.family == "restyle"

    def attach_generator(self, G: nn.Module) -> None:
        """The generator ReStyle renders each iteration with (the checkpoint's decoder, or an equal one)."""
        self.__dict__["generator"] = G

    def check_generator(self, G: nn.Module) -> None:
        """Refuse a generator of another shape than the decoder this encoder was trained with."""
        if (G.num_ws, G.w_dim, G.img_resolution) != (self.num_ws, self.w_dim, self.img_resolution):
            raise GeneratorMismatchError(
                f"this {self.family} encoder predicts {self.num_ws} x {self.w_dim} latents for a "
                f"{self.img_resolution} px generator, but the generator has {G.num_ws} x {G.w_dim} at "
                f"{G.img_resolution} px; use the generator it was trained with (its own decoder: give the "
                "encoder file as --generator too)")

    def _codes(self, x: torch.Tensor) -> torch.Tensor:
        codes = self.net(x)
        return codes[:, None].expand(-1, self.num_ws, -1) if codes.ndim == 2 else codes  # [N, n_styles, 512]

    def encode(self, images: torch.Tensor, masks: torch.Tensor | None = None, iterations: int | None = None,
               generator: nn.Module | None = None) -> torch.Tensor:
        """images [N, 3, R, R] in [-1, 1] (NaN = missing), masks [N, 1, R, R] -> W+ [N, n_styles, 512];
        `iterations`: ReStyle's (default 5), ignored by pSp and e4e; `generator` renders them (default:
        the attached decoder)."""
        for ws in self.iterate(images, masks, iterations, generator):
            pass
        return ws

    def iterate(self, images: torch.Tensor, masks: torch.Tensor | None = None, iterations: int | None = None,
                generator: nn.Module | None = None) -> Iterator[torch.Tensor]:
        """The W+ after each of ReStyle's iterations, as its official loop makes them (one W+ for pSp and e4e):
        how a reconstruction improves, for the cost of the last alone. Arguments as for `encode`."""
        device = self.latent_avg.device
        x = encoder_input(images.to(device), None if masks is None else masks.to(device))
        if not self.iterative:
            codes = self._codes(x)
            yield codes + self.latent_avg if self.add_latent_avg else codes
            return
        G = generator if generator is not None else self.__dict__["generator"]
        if G is None:
            raise ValueError("a ReStyle encoder renders each iteration: give it a generator (load_encoder attaches "
                             "the checkpoint's decoder)")
        steps = DEFAULT_ITERATIONS if iterations is None else int(iterations)
        if steps < 1:
            raise ValueError(f"--encoder-iterations must be at least 1, got {steps}")
        previous = self.average_image(G).expand(x.shape[0], -1, -1, -1)
        ws = self.latent_avg.expand(x.shape[0], -1, -1)
        for step in range(steps):
            ws = self._codes(torch.cat([x, previous], dim=1)) + ws  # ws: latent_avg first, then the last W+
            yield ws
            if step < steps - 1:
                previous = face_pool(G.synthesis(ws, noise_mode="const").float())

    def average_image(self, G: nn.Module) -> torch.Tensor:
        """The decoder's image of latent_avg, pooled to 256: what ReStyle's first iteration compares with."""
        return face_pool(G.synthesis(self.latent_avg[None], noise_mode="const").float())


def face_pool(images: torch.Tensor) -> torch.Tensor:
    """The official wrappers' AdaptiveAvgPool2d((256, 256)) of a decoder's output."""
    return F.adaptive_avg_pool2d(images, (INPUT_SIZE, INPUT_SIZE))


def encoder_input(images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """The official preprocessing of decoded images: 256 x 256 in [-1, 1]; unknown pixels (mask 0, NaN)
    set to 0, since these encoders take no mask."""
    known = torch.isfinite(images).all(dim=1, keepdim=True)
    if masks is not None:
        known = known & (masks > 0.5)
    x = torch.where(known, torch.nan_to_num(images.float()), torch.zeros((), device=images.device))
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x


# ---- reading the official files ---------------------------------------------------------------------

def is_encoder_file(obj: Any) -> bool:
    """A checkpoint pSp, e4e or ReStyle training saved: {'state_dict': {'encoder.*', 'decoder.*'}, 'opts'}."""
    return (isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping) and "opts" in obj
            and any(str(k).startswith("encoder.") for k in obj["state_dict"]))


def _family(opts: Mapping[str, Any], encoder_type: str, state: Mapping[str, torch.Tensor]) -> str:
    """Which repository wrote the file: ReStyle trains on [image, reconstruction] (6 input channels) and
    records n_iters_per_batch; e4e names its decoder size stylegan_size; the rest is pSp."""
    first = state.get("encoder.input_layer.0.weight", state.get("encoder.conv1.weight"))
    channels = int(first.shape[1]) if isinstance(first, torch.Tensor) and first.ndim == 4 else None
    if "n_iters_per_batch" in opts or channels == 6 or encoder_type in PROGRESSIVE_RESTYLE + (
            "BackboneEncoder", "ResNetBackboneEncoder"):
        return "restyle"
    if "stylegan_size" in opts or encoder_type in ("Encoder4Editing", "SingleStyleCodeEncoder"):
        return "e4e"
    return "psp"


def _n_styles(output_size: int, source: str) -> int:
    log = math.log2(output_size) if output_size > 0 else 0.5
    if not log.is_integer() or output_size < 8:
        raise CheckpointError(f"{source}: opts name a decoder of {output_size} px; expected a power of two")
    return int(log) * 2 - 2


def _latent_avg(value: Any, n_styles: int, source: str) -> torch.Tensor | None:
    """latent_avg as [n_styles, 512], from any shape the repositories save ([n, 512], [1, 512], [512])."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise CheckpointError(f"{source}: latent_avg is not a tensor of floats")
    if value.shape[-1:] != (STYLE_DIM,) or value.ndim > 2 or (value.ndim == 2 and value.shape[0] not in (1, n_styles)):
        raise CheckpointError(f"{source}: latent_avg has shape {list(value.shape)}; expected [{n_styles}, 512], "
                              "[1, 512] or [512] for this encoder")
    return value.float().reshape(-1, STYLE_DIM).expand(n_styles, -1).clone()


def read_encoder_file(obj: Mapping[str, Any], *, source: str) -> tuple[dict[str, NetworkRecord], dict[str, Any]]:
    """Records {'E': PretrainedEncoder, 'G_ema': the decoder} and what the file says of itself; a file
    whose opts or entries are malformed (a size that is not a number, a list for a name) is a
    CheckpointError naming it."""
    try:
        return _read_encoder_file(obj, source=source)
    except CheckpointError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise CheckpointError(f"{source}: a pSp/e4e/ReStyle-style checkpoint whose opts or entries are malformed "
                              f"({type(exc).__name__}: {exc})") from None


def _read_encoder_file(obj: Mapping[str, Any], *, source: str) -> tuple[dict[str, NetworkRecord], dict[str, Any]]:
    opts = obj["opts"]
    if not isinstance(opts, Mapping):
        opts = vars(opts) if hasattr(opts, "__dict__") else {}
    state = obj["state_dict"]
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source}: 'state_dict' is not a state dict of tensors")
    encoder_type = opts.get("encoder_type", "GradualStyleEncoder")
    if encoder_type not in ENCODER_TYPES:
        raise CheckpointError(f"{source}: opts name an unknown encoder type {encoder_type!r}; latentmill reads "
                              f"{', '.join(sorted(ENCODER_TYPES))}")
    family = _family(opts, encoder_type, state)
    if family not in ENCODER_TYPES[encoder_type]:
        raise CheckpointError(f"{source}: a {family} checkpoint with encoder type {encoder_type!r}, which {family} "
                              "does not have")
    decoder = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if not decoder:
        raise CheckpointError(f"{source}: the checkpoint holds no decoder ('decoder.*' weights)")
    saved_avg = obj.get("latent_avg")
    one_row = saved_avg.reshape(-1, STYLE_DIM)[0] if isinstance(saved_avg, torch.Tensor) and \
        saved_avg.shape[-1:] == (STYLE_DIM,) and bool((saved_avg.reshape(-1, STYLE_DIM) == saved_avg.reshape(
            -1, STYLE_DIM)[:1]).all()) else None  # one w_avg repeated: the generator's own, no estimate needed
    G_record, _ = generator_record(decoder, one_row, source=source, name="decoder")
    output_size = G_record.init_kwargs["img_resolution"]
    declared = opts.get("stylegan_size" if family == "e4e" else "output_size")
    if declared is not None and int(declared) != output_size:
        raise CheckpointError(f"{source}: opts say a {declared} px decoder, its weights are for {output_size} px")
    n_styles = _n_styles(output_size, source)
    input_nc = int(opts.get("input_nc", 6 if family == "restyle" else 3))
    if opts.get("label_nc") or input_nc != (6 if family == "restyle" else 3):
        raise CheckpointError(f"{source}: this {family} model takes {input_nc}-channel inputs (label_nc "
                              f"{opts.get('label_nc')}): a sketch or segmentation model, not an image encoder; "
                              "latentmill inverts images")
    add_latent_avg = bool(opts.get("start_from_latent_avg", True))
    kwargs = dict(family=family, encoder_type=encoder_type, n_styles=n_styles, img_resolution=output_size,
                  input_nc=input_nc, add_latent_avg=add_latent_avg)
    latent_avg = _latent_avg(obj.get("latent_avg"), n_styles, source)
    info: dict[str, Any] = {"family": family, "encoder_type": encoder_type, "n_styles": n_styles,
                            "output_size": output_size, "repository": REPOSITORIES[family],
                            "iterations": DEFAULT_ITERATIONS if family == "restyle" else None}
    if latent_avg is None:
        if add_latent_avg:  # e4e draws one at random here; the decoder's w_avg is the same estimate, reproducibly
            latent_avg = G_record.state_dict["mapping.w_avg"].float().reshape(1, -1).expand(n_styles, -1).clone()
            info["latent_avg"] = "absent from the file: the decoder's w_avg, estimated from 4096 mapped samples"
        else:
            latent_avg = torch.zeros(n_styles, STYLE_DIM)
    else:
        info["latent_avg"] = f"from the file, saved as {list(obj['latent_avg'].shape)}"
    info["not_loaded"] = sorted(str(k) for k in obj if k not in ("state_dict", "opts", "latent_avg"))
    info["layout"] = f"{REPOSITORIES[family]} training checkpoint ({encoder_type})"
    E_state = {f"net.{k}": v for k, v in encoder.items()}
    for key in _batch_norm_counters(E_state):  # absent from files of old torch versions; unused at inference
        E_state.setdefault(key, torch.tensor(0, dtype=torch.long))
    E_state["latent_avg"] = latent_avg
    return {"E": NetworkRecord("PretrainedEncoder", kwargs, E_state), "G_ema": G_record}, info


def _batch_norm_counters(state: Mapping[str, torch.Tensor]) -> list[str]:
    return [k[: -len("running_var")] + "num_batches_tracked" for k in state if k.endswith(".running_var")]



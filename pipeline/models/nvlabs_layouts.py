"""Which NVlabs code base pickled a network, and its constructor arguments in latentmill's layout.

The same StyleGAN2 is pickled three ways. A persistent pickle records only the bare class name
('Generator') and the defining module's source text, so the code base is told from the pickled
structure itself: attributes that one code base's layers keep and the other's do not.
- stylegan2-ada-pytorch (`training.networks`): synthesis arguments nested in `synthesis_kwargs`;
  an argument left out takes ada's default (`conv_clamp=None`, `num_fp16_res=0`).
- the stylegan3 repository's StyleGAN2 (`training.networks_stylegan2`: its `--cfg=stylegan2`, the
  StyleGAN2 networks of its model zoo, its legacy.py conversions): synthesis arguments at the
  Generator's top level, and other defaults, `conv_clamp=256` and `num_fp16_res=4`, in Generator
  and Discriminator alike. Its layers keep `in_channels`/`in_features` and its synthesis blocks
  `fused_modconv_default` as attributes; ada's do not.
- the alias-free StyleGAN3-T/R (`training.networks_stylegan3`): a `SynthesisInput` layer and
  `magnitude_ema` buffers; loaded into pipeline/models/stylegan3.py with its arguments as they are.
A missing argument always takes the default of the code base that wrote the file, never another's:
with activations beyond 256 the two conv_clamp defaults give different images.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol



@dataclass(frozen=True)
class CodeBase:
    """One code base's way of pickling networks."""

    repository: str
    module: str
    generator_defaults: dict[str, Any]  # synthesis arguments it leaves to its own defaults
    discriminator_defaults: dict[str, Any]
    nests_synthesis_kwargs: bool


ADA = CodeBase("NVlabs/stylegan2-ada-pytorch", "training.networks",
               generator_defaults={"conv_clamp": None, "num_fp16_res": 0},
               discriminator_defaults={"conv_clamp": None, "num_fp16_res": 0}, nests_synthesis_kwargs=True)
STYLEGAN3_REPO_SG2 = CodeBase("NVlabs/stylegan3 (StyleGAN2 networks)", "training.networks_stylegan2",
                              generator_defaults={"conv_clamp": 256, "num_fp16_res": 4},
                              discriminator_defaults={"conv_clamp": 256, "num_fp16_res": 4},
                              nests_synthesis_kwargs=False)

# Generator arguments that are not synthesis arguments, in every code base.
_GENERATOR_OWN = {"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs"}
STYLEGAN3 = "stylegan3"  # the alias-free generators (training.networks_stylegan3)


class PickledModule(Protocol):
    """A persistent network as data (see nvlabs_pickle.PersistentRecord)."""

    class_name: str
    state: dict[str, Any]

    def walk(self) -> Iterable["PickledModule"]: ...


def detect_code_base(network: PickledModule) -> CodeBase | str:
    """ADA, STYLEGAN3_REPO_SG2, or STYLEGAN3 (alias-free), from the network's pickled structure."""
    base: CodeBase = ADA
    for module in network.walk():
        short = module.class_name.rsplit(".", 1)[-1]
        if short == "SynthesisInput" or "magnitude_ema" in (module.state.get("_buffers") or {}):
            return STYLEGAN3
        if "fused_modconv_default" in module.state or (short in ("FullyConnectedLayer", "Conv2dLayer")
                                                       and ("in_features" in module.state or "in_channels" in module.state)):
            base = STYLEGAN3_REPO_SG2
    return base


def describe_stylegan3(init_kwargs: dict[str, Any]) -> str:
    config = "R" if init_kwargs.get("conv_kernel") == 1 or init_kwargs.get("use_radial_filters") else "T"
    return f"NVlabs/stylegan3, training.networks_stylegan3.Generator (StyleGAN3-{config})"


def latentmill_kwargs(kind: str, init_kwargs: dict[str, Any], base: CodeBase) -> dict[str, Any]:
    """A pickled network's constructor arguments as latentmill's classes take them.

    `kind` is the bare class name. Synthesis arguments move under `synthesis_kwargs`, and those the
    writing code base left to its defaults are filled in with that code base's values.
    """
    kwargs = dict(init_kwargs)
    if kind == "Generator":
        synthesis = dict(kwargs.pop("synthesis_kwargs", None) or {})
        if not base.nests_synthesis_kwargs:
            for key in [k for k in kwargs if k not in _GENERATOR_OWN]:
                synthesis[key] = kwargs.pop(key)
        for key, value in base.generator_defaults.items():
            synthesis.setdefault(key, value)
        kwargs["synthesis_kwargs"] = synthesis
    elif kind == "Discriminator":
        for key, value in base.discriminator_defaults.items():
            kwargs.setdefault(key, value)
    return kwargs


def describe_layout(kind: str, init_kwargs: dict[str, Any], base: CodeBase, snapshot_info: dict[str, Any]) -> str:
    """A one-line account of where a pickled network came from, for `latentmill inspect`."""
    layout = f"{base.repository}, {base.module}.{kind}"
    synthesis = (init_kwargs.get("synthesis_kwargs") or {}) if base.nests_synthesis_kwargs else init_kwargs
    if snapshot_info.get("training_set_kwargs") is None and "use_noise" in synthesis and "resample_filter" in synthesis:
        layout += ", converted from TensorFlow by legacy.py"
    elif base is STYLEGAN3_REPO_SG2 and init_kwargs.get("fused_modconv_default") == "inference_only":
        layout += ", train.py --cfg=stylegan2"
    return layout

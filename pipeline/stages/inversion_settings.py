"""The settings of the inversion stages, declared once (name, type, default, help).

`refine()` takes a `RefineSettings`; `invert_batch()` an `InversionSettings`; `InvertConfig`
inherits both, so the command line, the library and the store's recipe read the same fields.
Adding a refinement setting means a field here and its use in refine.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.precision import PRECISIONS
from pipeline.settings import setting

STAGES = ("encode", "refine", "compress", "identity")
LATENT_SPACES = ("w+", "w")
PRECISION_SETTINGS = ("auto", *PRECISIONS)


@dataclass(kw_only=True)
class RefineSettings:
    steps: int = setting(200, "Refinement steps per image.", minimum=1)
    lr: float = setting(0.1, "Peak refinement learning rate (Adam; the official projector's 0.1).", above=0)
    pixel_weight: float = setting(1.0, "Weight of the pixel MSE term.", minimum=0)
    perceptual_weight: float = setting(1.0, "Weight of the perceptual term.", minimum=0)
    prior_weight: float = setting(0.01, "Weight of the prior term (NLL / w_dim, about 1 for typical latents).", minimum=0)
    latent_space: str = setting("w+", "Refine a w per layer (w+), or one w for all layers (w).", choices=LATENT_SPACES)
    precision: str = setting("auto", "Autocast precision of G and the perceptual net during refinement; auto: "
                                     "bf16 on GPUs that support it (else fp16 with loss scaling), on CPUs bf16 "
                                     "where the CPU has native bf16 (AVX512-BF16 or AMX), else fp32.",
                             choices=PRECISION_SETTINGS)
    early_stop_patience: int = setting(0, "Stop an image after this many steps without improvement (0 = never).",
                                      minimum=0)
    compile: bool = setting(False, "torch.compile the generator's synthesis for refinement (one-time compile per "
                                   "actor; worth it on GPUs for long runs).")



@dataclass(kw_only=True)
class InversionSettings(RefineSettings):
    stages: tuple[str, ...] = setting(STAGES, "Comma-separated stages to run, from encode,refine,compress,identity.",
                                      choices=STAGES)
    tau: float = setting(3.0, "Compression threshold in units of sigma.", above=0)
    encoder_iterations: int = setting(5, "Iterations of a ReStyle encoder (each one batched generator pass; "
                                         "ReStyle's default 5); other encoders ignore it.", minimum=1)

"""Settings of `latentmill evaluate`, declared once (torch-free: the command line builds --help from them)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass
from typing import Any

from pipeline.models.model_settings import IdentitySettings, PerceptualSettings
from pipeline.settings import DeviceSettings, check_settings, setting

STUDIES = ("inversion", "prior", "compression", "composition", "stylespace", "lia")
REALISM_FEATURES = ("discriminator", "identity", "random")


@dataclass(kw_only=True)
class EvaluateConfig(PerceptualSettings, IdentitySettings, DeviceSettings):
    output: str = setting(MISSING, "Directory for eval.json and eval.html (created).")
    generator: str | None = setting(None, "Generator URI (default: the bundled demo model, with its encoder, prior, "
                                          "identity model and sample).")
    encoder: str | None = setting(None, "Encoder bundle URI (studies use it to initialize and compose).")
    prior: str | None = setting(None, "Gaussianized prior URI (required with --generator).")
    flow: str | None = setting(None, "Flow prior URI (from fit-flow) for study 6's flow against gaussianized "
                                     "comparison and its exact z (default: the demo's with the demo model).")
    images: str | None = setting(None, "Real images: folder, tar shards or Parquet (required with --generator).")
    identity_model: str | None = setting(None, "'facenet' or an EmbeddingNet bundle (default: the demo's with the "
                                               "demo model, else facenet).")
    perceptual: str = setting("discriminator", "Perceptual metric of refinement and of the quality tables.",
                              choices=PerceptualSettings.__dataclass_fields__["perceptual"].metadata["choices"])
    features: str = setting("discriminator", "Features of the realism distance (KID): no Inception weights offline.",
                            choices=REALISM_FEATURES)
    studies: tuple[str, ...] = setting(STUDIES, "Which studies to run.", choices=STUDIES)
    num_images: int = setting(32, "Real images used (the first N).", minimum=1)
    refine_steps: tuple[int, ...] = setting((25, 50, 100, 200), "Refinement step counts of the inversion study.")
    baseline_steps: int = setting(1000, "Steps of the official projector recipe.", minimum=1)
    baseline_images: int = setting(4, "Images the official recipe inverts (one at a time, so it is the slow part).", minimum=1)
    study_steps: int = setting(100, "Refinement steps inside studies 2-4.", minimum=1)
    trials: int = setting(20, "Planted attributes per positive count (study 5).", minimum=1)
    positives: tuple[int, ...] = setting((10, 20, 30), "Positive counts of study 5.")
    fine_tune_steps: int = setting(100, "Study 6(d): encoder fine-tuning steps with and without the adversarial term.", minimum=1)
    held_out: int = setting(10_000, "Study 6(e): held-out mapped samples scored by each prior.", minimum=1)
    seed: int = setting(0, "Seed of every random choice.")
    overwrite: bool = setting(False, "Redo studies that an earlier run with the same settings, models and images "
                                     "already finished (by default they are reused from OUTPUT/eval.json).")
    extra: dict[str, Any] = setting(default_factory=dict, cli=False)

    def validate(self) -> None:
        check_settings(self)

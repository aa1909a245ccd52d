"""Everything `latentmill invert` needs, checked before any work, every problem reported at once.

Checked one at a time, a first run would fail once per missing piece (the prior, then LPIPS's
weights, then FaceNet's), each found only after the previous was fixed. The preflight checks them all: the settings, the
input (exists, holds inputs), the output (a writable directory), the generator, and every model made
for it (encoder, prior, perceptual net, identity net, each loaded and checked against the generator),
and raises one PreflightError listing each problem with its fix and, for downloaded weights, the way
to run without them. What it can supply itself it supplies and says so: a missing prior is fitted
once per generator and cached (pipeline/priors/prior_cache.py), absent LPIPS and FaceNet weights are
downloaded when the network allows (pipeline/models/known_weights.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from pipeline.data.planning import Listing, list_dataset
from pipeline.errors import LatentmillError
from pipeline.model_set import ModelSet, add_models, load_model_set
from pipeline.invert.config import InvertConfig
from pipeline.settings import setting_problems
from pipeline.uris import absolute, check_writable_dir, local_path

T = TypeVar("T")


class PreflightError(LatentmillError, ValueError):
    """One or more things a run needs are missing or wrong; the message lists them all."""

    def __init__(self, command: str, problems: list[str]) -> None:
        self.problems = problems
        if len(problems) == 1:
            text = f"{problems[0]}\nNothing was run."
        else:
            listing = "\n".join(f"  {i}. {problem}" for i, problem in enumerate(problems, 1))
            text = f"{len(problems)} problems; nothing was run. Fix them all, then rerun `latentmill {command}`:\n" \
                   f"{listing}"
        super().__init__(text)


@dataclass
class Preflight:
    config: InvertConfig  # with a cached prior filled in where the run needed one and was given none
    listing: Listing  # the input's files (planned into shards when the store is made)
    models: ModelSet
    notes: list[str] = field(default_factory=list)  # what the preflight did for the run, to tell the user


class _Problems:
    def __init__(self) -> None:
        self.found: list[str] = []
        self.errors: list[Exception] = []

    def attempt(self, check: Callable[[], T]) -> T | None:
        """check()'s result, or None with its error recorded (a user's mistake, never a crash)."""
        try:
            return check()
        except (LatentmillError, ValueError, FileNotFoundError, PermissionError) as exc:
            self.found.append(str(exc).strip())
            self.errors.append(exc)
            return None

    def refuse(self, message: str) -> None:
        """Record a setting the run cannot go on with."""
        self.found.append(message)
        self.errors.append(ValueError(message))

    def raise_if_any(self, command: str) -> None:
        """One of latentmill's own errors is raised as itself (its type tells callers what it is: a
        missing weights file is still a WeightsNotFoundError); anything else, or several problems, as
        one PreflightError (a ValueError) listing them all."""
        if len(self.found) == 1 and isinstance(self.errors[0], LatentmillError):
            raise self.errors[0]
        if self.found:
            raise PreflightError(command, self.found)


def preflight_invert(config: InvertConfig, *, device: str | torch.device = "cpu") -> Preflight:
    """Check everything `config` needs and load its models (on `device`); raise PreflightError listing
    every problem found."""
    config = with_absolute_paths(config)
    problems = _Problems()
    for message in config.problems():
        problems.refuse(message)
    listing = problems.attempt(lambda: list_dataset(config.input, setting="--input", layout=config.input_format,
                                                    skip=[config.output]))
    problems.attempt(lambda: check_writable_dir(config.output, setting="--output"))
    models = problems.attempt(lambda: load_model_set(config.generator, device=device))
    needs = config.model_needs()
    if models is not None:  # each model on its own, so that every problem is reported
        problems.attempt(lambda: add_models(models, encoder=needs.encoder))
        problems.attempt(lambda: add_models(models, prior=needs.prior))
        problems.attempt(lambda: add_models(models, perceptual=needs.perceptual, lpips_weights=needs.lpips_weights))
        if needs.identity_model:
            problems.attempt(lambda: add_models(models, identity_model=needs.identity_model,
                                                facenet_weights=needs.facenet_weights))
    else:  # without a generator nothing can be checked against it; files can still be found missing
        for uri, setting in ((needs.encoder, "--encoder"), (needs.prior, "--prior")):
            if uri:
                problems.attempt(lambda uri=uri, setting=setting: local_path(uri, setting=setting))
        if needs.perceptual == "lpips":
            problems.attempt(lambda: _perceptual_weights(config))
        if needs.identity_model == "facenet":
            problems.attempt(lambda: _identity_weights(config))
    problems.raise_if_any("invert")
    notes = []
    if config.prior is None and "compress" in config.stages:
        from pipeline.priors.prior_cache import cached_prior

        cached = cached_prior(models.G, progress=config.progress)
        models.prior = cached.prior.to(models.device)
        config = dataclasses.replace(config, prior=str(cached.path))
        notes.append(cached.describe())
    return Preflight(config, listing, models, notes)


LOCAL_URI_SETTINGS = ("input", "output", "generator", "encoder", "prior", "lpips_weights", "facenet_weights")


def with_absolute_paths(config: InvertConfig) -> InvertConfig:
    """Local paths made absolute: the store records them, and a store must read from any directory."""
    changes = {name: absolute(getattr(config, name)) for name in LOCAL_URI_SETTINGS if getattr(config, name)}
    if config.identity_model != "facenet":
        changes["identity_model"] = identity_with_absolute_path(config.identity_model)
    return dataclasses.replace(config, **changes)


def identity_with_absolute_path(spec: str) -> str:
    """An --identity-model whose path is absolute: 'arcface:PATH' keeps its prefix."""
    from pipeline.models.identity import ARCFACE_PREFIX

    if spec.startswith(ARCFACE_PREFIX):
        return ARCFACE_PREFIX + absolute(spec[len(ARCFACE_PREFIX):])
    return spec if spec == "arcface" else absolute(spec)


TRAINING_URI_SETTINGS = ("data", "real_images", "generator", "backbone_weights", "lpips_weights", "output",
                         "run_directory")


def with_absolute_training_paths(config: T) -> T:
    """A training job's local paths made absolute: Ray Train workers do not run in the caller's directory."""
    changes = {name: absolute(getattr(config, name)) for name in TRAINING_URI_SETTINGS if getattr(config, name, None)}
    return dataclasses.replace(config, **changes)


def _discriminator_problem(config: Any, networks: dict[str, Any]) -> str | None:
    """Why --adversarial-weight cannot fine-tune --generator's discriminator, if it cannot."""
    if getattr(config, "adversarial_weight", 0) <= 0:
        return None
    wants = f"--adversarial-weight {config.adversarial_weight} fine-tunes the generator's discriminator, but "
    if "D" not in networks:
        return (f"{wants}--generator {config.generator} holds none (only {', '.join(sorted(networks))}); give a "
                "checkpoint with D, or --adversarial-weight 0")
    if networks["D"].c_dim:
        return (f"{wants}the one in --generator {config.generator} is conditional ({networks['D'].c_dim} classes) and "
                "cannot judge reconstructions of images whose class is unknown; use --adversarial-weight 0")
    return None


def _perceptual_weights(config: InvertConfig) -> None:
    from pipeline.losses.lpips_loss import default_backbone_uri

    if config.lpips_weights:
        local_path(config.lpips_weights, setting="--lpips-weights")
    else:
        default_backbone_uri("vgg")


def _identity_weights(config: InvertConfig) -> None:
    from pipeline.models.known_weights import FACENET, ensure_weights

    if config.facenet_weights:
        local_path(config.facenet_weights, setting="--facenet-weights")
    else:
        ensure_weights(FACENET)


def preflight_training(config: object, command: str) -> None:
    """What a training job reads, checked on the driver before Ray Train starts its workers (where a
    missing file would surface as a worker's traceback): the data, the generator, the perceptual
    net's weights, the real images and backbone weights, every problem at once."""
    from pipeline.models.checkpoints import load_networks

    problems = _Problems()
    for message in setting_problems(config):
        problems.refuse(message)
    if getattr(config, "data", None):
        problems.attempt(lambda: list_dataset(config.data, setting="--data"))
    if getattr(config, "real_images", None):
        problems.attempt(lambda: list_dataset(config.real_images, setting="--real-images"))
    if getattr(config, "generator", None):
        networks = problems.attempt(lambda: load_networks(config.generator, device="cpu", setting="--generator"))
        if networks is not None and (problem := _discriminator_problem(config, networks)):
            problems.refuse(problem)
    if getattr(config, "backbone_weights", None):
        problems.attempt(lambda: local_path(config.backbone_weights, setting="--backbone-weights"))
    if getattr(config, "perceptual", None) == "lpips":
        problems.attempt(lambda: _perceptual_weights(config))
    if getattr(config, "runner", "ray") == "local" and getattr(config, "num_workers", 1) > 1:
        problems.refuse(f"--runner local trains in this process, one worker: --num-workers {config.num_workers} "
                        "needs --runner ray")
    if getattr(config, "mapping", None) == "invertible" and config.z_dim != config.w_dim:
        problems.refuse(f"--mapping invertible maps z onto w one to one: --z-dim ({config.z_dim}) must equal "
                        f"--w-dim ({config.w_dim})")
    problems.raise_if_any(command)

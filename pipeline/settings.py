"""Declaring a setting once: its name, type, default and help text live in one dataclass field.

Every job's configuration is a dataclass whose fields are declared with `setting(...)`. The
command line (latentmill/options.py) builds its options from these fields, the library takes
the dataclass (or a narrower one it inherits from) as is, and the store records `asdict` of it:
there is no second copy of a default or a help text to drift. This module imports nothing heavy,
so `latentmill --help` never waits for torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import MISSING, dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


def setting(default: Any = MISSING, help: str = "", *, choices: tuple[str, ...] | None = None,
            cli: bool = True, metavar: str | None = None, default_factory: Any = MISSING,
            positional: bool = False, minimum: float | None = None, maximum: float | None = None,
            above: float | None = None, repeatable: bool = False, old_spellings: tuple[str, ...] = ()) -> Any:
    """A dataclass field that is also a documented setting.

    choices: the accepted values; minimum / maximum: the range of a number (inclusive), above: a
    bound it must exceed (all checked by `check_settings`, with every number required finite);
    cli=False keeps a field out of the command line; positional: a CLI argument rather than an option;
    repeatable: a tuple given as the option repeated (--against A --against B) rather than a comma list;
    old_spellings: earlier names of the option (e.g. "--out"), still accepted, never shown in --help.
    """
    metadata = {"help": help, "choices": choices, "cli": cli, "metavar": metavar, "positional": positional,
                "minimum": minimum, "maximum": maximum, "above": above, "repeatable": repeatable,
                "old_spellings": old_spellings}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def narrow(source: Any, cls: type[T]) -> T:
    """The `cls` view of a wider settings object (e.g. the refinement settings of an InvertConfig)."""
    return cls(**{f.name: getattr(source, f.name) for f in dataclasses.fields(cls) if f.init})


def setting_problems(settings: Any) -> list[str]:
    """Every field outside what its declaration allows, one sentence each naming the option: a value
    not among its choices, a number that is not finite (nan, inf), below its minimum, not above its
    `above` bound or beyond its maximum."""
    problems = []
    for f in dataclasses.fields(settings):
        value, meta, name = getattr(settings, f.name), f.metadata, option_name(f.name)
        choices = meta.get("choices")
        if choices:
            values = value if isinstance(value, (tuple, list)) else (value,)
            bad = [v for v in values if v not in choices]
            if bad or (isinstance(value, (tuple, list)) and not value):
                problems.append(f"--{name}: unknown {', '.join(map(str, bad)) or '(nothing given)'}; "
                                f"choose from {','.join(choices)}")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            problems.append(f"--{name}: {value} is not a finite number")
        elif meta.get("minimum") is not None and value < meta["minimum"]:
            problems.append(f"--{name} must be at least {meta['minimum']:g}, got {value:g}")
        elif meta.get("above") is not None and value <= meta["above"]:
            problems.append(f"--{name} must be above {meta['above']:g}, got {value:g}")
        elif meta.get("maximum") is not None and value > meta["maximum"]:
            problems.append(f"--{name} must be at most {meta['maximum']:g}, got {value:g}")
    return problems


def check_settings(settings: Any) -> None:
    """Raise ValueError listing every `setting_problems` of `settings` (one per line)."""
    problems = setting_problems(settings)
    if problems:
        raise ValueError("\n".join(problems))


def option_name(field_name: str) -> str:
    return field_name.replace("_", "-")


# Option groups several commands share, declared once and inherited.

@dataclass(kw_only=True)
class DeviceSettings:
    device: str = setting("auto", "Where the models run: 'auto' (CUDA if present), 'cpu', 'cuda:0', ...")


@dataclass(kw_only=True)
class RaySettings:
    address: str | None = setting(None, "Ray cluster address (default: $RAY_ADDRESS, else an embedded Ray).")
    verbose: bool = setting(False, "Show Ray's own start-up banners and its workers' logs (off: latentmill's lines "
                                   "and progress only).")


RUNNERS = ("ray", "local")


@dataclass(kw_only=True)
class RunnerSettings:
    runner: str = setting("ray", "Where the work runs: ray (an actor pool, or Ray Train workers, on the cluster or an "
                                 "embedded Ray), or local (one piece after another in this process, no Ray: small "
                                 "jobs on one machine, where starting Ray costs more than the work).",
                          choices=RUNNERS)


@dataclass(kw_only=True)
class ProgressSettings:
    progress: bool = setting(True, "Progress bars (--no-progress for logs).")


LATENT_COLUMN_NAMES = ("w_refined", "w_encoded", "w_compressed")  # the latents table's latent columns


@dataclass(kw_only=True)
class LatentColumnSettings:
    column: str = setting("w_refined", "Which stored latents to use: refined (the default), the encoder's, or the "
                                       "compressed ones.", choices=LATENT_COLUMN_NAMES)


@dataclass(kw_only=True)
class StoreGeneratorSettings:
    """For commands that render a store's latents: they need the generator the store was made with."""

    generator: str | None = setting(None, "Generator URI (default: the one recorded in the store; another copy of "
                                          "the same network is accepted, a different one refused).")


@dataclass(kw_only=True)
class TrainingRunSettings(RaySettings, RunnerSettings):
    """What every training job shares: where it writes, how it is distributed, how it is seeded."""

    output: str = setting(MISSING, "Output directory; rerunning with the same one resumes.")
    num_workers: int = setting(1, "Ray Train workers (data-parallel; 1 with --runner local).", minimum=1)
    use_gpu: bool = setting(False, "One GPU per worker.")
    seed: int = setting(0, "Seed of initialization and sampling.")

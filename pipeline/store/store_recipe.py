"""What determines a store's rows (its recipe), recorded at creation and compared on every rerun.

A store holds rows of one recipe: the input, the fingerprints of every model, the stages and every
setting that changes a row. Settings that only change how fast rows are made (batch size,
concurrency, GPUs, threads, retries, timeouts, the Ray address, progress bars) are not part of it: a
result never depends on batching (each image has its own latent, noise and random stream). A rerun
with another recipe is refused before any work, with each difference listed, so a store never mixes
recipes and its manifest never claims settings its rows were not made with.

Every finished shard records the digest of the recipe it was made with (in its manifest entry and
its Parquet metadata), so a shard of another store copied in is found by resume and by verify.
`--precision auto` is part of the recipe as 'auto': what it became on each kind of device is recorded
beside it (STORE/precision.json), so the same command resumes on any machine.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pipeline.errors import LatentmillError
from pipeline.store import layout

RECIPE_VERSION = 2

# InvertConfig fields that never change a row (how fast, where, how verbose), and model URIs, which
# the recipe replaces by the fingerprints of what they hold (a moved file is the same model).
EXECUTION_SETTINGS = frozenset({"output", "overwrite", "batch_size", "concurrency", "num_gpus", "cpus_per_actor",
                                "decode_threads", "max_retries", "address", "verbose", "progress", "compile",
                                "wait", "read_timeout", "prefetch", "on_changed_input", "placement_timeout",
                                "retry_errors", "shard_size", "runner"})  # shards are planned once: their size is the plan's
MODEL_URIS = frozenset({"generator", "encoder", "prior", "lpips_weights", "facenet_weights", "identity_model"})


class StoreRecipeMismatch(LatentmillError, ValueError):
    """A rerun's recipe differs from the store's."""


def make_recipe(settings: dict[str, Any], models: dict[str, str | None]) -> dict[str, Any]:
    """The recipe of a run: `settings` is InvertConfig.to_dict(), `models` name -> fingerprint."""
    row_settings = {k: _normal(v) for k, v in sorted(settings.items()) if k not in EXECUTION_SETTINGS | MODEL_URIS}
    return {"recipe_version": RECIPE_VERSION, "input": settings["input"], "models": dict(sorted(models.items())),
            "settings": row_settings}


def recipe_digest(recipe: dict[str, Any]) -> str:
    """A digest of what a recipe says (not of how its file is spelled)."""
    comparable = {k: v for k, v in recipe.items() if k not in ("plan", "shards")}
    return "sha256:" + hashlib.sha256(json.dumps(comparable, sort_keys=True, default=str).encode()).hexdigest()


def check_recipe_file(value: Any) -> dict[str, Any]:
    """A recipe read from store.json, or ValueError saying why it is not one."""
    if not isinstance(value, dict) or not isinstance(value.get("settings"), dict) \
            or not isinstance(value.get("models"), dict):
        raise ValueError(f"{layout.RECIPE} does not hold a recipe (a settings and a models table)")
    return value


def recipe_differences(stored: dict[str, Any], current: dict[str, Any],
                       defaults: dict[str, Any] | None = None) -> list[str]:
    """One line per difference: '<what>: <in the store> in the store, <this run> now'.

    defaults: each setting's declared default. A setting the stored recipe does not name (it was
    added to latentmill after the store was made) differs only if this run moves it off its default:
    at the default it reproduces what the store's rows were made with."""
    lines = []
    if not _same_place(stored.get("input"), current.get("input")):
        lines.append(f"--input: {stored.get('input')} in the store, {current.get('input')} now")
    for name in sorted(set(stored.get("models", {})) | set(current.get("models", {}))):
        a, b = stored.get("models", {}).get(name), current.get("models", {}).get(name)
        if a != b:
            lines.append(f"{name} model: {_short(a)} in the store, {_short(b)} now")
    for key in sorted(set(stored.get("settings", {})) | set(current.get("settings", {}))):
        a, b = stored.get("settings", {}).get(key, "<unset>"), current.get("settings", {}).get(key, "<unset>")
        if a == "<unset>" and defaults is not None and key in defaults and _normal(b) == _normal(defaults[key]):
            continue
        if b == "<unset>" and key in EXECUTION_SETTINGS | MODEL_URIS:
            continue  # recorded by an older latentmill that counted it as a row setting
        if _normal(a) != _normal(b):
            lines.append(f"--{key.replace('_', '-')}: {_value(a)} in the store, {_value(b)} now")
    return lines


def mismatch_error(store: str, lines: list[str]) -> StoreRecipeMismatch:
    listing = "\n".join(f"  - {line}" for line in lines)
    return StoreRecipeMismatch(
        f"--output {store} holds rows made with another recipe; nothing was run:\n{listing}\n"
        f"Ways out: rerun with the store's recipe ({layout.join(store, layout.RECIPE)} lists it), add --overwrite to "
        "redo every row with the new one, or write to a new --output.")


def _same_place(a: str | None, b: str | None) -> bool:
    """Two --input URIs name the same data (a store made with a relative path, rerun with it absolute)."""
    from pipeline.uris import absolute

    return a == b or (a is not None and b is not None and absolute(a) == absolute(b))


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "<none>"
    return "<none>" if value is None else str(value)


def _short(fingerprint: str | None) -> str:
    return "none" if fingerprint is None else fingerprint.removeprefix("sha256:")[:12]

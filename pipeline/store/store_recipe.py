"""What determines a store's rows (its recipe), recorded at creation and compared on every rerun.

A store holds rows of one recipe: the input plan, the fingerprints of every model, the stages and
every setting that changes a row. Settings that only change how fast rows are made (batch size,
concurrency, GPUs, threads, retries, the Ray address, progress bars) are not part of it: a result
never depends on batching (each image has its own latent, noise and random stream). A rerun with
another recipe is refused before any work, with each difference listed, so a store never mixes
recipes and its manifest never claims settings its rows were not made with.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pipeline.errors import LatentmillError

RECIPE_FILE = "store.json"
RECIPE_VERSION = 1

# InvertConfig fields that never change a row (how fast, where, how verbose), and model URIs, which
# the recipe replaces by the fingerprints of what they hold (a moved file is the same model).
EXECUTION_SETTINGS = frozenset({"output", "overwrite", "batch_size", "concurrency", "num_gpus", "cpus_per_actor",
                                "decode_threads", "max_retries", "address", "verbose", "progress", "compile",
                                "wait"})
MODEL_URIS = frozenset({"generator", "encoder", "prior", "lpips_weights", "facenet_weights", "identity_model"})


class StoreRecipeMismatch(LatentmillError, ValueError):
    """A rerun's recipe differs from the store's."""


def plan_digest(plan: list[dict[str, Any]]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def make_recipe(settings: dict[str, Any], plan: list[dict[str, Any]], models: dict[str, str | None]) -> dict[str, Any]:
    """The recipe of a run: `settings` is InvertConfig.to_dict(), `models` name -> fingerprint."""
    row_settings = {k: v for k, v in sorted(settings.items()) if k not in EXECUTION_SETTINGS | MODEL_URIS}
    return {"recipe_version": RECIPE_VERSION, "input": settings["input"], "plan": plan_digest(plan),
            "shards": len(plan), "models": dict(sorted(models.items())), "settings": row_settings}


def recipe_differences(stored: dict[str, Any], current: dict[str, Any],
                       defaults: dict[str, Any] | None = None) -> list[str]:
    """One line per difference: '<what>: <in the store> in the store, <this run> now'.

    defaults: each setting's declared default. A setting the stored recipe does not name (it was
    added to latentmill after the store was made) differs only if this run moves it off its default:
    at the default it reproduces what the store's rows were made with."""
    lines = []
    if not _same_place(stored.get("input"), current.get("input")):
        lines.append(f"--input: {stored.get('input')} in the store, {current.get('input')} now")
    elif stored.get("plan") != current.get("plan"):
        lines.append(f"the input's shard plan: {stored.get('shards')} shards in the store, {current.get('shards')} "
                     "now (files were added, removed or re-sharded: --shard-size, --input-format, --image-column, "
                     "--id-column)")
    for name in sorted(set(stored.get("models", {})) | set(current.get("models", {}))):
        a, b = stored.get("models", {}).get(name), current.get("models", {}).get(name)
        if a != b:
            lines.append(f"{name} model: {_short(a)} in the store, {_short(b)} now")
    for key in sorted(set(stored.get("settings", {})) | set(current.get("settings", {}))):
        a, b = stored.get("settings", {}).get(key, "<unset>"), current.get("settings", {}).get(key, "<unset>")
        if a == "<unset>" and defaults is not None and key in defaults and _normal(b) == _normal(defaults[key]):
            continue
        if _normal(a) != _normal(b):
            lines.append(f"--{key.replace('_', '-')}: {_value(a)} in the store, {_value(b)} now")
    return lines


def mismatch_error(store: str, lines: list[str]) -> StoreRecipeMismatch:
    listing = "\n".join(f"  - {line}" for line in lines)
    return StoreRecipeMismatch(
        f"--output {store} holds rows made with another recipe; nothing was run:\n{listing}\n"
        f"Ways out: rerun with the store's recipe ({store.rstrip('/')}/{RECIPE_FILE} lists it), add --overwrite to "
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

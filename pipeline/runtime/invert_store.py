"""How a run of `latentmill invert` takes its store: arguments checked, plan, recipe, resume checks.

Order (each step before any shard work): the arguments and paths are checked (`check_arguments`);
the run claims the store (store_lock); `prepare_store` then reuses the saved plan (so a folder's
shard membership cannot shift between a crash and its resume), compares this run's recipe with the
store's and refuses a different one, and checks each finished shard's file cheaply, moving damaged
ones aside so this run redoes them.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import sys
from dataclasses import dataclass, field

import fsspec

from pipeline.data.sources import ShardSpec, plan_input
from pipeline.runtime.config import InvertConfig
from pipeline.stages.chain import InversionModels
from pipeline.store.latent_store import failed_entries, manifest_entries, remove_shard
from pipeline.store.store_recipe import RECIPE_FILE, make_recipe, mismatch_error, recipe_differences
from pipeline.store.verify import ShardProblem, VerifyReport, check_shard, repair_store
from pipeline.uris import check_writable_dir, read_json_if_exists, write_bytes


@dataclass
class PreparedStore:
    shards: list[ShardSpec]
    todo: list[ShardSpec]
    finished: int = 0  # shards already done by earlier runs
    redone: list[str] = field(default_factory=list)  # finished shards whose files were damaged: redone now

    def describe(self) -> str:
        if not self.finished and not self.redone:
            return f"{len(self.shards)} shards to run"
        if not self.todo:
            return f"all {len(self.shards)} shards already done; nothing to run"
        line = f"found {self.finished} of {len(self.shards)} shards done; resuming with {len(self.todo)}"
        if self.redone:
            line += f" (redoing {len(self.redone)} whose files were damaged: {', '.join(self.redone[:5])})"
        return line


def pin_precision(config: InvertConfig) -> tuple[InvertConfig, str | None]:
    """--precision auto becomes one concrete precision, decided once on the driver for the actors'
    device (the driver's CPU stands for CPU actors), so every row of the store is made in one
    precision and the recipe records which. Returns the pinned config and a line saying why."""
    if config.precision != "auto":
        return config, None
    import torch

    from pipeline.precision import resolve_precision

    if config.num_gpus > 0 and not torch.cuda.is_available():
        choice, why = "fp16", "GPU actors whose GPU this driver cannot query; fp16 runs fast on every CUDA GPU"
    else:
        choice, why = resolve_precision("auto", "cuda" if config.num_gpus > 0 else "cpu")
    return dataclasses.replace(config, precision=choice), f"--precision auto: {choice} ({why})"


def check_arguments(config: InvertConfig) -> list[ShardSpec]:
    """Every setting, the input and the output, before Ray starts; returns the input's fresh plan.
    (`pipeline/runtime/preflight.py` makes the same checks and the models', reporting all at once.)"""
    config.validate()
    shards = plan_input(config)
    check_writable_dir(config.output, setting="--output")
    return shards


def _forget_everything(store: str) -> None:
    """--overwrite: every shard of the store goes (manifest entries first), whatever its recipe."""
    for shard in sorted(set(manifest_entries(store)) | set(failed_entries(store))):
        remove_shard(store, shard)
    fs, root = fsspec.core.url_to_fs(store)
    latents = posixpath.join(root, "latents")
    if fs.isdir(latents):
        fs.rm(latents, recursive=True)


def prepare_store(config: InvertConfig, models: InversionModels, *,
                  fresh_plan: list[ShardSpec] | None = None) -> PreparedStore:
    """Plan, recipe and resume checks for a run that holds the store's claim."""
    store = config.output.rstrip("/")
    saved = read_json_if_exists(f"{store}/plan.json")
    if config.overwrite or saved is None:
        if config.overwrite:
            _forget_everything(store)
        shards = fresh_plan if fresh_plan is not None else plan_input(config)
        plan = [dataclasses.asdict(s) for s in shards]
        recipe = make_recipe(config.to_dict(), plan, models.fingerprints())
        if not config.overwrite and manifest_entries(store):
            raise mismatch_error(config.output, ["the store has finished shards but no plan.json: it was not made "
                                                 "by this version of latentmill"])
        # The recipe first, the plan last: the plan marks a created store, so a kill between the two
        # leaves a store that the rerun simply creates again.
        write_bytes(f"{store}/{RECIPE_FILE}", json.dumps(recipe, indent=2).encode())
        write_bytes(f"{store}/plan.json", json.dumps({"input": config.input, "shards": plan}, indent=1).encode())
        return PreparedStore(shards, list(shards))
    plan = saved["shards"]
    shards = [ShardSpec(**spec) for spec in plan]
    recipe = make_recipe(config.to_dict(), plan, models.fingerprints())
    stored = read_json_if_exists(f"{store}/{RECIPE_FILE}")
    if stored is None:
        raise mismatch_error(config.output, [f"no {RECIPE_FILE}: the store does not record its recipe"])
    differences = recipe_differences(stored, recipe, defaults=InvertConfig.defaults())
    if differences:
        raise mismatch_error(config.output, differences)
    finished = manifest_entries(store)
    damaged = VerifyReport(config.output)
    for shard, entry in finished.items():
        problem, _ = check_shard(config.output, shard, entry, full=False)
        if problem:
            damaged.damaged.append(ShardProblem(shard, problem))
    if damaged.damaged:
        for item in damaged.damaged:
            print(f"latentmill: shard {item.shard} is damaged ({item.problem}); moving it aside to redo it",
                  file=sys.stderr)
        repair_store(config.output, damaged)
        finished = manifest_entries(store)
    todo = [spec for spec in shards if spec.shard_id not in finished]
    return PreparedStore(shards, todo, finished=len(finished), redone=[p.shard for p in damaged.damaged])

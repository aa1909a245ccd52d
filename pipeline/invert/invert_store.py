"""How a run of `latentmill invert` takes its store: plan, recipe, input changes, resume checks.

Order (each step before any shard work, inside the run's claim on the store):
1. A new store (or --overwrite): the input's listing is planned once; the recipe is written first
   and the plan (plan.parquet) last, so a kill between the two leaves a store the rerun creates again.
2. An existing store: its saved plan is followed (a folder's shard membership never shifts between a
   crash and its resume) and this run's recipe is compared with the store's; a different one is
   refused, listing each difference. `--precision auto` keeps what the store's rows were made in.
3. The fresh listing is compared with the plan (sizes and versions, no file opened): new inputs
   become new shards (said), changed inputs of finished shards are refused, redone or kept
   (`--on-changed-input`), vanished ones are named.
4. Each finished shard is checked cheaply (one listing: its file is there with its recorded size; its
   entry names the store's recipe); damaged ones are moved aside to be redone.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from pipeline.data.planning import (PLAN_VERSION, InputChanges, InputPlan, InputSettings, Listing, compare_listing,
                                    plan_listing)
from pipeline.data.sources import ShardSpec
from pipeline.errors import LatentmillError
from pipeline.precision import PRECISIONS
from pipeline.invert.config import InvertConfig
from pipeline.invert.shard_processor import TRANSIENT_REASONS, is_transient
from pipeline.settings import narrow
from pipeline.stages.chain import InversionModels
from pipeline.store import layout
from pipeline.store.store import StoreDamagedError
from pipeline.store.store_recipe import make_recipe, mismatch_error, recipe_differences, recipe_digest
from pipeline.store.verify import ShardProblem, VerifyReport, repair_store, shard_problem
from pipeline.store.writer import StoreWriter
from pipeline.uris import list_sizes


class InputChangedError(LatentmillError, ValueError):
    """Inputs whose rows the store holds changed since they were made."""


@dataclass
class PreparedStore:
    config: InvertConfig  # as the run goes on (--precision auto keeps a store's recorded precision)
    plan: InputPlan
    todo: list[ShardSpec]
    recipe_digest: str
    recipe_models: dict[str, str | None]
    finished: int = 0  # shards already done by earlier runs
    redone: list[str] = field(default_factory=list)  # finished shards whose files were damaged: redone now
    notes: list[str] = field(default_factory=list)  # what the preparation found and did, for the user

    @property
    def shards(self) -> list[ShardSpec]:
        return self.plan.shards

    def describe(self) -> str:
        if not self.finished and not self.redone:
            return f"{len(self.shards)} shards to run"
        if not self.todo:
            return f"all {len(self.shards)} shards already done; nothing to run"
        line = f"found {self.finished} of {len(self.shards)} shards done; resuming with {len(self.todo)}"
        if self.redone:
            line += f" (redoing {len(self.redone)} whose files were damaged: {', '.join(self.redone[:5])})"
        return line


def _planning(config: InvertConfig) -> dict:
    settings = narrow(config, InputSettings)
    return {"shard_size": settings.shard_size, "image_column": settings.image_column, "id_column": settings.id_column,
            "on_duplicate_id": settings.on_duplicate_id, "actors": planned_actors(config)}


def planned_actors(config: InvertConfig) -> int:
    """The actors `--shard-size auto` plans for: --concurrency, or with auto what this machine holds
    (its GPUs / --num-gpus, else its CPUs / --cpus-per-actor). The plan keeps the size it chose, so a
    resume on another cluster follows it."""
    if config.concurrency != "auto":
        return int(config.concurrency)
    if config.num_gpus > 0:
        import torch

        return max(1, int(torch.cuda.device_count() / config.num_gpus))
    return max(1, int((os.cpu_count() or 1) / config.cpus_per_actor))


def _create(writer: StoreWriter, config: InvertConfig, models: InversionModels, listing: Listing) -> PreparedStore:
    plan = plan_listing(listing, **_planning(config))
    notes = [f"input: {plan.found}", *listing.notes]
    recipe = {**make_recipe(config.to_dict(), models.fingerprints()), "plan": {"shard_size": plan.shard_size}}
    writer.write_json(layout.RECIPE, recipe)
    writer.write_json(layout.PRECISION, {})
    writer.write_table(layout.PLAN, plan.to_table(dataclasses.asdict(narrow(config, InputSettings))))
    writer.reread()
    return PreparedStore(config, plan, list(plan.shards), recipe_digest(recipe), recipe["models"], notes=notes)


def keep_store_precision(config: InvertConfig, stored: dict) -> tuple[InvertConfig, str | None]:
    """On an existing store, `--precision auto` means the store's precision (stores made before auto was
    recorded as such pinned one); returns the config and a line saying so, when it changed."""
    pinned = stored.get("settings", {}).get("precision")
    if config.precision == "auto" and pinned in PRECISIONS:
        return (dataclasses.replace(config, precision=pinned),
                f"--precision auto: {pinned}, the precision this store's rows were made in")
    return config, None


def _apply_changes(writer: StoreWriter, config: InvertConfig, plan: InputPlan, listing: Listing,
                   changes: InputChanges, notes: list[str]) -> bool:
    """Act on a fresh listing's differences from the plan; True if the plan changed (and must be saved)."""
    finished = writer.manifest.finished
    stale = sorted(plan.shards_holding(set(changes.changed)) & set(finished))
    if stale and config.on_changed_input == "refuse":
        lines = "\n".join(f"  - {line}" for line in changes.describe() if "changed" in line)
        raise InputChangedError(
            f"--input {config.input} changed under {config.output}; nothing was run:\n{lines}\n"
            f"{len(stale)} finished shards hold rows of those inputs ({', '.join(stale[:5])}). Ways out: "
            "--on-changed-input redo (redo those shards), --on-changed-input keep (keep their rows), --overwrite "
            "(redo every row), or a new --output.")
    if stale and config.on_changed_input == "redo":
        for shard in stale:
            writer.remove_shard(shard)
        notes.append(f"{len(changes.changed):,} inputs changed since their rows were made: redoing their "
                     f"{len(stale)} shards ({', '.join(stale[:5])})")
    elif stale:
        notes.append(f"{len(changes.changed):,} inputs changed since their rows were made: keeping their rows "
                     "(--on-changed-input keep)")
    listed = listing.entries()
    for path in changes.changed:
        plan.files[path] = listed[path]
    for path, image in changes.new_sidecars.items():
        plan.add_sidecar(path, image, listed[path])
    if changes.missing:
        notes.append(f"{len(changes.missing):,} planned inputs are gone from --input ({', '.join(changes.missing[:5])}"
                     f"{', ...' if len(changes.missing) > 5 else ''}): rows already made stay; shards still to run give "
                     "them 'missing' error rows")
    if changes.new:
        added = plan_listing(listing, after=plan, **_planning(config))
        plan.shards.extend(added.shards)
        plan.files.update(added.files)
        notes.append(f"{len(changes.new):,} new input files since the store was made: planned as {len(added.shards)} "
                     f"new shards ({', '.join(s.shard_id for s in added.shards[:5])})")
    return bool(changes.new or changes.changed)


def _upgrade_plan(plan: InputPlan, listing: Listing, config: InvertConfig, notes: list[str]) -> bool:
    """A plan made before shards were named by their path relative to --input, given those paths (found
    in the fresh listing as that planning named them); True if it changed. Refused, with the way out,
    where a shard's file cannot be told."""
    if plan.version >= PLAN_VERSION:
        return False
    unknown = plan.migrate_paths(listing)
    if unknown:
        raise mismatch_error(config.output, [
            f"its plan predates nested shard paths and {len(unknown)} tar or Parquet shards cannot be matched to one "
            f"file of --input ({', '.join(unknown[:5])}): rerun with --overwrite to plan the input again"])
    if any(spec.layout != "folder" for spec in plan.shards):
        notes.append("plan upgraded: tar and Parquet shards are now recorded by their path relative to --input")
    return True


def _retry_transient(plan: InputPlan, finished: dict[str, dict], notes: list[str]) -> list[ShardSpec]:
    """--retry-errors: the finished shards holding error rows of a transient kind, marked to redo only those
    rows (every other row of theirs is kept as it is)."""
    retried = []
    count = 0
    for spec in plan.shards:
        reasons = finished.get(spec.shard_id, {}).get("error_reasons") or {}
        transient = sum(n for reason, n in reasons.items() if is_transient(reason))
        if transient:
            retried.append(dataclasses.replace(spec, options={**spec.options, "retry_errors": True}))
            count += transient
    notes.append(f"--retry-errors: retrying {count:,} error rows of a transient kind ({', '.join(TRANSIENT_REASONS)})"
                 f" in {len(retried)} shards" if retried else
                 "--retry-errors: no error rows of a transient kind to retry")
    return retried


def prepare_store(writer: StoreWriter, config: InvertConfig, models: InversionModels,
                  listing: Listing) -> PreparedStore:
    """Plan, recipe, input changes and resume checks for a run that holds the store's claim."""
    if config.overwrite:
        writer.forget_shards()
        for name in (layout.PLAN, layout.LEGACY_PLAN, layout.RECIPE, layout.PRECISION):
            writer.remove(name)
        writer.reread()
    has_plan = writer.exists(layout.PLAN) or writer.exists(layout.LEGACY_PLAN)
    if not has_plan:
        if writer.manifest.finished:
            raise mismatch_error(config.output, ["the store has finished shards but no plan: it was not made by "
                                                 "this version of latentmill, or its plan was deleted"])
        return _create(writer, config, models, listing)
    try:
        plan, stored = writer.input_plan, writer.recipe
    except StoreDamagedError as exc:
        raise StoreDamagedError(f"{exc}\nNothing was run.") from None
    if stored is None:
        raise mismatch_error(config.output, [f"no {layout.RECIPE}: the store does not record its recipe "
                                             f"(`latentmill verify --repair {config.output}` rebuilds it)"])
    config, kept = keep_store_precision(config, stored)
    recipe = make_recipe(config.to_dict(), models.fingerprints())
    differences = recipe_differences(stored, recipe, defaults=InvertConfig.defaults())
    if differences:
        raise mismatch_error(config.output, differences)
    notes = [kept] if kept else []
    notes += listing.notes
    upgraded = _upgrade_plan(plan, listing, config, notes)
    changes = compare_listing(plan, listing)
    if (_apply_changes(writer, config, plan, listing, changes, notes) or upgraded
            or not writer.exists(layout.PLAN)):
        writer.write_table(layout.PLAN, plan.to_table(dataclasses.asdict(narrow(config, InputSettings))))
    writer.reread()
    digest = recipe_digest(stored)
    report = VerifyReport(config.output)
    for shard, problem in writer.manifest.torn.items():
        report.damaged.append(ShardProblem(shard, f"its manifest entry is {problem}"))
    sizes = list_sizes(writer.path(layout.LATENTS))
    for shard, entry in writer.manifest.finished.items():
        problem = shard_problem(writer, shard, entry, size=sizes.get(layout.shard_file_name(shard).rsplit("/", 1)[1]),
                                recipe=digest)
        if problem:
            report.damaged.append(ShardProblem(shard, problem))
    for item in report.damaged:
        notes.append(f"shard {item.shard} is damaged ({item.problem}); moving it aside to redo it")
    if report.damaged:
        repair_store(writer, report)
    finished = writer.manifest.finished
    todo = [spec for spec in plan.shards if spec.shard_id not in finished]
    if config.retry_errors:
        retried = _retry_transient(plan, finished, notes)
        todo += retried
        finished = {k: v for k, v in finished.items() if k not in {s.shard_id for s in retried}}
    return PreparedStore(config, plan, todo, digest, stored["models"], finished=len(finished),
                         redone=[p.shard for p in report.damaged], notes=notes)

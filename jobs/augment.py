"""`latentmill augment STORE --output OUT --edits ...`: K variants of every ok row, exactly once.

1. Check the settings, the store (a prior; an encoder for compose) and the edits against its generator.
2. Claim OUT (one run at a time); make the reference on the first run (pipeline/augment/augment_plan.py),
   or check this run's recipe against the one OUT was made with and reuse its reference.
3. Plan the units (each finished store shard's ok rows in pieces of --shard-size); the ledger says which
   are done. A unit whose store shard changed since (it was redone) is refused, naming it.
4. Run the units still to do on the actor pool (Ray, embedded or on --address) or in this process, each by
   pipeline/augment/augment_processor.py; a unit that fails is retried, then recorded as failed.
5. Gather the finished units' parts into samples.parquet; write summary.json and a preview (sources beside
   their variants), also copied into STORE/augment/ for the report. A rerun with nothing to do says so and
   changes no file.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import tarfile
import time
from dataclasses import asdict
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from pipeline.augment.augment_plan import (DONOR_INPUT_BYTES, DONOR_INPUT_ROWS, DONOR_LATENT_BYTES, DONORS,
                                           RECIPE, REFERENCE_ROWS, SAMPLES, SUMMARY, Reference, Unit,
                                           check_recipe, done_units, gather, ledger_file, out_path, plan_units,
                                           read_sample, recipe_of, sample_positions)
from pipeline.augment.augment_processor import AugmentProcessor, OutputClaim
from pipeline.augment.augment_settings import AugmentConfig
from pipeline.augment.edits import check_edits, parse_edits
from pipeline.curation.rebalance import nll_cut
from pipeline.errors import LatentmillError
from pipeline.imaging import grid_image, png_bytes
from pipeline.invert.shard_book import RunSummary, ShardBook
from pipeline.priors.latent_prior import in_chunks
from pipeline.stages.chain import NOISE_MODE
from pipeline.sampling import stream_seed
from pipeline.store import layout
from pipeline.store.parquet_files import parquet_bytes
from pipeline.store.store import Store, open_store
from pipeline.store.store_lock import claim_store
from pipeline.store.writer import claim
from pipeline.uris import absolute, read_if_exists, write_bytes

__all__ = ["AugmentConfig", "run"]

PREVIEW_SOURCES = 8


class AugmentLedger:
    """Where a unit that failed every attempt is recorded: OUT/ledger/<unit>.failed.json."""

    def __init__(self, output: str) -> None:
        self.output, self.precisions = output, {}

    def record_failure(self, unit: str, entry: dict[str, Any]) -> None:
        write_bytes(ledger_file(self.output, unit, failed=True), json.dumps(entry, indent=2).encode())


class AugmentBook(ShardBook):
    """invert's account of shards (retries, failures, counts), for units: rendering needs no precision choice."""

    variants: int = 0  # made by this run

    def started(self, ready: dict[str, Any]) -> None:
        pass

    def done(self, entry: dict[str, Any]) -> None:
        super().done(entry)
        self.variants += entry["variants"]

    def _record_precision(self, kind: str, precision: str) -> None:
        pass


def check_store(cfg: AugmentConfig, store: Store) -> None:
    """What the edits need of the store, refused before any work with what to do instead."""
    meta = store.metadata
    edits = parse_edits(cfg.edits)
    if not meta.get("prior"):
        raise ValueError(f"{cfg.store} was made without --prior; augment needs it (the NLL filter, and jitter's "
                         "whitened space): invert with --prior")
    if any(e.kind == "compose" for e in edits) and not meta.get("encoder"):
        raise ValueError(f"{cfg.store} was made without --encoder; compose needs it (drop compose from --edits, or "
                         "invert with an encoder)")
    if cfg.min_identity is not None and "identity" not in store.settings.get("stages", []):
        raise ValueError(f"--min-identity: {cfg.store} has no identity model (its invert ran without the identity "
                         "stage); leave --min-identity out")
    if int(store.manifest.totals()["ok"]) < 2 and any(e.needs_donor for e in edits):
        raise ValueError("mix and compose take a part from another ok row; the store has fewer than two")


def make_reference(cfg: AugmentConfig, store: Store, G: Any, prior: Any,
                   flagged: set[str]) -> tuple[Reference, pa.Table]:
    """The filter's NLL bounds, the attribute channels' std and the donors, from a uniform sample of the
    store's ok rows (flagged ones left out); returns it and the mix donors' table (image_id, shard, w)."""
    edits = parse_edits(cfg.edits)
    kinds = {e.kind for e in edits}
    columns = [cfg.column] + (["w_encoded"] if "compose" in kinds and cfg.column != "w_encoded" else [])
    positions = sample_positions(store, REFERENCE_ROWS, cfg.seed)
    sample = read_sample(store, positions, columns)
    if flagged:
        sample = sample.filter(pa.array([i not in flagged for i in sample.column("image_id").to_pylist()], pa.bool_()))
    if sample.num_rows == 0:
        raise ValueError(f"{store.uri}: no ok rows to augment" + (" that curate did not flag" if flagged else ""))
    shape = store.latent_shape

    def latents(column: str) -> torch.Tensor:
        values = sample.column(column).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return torch.from_numpy(values.astype(np.float32).reshape(sample.num_rows, *shape))

    cuts = {}
    with torch.no_grad():
        for column in columns:
            if column in sample.schema.names and sample.column(column).null_count == 0:
                cuts[column] = nll_cut(in_chunks(prior.nll, latents(column)), cfg.nll_percentile)
        stds: dict[str, list[float]] = {}
        layers = sorted({c.layer for e in edits for c in e.channels})
        if layers:
            ws = latents(cfg.column)
            styles = {name: [] for name in layers}
            for chunk in ws.split(256):
                computed = G.styles(chunk)
                for name in layers:
                    styles[name].append(computed[name].double())
            stds = {name: torch.cat(v).std(0, unbiased=sample.num_rows > 1).clamp_min(1e-8).tolist()
                    for name, v in styles.items()}
    order = np.random.default_rng(stream_seed(cfg.seed, "augment donors")).permutation(sample.num_rows)
    donor_rows = min(sample.num_rows, max(2, DONOR_LATENT_BYTES // (shape[0] * shape[1] * 4)))
    donors = sample.take(pa.array(np.sort(order[:donor_rows]))).select(["image_id", "shard", cfg.column])
    donors = donors.rename_columns(["image_id", "shard", "w"])
    compose_donors: list[tuple[str, str]] = []
    if "compose" in kinds:
        meta = store.metadata
        per_input = meta["img_channels"] * meta["img_resolution"] ** 2 * 4
        count = min(sample.num_rows, DONOR_INPUT_ROWS, max(2, DONOR_INPUT_BYTES // per_input))
        picked = sample.take(pa.array(np.sort(order[:count])))
        compose_donors = list(zip(picked.column("shard").to_pylist(), picked.column("image_id").to_pylist()))
    if any(e.needs_donor for e in edits) and donors.num_rows < 2:
        raise ValueError("mix and compose take a part from another ok row; fewer than two are left to take from")
    return Reference(cuts, stds, donors.column("image_id").to_pylist(), compose_donors, sample.num_rows), donors


def run(cfg: AugmentConfig, *, processor_class: type = AugmentProcessor) -> dict[str, Any]:
    """Augment cfg.store into cfg.output; returns the summary (also OUT/summary.json). processor_class: the
    worker's class (a subclass may add behaviour, e.g. fault injection in the tests)."""
    cfg.validate()
    cfg = dataclasses.replace(cfg, store=absolute(cfg.store), output=absolute(cfg.output))  # workers run elsewhere
    store = open_store(cfg.store)
    check_store(cfg, store)
    started = time.perf_counter()
    edits = parse_edits(cfg.edits)
    with claim_store(cfg.output, wait_hint="") as held:
        recipe = recipe_of(cfg, store)
        stored = read_if_exists(out_path(cfg.output, RECIPE))
        flagged = store.flagged_ids() if cfg.exclude_flagged else set()
        kinds = {e.kind for e in edits}
        models = store.load_models("cpu", prior=True, encoder="compose" in kinds,
                                   identity="identity" in store.settings.get("stages", []))
        G, prior = models.G, models.prior
        check_edits(edits, G.num_ws, {name: a.weight.shape[0] for name, a in G.synthesis.affine_layers().items()})
        if stored is not None:
            stored_recipe = json.loads(stored)
            check_recipe(stored_recipe, recipe, cfg.output)
            reference = Reference.from_json(stored_recipe["reference"])
        else:
            reference, donors = make_reference(cfg, store, G, prior, flagged)
            write_bytes(out_path(cfg.output, DONORS), parquet_bytes(donors))
            write_bytes(out_path(cfg.output, RECIPE),
                        json.dumps({**recipe, "reference": reference.to_json()}, indent=2).encode())
        units = plan_units(store, cfg.shard_size)
        done = done_units(cfg.output)
        changed = [u.store_shard for u in units if u.shard_id in done and
                   done[u.shard_id]["source_sha256"] != u.source_sha256]
        if changed:
            raise LatentmillError(f"store shards changed since their variants were made (redone by invert): "
                                  f"{', '.join(sorted(set(changed))[:5])}; their variants in {cfg.output} no longer "
                                  "match the store. Use a new --output.")
        todo = [u for u in units if u.shard_id not in done]
        summary = RunSummary(shards_skipped=len(units) - len(todo))
        if not todo and read_if_exists(out_path(cfg.output, SUMMARY)) is not None \
                and not gather_pending(cfg.output, units, done):
            print(f"latentmill: all {len(units)} units of {cfg.store} already augmented in {cfg.output}; nothing to "
                  "do", file=sys.stderr)
            return {**json.loads(read_if_exists(out_path(cfg.output, SUMMARY))), "nothing_to_do": True}
        if done:
            print(f"latentmill: found {len(done)} of {len(units)} units done; resuming with {len(todo)}",
                  file=sys.stderr)
        book = AugmentBook(summary, AugmentLedger(cfg.output), cfg.max_retries)
        if todo:
            claim_record = OutputClaim(cfg.output, held.token)
            frozen = frozenset(flagged)

            def actor_args(shipped_models: Any, report: Any) -> tuple:
                return cfg, claim_record, reference, frozen, shipped_models, report

            from pipeline.runtime.local_runner import run_shards_here
            from pipeline.runtime.ray_runner import run_shards

            runner = run_shards_here if cfg.runner == "local" else run_shards
            runner(cfg, todo, summary, book, None, processor_class=processor_class, models=models,
                   actor_args=actor_args, total_rows=sum(u.rows for u in todo), started=started)
        done = done_units(cfg.output)
        gather(cfg.output, units, done, {"store": store.uri, "settings": asdict(cfg),
                                         "latent_shape": list(store.latent_shape)})
        result = write_summary(cfg, store, units, done, summary, book.variants, reference)
        preview = make_preview(cfg, store, G.cpu(), units, done)  # (an in-process worker may have moved G)
    with claim(store.uri, wait_hint="") as writer:  # for the store's report
        writer.write_bytes(layout.AUGMENT_SUMMARY, json.dumps(result, indent=2, default=str).encode())
        if preview is not None:
            writer.write_bytes(layout.AUGMENT_PREVIEW, preview)
    return result


def gather_pending(output: str, units: list[Unit], done: dict[str, dict[str, Any]]) -> bool:
    """Whether some finished unit's rows are not yet in samples.parquet (a kill before the gather)."""
    from pipeline.augment.augment_plan import gathered_units

    held = set(gathered_units(output))
    return any(u.shard_id in done and u.shard_id not in held for u in units)


def write_summary(cfg: AugmentConfig, store: Store, units: list[Unit], done: dict[str, dict[str, Any]],
                  summary: RunSummary, made: int, reference: Reference) -> dict[str, Any]:
    """OUT/summary.json: what the output holds (from the ledger) and this run's figures."""
    entries = [done[u.shard_id] for u in units if u.shard_id in done]
    failed = sorted(summary.shards_failed)
    result = {
        "store": store.uri, "output": cfg.output, "edits": cfg.edits, "variants_per_edit": cfg.variants,
        "units": len(units), "units_done": len(entries), "units_failed": failed,
        "sources": sum(e["sources"] for e in entries), "variants": sum(e["variants"] for e in entries),
        "accepted": sum(e["accepted"] for e in entries),
        "rejected": {why: sum(e["rejected"].get(why, 0) for e in entries)
                     for why in ("prior_nll", "identity", "input_unreadable")},
        "nll_cut": reference.nll_cut, "nll_typical": float(store.latent_shape[1]),
        "samples": out_path(cfg.output, SAMPLES), "images": out_path(cfg.output, "images"),
        "settings": asdict(cfg),
        "last_run": {"units_processed": summary.shards_done, "units_skipped": summary.shards_skipped,
                     "retries": summary.retries, "requeued_after_node_loss": summary.requeued,
                     "seconds": round(summary.seconds, 2), "variants_made": made,
                     "variants_per_second": round(made / summary.seconds, 3) if summary.seconds > 0 else 0.0},
    }
    write_bytes(out_path(cfg.output, SUMMARY), json.dumps(result, indent=2, default=str).encode())
    return result


def make_preview(cfg: AugmentConfig, store: Store, G: Any, units: list[Unit],
                 done: dict[str, dict[str, Any]]) -> bytes | None:
    """A grid of up to PREVIEW_SOURCES sources, each beside its first accepted variant of every edit (from the
    first units' tar shards; the source as G renders its latent)."""
    edits = [e.text for e in parse_edits(cfg.edits)]
    fs, path = fsspec.core.url_to_fs(out_path(cfg.output, SAMPLES))
    if not fs.exists(path):
        return None
    cells: list[torch.Tensor] = []
    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=["source_id", "edit", "accepted", "key", "shard"])
            table = table.filter(pc.field("accepted"))
            if table.num_rows == 0:
                continue
            frame = table.to_pandas().drop_duplicates(["source_id", "edit"])
            room = PREVIEW_SOURCES - len(cells) // (len(edits) + 1)
            chosen = frame[frame["source_id"].isin(frame["source_id"].unique()[:room])]
            pngs = _tar_pngs(out_path(cfg.output, chosen["shard"].iloc[0]), set(chosen["key"]))
            sources = chosen["source_id"].unique().tolist()
            ws = _source_latents(store, cfg.column, sources, units, done)
            with torch.no_grad():
                rendered = G.synthesis(ws, noise_mode=NOISE_MODE).float()
            blank = torch.ones_like(rendered[0])
            for source, image in zip(sources, rendered):
                cells.append(image)
                mine = chosen[chosen["source_id"] == source].set_index("edit")["key"]
                for edit in edits:
                    cells.append(_from_png(pngs[mine[edit]]) if edit in mine else blank)
            if len(cells) >= PREVIEW_SOURCES * (len(edits) + 1):
                break
    if not cells:
        return None
    return png_bytes(grid_image(torch.stack(cells), nrow=len(edits) + 1))


def _tar_pngs(uri: str, keys: set[str]) -> dict[str, bytes]:
    fs, path = fsspec.core.url_to_fs(uri)
    found = {}
    with fs.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r|") as archive:
        for member in archive:
            key, _, ext = member.name.partition(".")
            if ext == "png" and key in keys:
                found[key] = archive.extractfile(member).read()
            if len(found) == len(keys):
                break
    return found


def _from_png(data: bytes) -> torch.Tensor:
    from PIL import Image

    array = np.asarray(Image.open(io.BytesIO(data)))
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1) / 127.5 - 1


def _source_latents(store: Store, column: str, ids: list[str], units: list[Unit],
                    done: dict[str, dict[str, Any]]) -> torch.Tensor:
    """The latents of a few source rows (from the store shards of the units that made them)."""
    wanted = set(ids)
    found: dict[str, np.ndarray] = {}
    for shard in dict.fromkeys(u.store_shard for u in units if u.shard_id in done):
        table = pq.read_table(pa.BufferReader(store.read_bytes(layout.shard_file_name(shard))),
                              columns=["image_id", column])
        keep = table.filter(pc.is_in(table.column("image_id"), pa.array(sorted(wanted))))
        for image_id, values in zip(keep.column("image_id").to_pylist(), keep.column(column).to_pylist()):
            found[image_id] = np.asarray(values, np.float32).reshape(store.latent_shape)
        if len(found) == len(wanted):
            break
    return torch.from_numpy(np.stack([found[i] for i in ids]))

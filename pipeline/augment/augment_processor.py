"""Making one unit's variants: read its source rows, edit, render, score, filter, write part, tar and ledger.

`AugmentProcessor` is a plain class, like invert's shard processor: `__init__` loads the store's models
once, `process(unit)` does one unit of work. Ray makes it an actor at the edge
(pipeline/runtime/ray_runner.py); the in-process runner calls it directly.

Sources are taken `batch_size` at a time: each is rendered (and identity-embedded) once, then every edit's
variants of them are made in batches of `batch_size`. A unit's files are written data first, its ledger
entry last, and only while this run still holds the output's claim.
"""

from __future__ import annotations

import hashlib
import json
import resource
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipeline.augment.augment_plan import (DONORS, IMAGES, PARTS, Reference, Unit, ledger_file, out_path,
                                           tar_name)
from pipeline.augment.augment_settings import AugmentConfig
from pipeline.augment.edits import (Edit, attribute_direction, edited_styles, jitter, mix, parse_edits, pick_donors,
                                    variant_seed)
from pipeline.curation.rebalance import compose, part_masks
from pipeline.data.webdataset import TarShardWriter
from pipeline.devices import resolve_device
from pipeline.imaging import png_bytes, to_uint8
from pipeline.model_set import ModelSet
from pipeline.precision import device_kind
from pipeline.stages.chain import NOISE_MODE
from pipeline.store import layout
from pipeline.store.augment_schema import AUGMENT
from pipeline.store.file_names import safe_file_name
from pipeline.store.parquet_files import open_parquet, parquet_bytes, read_parquet
from pipeline.store.store import open_store
from pipeline.store.store_lock import StoreClaimLostError, holds_claim
from pipeline.uris import write_bytes

ProgressReport = Callable[[str, int, "str | None", int], None]  # (unit, rows finished, stage, ok)


@dataclass(frozen=True)
class OutputClaim:
    """The run's hold on OUT: what a worker checks before writing a unit's files."""

    output: str
    token: str


class AugmentProcessor:
    def __init__(self, cfg: AugmentConfig, claim: OutputClaim, reference: Reference, flagged: frozenset[str],
                 models: ModelSet, progress: ProgressReport | None = None) -> None:
        """models: the driver's loaded (and checked) models, shipped once through Ray's object store, so a worker
        never needs the model files. A failure while starting (the store's inputs unreadable for compose's
        donors, say) is kept and raised by `ready()`, so the driver reports it once, clearly, rather than
        replacing a worker that can never start."""
        self.cfg, self.claim, self.reference, self.flagged, self.progress = cfg, claim, reference, flagged, progress
        self.node: str | None = None  # the cluster node this runs on, set by the distributor that placed it
        self.models = models
        self.batch_size, self.batch_note = cfg.batch_size, ""
        self.problem: Exception | None = None
        try:
            self._load()
        except Exception as exc:  # raised by ready() and process()
            self.problem = exc

    def _load(self) -> None:
        start = time.perf_counter()
        self.edits = parse_edits(self.cfg.edits)
        kinds = {e.kind for e in self.edits}
        on_ray_cpu = self.cfg.runner == "ray" and self.cfg.device == "auto" and self.cfg.num_gpus == 0
        self.device = torch.device("cpu") if on_ray_cpu else resolve_device(self.cfg.device)
        self.store = open_store(self.cfg.store)
        models = self.models.to(self.device)
        self.G, self.prior, self.E, self.identity = models.G, models.prior, models.E, models.identity
        self.generator_fingerprint = self.store.metadata["generator_fingerprint"]
        self.directions = {e.text: attribute_direction(self.G, e, {k: torch.tensor(v) for k, v in
                                                                   self.reference.style_std.items()})
                           for e in self.edits if e.kind == "attribute"}
        self.donor_ws = None
        if kinds & {"mix"}:
            donors = read_parquet(out_path(self.cfg.output, DONORS))
            self.donor_ws = self._latents(donors, "w").to(self.device)
        self.compose_inputs: torch.Tensor | None = None
        self.compose_ids = [i for _, i in self.reference.compose_donors]
        self.compose_missing: set[str] = set()
        if "compose" in kinds:  # a donor whose input can no longer be read stays in the list (picks never shift)
            shards, ids = zip(*self.reference.compose_donors)
            found = self.store.read_inputs(list(shards), list(ids), missing_ok=True)
            self.compose_missing = set(ids) - set(found)
            blank = torch.zeros_like(next(iter(found.values()))) if found else None
            self.compose_inputs = torch.stack([found.get(i, blank) for i in ids]) if found else None
        self.startup_seconds = time.perf_counter() - start

    def ready(self) -> dict[str, Any]:
        if self.problem is not None:
            raise self.problem
        return {"seconds": self.startup_seconds, "batch_size": self.batch_size, "note": self.batch_note,
                "device_kind": device_kind(self.device), "precision": "float32", "precision_why": "rendering",
                "node": self.node}

    def _latents(self, table: pa.Table, column: str) -> torch.Tensor:
        values = table.column(column).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return torch.from_numpy(values.astype(np.float32).reshape(table.num_rows, *self.store.latent_shape))

    def _sources(self, unit: Unit) -> pa.Table:
        """The unit's ok rows (flagged ones left out with --exclude-flagged): image_id and the latent column."""
        with open_parquet(self.store.path(layout.shard_file_name(unit.store_shard)),
                          remedy=self.store.repair_hint) as parquet:
            table = parquet.read(columns=["image_id", "status", self.cfg.column])
        table = table.filter(pc.equal(table.column("status"), "ok")).slice(unit.start, unit.rows)
        if self.flagged:
            keep = [i not in self.flagged for i in table.column("image_id").to_pylist()]
            table = table.filter(pa.array(keep, pa.bool_()))
        return table

    def process(self, unit: Unit, attempt: int = 1) -> dict[str, Any]:
        """Make the unit's variants and write its part, tar shard and (last) ledger entry; returns the entry."""
        if self.problem is not None:
            raise self.problem
        start = time.perf_counter()
        sources = self._sources(unit)
        ids = sources.column("image_id").to_pylist()
        ws = self._latents(sources, self.cfg.column)
        rows: list[dict[str, Any]] = []
        tar = TarShardWriter(out_path(self.cfg.output, IMAGES), f"augment-{unit.shard_id}", single=True)
        inputs = self._unit_inputs(unit, ids)
        made = 0
        with torch.no_grad():
            for first in range(0, len(ids), self.batch_size):
                chunk = slice(first, first + self.batch_size)
                rows += self._chunk(ids[chunk], ws[chunk], inputs, tar)
                made += len(ids[chunk])
                if self.progress is not None:
                    self.progress(unit.shard_id, made, None, made)
        position = {source: i for i, source in enumerate(ids)}
        edit_order = {e.text: i for i, e in enumerate(self.edits)}
        rows.sort(key=lambda r: (position[r["source_id"]], edit_order[r["edit"]], r["variant"]))  # not by batch
        self._check_claim(unit)
        table = pa.Table.from_pylist(rows, schema=AUGMENT.schema())
        write_bytes(out_path(self.cfg.output, PARTS, f"{unit.shard_id}.parquet"), parquet_bytes(table))
        written = tar.close()
        accepted = sum(r["accepted"] for r in rows)
        reasons = ("prior_nll", "identity", "input_unreadable")
        entry = {"unit": unit.shard_id, "store_shard": unit.store_shard, "start": unit.start, "stop": unit.stop,
                 "source_sha256": unit.source_sha256, "sources": len(ids), "variants": len(rows),
                 "accepted": accepted, "rejected": {why: sum(r["rejected_because"] == why for r in rows)
                                                    for why in reasons},
                 "tar": tar_name(unit.shard_id) if written else None, "attempt": attempt,
                 "seconds": round(time.perf_counter() - start, 3), "host": socket.gethostname(),
                 "device": str(self.device), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                                                  / 1024, 1),
                 "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._check_claim(unit)
        write_bytes(ledger_file(self.cfg.output, unit.shard_id), json.dumps(entry, indent=2).encode())
        return {**entry, "rows": len(ids), "ok": len(ids), "errors": 0}

    def _check_claim(self, unit: Unit) -> None:
        if not holds_claim(self.claim.output, self.claim.token):
            raise StoreClaimLostError(f"the run this worker writes for no longer holds {self.claim.output}; unit "
                                      f"{unit.shard_id} was not written")

    def _unit_inputs(self, unit: Unit, ids: list[str]) -> dict[str, torch.Tensor]:
        """compose: the unit's decoded inputs, its input shard read once, held as uint8 (C x R x R bytes a row)."""
        if not any(e.kind == "compose" for e in self.edits):
            return {}
        found = self.store.read_inputs([unit.store_shard] * len(ids), ids, missing_ok=True)
        return {i: ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8) for i, x in found.items()}

    def _chunk(self, ids: list[str], ws: torch.Tensor, inputs: dict[str, torch.Tensor],
               tar: TarShardWriter) -> list[dict[str, Any]]:
        """Every edit's variants of a chunk of sources (each source rendered and embedded once)."""
        ws = ws.to(self.device)
        source_images = self.G.synthesis(ws, noise_mode=NOISE_MODE).float()
        source_embeddings = self.identity.embed(source_images) if self.identity is not None else None
        source_inputs = None
        if any(e.kind == "compose" for e in self.edits) and inputs:
            blank = torch.zeros_like(next(iter(inputs.values())))
            source_inputs = torch.stack([inputs.get(i, blank) for i in ids]).to(self.device).float() / 127.5 - 1
        rows = []
        K = self.cfg.variants
        for edit in self.edits:
            items = [(r, v) for r in range(len(ids)) for v in range(K)]
            if edit.kind == "compose":  # a source or donor whose input can no longer be read: its rows say so
                readable = [(r, v) for r, v in items if ids[r] in inputs and self._donor_readable(ids[r], edit, v)]
                rows += [self._unmade(ids[r], edit, v, "input_unreadable") for r, v in items if (r, v) not in readable]
                items = readable
            for first in range(0, len(items), self.batch_size):
                batch = items[first : first + self.batch_size]
                rows += self._variants(edit, batch, ids, ws, source_images, source_embeddings, source_inputs, tar)
        return rows

    def _donor_readable(self, source_id: str, edit: Edit, variant: int) -> bool:
        """Whether the donor this variant picks (from its own stream) still has a readable input."""
        if not self.compose_missing:
            return True
        stream = torch.Generator().manual_seed(variant_seed(self.cfg.seed, source_id, edit, variant))
        return self.compose_ids[pick_donors([source_id], self.compose_ids, [stream])[0]] not in self.compose_missing

    def _unmade(self, source_id: str, edit: Edit, variant: int, reason: str) -> dict[str, Any]:
        """The row of a variant that could not be made, saying why."""
        sample_id = f"{source_id}~{edit.text}~{variant}"
        return {"sample_id": sample_id, "source_id": source_id, "edit": edit.text,
                "params": json.dumps(edit.params, sort_keys=True), "variant": variant,
                "seed": variant_seed(self.cfg.seed, source_id, edit, variant), "accepted": False,
                "rejected_because": reason, "key": sample_key(sample_id), "shard": None, "w": None, "prior_nll": None,
                "identity_to_source": None, "mse_to_source": None, "generator_fingerprint": self.generator_fingerprint,
                "schema_version": AUGMENT.version}

    def _variants(self, edit: Edit, batch: list[tuple[int, int]], ids: list[str], ws: torch.Tensor,
                  source_images: torch.Tensor, source_embeddings: torch.Tensor | None,
                  source_inputs: torch.Tensor | None, tar: TarShardWriter) -> list[dict[str, Any]]:
        index = torch.tensor([r for r, _ in batch], device=self.device)
        source_ids = [ids[r] for r, _ in batch]
        seeds = [variant_seed(self.cfg.seed, ids[r], edit, v) for r, v in batch]
        streams = [torch.Generator().manual_seed(s) for s in seeds]
        src = ws[index]
        extra: list[dict[str, Any]] = [{} for _ in batch]
        K = self.cfg.variants
        if edit.kind == "jitter":
            new_ws = jitter(self.prior, src, edit.sigma, streams)
            images = self.G.synthesis(new_ws, noise_mode=NOISE_MODE).float()
        elif edit.kind == "mix":
            picks = pick_donors(source_ids, self.reference.donor_ids, streams)
            new_ws = mix(src, self.donor_ws[picks], edit.layers)
            images = self.G.synthesis(new_ws, noise_mode=NOISE_MODE).float()
            extra = [{"donor_id": self.reference.donor_ids[p]} for p in picks]
        elif edit.kind == "attribute":
            direction = self.directions[edit.text]
            alphas = torch.tensor([edit.alpha * (v + 1) / K for _, v in batch], device=self.device)
            images = self.G.synthesis_from_styles(edited_styles(self.G, src, direction, alphas),
                                                  noise_mode=NOISE_MODE).float()
            new_ws = src + alphas.view(-1, 1, 1) * direction.w.to(self.device)
            extra = [{"alpha": float(a)} for a in alphas.tolist()]
        else:
            picks = pick_donors(source_ids, self.compose_ids, streams)
            masks = torch.cat([part_masks(1, self.G.img_resolution, generator=g, kinds=[edit.part])[0]
                               for g in streams]).to(self.device)
            _, new_ws, images = compose(self.E, self.G, self.compose_inputs[picks].to(self.device),
                                        source_inputs[index], masks)
            extra = [{"donor_id": self.compose_ids[p], "mask_fraction": round(float(m.mean()), 4)}
                     for p, m in zip(picks, masks)]
        reference_column = "w_encoded" if edit.kind == "compose" and "w_encoded" in self.reference.nll_cut \
            else self.cfg.column
        cut = self.reference.nll_cut[reference_column]
        nll = self.prior.nll(new_ws).float().cpu().numpy()
        mse = (images - source_images[index]).square().mean(dim=(1, 2, 3)).cpu().numpy()
        identity = [None] * len(batch)
        if source_embeddings is not None:
            identity = (self.identity.embed(images) * source_embeddings[index]).sum(1).cpu().numpy().tolist()
        pixels = to_uint8(images)
        flat = new_ws.flatten(1).float().cpu().numpy()
        rows = []
        for k, (r, v) in enumerate(batch):
            reason = None
            if not nll[k] <= cut:
                reason = "prior_nll"
            elif self.cfg.min_identity is not None and identity[k] is not None and identity[k] < self.cfg.min_identity:
                reason = "identity"
            sample_id = f"{ids[r]}~{edit.text}~{v}"
            key = sample_key(sample_id)
            params = json.dumps({**edit.params, **extra[k]}, sort_keys=True)
            row = {"sample_id": sample_id, "source_id": ids[r], "edit": edit.text, "params": params, "variant": v,
                   "seed": seeds[k], "accepted": reason is None, "rejected_because": reason, "key": key, "shard": None,
                   "w": flat[k], "prior_nll": float(nll[k]),
                   "identity_to_source": None if identity[k] is None else float(identity[k]),
                   "mse_to_source": float(mse[k]), "generator_fingerprint": self.generator_fingerprint,
                   "schema_version": AUGMENT.version}
            if reason is None:
                provenance = {"sample_id": sample_id, "source_id": ids[r], "edit": edit.text,
                              "params": json.loads(params), "variant": v, "seed": seeds[k],
                              "prior_nll": row["prior_nll"], "identity_to_source": row["identity_to_source"],
                              "generator_fingerprint": self.generator_fingerprint}
                tar.add(key, {"png": png_bytes(pixels[k]), "json": json.dumps(provenance).encode()})
                row["shard"] = f"{IMAGES}/{tar.shard_name}.tar"
            rows.append(row)
        return rows


def sample_key(sample_id: str) -> str:
    """A variant's key in the tar shards: its id as a file name without dots (webdataset splits a member's
    name at its first dot), and a hash of the whole id, so two ids never share a key."""
    stem = safe_file_name(sample_id.replace(".", "_"))[:100]
    return f"{stem}-{hashlib.sha256(sample_id.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"

"""Processing one input shard end to end: read, decode, run the stages in batches, write Parquet.

`ShardProcessor` is a plain class: `__init__` loads every model once, `process(shard)` does one
unit of work. Ray makes it an actor at the edge (pipeline/runtime/ray_runner.py); the in-process
runner (pipeline/runtime/local_runner.py) calls it directly. Inputs are read ahead with bounded
concurrency and decoded in a thread pool ahead of the batches (Pillow and torch release the GIL), so
the CPU reads and decodes the next images while the accelerator works.

Isolation: any exception while reading or decoding one input becomes that input's error row; a
batch whose stages fail is bisected until the failing inputs are alone, and only they become error
rows, unless the failure is not the inputs' (out of memory, a CUDA error, or the same error in both
halves of the batch): then the shard fails, to be retried on a fresh actor, rather than writing
error rows no rerun would retry. A row whose values cannot be stored (text that is not UTF-8) is
that row's error. A shard fails only for reasons that are not its inputs'.

Precision: `--precision auto` is resolved here, for this actor's device, as the store recorded it for
this kind of device (pipeline/precision.py); the entry and the metadata say which it ran.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import socket
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import torch

from pipeline.concurrency import bounded_map
from pipeline.data.decode import Decoded, DecodeSettings, decode_mask, input_id
from pipeline.data.sources import InputRecord, ShardSpec, read_shard
from pipeline.errors import LatentmillError
from pipeline.models.fingerprint import fingerprint
from pipeline.model_set import load_model_set
from pipeline.models.pretrained_encoder import INPUT_SIZE, PretrainedEncoder
from pipeline.precision import device_kind, resolve_precision
from pipeline.priors.load import exact_latent, prior_kind
from pipeline.invert.batch_size import (MAX_AUTO_BATCH, actor_memory_bytes, check_batch, largest_batch,
                                          refine_bytes_per_image)
from pipeline.invert.config import InvertConfig
from pipeline.settings import narrow
from pipeline.stages.chain import NOISE_MODE, InversionModels, invert_batch, latent_columns
from pipeline.stages.inversion_settings import InversionSettings
from pipeline.store import layout
from pipeline.store.parquet_files import open_parquet
from pipeline.store.schema import SCHEMA_VERSION, latents_schema
from pipeline.store.writer import ShardWriter


def load_models(config: InvertConfig, device: torch.device) -> InversionModels:
    """Every model the configured stages need, checked against the generator; errors name the setting."""
    return load_model_set(config.generator, device=device, **dataclasses.asdict(config.model_needs()))


def encoder_description(E: Any, iterations: int) -> dict[str, Any]:
    """What a store records of its encoder: its kind, its input preprocessing and (ReStyle) iterations."""
    if E is None:
        return {}
    if isinstance(E, PretrainedEncoder):
        return {"encoder_kind": f"{E.family}:{E.encoder_type}",
                "encoder_input": f"{INPUT_SIZE} px RGB in [-1, 1] (bilinear, antialiased, from the decoded image); "
                                 "unknown pixels set to 0",
                "encoder_iterations": iterations if E.iterative else None}
    return {"encoder_kind": "latentmill", "encoder_input": "the decoded image and its mask of known pixels",
            "encoder_iterations": None}


class BatchSizeError(LatentmillError, ValueError):
    """An explicit --batch-size whose refinement would not fit the actor's memory."""


class ShardFailure(RuntimeError):
    """A failure that is not the inputs' (out of memory, a CUDA error, every part of a batch failing
    alike): the shard fails, to be retried on a fresh actor."""


STOP, REPLACE, RETRY = "stop", "replace", "retry"


def after_failure(exc: BaseException) -> str:
    """What either runner does after a shard's processor raised `exc` (the original exception, which Ray
    hands back as a RayTaskError's cause): STOP the run (its claim on the store is lost: nothing more
    may be written), REPLACE the processor before retrying (its state is suspect), or RETRY the shard."""
    from pipeline.store.store_lock import StoreClaimLostError

    if isinstance(exc, StoreClaimLostError):
        return STOP
    if isinstance(exc, ShardFailure):
        return REPLACE
    return RETRY


def is_infrastructure_failure(exc: BaseException) -> bool:
    """Out of memory or a broken accelerator: nothing to do with the inputs being processed."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(mark in text for mark in (
        "out of memory", "CUDA error", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error", "NCCL error",
        "device-side assert"))


def _same_failure(a: BaseException, b: BaseException) -> bool:
    return type(a) is type(b) and str(a) == str(b)


def storable(text: str | None) -> str | None:
    """Text Arrow can store: bytes that are not UTF-8 (in an exception's message, say) as \\xNN."""
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class _Row:
    row_id: str  # the input's id, or IMAGE#faceK with --faces all
    record: InputRecord
    decoded: Decoded | None
    mask: np.ndarray | None


TRANSIENT_REASONS = ("read timeout", "unreadable", "missing")  # what a later read may not meet again


def is_transient(error: str | None) -> bool:
    """An error row worth another try: the reading failed at the time (not the content)."""
    return error is not None and error.split(":", 1)[0] in TRANSIENT_REASONS


def retried_inputs(earlier: pa.Table) -> set[str]:
    """The inputs whose rows --retry-errors redoes: those with a transient error."""
    ids, errors = earlier.column("image_id").to_pylist(), earlier.column("error").to_pylist()
    return {input_id(i) for i, e in zip(ids, errors) if is_transient(e)}


def merge_retried(earlier: pa.Table, redone: pa.Table) -> pa.Table:
    """The shard's rows after a retry: each retried input's new rows where its old rows stood, every other
    row as it was."""
    redo = retried_inputs(earlier)
    new_rows: dict[str, list[int]] = {}
    for j, row_id in enumerate(redone.column("image_id").to_pylist()):
        new_rows.setdefault(input_id(row_id), []).append(earlier.num_rows + j)
    order: list[int] = []
    for i, row_id in enumerate(earlier.column("image_id").to_pylist()):
        key = input_id(row_id)
        if key not in redo:
            order.append(i)
        elif key in new_rows:
            order.extend(new_rows.pop(key))
    order.extend(j for js in new_rows.values() for j in js)
    return pa.concat_tables([earlier, redone]).take(pa.array(order, type=pa.int64()))


def _release(rows: list[_Row], index: list[int]) -> None:
    """Rows whose batch has run keep their ids and columns only: a shard's memory is its batches in
    flight, not its pixels."""
    for i in index:
        rows[i].decoded = replace(rows[i].decoded, image=None, valid=None)
        rows[i].mask = None


# (shard, rows finished in it so far, stage now, rows of those that are ok)
ProgressReport = Callable[[str, int, "str | None", int], None]
STEP_REPORT_S = 1.0


class ShardProcessor:
    def __init__(self, config: InvertConfig, writer: ShardWriter, device: str | None = None,
                 models: InversionModels | None = None, progress: ProgressReport | None = None,
                 precisions: dict[str, str] | None = None, recipe_models: dict[str, str | None] | None = None) -> None:
        """writer: writes finished shards for the run holding the store. models: the driver's loaded (and
        checked) models, shipped once through Ray's object store, so an actor never parses a checkpoint
        again; loaded from the config's URIs when absent. progress: told the rows finished in the current
        shard after each batch, and each stage. precisions: the store's precision by kind of device.
        recipe_models: the recipe's model fingerprints (recorded in each shard's metadata)."""
        start = time.perf_counter()
        self.node: str | None = None  # the cluster node this runs on, set by the distributor that placed it
        self.config = config
        self.writer = writer
        self.progress = progress
        wants_gpu = config.num_gpus > 0 and torch.cuda.is_available()
        self.device = torch.device(device or ("cuda" if wants_gpu else "cpu"))
        self.device_note = (f"--num-gpus {config.num_gpus:g} reserved a GPU share for each actor, but torch "
                            f"{torch.__version__} sees no CUDA device there: the actors run on CPUs"
                            if config.num_gpus > 0 and self.device.type == "cpu" else None)
        self.models = models.to(self.device) if models is not None else load_models(config, self.device)
        self.device_kind = device_kind(self.device)
        self.precision, self.precision_why = resolve_precision(config.precision, self.device, precisions)
        G = self.models.G
        self.generator_fingerprint = fingerprint(G)
        metadata = {
            "generator": config.generator, "generator_fingerprint": self.generator_fingerprint,
            "encoder": config.encoder, "encoder_fingerprint": fingerprint(self.models.E) if self.models.E else None,
            **encoder_description(self.models.E, config.encoder_iterations),
            "prior": config.prior, "prior_generator_fingerprint": self.generator_fingerprint if config.prior else None,
            "prior_kind": prior_kind(self.models.prior) if self.models.prior is not None else None,
            "prior_fingerprint": fingerprint(self.models.prior) if self.models.prior is not None else None,
            "z_space": exact[0] if (exact := exact_latent(G, self.models.prior)) else None,
            "num_ws": G.num_ws, "w_dim": G.w_dim, "img_resolution": G.img_resolution, "img_channels": G.img_channels,
            "noise_mode": NOISE_MODE, "perceptual_metric": self.models.names["perceptual"],
            "identity_model": self.models.names["identity"], "settings": config.to_dict(),
            "model_fingerprints": recipe_models if recipe_models is not None else self.models.fingerprints(),
            "recipe_digest": writer.recipe, "precision": self.precision, "device_kind": self.device_kind,
        }
        self.stage_settings = replace(narrow(config, InversionSettings), precision=self.precision)
        self.schema = latents_schema(G.num_ws, G.w_dim, latent_dtype=config.latent_dtype, metadata=metadata,
                                     latent_columns=latent_columns(self.models, self.stage_settings))
        self.decoding = narrow(config, DecodeSettings)
        self.aligner = self.decoding.aligner()
        self.batch_size, self.batch_note, self.problem = self._batch_size()
        self.startup_seconds = time.perf_counter() - start

    def _batch_size(self) -> tuple[int, str, BatchSizeError | None]:
        """(the batch size, a sentence on how it was chosen, a problem that stops this processor)."""
        explicit = self.config.batch_size if self.config.batch_size != "auto" else None
        if "refine" not in self.config.stages:  # no backward pass: memory is not the limit
            return explicit or MAX_AUTO_BATCH.get(self.device.type, 16), "", None
        per_image = refine_bytes_per_image(self.models, self.precision)
        memory = actor_memory_bytes(self.device, num_gpus=self.config.num_gpus,
                                    cpus_per_actor=self.config.cpus_per_actor)
        if explicit is not None:
            problem = check_batch(explicit, per_image, memory)
            return explicit, "", BatchSizeError(problem) if problem else None
        batch = largest_batch(per_image, memory, self.device)
        return batch, (f"--batch-size auto: {batch} on {self.device.type} (refinement needs about "
                       f"{per_image / 2**20:,.0f} MiB per image at {self.models.G.img_resolution} px; this actor "
                       f"may use {memory / 2**30:.1f} GiB)"), None

    def ready(self) -> dict[str, Any]:
        """How this processor started: seconds, batch size and how it was chosen, its kind of device and
        precision; raises what stops it (e.g. an explicit --batch-size that does not fit), so the driver
        reports it once, clearly."""
        if self.problem is not None:
            raise self.problem
        return {"seconds": self.startup_seconds, "batch_size": self.batch_size, "note": self.batch_note,
                "device_kind": self.device_kind, "precision": self.precision, "precision_why": self.precision_why,
                "node": self.node, "device_note": self.device_note}

    def _decode(self, record: InputRecord) -> list[_Row]:
        """One input's rows (one, or one per face with --faces all); anything decoding raises (a Pillow
        plugin's NotImplementedError, a MemoryError, ...) is that input's error row, never the shard's failure."""
        try:
            return self._decode_unguarded(record)
        except Exception as exc:  # the per-input boundary: see the module docstring
            return [_Row(record.image_id, record, Decoded(None, f"decoder failed: {type(exc).__name__}: {exc}"), None)]

    def _decode_unguarded(self, record: InputRecord) -> list[_Row]:
        if record.error is not None:
            return [_Row(record.image_id, record, None, None)]
        G = self.models.G
        decoded = self.decoding.decode_rows(record.data, resolution=G.img_resolution, channels=G.img_channels,
                                            aligner=self.aligner)
        given = None
        if decoded[0].ok and record.mask is not None:
            given = decode_mask(record.mask, resolution=G.img_resolution, policy=self.config.resize_policy)
            if given is None:
                return [_Row(record.image_id, record,
                             Decoded(None, "corrupt mask: the .mask.png sidecar cannot be decoded"), None)]
        rows = []
        for row_id, one in zip(self.decoding.row_ids(record.image_id, decoded), decoded):
            mask = one.valid
            if given is not None:
                mask = given if mask is None else mask * given
            rows.append(_Row(row_id, record, one, mask))
        return rows

    def process(self, spec: ShardSpec, attempt: int = 1) -> dict[str, Any]:
        """Run one shard and write its Parquet file and manifest entry; returns the manifest entry."""
        if self.problem is not None:
            raise self.problem
        start = time.perf_counter()
        self._shard, self._finished, self._ok, self._compute_seconds = spec.shard_id, 0, 0, 0.0
        self._step_reported = -STEP_REPORT_S
        self._report("decode")
        records = read_shard(spec, timeout=self.config.read_timeout, prefetch=self.config.prefetch,
                             on_duplicate_id=self.config.on_duplicate_id,
                             max_input_bytes=self.config.input_byte_limit)
        earlier = self._earlier_rows(spec) if spec.options.get("retry_errors") else None
        if earlier is not None:
            redo = retried_inputs(earlier)
            records = (r for r in records if r.image_id in redo)
        columns: dict[str, list] = {f.name: [] for f in self.schema}
        rows: list[_Row] = []
        pending: list[int] = []  # decoded, valid rows waiting for a full batch
        threads = self.config.decode_threads
        # inputs are read and decoded a bounded window ahead while the batches below run
        for input_rows in bounded_map(self._decode, records, workers=threads, window=threads + self.batch_size,
                                      name="latentmill-decode"):
            for row in input_rows:
                row.record.data = row.record.mask = None  # decoded: the bytes are not needed again
                rows.append(row)
                for values in columns.values():
                    values.append(None)
                if self._fill_row(len(rows) - 1, row, columns):
                    pending.append(len(rows) - 1)
                else:
                    self._finished += 1  # an error row is done once decoded
                if len(pending) == self.batch_size:
                    self._finish_batch(pending, rows, columns)
                    self._report(None)
                    pending = []
        if pending:
            self._finish_batch(pending, rows, columns)
        self._finished = len(rows)
        self._report("write")

        columns["shard"] = [spec.shard_id] * len(rows)
        columns["model_fingerprint"] = [self.generator_fingerprint] * len(rows)
        columns["schema_version"] = [SCHEMA_VERSION] * len(rows)
        table = self._table(columns)
        if earlier is not None:
            table = merge_retried(earlier, table)
        status, errors = table.column("status").to_pylist(), table.column("error").to_pylist()
        ok = sum(s == "ok" for s in status)
        reasons: dict[str, int] = {}
        for s, error in zip(status, errors):
            if s != "ok":
                reason = (error or "unknown").split(":", 1)[0]
                reasons[reason] = reasons.get(reason, 0) + 1
        entry = {"shard": spec.shard_id, "rows": table.num_rows, "ok": ok, "errors": table.num_rows - ok,
                 "error_reasons": reasons, "seconds": round(time.perf_counter() - start, 3), "attempt": attempt,
                 "host": socket.gethostname(), "node": self.node, "device": str(self.device),
                 "device_kind": self.device_kind, "precision": self.precision,
                 "generator_fingerprint": self.generator_fingerprint,
                 "compute_seconds": round(self._compute_seconds, 3),  # in the stages: busy = this / seconds
                 "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                 "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        return self.writer.write(spec.shard_id, table, entry)

    def _finish_batch(self, index: list[int], rows: list[_Row], columns: dict[str, list]) -> None:
        """Run a batch's rows, count them finished (and which are ok), and let go of their pixels."""
        self._run_batch(index, rows, columns)
        self._finished += len(index)
        self._ok += sum(columns["status"][i] == "ok" for i in index)
        _release(rows, index)

    def _earlier_rows(self, spec: ShardSpec) -> pa.Table:
        """The rows an earlier run wrote for this shard (--retry-errors redoes some of them)."""
        with open_parquet(layout.shard_file(self.writer.store, spec.shard_id)) as parquet:
            return parquet.read().cast(self.schema)

    def _report(self, stage: str | None) -> None:
        """Tell the driver's bar the rows finished in this shard (and how many ok) and the stage running;
        refinement steps at most one every STEP_REPORT_S."""
        if self.progress is None:
            return
        if stage is not None and stage.startswith("refine step"):
            now = time.monotonic()
            if now - self._step_reported < STEP_REPORT_S:
                return
            self._step_reported = now
        self.progress(self._shard, self._finished, stage, self._ok)

    @staticmethod
    def _fill_row(i: int, row: _Row, columns: dict[str, list]) -> bool:
        """The identifying and error columns of row i; True if the row goes on to the stages."""
        columns["image_id"][i] = storable(row.row_id)
        columns["source_uri"][i] = storable(row.record.source_uri)
        face = row.decoded.face if row.decoded is not None else None
        if face is not None:
            columns["face_index"][i], columns["face_confidence"][i] = face.index, face.confidence
            columns["face_box"][i] = list(face.box)
            columns["face_landmarks"][i] = [v for point in face.landmarks for v in point]
        columns["status"][i] = "ok"
        if row.record.meta is not None:
            columns["meta"][i] = json.dumps(row.record.meta)
        error = row.record.error or (row.decoded.error if row.decoded is not None else None)
        if error is not None:
            columns["status"][i], columns["error"][i] = "error", storable(error)
        if row.decoded is not None and row.decoded.original_size is not None:
            columns["width"][i], columns["height"][i] = row.decoded.original_size
        return error is None

    def _attempt(self, index: list[int], rows: list[_Row], columns: dict[str, list]) -> Exception | None:
        """Run the stages on rows `index` and fill their columns; the exception instead, if they fail."""
        t0 = time.perf_counter()
        images = torch.from_numpy(np.stack([rows[i].decoded.image for i in index]))
        masks = None
        if any(rows[i].mask is not None for i in index):
            full = np.ones((1, *images.shape[2:]), dtype=np.float32)
            masks = torch.from_numpy(np.stack([rows[i].mask if rows[i].mask is not None else full for i in index]))
        ids = [rows[i].row_id for i in index]
        try:
            out = invert_batch(self.models, self.stage_settings, images, masks, ids, on_stage=self._report)
        except Exception as exc:  # NaNs, out of memory, a model error: sorted out by the caller
            return exc
        self._compute_seconds += time.perf_counter() - t0
        seconds = (time.perf_counter() - t0) / len(index)
        for key, values in out.items():
            if key in columns:
                for j, i in enumerate(index):
                    columns[key][i] = values[j]
        for j, i in enumerate(index):
            columns["seconds"][i] = seconds
            columns["known_fraction"][i] = float(masks[j].mean()) if masks is not None else 1.0
            if not np.isfinite(out["mse"][j]):
                columns["status"][i], columns["error"][i] = "error", "non-finite: the reconstruction has NaN or inf"
        return None

    def _run_batch(self, index: list[int], rows: list[_Row], columns: dict[str, list]) -> None:
        """A batch's rows; a failing batch is bisected to the inputs that cause it (results do not depend
        on batching, so halves give the same rows), unless the failure is not theirs (ShardFailure)."""
        error = self._attempt(index, rows, columns)
        if error is None:
            return
        if is_infrastructure_failure(error):
            raise ShardFailure(f"{type(error).__name__}: {error}") from error
        if len(index) == 1:
            self._settle(index, error, rows, columns)
            return
        half = len(index) // 2
        parts = [(part, self._attempt(part, rows, columns)) for part in (index[:half], index[half:])]
        if all(e is not None and _same_failure(e, error) for _, e in parts):
            raise ShardFailure(f"every part of a batch failed alike, so not because of its inputs: "
                               f"{type(error).__name__}: {error}") from error
        for part, part_error in parts:
            if part_error is not None:
                self._settle(part, part_error, rows, columns)

    def _settle(self, index: list[int], error: Exception, rows: list[_Row], columns: dict[str, list]) -> None:
        """Rows `index` failed with `error`: bisect until each failing input is alone, then it is an error row."""
        if is_infrastructure_failure(error):
            raise ShardFailure(f"{type(error).__name__}: {error}") from error
        if len(index) == 1:
            columns["status"][index[0]] = "error"
            columns["error"][index[0]] = storable(f"stage failed: {type(error).__name__}: {error}")
            return
        half = len(index) // 2
        for part in (index[:half], index[half:]):
            part_error = self._attempt(part, rows, columns)
            if part_error is not None:
                self._settle(part, part_error, rows, columns)

    def _table(self, columns: dict[str, list]) -> pa.Table:
        """The shard's Arrow table; a row whose values cannot be stored becomes an error row saying why."""
        try:
            return pa.table({f.name: self._arrow(f, columns[f.name]) for f in self.schema}, schema=self.schema)
        except (pa.ArrowException, ValueError, TypeError, UnicodeError) as exc:
            table_error = exc
        fixed = {name: list(values) for name, values in columns.items()}
        for i in range(len(fixed["image_id"])):
            try:
                pa.table({f.name: self._arrow(f, [columns[f.name][i]]) for f in self.schema}, schema=self.schema)
            except (pa.ArrowException, ValueError, TypeError, UnicodeError) as exc:
                for f in self.schema:
                    if f.name not in ("image_id", "source_uri", "shard", "model_fingerprint", "schema_version"):
                        fixed[f.name][i] = None
                fixed["image_id"][i] = storable(str(columns["image_id"][i]))
                fixed["source_uri"][i] = storable(str(columns["source_uri"][i]))
                fixed["status"][i] = "error"
                fixed["error"][i] = storable(f"unstorable: {type(exc).__name__}: {exc}")
        try:
            return pa.table({f.name: self._arrow(f, fixed[f.name]) for f in self.schema}, schema=self.schema)
        except (pa.ArrowException, ValueError, TypeError, UnicodeError):
            raise table_error from None

    def _arrow(self, field: pa.Field, values: list) -> pa.Array:
        if pa.types.is_fixed_size_list(field.type):
            dtype = np.float16 if field.type.value_type == pa.float16() else np.float32
            return pa.array([None if v is None else np.asarray(v, dtype=dtype) for v in values], type=field.type)
        return pa.array(values, type=field.type)

"""Rebalancing a store's groups by latent regression: new realistic samples for under-represented groups.

1. Groups for the store's ok rows: labels joined from CSV/Parquet, a key of the inputs' JSON
   sidecars, a StyleSpace attribute threshold, or k-means clusters of the whitened latents.
2. Target sizes from the target distribution (uniform or given); no row is ever removed.
3. Candidates for each group short of its target: composition (a part of a member pasted onto
   another image of the store, through E and G) or sampling near the group's latents.
4. Quality filter: prior NLL within the --nll-percentile of the store's own rows (for compose, of
   its w_encoded: E's outputs for collages are compared with E's outputs for real images), and
   identity cosine to the sources at least --min-identity (when the store has an identity model).
Output (--output): images/rebalance-XXXXX.tar (PNG + JSON provenance per accepted sample),
samples.parquet (every candidate, schema `samples` v1), summary.json (counts before / target /
after), preview.png; the summary and preview are also copied to STORE/rebalance/ for the report.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from pipeline.progress import progress_bar
from pipeline.sampling import stream_seed

from pipeline.data.webdataset import TarShardWriter
from pipeline.devices import resolve_device
from pipeline.imaging import grid_image, png_bytes, to_uint8
from pipeline.priors.latent_prior import in_chunks
from pipeline.priors.load import Prior
from pipeline.heap import release_free_heap
from pipeline.stages.chain import NOISE_MODE
from pipeline.curation.rebalance import (compose, group_gaussian, kmeans, masked_l1, nll_cut, part_masks, sample_near,
                                      target_counts)
from pipeline.curation.rebalance_settings import RebalanceConfig
from pipeline.store import layout
from pipeline.store.file_names import safe_file_name
from pipeline.store.parquet_files import parquet_bytes
from pipeline.store.samples_schema import SAMPLES
from pipeline.store.writer import StoreWriter
from pipeline.uris import read_bytes, write_bytes

UNLABELED = "(unlabeled)"
FLAGGED = "(flagged)"  # --exclude-flagged: a row curate flagged, in no group
GROUPS_FILE = "groups.parquet"  # OUTPUT/groups.parquet: each ok row of the store and its group


def parse_target(text: str) -> dict[str, float] | None:
    if text == "uniform":
        return None
    try:
        pairs = [item.rsplit("=", 1) for item in text.split(",") if item.strip()]
        return {name.strip(): float(share) for name, share in pairs}
    except ValueError:
        raise ValueError(f"--target must be 'uniform' or 'group=share,...', got {text!r}") from None


BATCH_ROWS = 8192
KMEANS_SAMPLE_ROWS = 100_000  # k-means is fitted on a uniform sample of at most this many ok rows ...
KMEANS_SAMPLE_BYTES = 1 << 29  # ... and of at most this many bytes of features (all of a smaller store)
POOL_ROWS_PER_GROUP = 50_000  # the members a group's candidates come from: a uniform sample of a larger group,
LATENT_POOL_BYTES = 1 << 27  # ... of at most this many bytes of latents (each held twice: as is and whitened)
INPUT_POOL_BYTES = 1 << 30  # ... and, where their decoded inputs are held (compose, identity), of inputs

Labeller = Callable[[int, pa.RecordBatch, torch.Tensor], np.ndarray]  # (first row, batch, its ws) -> group names


def pool_rows(G: Any, with_inputs: bool) -> int:
    """How many members of a short group candidates are drawn from (all of a smaller group)."""
    rows = min(POOL_ROWS_PER_GROUP, LATENT_POOL_BYTES // (G.num_ws * G.w_dim * 4))
    if with_inputs:
        rows = min(rows, INPUT_POOL_BYTES // (G.img_channels * G.img_resolution**2 * 4))  # float32 [C, R, R]
    return max(1, rows)


def _parse_groups(spec: str) -> tuple[str, str]:
    kind, _, rest = spec.partition(":")
    if kind == "labels":
        column, _, uri = rest.partition(":")
        if not column or not uri:
            raise ValueError("--groups labels:COLUMN:URI (a CSV or Parquet file with image_id and COLUMN)")
    elif kind == "meta":
        if not rest:
            raise ValueError("--groups meta:KEY (a key of the inputs' JSON sidecars)")
    elif kind == "attribute":
        try:
            _channels(rest)
        except (ValueError, IndexError):
            raise ValueError("--groups attribute:LAYER/CHANNEL[,LAYER/CHANNEL...]:THRESHOLD, e.g. "
                             "attribute:b16.conv0/42:1.0 (channels from `latentmill channels`)") from None
    elif kind == "kmeans":
        try:
            int(rest)
        except ValueError:
            raise ValueError("--groups kmeans:K") from None
    else:
        raise ValueError(f"--groups {spec!r}: use labels:COLUMN:URI, meta:KEY, attribute:LAYER/CH:THRESHOLD or kmeans:K")
    return kind, rest


def _channels(rest: str) -> tuple[list[Any], float]:
    from pipeline.stages.stylespace import Channel

    channels_text, _, threshold = rest.rpartition(":")
    channels = [Channel(c.rsplit("/", 1)[0], int(c.rsplit("/", 1)[1]), 0.0, 1.0) for c in channels_text.split(",")]
    return channels, float(threshold)


def group_labeller(spec: str, store: StoreWriter, column: str, rows: int, G: Any, prior: Prior,
                   seed: int, device: torch.device) -> Labeller:
    """What names each ok row's group, batch by batch. Labels and sidecar keys need nothing more; an
    attribute needs its channels' mean and std over the store, and k-means its centres: one streamed
    pass over the latents first (k-means fitted on a uniform sample of the whitened latents)."""
    kind, rest = _parse_groups(spec)
    if kind == "labels":
        label_column, _, uri = rest.partition(":")
        data = read_bytes(uri, setting="--groups")
        table = pd.read_parquet(io.BytesIO(data)) if uri.endswith(".parquet") else pd.read_csv(io.BytesIO(data))
        if "image_id" not in table or label_column not in table:
            raise ValueError(f"--groups {uri}: needs columns image_id and {label_column}; it has {list(table.columns)}")
        labels = dict(zip(table["image_id"].astype(str), table[label_column].astype(str)))
        return lambda _, batch, __: np.array([labels.get(i, UNLABELED) for i in batch.column("image_id").to_pylist()],
                                             dtype=object)
    if kind == "meta":
        def from_meta(_: int, batch: pa.RecordBatch, __: torch.Tensor) -> np.ndarray:
            metas = batch.column("meta").to_pylist() if "meta" in batch.schema.names else [None] * batch.num_rows
            values = [json.loads(m).get(rest) if isinstance(m, str) else None for m in metas]
            return np.array([UNLABELED if v is None else str(v) for v in values], dtype=object)
        return from_meta
    if kind == "attribute":
        channels, cut = _channels(rest)
        with torch.no_grad():
            known = G.styles(G.w_avg.reshape(1, 1, -1).expand(1, G.num_ws, -1))
        unknown = [c.layer for c in channels if c.layer not in known]
        if unknown:
            raise ValueError(f"--groups: unknown StyleSpace layers {unknown}; known: {sorted(known)}")
        total = torch.zeros(len(channels), dtype=torch.float64)
        squares = torch.zeros(len(channels), dtype=torch.float64)

        def values(ws: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                styles = G.styles(ws)
            return torch.stack([styles[c.layer][:, c.channel].double().cpu() for c in channels], dim=1)

        for _, batch in store.ok_batches(column, batch_size=BATCH_ROWS):
            v = values(torch.from_numpy(store.batch_latents(batch, column)).to(device))
            total += v.sum(0)
            squares += v.square().sum(0)
        mean = total / rows
        std = ((squares - rows * mean.square()) / max(rows - 1, 1)).clamp_min(0).sqrt().clamp_min(1e-8)
        signs = torch.tensor([c.sign for c in channels], dtype=torch.float64)

        def by_attribute(_: int, __: pa.RecordBatch, ws: torch.Tensor) -> np.ndarray:
            scores = ((values(ws) - mean) / std * signs).mean(1).numpy()
            return np.where(scores >= cut, "attribute", "rest").astype(object)
        return by_attribute
    k = int(rest)
    if not 1 <= k <= rows:
        raise ValueError(f"k must be between 1 and the number of rows ({rows}), got {k}")
    sample_rows = min(KMEANS_SAMPLE_ROWS, max(k, KMEANS_SAMPLE_BYTES // (G.num_ws * G.w_dim * 4)))
    sample = np.sort(np.random.default_rng(seed).choice(rows, size=sample_rows, replace=False)) \
        if rows > sample_rows else None

    def features_of(ws: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return in_chunks(prior.whiten, ws).flatten(1).float()

    picked = []
    for offset, batch in store.ok_batches(column, batch_size=BATCH_ROWS, rows=sample):
        ws = torch.from_numpy(store.batch_latents(batch, column))
        if sample is not None:
            ws = ws[torch.from_numpy(sample[np.searchsorted(sample, offset) :
                                            np.searchsorted(sample, offset + batch.num_rows)] - offset)]
        picked.append(features_of(ws.to(device)))
    labels, centers = kmeans(torch.cat(picked), k, seed=seed)
    if sample is None:  # the whole store was fitted: its labels are the groups
        return lambda offset, batch, _: np.array([f"cluster-{int(c)}" for c in labels[offset : offset + batch.num_rows]],
                                                 dtype=object)

    def nearest(_: int, __: pa.RecordBatch, ws: torch.Tensor) -> np.ndarray:
        found = torch.cdist(features_of(ws), centers).argmin(dim=1).cpu()
        return np.array([f"cluster-{int(c)}" for c in found], dtype=object)
    return nearest


@dataclass
class GroupedRows:
    """What the streamed pass keeps of each ok row, in store order: a few numbers a row."""

    ids: pa.ChunkedArray
    shards: pa.ChunkedArray
    codes: np.ndarray  # int32 [rows]: each row's group, an index into `names`
    names: list[str]
    nll: dict[str, np.ndarray]  # latent column -> each row's prior NLL of it (the filter's reference)
    complete: dict[str, bool]  # latent column -> present for every ok row

    def __len__(self) -> int:
        return len(self.codes)

    def rows_of(self, name: str) -> np.ndarray:
        """The store-order indices of a group's rows."""
        return np.flatnonzero(self.codes == self.names.index(name)) if name in self.names else np.zeros(0, np.int64)

    def group_names(self) -> pd.Series:
        """Each row's group name (one shared string object per group, not per row)."""
        return pd.Series(np.asarray(self.names, dtype=object)[self.codes])


def group_rows(store: StoreWriter, cfg: RebalanceConfig, labeller: Labeller, prior: Prior,
               device: torch.device) -> GroupedRows:
    """One pass over the ok rows: ids, shards, groups and the prior NLL of the latents the filter may use;
    with --exclude-flagged, the rows curate flagged are in no group (FLAGGED)."""
    flagged = store.flagged_ids() if cfg.exclude_flagged else set()
    optional = ["w_encoded"] if cfg.method == "compose" and cfg.column != "w_encoded" else []
    ids, shards, codes, nll = [], [], [], {c: [] for c in [cfg.column, *optional]}
    names: dict[str, int] = {}
    complete = {c: True for c in nll}
    for offset, batch in store.ok_batches(cfg.column, ["image_id", "shard", "meta", *optional], batch_size=BATCH_ROWS):
        ws = torch.from_numpy(store.batch_latents(batch, cfg.column)).to(device)
        ids.append(batch.column("image_id"))
        shards.append(batch.column("shard"))
        labels = labeller(offset, batch, ws).astype(str)
        if flagged:  # a set lookup per row: linear in the batch, whatever the number flagged
            labels = np.where(np.fromiter((i in flagged for i in batch.column("image_id").to_pylist()), bool,
                                          batch.num_rows), FLAGGED, labels)
        distinct, inverse = np.unique(labels, return_inverse=True)
        code_of = np.array([names.setdefault(str(name), len(names)) for name in distinct], dtype=np.int32)
        codes.append(code_of[inverse.reshape(-1)])
        with torch.no_grad():
            nll[cfg.column].append(in_chunks(prior.nll, ws).double().cpu().numpy())
            for name in optional:
                present = name in batch.schema.names and batch.column(name).null_count == 0
                complete[name] &= present
                if complete[name]:
                    other = torch.from_numpy(store.batch_latents(batch, name)).to(device)
                    nll[name].append(in_chunks(prior.nll, other).double().cpu().numpy())
        release_free_heap()
    if not codes:
        raise ValueError(f"{store.uri}: no ok rows")
    return GroupedRows(pa.chunked_array(ids), pa.chunked_array(shards), np.concatenate(codes), list(names),
                       {c: np.concatenate(v) for c, v in nll.items() if complete[c]}, complete)


def read_latents(store: StoreWriter, column: str, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """The latents of the ok rows numbered `rows` (sorted, unique), in that order: only their batches are read,
    into one tensor allocated once."""
    out = torch.empty(len(rows), *store.latent_shape)
    filled = 0
    for offset, batch in store.ok_batches(column, batch_size=BATCH_ROWS, rows=rows):
        local = rows[np.searchsorted(rows, offset) : np.searchsorted(rows, offset + batch.num_rows)] - offset
        out[filled : filled + len(local)] = torch.from_numpy(store.batch_latents(batch.take(pa.array(local)), column))
        filled += len(local)
    return out.to(device)


def too_few_groups(cfg: RebalanceConfig, counts: dict[str, int], store: StoreWriter) -> str:
    """Why a grouping gives fewer than two groups, and what to use instead."""
    line = f"--groups {cfg.groups} gives {len(counts)} group(s)" + (f" ({counts})" if counts else "")
    kind, rest = _parse_groups(cfg.groups)
    if kind == "meta":  # the first batch of ok rows tells which keys their metadata has
        _, batch = next(store.ok_batches(cfg.column, ["meta"], batch_size=4096))
        metas = [json.loads(m) for m in (batch.column("meta").to_pylist() if "meta" in batch.schema.names else [])
                 if isinstance(m, str)]
        keys = sorted({k for m in metas if isinstance(m, dict) for k in m})
        line += (f": no ok row's meta has the key {rest!r}" + (f" (keys found: {keys[:10]})" if keys else
                 " (its inputs had no JSON sidecars or metadata)" if not metas else ""))
    elif kind == "labels":
        line += ": the labels file names fewer than two groups among the store's image ids"
    return (line + "; rebalancing needs two or more. Use --groups kmeans:K (clusters of the latents), "
            "labels:COLUMN:FILE (a CSV or Parquet of image_id and COLUMN), or meta:KEY with a key the inputs' "
            "metadata has.")


def rebalance_store(store: StoreWriter, cfg: RebalanceConfig) -> dict[str, Any]:
    """Rebalance the groups of `store` into cfg.output; returns the summary (also written as summary.json).
    The store is streamed: one pass keeps each ok row's id, group and prior NLL; the latents (and inputs)
    of just the rows candidates are made from are read afterwards."""
    device = resolve_device(cfg.device)
    meta = store.metadata
    _parse_groups(cfg.groups)
    if not meta.get("prior"):
        raise ValueError(f"{cfg.store} was made without --prior; rebalancing needs it (filter and sampling)")
    if cfg.method == "compose" and not meta.get("encoder"):
        raise ValueError(f"{cfg.store} was made without --encoder; use --method sample, or invert with an encoder")
    settings = store.settings
    wants_identity = cfg.min_identity is not None and "identity" in settings.get("stages", [])
    models = store.load_models(device, prior=True, encoder=cfg.method == "compose", identity=wants_identity)
    G, prior, E, identity = models.G, models.prior, models.E, models.identity
    total_rows = int(store.manifest.totals()["ok"])
    labeller = group_labeller(cfg.groups, store, cfg.column, total_rows, G, prior, cfg.seed, device)
    release_free_heap()  # what fitting the groups freed (k-means' sample)
    grouped = group_rows(store, cfg, labeller, prior, device)
    if len(grouped) != total_rows:
        raise ValueError(f"{store.uri}: its manifest counts {total_rows} ok rows, its files hold {len(grouped)}; run "
                         f"`latentmill verify {store.uri}`")
    groups = grouped.group_names()
    counts = groups[~groups.isin([UNLABELED, FLAGGED])].value_counts().to_dict()
    del groups
    if len(counts) < 2:
        raise ValueError(too_few_groups(cfg, counts, store))
    write_bytes(layout.join(cfg.output, GROUPS_FILE), parquet_bytes(pa.table({
        "image_id": grouped.ids, "group": pa.DictionaryArray.from_arrays(pa.array(grouped.codes), grouped.names)})))
    targets = target_counts(counts, parse_target(cfg.target))
    needs = {g: targets[g] - counts[g] for g in counts}
    if cfg.max_new is not None:
        scale = min(1.0, cfg.max_new / max(sum(needs.values()), 1))
        needs = {g: int(n * scale) for g, n in needs.items()}

    # like for like: E's outputs for collages are held to E's outputs for the store's real images
    reference = "w_encoded" if cfg.method == "compose" and grouped.complete.get("w_encoded") else cfg.column
    cut = nll_cut(torch.from_numpy(grouped.nll[reference]), cfg.nll_percentile)
    gen_fp = meta["generator_fingerprint"]  # load_models checked that G has it
    rng = np.random.default_rng(cfg.seed)
    parts_kinds = [p.strip() for p in cfg.parts.split(",") if p.strip()]
    writer = TarShardWriter(layout.join(cfg.output, "images"), "rebalance", cfg.shard_size)
    rows: list[dict[str, Any]] = []
    preview: list[torch.Tensor] = []  # compose: member | background | collage | new; sample: member | new
    preview_columns = 4 if cfg.method == "compose" else 2

    # the rows candidates are made from: each short group's members (a uniform sample of a large group)
    # and the background pool; only their latents and inputs are read
    needy = [g for g, n in needs.items() if n > 0]
    eligible = np.flatnonzero(grouped.codes != grouped.names.index(FLAGGED)) if FLAGGED in grouped.names \
        else np.arange(len(grouped))
    pool_index = eligible[rng.choice(len(eligible), size=min(cfg.background_pool, len(eligible)), replace=False)]
    sampler = np.random.default_rng([cfg.seed, 1])
    with_inputs = cfg.method == "compose" or identity is not None  # the real input pixels are needed
    limit = pool_rows(G, with_inputs)
    members_of = {}
    for group in needy:
        members = grouped.rows_of(group)
        if len(members) > limit:
            members = np.sort(sampler.choice(members, size=limit, replace=False))
        members_of[group] = members
    needed = np.unique(np.concatenate([pool_index, *members_of.values()]))
    ws = read_latents(store, cfg.column, needed, device)  # row i of the store is ws[position(i)]
    ids = grouped.ids.take(pa.array(needed)).to_numpy(zero_copy_only=False)

    def position(store_rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(needed, store_rows)

    inputs: dict[str, torch.Tensor] = {}
    if with_inputs:
        inputs = store.read_inputs(grouped.shards.take(pa.array(needed)).to_pylist(), ids.tolist())
    pool_ids = ids[position(pool_index)]
    bar = progress_bar(total=sum(needs.values()), desc="rebalance", unit="sample", enabled=cfg.progress)
    for group in needy:
        members = position(members_of[group])  # positions in ws / ids
        member_ids = ids[members]
        member_embeddings = None
        if identity is not None:
            with torch.no_grad():
                member_embeddings = torch.cat([identity.embed(torch.stack([inputs[i] for i in chunk]).to(device))
                                               for chunk in np.array_split(member_ids, -(-len(member_ids) // 256))])
        gaussian = white = None
        if cfg.method == "sample":  # the group's Gaussian and whitened latents, once for all its candidates
            with torch.no_grad():
                gaussian = group_gaussian(prior, ws[members])
                white = in_chunks(prior.whiten, ws[members]).flatten(1)
        # candidate i of a group draws from its own stream (seed, group, i): the same candidates, and so the
        # same samples, whatever --batch-size; the candidates after the one that fills the group are not kept
        accepted, made, budget = 0, 0, math.ceil(cfg.max_attempts * needs[group])
        while accepted < needs[group] and made < budget:
            n = min(cfg.batch_size, budget - made)
            seeds = [stream_seed(cfg.seed, "rebalance", group, i) for i in range(made, made + n)]
            streams = [torch.Generator().manual_seed(s) for s in seeds]
            made += n
            picks = members[[int(torch.randint(len(members), (), generator=g)) for g in streams]]
            pick_ids = ids[picks]
            if inputs:
                parts = torch.stack([inputs[i] for i in pick_ids]).to(device)
            else:  # sample without identity scoring: members as the store reconstructs them
                with torch.no_grad():
                    parts = G.synthesis(ws[picks], noise_mode=NOISE_MODE).float()
            if cfg.method == "compose":
                background_ids = pool_ids[[int(torch.randint(len(pool_ids), (), generator=g)) for g in streams]]
                backgrounds = torch.stack([inputs[i] for i in background_ids]).to(device)
                drawn = [part_masks(1, G.img_resolution, generator=g, kinds=parts_kinds) for g in streams]
                masks = torch.cat([m for m, _ in drawn]).to(device)
                kinds = [k[0] for _, k in drawn]
                collages, new_ws, images = compose(E, G, parts, backgrounds, masks)
                part_l1 = masked_l1(images, parts, masks).cpu().numpy()
                sources = [[a, b] for a, b in zip(pick_ids, background_ids)]
            else:
                new_ws = sample_near(prior, gaussian, n, generator=streams, temperature=cfg.temperature)
                with torch.no_grad():
                    images = G.synthesis(new_ws, noise_mode=NOISE_MODE).float()
                masks, kinds, part_l1, collages = None, [None] * n, [None] * n, None
                with torch.no_grad():  # provenance: the three members nearest in the whitened space
                    near = torch.cdist(prior.whiten(new_ws).flatten(1), white)
                    nearest = near.topk(min(3, len(members)), largest=False).indices.cpu().numpy()
                sources = [list(member_ids[row]) for row in nearest]
            with torch.no_grad():
                nll = prior.nll(new_ws).cpu().numpy()
                ident = [None] * n
                if identity is not None:
                    emb = identity.embed(images)
                    if cfg.method == "compose":
                        ident = (emb * identity.embed(parts)).sum(1).cpu().numpy()
                    else:
                        ident = (emb @ member_embeddings.T).max(dim=1).values.cpu().numpy()
            pixels = to_uint8(images)
            flat = new_ws.flatten(1).cpu().numpy()
            for k in range(n):
                if accepted >= needs[group]:
                    break
                reason = None
                if nll[k] > cut:
                    reason = "prior_nll"
                elif ident[k] is not None and ident[k] < cfg.min_identity:
                    reason = "identity"
                seed = seeds[k]
                sample_id = f"{group}-{cfg.method}-{cfg.seed}-{made - n + k}".replace("/", "_").replace(" ", "_")
                row = {"sample_id": sample_id, "group": group, "method": cfg.method, "source_ids": list(sources[k]),
                       "mask_kind": kinds[k], "mask_fraction": None if masks is None else float(masks[k].mean()),
                       "seed": seed, "prior_nll": float(nll[k]),
                       "identity_to_sources": None if ident[k] is None else float(ident[k]),
                       "part_l1": None if part_l1[k] is None else float(part_l1[k]), "accepted": reason is None,
                       "rejected_because": reason, "shard": None, "w": flat[k], "generator_fingerprint": gen_fp,
                       "schema_version": SAMPLES.version}
                if reason is None:
                    provenance = {key: row[key] for key in ("sample_id", "group", "method", "source_ids", "mask_kind",
                                                            "seed", "prior_nll", "identity_to_sources", "part_l1")}
                    row["shard"] = writer.add(safe_file_name(sample_id.replace(".", "_")), {
                        "png": png_bytes(pixels[k]),
                        "json": json.dumps({**provenance, "generator_fingerprint": gen_fp}).encode()})
                    accepted += 1
                    bar.update(1)
                    if len(preview) < 8 * preview_columns:
                        cells = [parts[k], backgrounds[k], collages[k], images[k]] if cfg.method == "compose" \
                            else [parts[k], images[k]]
                        preview += [c.detach().float().cpu() for c in cells]
                rows.append(row)
    bar.close()
    writer.close()

    table = pa.Table.from_pylist(rows, schema=SAMPLES.schema({"store": cfg.store, "settings": asdict(cfg),
                                                              "latent_shape": meta["latent_shape"]}))
    write_bytes(layout.join(cfg.output, "samples.parquet"), parquet_bytes(table))
    added = {g: sum(1 for r in rows if r["group"] == g and r["accepted"]) for g in counts}
    summary = {"store": cfg.store, "output": cfg.output, "groups_spec": cfg.groups, "target": cfg.target,
               "method": cfg.method, "before": counts, "target_counts": targets, "added": added,
               "after": {g: counts[g] + added[g] for g in counts},
               "shortfall": {g: needs[g] - added[g] for g in counts if needs[g] > added[g]},
               "unlabeled": len(grouped.rows_of(UNLABELED)), "flagged_excluded": len(grouped.rows_of(FLAGGED)),
               "groups_file": layout.join(cfg.output, GROUPS_FILE),
               "candidates": len(rows), "rejected": {r: sum(1 for x in rows if x["rejected_because"] == r)
                                                    for r in ("prior_nll", "identity")},
               "nll_cut": cut, "nll_reference": reference, "nll_typical": float(G.w_dim),
               "settings": asdict(cfg)}
    text = json.dumps(summary, indent=2, default=str).encode()
    write_bytes(layout.join(cfg.output, "summary.json"), text)
    store.write_bytes(layout.REBALANCE_SUMMARY, text)
    if preview:
        png = png_bytes(grid_image(torch.stack(preview), nrow=preview_columns))
        write_bytes(layout.join(cfg.output, "preview.png"), png)
        store.write_bytes(layout.REBALANCE_PREVIEW, png)
    return summary


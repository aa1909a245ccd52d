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
import tarfile
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from pipeline.data.webdataset import add_sample
from pipeline.devices import resolve_device
from pipeline.imaging import grid_image, png_bytes, to_uint8
from pipeline.priors.load import Prior
from pipeline.stages.chain import NOISE_MODE, image_seed
from pipeline.stages.rebalance import compose, kmeans, masked_l1, nll_cut, part_masks, sample_near, target_counts
from pipeline.stages.rebalance_settings import RebalanceConfig
from pipeline.store import layout
from pipeline.store.file_names import safe_file_name
from pipeline.store.parquet_files import parquet_bytes
from pipeline.store.samples_schema import SAMPLES
from pipeline.store.writer import StoreWriter
from pipeline.uris import read_bytes, write_bytes

UNLABELED = "(unlabeled)"


def parse_target(text: str) -> dict[str, float] | None:
    if text == "uniform":
        return None
    try:
        pairs = [item.rsplit("=", 1) for item in text.split(",") if item.strip()]
        return {name.strip(): float(share) for name, share in pairs}
    except ValueError:
        raise ValueError(f"--target must be 'uniform' or 'group=share,...', got {text!r}") from None


def assign_groups(spec: str, ok: pd.DataFrame, ws: torch.Tensor, G: Any, prior: Prior | None,
                  seed: int) -> pd.Series:
    """The group name of every ok row, from a --groups spec."""
    kind, _, rest = spec.partition(":")
    if kind == "labels":
        column, _, uri = rest.partition(":")
        if not column or not uri:
            raise ValueError("--groups labels:COLUMN:URI (a CSV or Parquet file with image_id and COLUMN)")
        data = read_bytes(uri, setting="--groups")
        table = pd.read_parquet(io.BytesIO(data)) if uri.endswith(".parquet") else pd.read_csv(io.BytesIO(data))
        if "image_id" not in table or column not in table:
            raise ValueError(f"--groups {uri}: needs columns image_id and {column}; it has {list(table.columns)}")
        labels = dict(zip(table["image_id"].astype(str), table[column].astype(str)))
        return ok["image_id"].map(labels).fillna(UNLABELED)
    if kind == "meta":
        if not rest:
            raise ValueError("--groups meta:KEY (a key of the inputs' JSON sidecars)")
        values = [json.loads(m).get(rest) if isinstance(m, str) else None for m in ok.get("meta", [None] * len(ok))]
        return pd.Series([UNLABELED if v is None else str(v) for v in values], index=ok.index)
    if kind == "attribute":
        from pipeline.stages.stylespace import Channel, attribute_scores, stats_of, styles_of

        channels_text, _, threshold = rest.rpartition(":")
        try:
            channels = [Channel(c.rsplit("/", 1)[0], int(c.rsplit("/", 1)[1]), 0.0, 1.0)
                        for c in channels_text.split(",")]
            cut = float(threshold)
        except (ValueError, IndexError):
            raise ValueError("--groups attribute:LAYER/CHANNEL[,LAYER/CHANNEL...]:THRESHOLD, e.g. "
                             "attribute:b16.conv0/42:1.0 (channels from `latentmill channels`)") from None
        styles = styles_of(G, ws)
        unknown = [c.layer for c in channels if c.layer not in styles]
        if unknown:
            raise ValueError(f"--groups: unknown StyleSpace layers {unknown}; known: {sorted(styles)}")
        scores = attribute_scores(styles, channels, stats_of(styles)).numpy()
        return pd.Series(np.where(scores >= cut, "attribute", "rest"), index=ok.index)
    if kind == "kmeans":
        try:
            k = int(rest)
        except ValueError:
            raise ValueError("--groups kmeans:K") from None
        features = (prior.whiten(ws) if prior is not None else ws - ws.mean(0)).flatten(1)
        labels, _ = kmeans(features, k, seed=seed)
        return pd.Series([f"cluster-{int(c)}" for c in labels], index=ok.index)
    raise ValueError(f"--groups {spec!r}: use labels:COLUMN:URI, meta:KEY, attribute:LAYER/CH:THRESHOLD or kmeans:K")


class _ShardWriter:
    """Accepted images as webdataset tar shards (PNG + JSON provenance), shard_size samples each."""

    def __init__(self, output: str, shard_size: int) -> None:
        self.output, self.shard_size, self.index, self.count = output.rstrip("/"), shard_size, 0, 0
        self.buffer: io.BytesIO | None = None
        self.tar: tarfile.TarFile | None = None

    @property
    def shard_name(self) -> str:
        return f"rebalance-{self.index:05d}"

    def add(self, sample_id: str, png: bytes, provenance: dict[str, Any]) -> str:
        if self.tar is None:
            self.buffer = io.BytesIO()
            self.tar = tarfile.open(fileobj=self.buffer, mode="w")
        add_sample(self.tar, safe_file_name(sample_id.replace(".", "_")), {"png": png, "json": json.dumps(provenance).encode()})
        shard = self.shard_name
        self.count += 1
        if self.count == self.shard_size:
            self.close()
        return shard

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            write_bytes(layout.join(self.output, "images", f"{self.shard_name}.tar"), self.buffer.getvalue())
            self.tar, self.buffer, self.count = None, None, 0
            self.index += 1


def rebalance_store(store: StoreWriter, cfg: RebalanceConfig) -> dict[str, Any]:
    """Rebalance the groups of `store` into cfg.output; returns the summary (also written as summary.json)."""
    device = resolve_device(cfg.device)
    meta = store.metadata
    # only the columns it uses: ids, the sidecars (meta:KEY groups) and the latents it composes from
    latent_columns = [cfg.column] + (["w_encoded"] if cfg.method == "compose" and cfg.column != "w_encoded" else [])
    ok = store.ok_rows(cfg.column, ["image_id", "shard", "meta", *latent_columns])
    if not meta.get("prior"):
        raise ValueError(f"{cfg.store} was made without --prior; rebalancing needs it (filter and sampling)")
    if cfg.method == "compose" and not meta.get("encoder"):
        raise ValueError(f"{cfg.store} was made without --encoder; use --method sample, or invert with an encoder")
    settings = store.settings
    wants_identity = cfg.min_identity is not None and "identity" in settings.get("stages", [])
    models = store.load_models(device, prior=True, encoder=cfg.method == "compose", identity=wants_identity)
    G, prior, E, identity = models.G, models.prior, models.E, models.identity
    ws = torch.from_numpy(store.latents(ok, cfg.column)).to(device)
    groups = assign_groups(cfg.groups, ok, ws, G, prior, cfg.seed)
    counts = groups[groups != UNLABELED].value_counts().to_dict()
    if len(counts) < 2:
        raise ValueError(f"--groups {cfg.groups} gives {len(counts)} group(s) {counts}; rebalancing needs two or more")
    targets = target_counts(counts, parse_target(cfg.target))
    needs = {g: targets[g] - counts[g] for g in counts}
    if cfg.max_new is not None:
        scale = min(1.0, cfg.max_new / max(sum(needs.values()), 1))
        needs = {g: int(n * scale) for g, n in needs.items()}

    # like for like: E's outputs for collages are held to E's outputs for the store's real images
    reference = "w_encoded" if cfg.method == "compose" and ok["w_encoded"].notna().all() else cfg.column
    reference_ws = ws if reference == cfg.column else torch.from_numpy(store.latents(ok, reference)).to(device)
    cut = nll_cut(prior.nll(reference_ws), cfg.nll_percentile)
    gen_fp = meta["generator_fingerprint"]  # load_models checked that G has it
    rng = np.random.default_rng(cfg.seed)
    parts_kinds = [p.strip() for p in cfg.parts.split(",") if p.strip()]
    writer = _ShardWriter(cfg.output, cfg.shard_size)
    rows: list[dict[str, Any]] = []
    preview: list[torch.Tensor] = []  # compose: member | background | collage | new; sample: member | new
    preview_columns = 4 if cfg.method == "compose" else 2

    needy = [g for g, n in needs.items() if n > 0]
    member_rows = ok[groups.isin(needy)]
    pool_index = rng.choice(len(ok), size=min(cfg.background_pool, len(ok)), replace=False)
    wanted = pd.concat([member_rows, ok.iloc[pool_index]]).drop_duplicates("image_id")
    inputs: dict[str, torch.Tensor] = {}
    if cfg.method == "compose" or identity is not None:  # the real input pixels are needed
        inputs = store.read_inputs(wanted["shard"].tolist(), wanted["image_id"].tolist())
    pool_ids = ok["image_id"].to_numpy()[pool_index]
    bar = tqdm(total=sum(needs.values()), desc="rebalance", disable=not cfg.progress)
    for group in needy:
        members = np.flatnonzero((groups == group).to_numpy())
        member_ids = ok["image_id"].to_numpy()[members]
        member_embeddings = None
        if identity is not None:
            with torch.no_grad():
                member_embeddings = identity.embed(torch.stack([inputs[i] for i in member_ids]).to(device))
        accepted, attempts, batch_no = 0, 0, 0
        while accepted < needs[group] and attempts < cfg.max_attempts * needs[group]:
            n = cfg.batch_size
            seed = cfg.seed * 1_000_003 + image_seed(group) % 100_003 * 1009 + batch_no
            batch_no += 1
            g = torch.Generator().manual_seed(seed)
            picks = members[torch.randint(len(members), (n,), generator=g).numpy()]
            pick_ids = ok["image_id"].to_numpy()[picks]
            if inputs:
                parts = torch.stack([inputs[i] for i in pick_ids]).to(device)
            else:  # sample without identity scoring: members as the store reconstructs them
                with torch.no_grad():
                    parts = G.synthesis(ws[picks], noise_mode=NOISE_MODE).float()
            if cfg.method == "compose":
                background_ids = pool_ids[torch.randint(len(pool_ids), (n,), generator=g).numpy()]
                backgrounds = torch.stack([inputs[i] for i in background_ids]).to(device)
                masks, kinds = part_masks(n, G.img_resolution, generator=g, kinds=parts_kinds)
                masks = masks.to(device)
                collages, new_ws, images = compose(E, G, parts, backgrounds, masks)
                part_l1 = masked_l1(images, parts, masks).cpu().numpy()
                sources = [[a, b] for a, b in zip(pick_ids, background_ids)]
            else:
                new_ws = sample_near(prior, ws[members], n, generator=g, temperature=cfg.temperature)
                with torch.no_grad():
                    images = G.synthesis(new_ws, noise_mode=NOISE_MODE).float()
                masks, kinds, part_l1, collages = None, [None] * n, [None] * n, None
                with torch.no_grad():  # provenance: the three members nearest in the whitened space
                    near = torch.cdist(prior.whiten(new_ws).flatten(1), prior.whiten(ws[members]).flatten(1))
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
                attempts += 1
                reason = None
                if nll[k] > cut:
                    reason = "prior_nll"
                elif ident[k] is not None and ident[k] < cfg.min_identity:
                    reason = "identity"
                elif accepted >= needs[group]:
                    reason = "enough"
                sample_id = f"{group}-{cfg.method}-{seed}-{k}".replace("/", "_").replace(" ", "_")
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
                    row["shard"] = writer.add(sample_id, png_bytes(pixels[k]),
                                              {**provenance, "generator_fingerprint": gen_fp})
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
               "unlabeled": int((groups == UNLABELED).sum()),
               "candidates": len(rows), "rejected": {r: sum(1 for x in rows if x["rejected_because"] == r)
                                                    for r in ("prior_nll", "identity", "enough")},
               "nll_cut": cut, "nll_reference": reference, "settings": asdict(cfg)}
    text = json.dumps(summary, indent=2, default=str).encode()
    write_bytes(layout.join(cfg.output, "summary.json"), text)
    store.write_bytes(layout.REBALANCE_SUMMARY, text)
    if preview:
        png = png_bytes(grid_image(torch.stack(preview), nrow=preview_columns))
        write_bytes(layout.join(cfg.output, "preview.png"), png)
        store.write_bytes(layout.REBALANCE_PREVIEW, png)
    return summary


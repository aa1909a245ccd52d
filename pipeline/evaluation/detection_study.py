"""Study 5: top-k accuracy of example-based StyleSpace channel detection (Wu et al.)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pipeline.evaluation.models import EvalModels
from pipeline.models.encoder import encode
from pipeline.stages.stylespace import (Channel, detect_channels, edit_styles, is_convolution_style, population_stats,
                                       styles_of)
from pipeline.sampling import mapped_ws, stream


@torch.no_grad()
def detection_accuracy(models: EvalModels, *, positives: Sequence[int] = (10, 20, 30), trials: int = 20,
                       alpha: float = 4.0, top_k: int = 5, population: int = 4000, seed: int = 0) -> dict[str, Any]:
    """Plant an attribute by editing a known convolution channel of random samples (s_c += alpha std_c),
    then detect it from n positives. 'styles': the edited styles themselves; 'through E': the edited
    images rendered and re-encoded, as a user's positives would be. Accuracy = the planted channel is
    ranked first (top-1) or among the first top_k."""
    G = models.G
    stats = population_stats(G, num_samples=population, seed=seed)
    layers = [k for k in stats.mean if is_convolution_style(k)]
    g = stream(seed, "stylespace study", "planted channels")
    rows = []
    for n in positives:
        hits = {"styles": [0, 0], "through E": [0, 0]}
        for _ in range(trials):
            layer = layers[int(torch.randint(len(layers), (), generator=g))]
            channel = int(torch.randint(len(stats.mean[layer]), (), generator=g))
            planted = Channel(layer, channel, 0.0, 1.0)
            styles = styles_of(G, mapped_ws(G, n, g))
            edited = edit_styles(styles, [planted], alpha, stats)
            ranked = {"styles": detect_channels(edited, stats, top_k)}
            if models.E is not None:
                images = G.synthesis_from_styles({k: v.to(models.device) for k, v in edited.items()},
                                                 noise_mode="const").float()
                ranked["through E"] = detect_channels(styles_of(G, encode(models.E, images).float()), stats, top_k)
            for mode, found in ranked.items():
                keys = [(c.layer, c.channel) for c in found]
                hits[mode][0] += keys[0] == (layer, channel)
                hits[mode][1] += (layer, channel) in keys
        for mode, (top1, topk) in hits.items():
            if mode == "through E" and models.E is None:
                continue
            rows.append({"positives": n, "mode": mode, "trials": trials, "top1": top1 / trials,
                         f"top{top_k}": topk / trials})
    by_mode = {m: [r["top1"] for r in rows if r["mode"] == m] for m in ("styles", "through E")}
    return {"rows": rows, "alpha": alpha, "top_k": top_k, "population": population,
            "claim": "10-30 positive examples suffice to find the channel that controls an attribute",
            "holds": bool(rows) and min(r[f"top{top_k}"] for r in rows if r["mode"] == "styles") >= 0.8,
            "top1_by_mode": by_mode}

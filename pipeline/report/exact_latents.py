"""The report's section on the `z` column: each row's exact latent, and what it is good for.

For an in-domain latent, z is standard normal, so |z|^2 over a row's num_ws x w_dim values follows a
chi-square distribution with that many degrees of freedom: the section says how many rows fall
outside its central 98% (atypical latents, the ones a curator looks at first) and shows how to use z.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from pipeline.report.report_rows import ZStats

Z_SPACES = {"flow": "the flow prior's exact latent (flow.to_latent(w); flow.from_latent(z) gives w back)",
            "mapping": "the generator's own z (G.mapping.inverse(w); G.mapping(z) gives w back)"}


def exact_latent_section(z: ZStats | None, meta: dict[str, Any]) -> str | None:
    """HTML for the rows' z column (statistics made over every row by report_rows.collect), or None when
    the store has none."""
    if z is None or not z.rows:
        return None
    dof, low, high = z.dof, z.low, z.high
    listing = "".join(f"<tr><td>{html.escape(str(image_id))}</td><td>{ratio:.2f}</td></tr>"
                      for ratio, image_id in z.atypical if ratio * dof < low or ratio * dof > high)
    space = meta.get("z_space") or "flow"
    far = ("<p>Most rows lie outside it: their latents are far from the mapped latents the map was fitted "
           "on (usual for W+ inversions), where z extrapolates steeply, so rank rows by it rather than sample "
           "around them.</p>" if z.outside > z.rows / 2 else "")
    back = ("flow = store.load_models(prior=True).prior          # the store's flow\n"
            "ws = flow.from_latent(torch.tensor(rows.z[0]))      # the refined w of row 0, exactly"
            if space == "flow" else
            "G = store.load_models().G                          # the store's generator\n"
            "ws = G.mapping(torch.tensor(rows.z[0]))[:, 0]       # layer k of row 0's refined w from z[k], exactly")
    return (
        '<h2 id="exact-latents">Exact latents (z)</h2>'
        f"<p>The <code>z</code> column holds {html.escape(Z_SPACES.get(space, space))} of each refined latent. "
        f"In-domain latents have standard normal z, so |z|<sup>2</sup> over a row's {dof} values is about {dof}; "
        f"the middle 98% of such rows lie between {low:.0f} and {high:.0f}.</p>"
        f"<table><tr><th>rows with z</th><td>{z.rows:,}</td></tr>"
        f"<tr><th>median |z|<sup>2</sup> / {dof}</th><td>{np.median(z.ratios) if z.ratios else float('nan'):.3f}</td></tr>"
        f"<tr><th>outside the middle 98%</th><td>{z.outside:,} ({z.outside / z.rows:.0%})</td></tr></table>"
        + far + (f"<p>The least typical rows (|z|<sup>2</sup> / {dof}):</p><table><tr><th>image</th><th>ratio</th></tr>"
           f"{listing}</table>" if listing else "")
        + "<p>Use it where a standard normal coordinate helps: sample near a row "
          "(<code>from_latent(z + 0.3 * randn)</code>), interpolate between rows in z, or rank rows by "
          "|z|<sup>2</sup>:</p><pre>from pipeline.store import open_store\n"
          "store = open_store(STORE); rows = store.to_pandas(latents_as_arrays=True)\n"
          f"{back}</pre>")

"""Heat maps of a sweep over η × β (private)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np

from ._figures import WIDTH_IN, write_figure

_FACET = {"weight_decay": "λ", "batch_size": "S", "init_scale": "init ×"}


def sweep_label(var: str) -> str:
    """A sweep variable in words."""
    if var.startswith("error_median_"):
        return f"{var.removeprefix('error_median_')} law: median per-group relative error"
    if var.startswith("error_max_"):
        return f"{var.removeprefix('error_max_')} law: worst per-group relative error"
    return {"final_loss": "final training loss (cross-entropy)", "test_accuracy": "test accuracy"}.get(var, var.replace("_", " "))


def sweep_figures(ds, out_dir: str | os.PathLike) -> list[Path]:
    """Heat maps over lr × momentum (median over seeds; one panel per value of the other swept
    hyperparameters) of each kind's theory median error and of the final loss. Returns the PNG paths.

    Example:
        >>> import tempfile, noether_jax as nj
        >>> ds = nj.sweep(lr=[0.05, 0.1], momentum=[0.0, 0.9], steps=10, save_every=5, width=4, progress=False)
        >>> sorted(p.name for p in nj.plots.sweep_figures(ds, tempfile.mkdtemp()))
        ['heatmap_error_median_rescale.png', 'heatmap_error_median_translation.png', 'heatmap_final_loss.png']
    """
    import matplotlib
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if "member" in ds.dims:
        raise ValueError("sweep_figures needs a grid sweep (grid=True), not a list of configurations.")
    names = [v for v in ds.data_vars if v.startswith("error_median_")] + ["final_loss"]
    facet_dims = [d for d in ("weight_decay", "batch_size", "init_scale") if ds.sizes.get(d, 1) > 1]
    paths = []
    for var in names:
        da = ds[var].median("seed") if "seed" in ds[var].dims else ds[var]
        da = da.squeeze([d for d in ("weight_decay", "batch_size", "init_scale") if d not in facet_dims and d in da.dims])
        facets = list(itertools.product(*(ds[d].values for d in facet_dims))) or [()]
        ncol = min(len(facets), 4)
        nrow = -(-len(facets) // ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(max(WIDTH_IN * 0.75, min(WIDTH_IN, 2.6 * ncol + 1.4)), 2.6 * nrow + 0.8),
                                 squeeze=False, layout="constrained")
        finite = np.asarray(da.values, float)[np.isfinite(np.asarray(da.values, float))]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        log = var.startswith("error") and vmin > 0
        norm = matplotlib.colors.LogNorm(vmin, max(vmax, vmin * 1.0001)) if log else matplotlib.colors.Normalize(vmin, vmax)
        for ax, facet in zip(axes.flat, facets):
            sel = da.sel(dict(zip(facet_dims, facet))) if facet_dims else da
            z = np.asarray(sel.transpose("momentum", "lr").values, float)
            im = ax.imshow(np.ma.masked_invalid(z), origin="lower", aspect="auto", cmap="viridis", norm=norm)
            ax.set_xticks(range(ds.sizes["lr"]), [f"{v:g}" for v in ds["lr"].values], rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(ds.sizes["momentum"]), [f"{v:g}" for v in ds["momentum"].values], fontsize=8)
            ax.set_xlabel("learning rate η", fontsize=8)
            ax.set_ylabel("momentum β", fontsize=8)
            if facet_dims:
                ax.set_title(", ".join(f"{_FACET.get(d, d)} = {v:g}" for d, v in zip(facet_dims, facet)), fontsize=8)
            for (i, j), val in np.ndenumerate(z):
                ax.text(j, i, "—" if not np.isfinite(val) else f"{val:.2g}", ha="center", va="center", fontsize=7, color="w")
        for ax in list(axes.flat)[len(facets):]:
            ax.axis("off")
        cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.9)
        cb.set_label(sweep_label(var) + (f"\n(median over {ds.sizes['seed']} seeds)" if "seed" in ds.dims else ""), fontsize=8)
        fig.suptitle(f"{sweep_label(var)}\n{ds.attrs.get('model', '')}, {ds.attrs.get('steps', '')} steps", fontsize=9)
        path = out / f"heatmap_{var}.png"
        write_figure(fig, path)
        paths.append(path)
    return paths

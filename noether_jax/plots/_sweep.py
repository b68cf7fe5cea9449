"""Heat maps of a sweep over η × β (private)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np

from ._figures import WIDTH_IN, write_figure

_FACET = {"weight_decay": "λ", "batch_size": "S", "init_scale": "init ×", "optimizer": "optimiser"}
_FACETS = tuple(_FACET)


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, int | float | np.number) else str(v)


def sweep_label(var: str) -> str:
    """A sweep variable in words."""
    if var.startswith("error_median_"):
        return f"{var.removeprefix('error_median_')} law: median per-group relative error"
    if var.startswith("error_max_"):
        return f"{var.removeprefix('error_max_')} law: worst per-group relative error"
    words = {"final_loss": "final training loss (cross-entropy)", "test_accuracy": "test accuracy",
             "rmsprop_angle_max": "worst angle to the mapped RMSProp (°)", "rmsprop_lr_eff_error": "RMSProp map: lr/√G vs η/r², worst rel. error",
             "eq17_error_median": "NLD eq. 17 (paper's forcing): median rel. error of r²", "sharpness_max": "η·λ_max (red: beyond 2(1+β))",
             "flow_distance": "continuous flow vs iterates: |θ_flow − θₙ|/|θₙ| at the end"}
    if var.startswith("ksb_"):
        return f"{var.removeprefix('ksb_')}: kinetic symmetry breaking |δK|/2K (time average, median over groups)"
    return words.get(var, var.replace("_", " "))


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
    import matplotlib.patches
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if "member" in ds.dims:
        raise ValueError("sweep_figures needs a grid sweep (grid=True), not a list of configurations.")
    names = [v for v in ds.data_vars if v.startswith(("error_median_", "ksb_"))] + ["final_loss"]
    names += [v for v in _PHYSICS if v in ds.data_vars]
    facet_dims = [d for d in _FACETS if ds.sizes.get(d, 1) > 1]
    paths = []
    for var in names:
        da = ds[var].isel(time=-1) if "time" in ds[var].dims else ds[var]  # flow_distance: at the end of the run
        da = da.median("seed") if "seed" in da.dims else da
        da = da.squeeze([d for d in _FACETS if d not in facet_dims and d in da.dims])
        facets = list(itertools.product(*(ds[d].values for d in facet_dims))) or [()]
        ncol = min(len(facets), 4)
        nrow = -(-len(facets) // ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(max(WIDTH_IN * 0.75, min(WIDTH_IN, 2.6 * ncol + 1.4)), 2.6 * nrow + 0.8),
                                 squeeze=False, layout="constrained")
        finite = np.asarray(da.values, float)[np.isfinite(np.asarray(da.values, float))]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        log = var.startswith(("error", "ksb_", "eq17_", "flow_", "rmsprop_")) and vmin > 0
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
                ax.set_title(", ".join(f"{_FACET.get(d, d)} = {_value(v)}" for d, v in zip(facet_dims, facet)), fontsize=8)
            if var == "sharpness_max":  # the edge of stability η·λ_max = 2(1+β): cells beyond it outlined in red
                beyond = z > 2.0 * (1.0 + ds["momentum"].values[:, None])
                for i, j in zip(*np.nonzero(beyond)):
                    ax.add_patch(matplotlib.patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
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


# the sweep's optional per-member physics (drawn when recorded)
_PHYSICS = ("rmsprop_angle_max", "rmsprop_lr_eff_error", "eq17_error_median", "sharpness_max", "flow_distance")

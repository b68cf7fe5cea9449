"""Heat maps of a sweep over η × β (private)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np

from ._figures import write_figure


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
    facet_dims = [d for d in ("weight_decay", "batch_size", "init_scale") if ds.sizes.get(d, 1) > 1]
    paths = []
    for var in names:
        da = ds[var].isel(time=-1) if "time" in ds[var].dims else ds[var]  # flow_distance: at the end of the run
        da = da.median("seed") if "seed" in da.dims else da
        da = da.squeeze([d for d in ("weight_decay", "batch_size", "init_scale") if d not in facet_dims and d in da.dims])
        facets = list(itertools.product(*(ds[d].values for d in facet_dims))) or [()]
        ncol = min(len(facets), 4)
        nrow = -(-len(facets) // ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.0 * nrow), squeeze=False)
        finite = np.asarray(da.values, float)[np.isfinite(np.asarray(da.values, float))]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        log = var.startswith(("error", "ksb_", "eq17_", "flow_", "rmsprop_")) and vmin > 0
        norm = matplotlib.colors.LogNorm(vmin, max(vmax, vmin * 1.0001)) if log else matplotlib.colors.Normalize(vmin, vmax)
        for ax, facet in zip(axes.flat, facets):
            sel = da.sel(dict(zip(facet_dims, facet))) if facet_dims else da
            z = np.asarray(sel.transpose("momentum", "lr").values, float)
            im = ax.imshow(np.ma.masked_invalid(z), origin="lower", aspect="auto", cmap="viridis", norm=norm)
            ax.set_xticks(range(ds.sizes["lr"]), [f"{v:g}" for v in ds["lr"].values], rotation=45)
            ax.set_yticks(range(ds.sizes["momentum"]), [f"{v:g}" for v in ds["momentum"].values])
            ax.set_xlabel("lr η")
            ax.set_ylabel("momentum β")
            ax.set_title(", ".join(f"{d}={v:g}" for d, v in zip(facet_dims, facet)) or var, fontsize=9)
            if var == "sharpness_max":  # the edge of stability η·λ_max = 2(1+β): cells beyond it outlined in red
                beyond = z > 2.0 * (1.0 + ds["momentum"].values[:, None])
                for i, j in zip(*np.nonzero(beyond)):
                    ax.add_patch(matplotlib.patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
            for (i, j), val in np.ndenumerate(z):
                ax.text(j, i, "—" if not np.isfinite(val) else f"{val:.2g}", ha="center", va="center", fontsize=7, color="w")
        for ax in list(axes.flat)[len(facets):]:
            ax.axis("off")
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label=var + (" (median over seeds)" if "seed" in ds.dims else ""))
        fig.suptitle(f"{var}: {ds.attrs.get('model', '')}, {ds.attrs.get('steps', '')} steps", fontsize=10)
        path = out / f"heatmap_{var}.png"
        write_figure(fig, path)
        paths.append(path)
    return paths


# the sweep's optional per-member physics (drawn when recorded)
_PHYSICS = ("rmsprop_angle_max", "rmsprop_lr_eff_error", "eq17_error_median", "sharpness_max", "flow_distance")

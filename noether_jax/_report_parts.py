"""Report parts contributed by later experiments: ``(name, hook)`` with ``hook(out_dir, *, quick)``
returning ``(summary_part, [Section, ...])``. See :func:`noether_jax._report.reproduce`."""

from __future__ import annotations

from pathlib import Path


def _sweep_part(out_dir: Path, *, quick: bool = True):
    from . import _plots
    from ._report import Section
    from ._sweep import sweep, sweep_figures, sweep_summary

    out_dir.mkdir(parents=True, exist_ok=True)
    grid = dict(lr=[0.03, 0.1, 0.3], momentum=[0.0, 0.9], weight_decay=[1e-4], seed=2, steps=300, save_every=30, width=16) \
        if quick else dict(lr=[0.01, 0.03, 0.1, 0.3], momentum=[0.0, 0.8, 0.9, 0.99], weight_decay=[0.0, 1e-4, 5e-4], seed=4,
                           steps=2000, save_every=20, width=64)
    ds = sweep("mlp", progress=False, **grid)
    ds.to_netcdf(out_dir / "sweep.nc")
    paths = sweep_figures(ds, out_dir)
    part = sweep_summary(ds)
    sec = Section(
        title="Sweep: the theory's error and the final loss over η × β",
        claim="A whole grid of training runs with their per-group theory is one vmapped, compiled program.",
        prediction="Per member, the Neural Mechanics theory of every translation and rescale group.",
        measurement=f"MLP on digits, η ∈ {grid['lr']}, β ∈ {grid['momentum']}, λ = {grid['weight_decay']}, "
                    f"{grid['seed']} seeds, {grid['steps']} steps.",
        error="Median per-group relative error of each member (heat maps: median over seeds).",
        anchor="sweep",
    )
    for p in paths:
        sec.figures.append((p.stem.replace("_", " "), _plots.encode_file(p)))
    return part, [sec]


from ._nld import nld_report_part  # noqa: E402

PARTS: list = [("nld", nld_report_part), ("sweep", _sweep_part)]

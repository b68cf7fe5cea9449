"""Figures of the NLD experiments (private): eq. 17, the RMSProp map, the match against η/r², the ablations."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from ._figures import WIDTH_IN, write_figure


def _below(ax, **kw) -> None:
    """A legend under the axes (outside the curves); constrained layout makes room for it."""
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=kw.pop("ncol", 2), frameon=False, **kw)


def _smooth(a: np.ndarray, w: int) -> np.ndarray:
    w = max(1, min(w, a.shape[-1]))
    return np.convolve(a, np.ones(w) / w, mode="valid")


_MATCH_LABELS = {"beta0": "β = 0, mapped RMSProp", "beta0.9_momentum": "β = 0.9, map with momentum",
                 "beta0.9_gradient": "β = 0.9, map without momentum"}
_RC = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7}


def nld_figures(result: Any, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the NLD figures of a :class:`noether_jax.experiments.NLDResult` as PNGs (sized for an 800-px
    column, legends under the axes, file names with the model and β); name → path."""
    with plt.rc_context(_RC):
        return _nld_figures(result, out_dir)


def _nld_figures(result: Any, out_dir: str | os.PathLike) -> dict[str, Path]:
    out = Path(out_dir)
    cfg = result.config
    lr, beta = cfg.lr, cfg.momentum
    steps = cfg.steps
    tr, cmp = result.comparison.track, result.comparison
    e17 = result.eq17
    figures: dict[str, Path] = {}
    n = np.arange(steps + 1)
    w = max(1, steps // 50)

    fig, ax = plt.subplots(1, 2, figsize=(WIDTH_IN, 3.6), layout="constrained")
    r2 = e17.r2
    pick = np.argsort(r2[-1] / r2[0])[np.linspace(0, r2.shape[1] - 1, min(4, r2.shape[1])).astype(int)]
    for i, g in enumerate(pick):
        c = f"C{i}"
        ax[0].plot(n, r2[:, g], c=c, lw=1.5)
        ax[0].plot(n, np.sqrt(e17.r4[:, g]), c=c, ls="--", lw=1)
        ax[0].plot(n, np.sqrt(e17.r4_velocity[:, g]), c=c, ls=":", lw=1)
    ax[0].plot([], [], "k-", label="measured")
    ax[0].plot([], [], "k--", label="eq. 17")
    ax[0].plot([], [], "k:", label="velocity-forced")
    _below(ax[0], ncol=3)
    ax[0].set(xlabel="step n", ylabel=r"$r^2=|\theta_\mathcal{A}|^2$",
              title=f"eq. 17: {len(pick)} of {r2.shape[1]} groups shown", xlim=(0, steps))
    ax[1].semilogy(n, lr / ((1 - beta) * r2), lw=0.6)
    ax[1].set(xlabel="step n", ylabel=r"$\eta/((1-\beta)r^2)$", title=f"all {r2.shape[1]} groups")
    path = out / f"nld_eq17_{cfg.model}_beta{beta:g}.png"
    write_figure(fig, path)
    figures["eq17"] = path

    fig, ax = plt.subplots(1, 3, figsize=(WIDTH_IN, 3.6), layout="constrained")
    ang = np.asarray(tr.angle)
    ax[0].plot(n, ang[1].max(1), label="mapped RMSProp")
    ax[0].plot(n, ang[2].max(1), label="control (√G × 2)")
    ax[0].set(xlabel="step n", ylabel="max angle to SGD's θ̂ (deg)", title="direction match, worst group")
    _below(ax[0], ncol=1)
    for k, lab in enumerate(("SGD", "mapped RMSProp", "control")):
        ax[1].plot(_smooth(np.asarray(tr.loss[k]), w), label=lab, lw=1)
    ax[1].set(xlabel="step n", ylabel="mini-batch loss (smoothed)", yscale="log", title="loss curves")
    _below(ax[1], ncol=1)
    lre = np.asarray(cmp.lr_eff)
    for i, g in enumerate(pick):
        ax[2].plot(n, lre[0, :, g], c=f"C{i}", lw=1.5)
        ax[2].plot(n, lre[1, :, g], c=f"C{i}", ls="--", lw=1)
    ax[2].set(xlabel="step n", ylabel="effective learning rate", yscale="log", title=r"$\eta/r^2$ (—) vs lr/$\sqrt{G}$ (--)")
    path = out / f"nld_rmsprop_match_{cfg.model}_beta{beta:g}.png"
    write_figure(fig, path)
    figures["rmsprop_match"] = path

    fig, ax = plt.subplots(figsize=(WIDTH_IN * 0.7, 3.6), layout="constrained")
    for name, d in result.match_vs_lr.items():
        ax.loglog(d.median_eta_over_r2, d.max_angle_deg, "o-", label=_MATCH_LABELS.get(name, name))
    base = result.match_vs_lr["beta0"]
    ax.loglog(base.median_eta_over_r2, base.control_max_angle_deg, "x:", c="gray", label="β = 0, control (√G × 2)")
    ax.set(xlabel=r"median $\eta/r^2$ over the run", ylabel="max angle to SGD (deg)", title=f"match vs effective step ({base.steps} steps)")
    _below(ax, ncol=2)
    path = out / f"nld_match_vs_lr_{cfg.model}.png"
    write_figure(fig, path)
    figures["match_vs_lr"] = path

    a = result.init_x10
    fig, ax = plt.subplots(1, 2, figsize=(WIDTH_IN, 3.6), layout="constrained")
    for k, lab in enumerate(("×1", f"×{a.factor:g}")):
        ax[0].plot(_smooth(np.asarray(a.track.loss[k]), w), label=lab)
        ax[1].semilogy(np.median(a.lr_eff[k], axis=1), label=lab)
    ax[0].set(xlabel="step n", ylabel="mini-batch loss (smoothed)", yscale="log", title=f"×{a.factor:g} init of normalised filters")
    ax[1].set(xlabel="step n", ylabel=r"median $\eta/((1-\beta)r^2)$", title="effective learning rate")
    _below(ax[0]), _below(ax[1])
    path = out / f"nld_ablation_init_{cfg.model}.png"
    write_figure(fig, path)
    figures["ablation_init"] = path

    b = result.constrained
    fig, ax = plt.subplots(1, len(b.momentum), figsize=(WIDTH_IN, 3.6), squeeze=False, layout="constrained")
    for j, bj in enumerate(b.momentum):
        for k, wd in enumerate(b.weight_decay):
            ax[0, j].loglog(b.lr, b.unconstrained[:, j, k], "o-", c=f"C{k}", label=f"unconstrained λ={wd:g}")
            ax[0, j].loglog(b.lr, b.constrained[:, j, k], "s--", c=f"C{k}", label=f"constrained λ={wd:g}")
        ax[0, j].set(xlabel="learning rate η", ylabel="final training loss", title=f"β = {bj:g}")
    _below(ax[0, 0], ncol=2)
    path = out / f"nld_ablation_constrained_{cfg.model}.png"
    write_figure(fig, path)
    figures["ablation_constrained"] = path

    c = result.adam
    fig, ax = plt.subplots(1, 2, figsize=(WIDTH_IN, 3.6), layout="constrained")
    for i, (name, r) in enumerate(c.runs.items()):
        ax[0].plot(np.median(r.r2, 1), c=f"C{i}", label=f"{name} measured")
        ax[0].plot(np.median(r.pred, 1), c=f"C{i}", ls="--", label=f"{name} recursion")
        ax[1].semilogy(_smooth(np.median(r.angular_step, 1), w), c=f"C{i}", label=name)
    ax[0].set(xlabel="step n", ylabel=r"median $|W|^2$", title=r"$|W|^2 \leftarrow (1-\eta\lambda)^2|W|^2+\eta^2|u|^2$")
    ax[1].set(xlabel="step n", ylabel=r"median $\eta|u_\perp|/|W|$", title="angular step (double adaptivity)")
    _below(ax[0]), _below(ax[1])
    path = out / f"nld_adam_{cfg.model}.png"
    write_figure(fig, path)
    figures["adam"] = path
    return figures

"""Figures: per-neuron theory (dashed) against measurement (solid), and flows against discrete training (private).

Every function returns a :class:`matplotlib.figure.Figure`, so scripts, the report and notebooks can
show, save or embed it; :func:`write_figure` is the one writer of PNG files.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from .._io import atomic_write

TITLES = {
    "translation": r"translation: $\langle\theta_\mathcal{A}, \mathbb{1}\rangle$",
    "scale": r"scale: $|\theta_\mathcal{A}|^2$",
    "rescale": r"rescale: $|\theta_{\mathcal{A}_1}|^2 - |\theta_{\mathcal{A}_2}|^2$",
}


YLABELS = {
    "translation": r"$\langle\theta_\mathcal{A}, \mathbb{1}\rangle$ (sum of weights)",
    "scale": r"$|\theta_\mathcal{A}|^2$ (squared weight norm)",
    "rescale": r"$|\theta_{\mathcal{A}_1}|^2 - |\theta_{\mathcal{A}_2}|^2$",
}
WIDTH_IN = 7.2  # inches: 800 px at the writer's 110 dpi, the report's column


def _pick(measured: np.ndarray, k: int) -> np.ndarray:
    """Up to k groups spread over the range of how much their law was broken."""
    moved = np.max(np.abs(measured - measured[0]), axis=0)
    order = np.argsort(moved)
    if order.size <= k:
        return order
    return order[np.linspace(0, order.size - 1, k).round().astype(int)]


def relative_residual(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """(predicted − measured) / max(maxₜ|measured|, floor) per group: the signed series whose largest
    magnitude is the group's :func:`noether_jax.theory.relative_error` (same floor)."""
    from ..theory import error_floor

    m, p = np.asarray(measured, float), np.asarray(predicted, float)
    scale = np.maximum(np.max(np.abs(m), axis=0), float(error_floor(m)))
    return (p - m) / scale


def _residual_panel(ax, step: np.ndarray, r: np.ndarray, legend: bool) -> None:
    """Every group's relative residual (thin grey), their median and 10–90 % band."""
    ax.plot(step, r, color="0.55", lw=0.35, alpha=0.45)
    finite = np.isfinite(r).any(axis=1)
    lo, med, hi = (np.full(r.shape[0], np.nan) for _ in range(3))
    if finite.any():
        lo[finite], med[finite], hi[finite] = np.nanpercentile(r[finite], [10, 50, 90], axis=1)
    ax.fill_between(step, lo, hi, color="C1", alpha=0.35, lw=0, label="10–90 % of groups")
    ax.plot(step, med, color="C1", lw=1.6, label="median over groups")
    ax.plot([], [], color="0.55", lw=0.6, label=f"each of the {r.shape[1]} groups")
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_ylabel("(theory − measured)\n/ max|measured|", fontsize=8)
    ax.set_xlabel("training step n")
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def plot_conservation(
    step: np.ndarray, measured: Mapping[str, np.ndarray], predicted: Mapping[str, np.ndarray], *,
    names: Mapping[str, Any] | None = None, per_panel: int = 6, title: str = "",
) -> plt.Figure:
    """One column per symmetry. Top: ``per_panel`` groups spread over how far their law was broken, measured
    (solid, one colour each) against theory (dashed), the title saying "k of n groups shown". Bottom: the
    relative residual (theory − measured) / max|measured| of every group (thin), with their median and
    10–90 % band; its largest magnitude per group is the group's relative error. Legends sit outside.

    Example:
        >>> import numpy as np
        >>> from noether_jax import plots
        >>> step = np.arange(5); m = np.ones((5, 3)) + step[:, None] * 0.1
        >>> fig = plots.plot_conservation(step, {"scale": m}, {"scale": m * 1.01})
        >>> [ax.get_ylabel() != "" for ax in fig.axes]
        [True, True]
    """
    kinds = [k for k in ("translation", "scale", "rescale") if k in measured] or list(measured)[:1]
    n = max(len(kinds), 1)
    width = WIDTH_IN if n == 1 else 3.6 * n + 1.6
    fig, axes = plt.subplots(2, n, figsize=(width, 5.0), squeeze=False, sharex="col", layout="constrained",
                             gridspec_kw=dict(height_ratios=[2.0, 1.0]))
    for j, kind in enumerate(kinds):
        m, p = np.asarray(measured[kind], float), np.asarray(predicted[kind], float)
        top, bottom = axes[0, j], axes[1, j]
        pick = _pick(m, per_panel)
        for i, g in enumerate(pick):
            color = plt.cm.viridis(i / max(len(pick) - 1, 1))
            label = str(names[kind][g]).split(" (")[0][:32] if names is not None and kind in names and len(names[kind]) > g \
                else f"group {g}"
            top.plot(step, m[:, g], "-", color=color, lw=1.4, label=label)
            top.plot(step, p[:, g], "--", color="k", lw=0.8, alpha=0.85)
        top.plot([], [], "k--", lw=0.8, label="theory (each group)")
        top.set_title(f"{TITLES.get(kind, kind)}: {len(pick)} of {m.shape[1]} groups shown", fontsize=9)
        top.set_ylabel(YLABELS.get(kind, kind), fontsize=8)
        top.grid(alpha=0.3)
        last = j == n - 1
        if last:
            top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title="measured", title_fontsize=7)
        _residual_panel(bottom, np.asarray(step), relative_residual(p, m), legend=last)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_flows(flows: Mapping[str, np.ndarray], *, title: str = "") -> plt.Figure:
    """Discrete training against its modified flow and its gradient flow: loss and distance to θₙ."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(WIDTH_IN, 3.2), layout="constrained")
    s = flows["step"]
    a.plot(s, flows["loss_discrete"], "k-", lw=2.5, alpha=0.5, label="discrete (optax)")
    a.plot(s, flows["loss_modified"], "C0--", label="modified flow")
    a.plot(s, flows["loss_gradient"], "C3:", label="gradient flow")
    a.set_yscale("log")
    a.set_xlabel("training step n (t = nη)")
    a.set_ylabel("full-batch training loss")
    b.plot(s[1:], flows["dist_modified"][1:], "C0--")
    b.plot(s[1:], flows["dist_gradient"][1:], "C3:")
    b.set_yscale("log")
    b.set_xlabel("training step n (t = nη)")
    b.set_ylabel(r"$|\theta_{flow}(n\eta) - \theta_n|$ (parameter norm)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_errors(errors: Mapping[str, np.ndarray], *, title: str = "") -> plt.Figure:
    """Histogram of per-group relative errors, one colour per symmetry."""
    fig, ax = plt.subplots(figsize=(4.5, 3.2), layout="constrained")
    for i, (kind, e) in enumerate(errors.items()):
        e = np.asarray(e)
        bins = np.logspace(np.log10(max(e.min(), 1e-12)), np.log10(max(e.max(), 1e-11)), 20)
        ax.hist(e, bins=bins, alpha=0.6, color=f"C{i}", label=f"{kind} ({e.size})")
    ax.set_xscale("log")
    ax.set_xlabel("per-group relative error")
    ax.set_ylabel("groups")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def write_figure(fig: plt.Figure, path: str | os.PathLike | None = None, *, dpi: int = 110) -> str:
    """The one figure writer: render ``fig`` as PNG, save it atomically at ``path`` (when given), close it,
    and return the PNG as base64 (for a self-contained HTML report)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        atomic_write(path, data)
    return base64.b64encode(data).decode("ascii")


def encode_file(path: str | os.PathLike) -> str:
    """A PNG file as base64."""
    with open(path, "rb") as fh:
        return base64.b64encode(fh.read()).decode("ascii")

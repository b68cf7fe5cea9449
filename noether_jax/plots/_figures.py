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


def _pick(measured: np.ndarray, k: int) -> np.ndarray:
    """Up to k groups spread over the range of how much their law was broken."""
    moved = np.max(np.abs(measured - measured[0]), axis=0)
    order = np.argsort(moved)
    if order.size <= k:
        return order
    return order[np.linspace(0, order.size - 1, k).round().astype(int)]


def plot_conservation(
    step: np.ndarray, measured: Mapping[str, np.ndarray], predicted: Mapping[str, np.ndarray], *,
    names: Mapping[str, Any] | None = None, per_panel: int = 8, title: str = "",
) -> plt.Figure:
    """One panel per symmetry: each group's measured series (solid) and theory (dashed), same colour."""
    kinds = [k for k in ("translation", "scale", "rescale") if k in measured]
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(4.2 * max(len(kinds), 1), 3.4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        m, p = np.asarray(measured[kind]), np.asarray(predicted[kind])
        for j, g in enumerate(_pick(m, per_panel)):
            color = plt.cm.viridis(j / max(per_panel - 1, 1))
            label = None
            if names is not None and kind in names and len(names[kind]) > g:
                label = str(names[kind][g])[:28]
            ax.plot(step, m[:, g], "-", color=color, lw=1.6, label=label)
            ax.plot(step, p[:, g], "--", color="k", lw=0.9, alpha=0.8)
        ax.set_title(TITLES.get(kind, kind), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].plot([], [], "k--", lw=0.9, label="theory")
    axes[0][0].legend(fontsize=6, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_flows(flows: Mapping[str, np.ndarray], *, title: str = "") -> plt.Figure:
    """Discrete training against its modified flow and its gradient flow: loss and distance to θₙ."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    s = flows["step"]
    a.plot(s, flows["loss_discrete"], "k-", lw=2.5, alpha=0.5, label="discrete (optax)")
    a.plot(s, flows["loss_modified"], "C0--", label="modified flow")
    a.plot(s, flows["loss_gradient"], "C3:", label="gradient flow")
    a.set_yscale("log")
    a.set_xlabel("step")
    a.set_ylabel("training loss")
    a.legend(fontsize=8)
    b.plot(s[1:], flows["dist_modified"][1:], "C0-", label="modified flow")
    b.plot(s[1:], flows["dist_gradient"][1:], "C3-", label="gradient flow")
    b.set_yscale("log")
    b.set_xlabel("step")
    b.set_ylabel(r"$|\theta_{flow}(n\eta) - \theta_n|$")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_errors(errors: Mapping[str, np.ndarray], *, title: str = "") -> plt.Figure:
    """Histogram of per-group relative errors, one colour per symmetry."""
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for i, (kind, e) in enumerate(errors.items()):
        e = np.asarray(e)
        bins = np.logspace(np.log10(max(e.min(), 1e-12)), np.log10(max(e.max(), 1e-11)), 20)
        ax.hist(e, bins=bins, alpha=0.6, color=f"C{i}", label=f"{kind} ({e.size})")
    ax.set_xscale("log")
    ax.set_xlabel("per-group relative error")
    ax.set_ylabel("groups")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def write_figure(fig: plt.Figure, path: str | os.PathLike | None = None, *, dpi: int = 110) -> str:
    """The one figure writer: render ``fig`` as PNG, save it atomically at ``path`` (when given), close it,
    and return the PNG as base64 (for a self-contained HTML report)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        atomic_write(path, data)
    return base64.b64encode(data).decode("ascii")


def encode_file(path: str | os.PathLike) -> str:
    """A PNG file as base64."""
    with open(path, "rb") as fh:
        return base64.b64encode(fh.read()).decode("ascii")

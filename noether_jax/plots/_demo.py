"""The demo's figure (private)."""

from __future__ import annotations

import matplotlib.pyplot as plt


def plot_demo(result) -> plt.Figure:
    """The demo's |a|² and loss for the discrete run and its two flows."""

    styles = {"discrete": dict(color="k", lw=2.5), "modified flow": dict(color="C1", ls="--", lw=2), "gradient flow": dict(color="C0", ls=":", lw=2)}
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.4), layout="constrained")
    ts = result.ts
    for name, st in styles.items():
        axes[0].plot(ts, result.sq_norm_a[name], label=name, **st)
        axes[1].plot(ts, result.loss[name], label=name, **st)
    c = result.config
    axes[0].set(xlabel="t = n·η", ylabel="|a|² (conserved by gradient flow)", title="scale-invariant block")
    axes[1].set(xlabel="t = n·η", ylabel="loss", yscale="log", title="loss")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"SGD η={c['lr']}, β={c['momentum']}, λ={c['weight_decay']}: discrete run vs its continuous models")
    return fig

"""Figures: per-group measured series against their theory, flows against discrete training, sweep heat maps."""

from ._plots import plot_conservation, plot_errors, plot_flows
from ._sweep import sweep_figures

__all__ = ["plot_conservation", "plot_errors", "plot_flows", "sweep_figures"]

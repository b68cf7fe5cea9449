"""Figures (application tier; imports matplotlib): per-group measured series against their theory, flows
against discrete training, sweep heat maps, the NLD figures, and :func:`write_figure`, the one PNG writer."""

from ._demo import plot_demo
from ._figures import TITLES, YLABELS, encode_file, plot_conservation, plot_errors, plot_flows, relative_residual, write_figure
from ._nld import nld_figures
from ._sweep import sweep_figures, sweep_label

__all__ = ["TITLES", "YLABELS", "encode_file", "nld_figures", "plot_conservation", "plot_demo", "plot_errors", "plot_flows",
           "relative_residual", "sweep_figures", "sweep_label", "write_figure"]

"""Sweeps: a grid of training runs, with their per-group theory, as one vmapped, sharded, resumable program.

:func:`sweep` returns a labelled ``xarray.Dataset`` with a status per member; :func:`sweep_summary`
and :func:`status_names` read it. Figures of a sweep are in the application tier
(``nj.plots.sweep_figures``).
"""

from ._grid import HYPERS, data_key
from ._store import Store
from ._sweep import OPTIMIZERS, status_names, sweep, sweep_summary

__all__ = ["HYPERS", "OPTIMIZERS", "Store", "data_key", "status_names", "sweep", "sweep_summary"]

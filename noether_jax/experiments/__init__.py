"""Experiments (application tier): runs that return typed results, for the report and the command line.

* :func:`neural_mechanics` (:class:`NMConfig`): detect, train, record and score one model;
* :func:`compare_flows`: discrete training against its modified and gradient flows on a network;
* :func:`run_demo`: the five-parameter demo of a broken conservation law;
* :mod:`noether_jax.experiments.nld`: the experiments of Noether's Learning Dynamics (:func:`run_nld`).
"""

from . import nld
from .demo import DemoResult, demo_init, demo_loss, discrete_run, format_table, run_demo
from .neural_mechanics import (
    FlowComparison,
    NMConfig,
    NMResult,
    compare_flows,
    group_errors,
    load_data,
    neural_mechanics,
    sharpness_every,
    summarise,
    to_dataset,
)
from .nld import NLDConfig, NLDResult, run_nld

__all__ = [
    "DemoResult",
    "FlowComparison",
    "NLDConfig",
    "NLDResult",
    "NMConfig",
    "NMResult",
    "compare_flows",
    "demo_init",
    "demo_loss",
    "discrete_run",
    "format_table",
    "group_errors",
    "load_data",
    "neural_mechanics",
    "nld",
    "run_demo",
    "run_nld",
    "sharpness_every",
    "summarise",
    "to_dataset",
]

"""The demo: a discrete optax run against its modified flow and its gradient flow.

The loss has a scale-invariant block a ∈ ℝ³ (it sees only a/|a|) and an ordinary block b ∈ ℝ². Under
gradient flow |a|² is conserved; a finite learning rate breaks that conservation law, and the modified
flow (η(1+β)/2)θ̈ + (1−β)θ̇ = −∇V predicts by how much.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..mechanics import simulate
from ..rules import sgd
from ..training import Batches, Engine, SaveParams, StabilityGuard, lambda_max, run

_U = np.array([0.6, -0.8, 0.0])
_W = np.array([[1.0, 0.5, -0.3], [-0.2, 0.4, 0.9]])


def demo_loss(params: dict[str, jax.Array]) -> jax.Array:
    """A 5-parameter loss, invariant under a ↦ e^α a."""
    a, b = params["a"], params["b"]
    a_hat = a / jnp.linalg.norm(a)
    u, w = jnp.asarray(_U, a.dtype), jnp.asarray(_W, a.dtype)
    return 1.0 - a_hat @ u + 0.5 * jnp.sum((b - w @ a_hat) ** 2) + 0.25 * jnp.sum(b**2) ** 2


def demo_init(dtype=None) -> dict[str, jax.Array]:
    dtype = dtype or jnp.result_type(float)
    return {"a": jnp.array([0.3, 0.9, -0.6], dtype), "b": jnp.array([0.5, -1.0], dtype)}


def discrete_run(rule, loss, params, steps: int):
    """Run ``rule.optimizer()`` for ``steps`` full-batch steps (the training engine); return the parameters
    at every step and the run's divergence step (−1: none)."""
    engine = Engine(lambda p, s, b: (loss(p), s), [rule.optimizer()], Batches(jnp.zeros((1, 1)), jnp.zeros(1)),
                    hooks={"params": SaveParams()})
    out = jax.jit(lambda p: run(engine, [p], [{}], jax.random.key(0), steps=steps, save_every=1))(params)
    return out.saved["params"], int(out.diverged_step[0])


@dataclasses.dataclass
class DemoResult:
    """The three runs of the demo and their comparison (``table``: one row per run).

    ``guard``: η·λ_max along the discrete run (11 points) against 2(1+β) (beyond it no continuous
    model applies) and whether the discrete run diverged.
    """

    config: dict[str, Any]
    ts: np.ndarray
    sq_norm_a: dict[str, np.ndarray]
    loss: dict[str, np.ndarray]
    table: list[dict[str, Any]]
    guard: StabilityGuard

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "table": self.table, "stability": self.guard.summary()}


def run_demo(*, lr: float = 0.05, momentum: float = 0.0, weight_decay: float = 0.0, time: float = 20.0) -> DemoResult:
    """Compute the three runs and their comparison.

    Example:
        >>> from noether_jax.experiments import run_demo
        >>> res = run_demo(lr=0.1, time=2.0)
        >>> [r["run"] for r in res.table], bool(res.guard.valid)
        (['discrete', 'modified flow', 'gradient flow'], True)
    """
    rule = sgd(lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps = int(round(time / lr))
    if steps < 1:
        raise ValueError(f"`time` ({time}) must cover at least one step of size lr={lr}.")
    p0 = demo_init()
    ts = jnp.arange(steps + 1) * rule.lr
    disc, diverged_step = discrete_run(rule, demo_loss, p0, steps)
    at = np.unique(np.linspace(0, steps, 11).round().astype(int))  # λ_max along the discrete run
    lam = jax.vmap(lambda p: lambda_max(demo_loss, p, weight_decay=rule.weight_decay))(jax.tree.map(lambda a: a[at], disc))
    guard = StabilityGuard.from_edge(lam, rule.edge(), jnp.asarray(at), diverged_step)
    v0 = rule.initial_velocity(p0, jax.grad(demo_loss)(p0))
    opts = dict(t1=ts[-1], ts=ts, rtol=1e-8, atol=1e-10, max_steps=200_000, throw=False)
    mod = simulate(rule.lagrangian(demo_loss), p0, v0, **opts).q
    gf = simulate(rule.gradient_flow(demo_loss), p0, **opts).q

    def sq_norm_a(q):
        return np.asarray(jnp.sum(q["a"] ** 2, axis=-1))

    def losses(q):
        return np.asarray(jax.vmap(demo_loss)(q))

    def dist(q):
        return float(max(jnp.max(jnp.linalg.norm(q[k] - disc[k], axis=-1)) for k in q))

    runs = {"discrete": disc, "modified flow": mod, "gradient flow": gf}
    x0 = float(sq_norm_a(disc)[0])
    x_disc = float(sq_norm_a(disc)[-1])
    rows = []
    for name, q in runs.items():
        x_end = float(sq_norm_a(q)[-1])
        rows.append({
            "run": name,
            "|a|^2 at T": x_end,
            "broken amount captured": (x_end - x0) / (x_disc - x0) if x_disc != x0 else float("nan"),
            "loss at T": float(losses(q)[-1]),
            "max |θ - θ_discrete|": dist(q),
        })
    config = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "time": time, "steps": steps}
    return DemoResult(config, np.asarray(ts), {k: sq_norm_a(q) for k, q in runs.items()}, {k: losses(q) for k, q in runs.items()},
                      rows, guard)


def format_table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    widths = [max(len(k), 14) for k in keys]
    line = " | ".join(k.ljust(w) for k, w in zip(keys, widths))
    out = [line, "-+-".join("-" * w for w in widths)]
    for r in rows:
        out.append(" | ".join((f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k])).ljust(w) for k, w in zip(keys, widths)))
    return "\n".join(out)

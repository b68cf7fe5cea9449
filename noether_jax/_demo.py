"""The demo: a discrete optax run against its modified flow and its gradient flow.

The loss has a scale-invariant block a ∈ ℝ³ (it sees only a/|a|) and an ordinary block b ∈ ℝ². Under
gradient flow |a|² is conserved; a finite learning rate breaks that conservation law, and the modified
flow (THEORY.md §1) predicts by how much.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._integrate import simulate
from ._rules import sgd

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
    """Run ``rule.optimizer()`` for ``steps`` full-batch steps; return the parameters at every step."""
    opt = rule.optimizer()

    @jax.jit
    def run(p):
        def step(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            u, s = opt.update(g, s, p)
            p = optax.apply_updates(p, u)
            return (p, s), p

        _, ps = jax.lax.scan(step, (p, opt.init(p)), None, length=steps)
        return jax.tree.map(lambda x0, xs: jnp.concatenate([x0[None], xs]), p, ps)

    return run(params)


def run_demo(lr: float = 0.05, momentum: float = 0.0, weight_decay: float = 0.0, time: float = 20.0) -> dict[str, Any]:
    """Compute the three runs and their comparison; returns arrays and a summary table."""
    rule = sgd(lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps = int(round(time / lr))
    if steps < 1:
        raise ValueError(f"`time` ({time}) must cover at least one step of size lr={lr}.")
    p0 = demo_init()
    ts = jnp.arange(steps + 1) * rule.lr
    disc = discrete_run(rule, demo_loss, p0, steps)
    v0 = rule.initial_velocity(p0, jax.grad(demo_loss)(p0))
    opts = dict(t1=ts[-1], ts=ts, rtol=1e-8, atol=1e-10, max_steps=200_000)
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
        rows.append(
            {
                "run": name,
                "|a|^2 at T": x_end,
                "broken amount captured": (x_end - x0) / (x_disc - x0) if x_disc != x0 else float("nan"),
                "loss at T": float(losses(q)[-1]),
                "max |θ - θ_discrete|": dist(q),
            }
        )
    return {
        "config": {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "time": time, "steps": steps},
        "ts": np.asarray(ts),
        "sq_norm_a": {k: sq_norm_a(q) for k, q in runs.items()},
        "loss": {k: losses(q) for k, q in runs.items()},
        "table": rows,
    }


def plot_demo(result: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    styles = {"discrete": dict(color="k", lw=2.5), "modified flow": dict(color="C1", ls="--", lw=2), "gradient flow": dict(color="C0", ls=":", lw=2)}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ts = result["ts"]
    for name, st in styles.items():
        axes[0].plot(ts, result["sq_norm_a"][name], label=name, **st)
        axes[1].plot(ts, result["loss"][name], label=name, **st)
    c = result["config"]
    axes[0].set(xlabel="t = n·η", ylabel="|a|² (conserved by gradient flow)", title="Scale-invariant block: broken conservation law")
    axes[1].set(xlabel="t = n·η", ylabel="loss", yscale="log", title="Loss")
    axes[0].legend()
    fig.suptitle(f"SGD η={c['lr']}, β={c['momentum']}, λ={c['weight_decay']}: discrete run vs its continuous models")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    widths = [max(len(k), 14) for k in keys]
    line = " | ".join(k.ljust(w) for k, w in zip(keys, widths))
    out = [line, "-+-".join("-" * w for w in widths)]
    for r in rows:
        out.append(" | ".join((f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k])).ljust(w) for k, w in zip(keys, widths)))
    return "\n".join(out)

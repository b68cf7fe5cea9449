"""Validity guard for continuous models: the edge of stability (THEORY.md §1, "Where the continuous model holds").

The discrete iteration is linearly stable only if η·λ_max(H) < 2 (GD) or η·λ_max(H) < 2(1+β) (heavy
ball), with H the Hessian of V = ℒ + (λ/2)|θ|². Beyond that no modified flow applies. λ_max is found
matrix-free, from Hessian-vector products ``jax.jvp(jax.grad(V))``: by Lanczos (default) or by power
iteration. Power iteration converges to the eigenvalue of largest magnitude; when that is negative a
second, shifted iteration on H − λI finds the largest one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray, PyTree, Scalar

from ._misc import check_hyper, check_scalar, tree_sq_norm


def _hvp_flat(loss: Callable[[PyTree], Scalar], params: PyTree, weight_decay) -> tuple[Callable[[Array], Array], Array]:
    flat, unravel = ravel_pytree(params)

    def grad_v(p):
        return jax.grad(lambda q: check_scalar(loss(q), "the loss") + 0.5 * weight_decay * tree_sq_norm(q))(p)

    def hvp(v):
        return ravel_pytree(jax.jvp(grad_v, (params,), (unravel(v),))[1])[0]

    return hvp, flat


def _power(hvp, v0, iters: int, tol: float, shift):
    def body(c):
        i, v, lam, _ = c
        w = hvp(v) - shift * v
        lam_new = jnp.vdot(v, w)
        nrm = jnp.linalg.norm(w)
        v = jnp.where(nrm > 0, w / jnp.where(nrm > 0, nrm, 1.0), v)
        return i + 1, v, lam_new, jnp.abs(lam_new - lam) <= tol * jnp.abs(lam_new)

    def cond(c):
        i, _, _, done = c
        return (i < iters) & ~done

    v0 = v0 / jnp.linalg.norm(v0)
    _, v, lam, _ = jax.lax.while_loop(cond, body, (0, v0, jnp.asarray(0.0, v0.dtype), jnp.asarray(False)))
    return lam + shift, v


def _lanczos(hvp, v0, k: int):
    """k steps of Lanczos with full reorthogonalisation; the top Ritz value and its vector."""
    d = v0.shape[0]
    v0 = v0 / jnp.linalg.norm(v0)
    basis = jnp.zeros((k, d), v0.dtype).at[0].set(v0)

    def body(i, c):
        basis, alpha, beta = c
        v = basis[i]
        w = hvp(v)
        a = jnp.vdot(v, w)
        mask = (jnp.arange(k) <= i)[:, None]
        for _ in range(2):  # full reorthogonalisation, twice ("twice is enough")
            w = w - (mask * basis).T @ ((mask * basis) @ w)
        b = jnp.linalg.norm(w)
        nxt = jnp.where(b > 1e-12 * jnp.abs(a) + 1e-300, w / jnp.where(b > 0, b, 1.0), 0.0)
        basis = jnp.where(i + 1 < k, basis.at[jnp.minimum(i + 1, k - 1)].set(nxt), basis)
        return basis, alpha.at[i].set(a), beta.at[i].set(b)

    basis, alpha, beta = jax.lax.fori_loop(0, k, body, (basis, jnp.zeros(k, v0.dtype), jnp.zeros(k, v0.dtype)))
    # Breakdown (b ≈ 0) leaves zero basis vectors; their rows give spurious zero Ritz values only.
    live = jnp.concatenate([jnp.ones(1, bool), jnp.cumprod(beta[:-1] > 1e-12 * (jnp.abs(alpha[:-1]) + 1e-300)) > 0])
    big = jnp.max(jnp.abs(alpha)) + jnp.sum(beta) + 1.0
    t = jnp.diag(jnp.where(live, alpha, -4.0 * big)) + jnp.diag(jnp.where(live[1:], beta[:-1], 0.0), 1) + jnp.diag(
        jnp.where(live[1:], beta[:-1], 0.0), -1
    )
    evals, evecs = jnp.linalg.eigh(t)
    return evals[-1], basis.T @ evecs[:, -1]


def lambda_max(
    loss: Callable[[PyTree], Scalar],
    params: PyTree,
    *,
    weight_decay: ArrayLike = 0.0,
    key: PRNGKeyArray | None = None,
    method: Literal["lanczos", "power"] = "lanczos",
    iters: int = 30,
    tol: float = 1e-10,
) -> Scalar:
    """The largest eigenvalue of the Hessian of ℒ + (λ/2)|θ|² at ``params``, matrix-free (HVPs only).

    ``method="lanczos"``: ``iters`` Lanczos steps (capped at d) with full reorthogonalisation;
    ``"power"``: at most ``iters`` power iterations, stopping at relative change ``tol`` (use a few
    hundred iterations when the top of the spectrum is clustered). Works under jit and vmap.

    Example:
        >>> import jax.numpy as jnp
        >>> from noether_jax.stochastic import lambda_max
        >>> h = jnp.array([[2.0, 1.0], [1.0, 2.0]])
        >>> round(float(lambda_max(lambda p: 0.5 * p @ h @ p, jnp.zeros(2))), 6)
        3.0
    """
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"`iters` must be a positive int, got {iters!r}.")
    wd = check_hyper("weight_decay", weight_decay, lower=0.0, lower_open=False, fix="Coupled weight decay λ must be ≥ 0.")
    hvp, flat = _hvp_flat(loss, params, wd)
    key = jax.random.key(0) if key is None else key
    v0 = jax.random.normal(key, flat.shape, jnp.result_type(flat.dtype, float))
    if method == "lanczos":
        return _lanczos(hvp, v0, min(iters, int(flat.shape[0])))[0]
    if method == "power":
        lam, _ = _power(hvp, v0, iters, tol, jnp.zeros((), v0.dtype))
        # dominant eigenvalue negative: shift so that the largest (algebraic) one dominates
        return jax.lax.cond(lam < 0, lambda: _power(hvp, v0, iters, tol, lam)[0], lambda: lam)
    raise ValueError(f"`method` must be 'lanczos' or 'power', got {method!r}.")


class StabilityGuard(eqx.Module):
    """Where the continuous model holds, as data (one run, or one entry per step/run along leading axes).

    Attributes:
        lambda_max: λ_max of the Hessian of ℒ + (λ/2)|θ|².
        lr, momentum: η and β.
        sharpness: η·λ_max.
        threshold: 2(1+β) (2 for GD): the edge of stability for η·λ_max.
        flagged: η·λ_max > 2(1+β): no modified flow (nor SDE) applies there.
    """

    lambda_max: Float[Array, "*S"]
    lr: Float[Array, "*S"]
    momentum: Float[Array, "*S"]
    sharpness: Float[Array, "*S"]
    threshold: Float[Array, "*S"]
    flagged: Bool[Array, "*S"]

    @property
    def any_flagged(self) -> Array:
        """True when any entry is beyond the edge of stability."""
        return jnp.any(self.flagged)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary for reports: max λ_max and η·λ_max, the threshold, the flagged count."""
        flagged = np.asarray(self.flagged)
        return {
            "lambda_max": float(np.max(np.asarray(self.lambda_max))),
            "sharpness": float(np.max(np.asarray(self.sharpness))),
            "threshold": float(np.min(np.asarray(self.threshold))),
            "flagged": int(flagged.sum()),
            "checked": int(flagged.size),
            "valid": not bool(flagged.any()),
        }


def _check_lr_beta(lr, momentum):
    lr = check_hyper("lr", lr, lower=0.0, fix="The learning rate must be positive.")
    beta = check_hyper("momentum", momentum, lower=0.0, upper=1.0, lower_open=False,
                       fix="Heavy-ball momentum β must satisfy 0 ≤ β < 1.")
    return lr, beta


def edge_of_stability(lam: ArrayLike, lr: ArrayLike, momentum: ArrayLike = 0.0) -> StabilityGuard:
    """Flag η·λ_max > 2(1+β) for given λ_max values (broadcast against ``lr`` and ``momentum``).

    Example:
        >>> from noether_jax.stochastic import edge_of_stability
        >>> g = edge_of_stability(10.0, lr=[0.1, 0.25], momentum=0.0)
        >>> g.flagged.tolist(), g.threshold.tolist()
        ([False, True], [2.0, 2.0])
    """
    lr, beta = _check_lr_beta(lr, momentum)
    lam = jnp.asarray(lam, jnp.result_type(float))
    lam, lr, beta = jnp.broadcast_arrays(lam, lr, beta)
    sharp = lr * lam
    thr = 2.0 * (1.0 + beta)
    return StabilityGuard(lam, lr, beta, sharp, thr, sharp > thr)


def stability_guard(
    loss: Callable[[PyTree], Scalar],
    params: PyTree,
    lr: ArrayLike,
    momentum: ArrayLike = 0.0,
    weight_decay: ArrayLike = 0.0,
    *,
    along_path: bool = False,
    key: PRNGKeyArray | None = None,
    method: Literal["lanczos", "power"] = "lanczos",
    iters: int = 30,
) -> StabilityGuard:
    """Estimate λ_max(H) at ``params`` (or at every step of a path) and flag the edge of stability.

    ``along_path=True``: every leaf of ``params`` has a leading step axis (e.g. the saved ``params`` of
    a run); λ_max is computed at each (vmapped) and ``flagged`` marks the steps beyond the edge.

    Example:
        >>> import jax.numpy as jnp
        >>> from noether_jax.stochastic import stability_guard
        >>> loss = lambda p: 0.5 * (3.0 * p[0] ** 2 + p[1] ** 2)           # λ_max = 3
        >>> [bool(stability_guard(loss, jnp.zeros(2), lr).flagged) for lr in (0.6, 0.7)]
        [False, True]
        >>> bool(stability_guard(loss, jnp.zeros(2), 0.7, momentum=0.5).flagged)   # 2.1 < 3
        False
    """
    lr, beta = _check_lr_beta(lr, momentum)

    def one(p):
        return lambda_max(loss, p, weight_decay=weight_decay, key=key, method=method, iters=iters)

    lam = jax.vmap(one)(params) if along_path else one(params)
    return edge_of_stability(lam, lr, beta)

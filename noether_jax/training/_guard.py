"""The one validity guard of the library: divergence and the edge of stability.

The discrete iteration is linearly stable only if η·λ_max(H) < 2 (GD) or η·λ_max(H) < 2(1+β)
(heavy ball), with H the Hessian of V = ℒ + (λ/2)|θ|²; a preconditioned or adaptive rule compares
η·λ_max(P^{-1/2}HP^{-1/2}) with its own threshold (the rule's :meth:`edge`). Beyond it no modified
flow applies. λ_max is found matrix-free, from Hessian-vector products ``jax.jvp(jax.grad(V))``: by
Lanczos (default) or by power iteration. Power iteration converges to the eigenvalue of largest
magnitude; when that is negative a second, shifted iteration on H − λI finds the largest one.

:class:`StabilityGuard` is attached to every training result; it owns the definition of the flags.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree, Scalar

from .._tree import tree_sq_norm
from .._validate import check_scalar, hyper


def _hvp_flat(loss: Callable[[PyTree], Scalar], params: PyTree, weight_decay, preconditioner=None):
    flat, unravel = ravel_pytree(params)

    def grad_v(p):
        return jax.grad(lambda q: check_scalar(loss(q), "the loss") + 0.5 * weight_decay * tree_sq_norm(q))(p)

    def hvp(v):
        return ravel_pytree(jax.jvp(grad_v, (params,), (unravel(v),))[1])[0]

    if preconditioner is None:
        return hvp, flat
    scale = 1.0 / jnp.sqrt(ravel_pytree(preconditioner)[0].astype(flat.dtype))
    return (lambda v: scale * hvp(scale * v)), flat


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
    preconditioner: PyTree | None = None,
    key: PRNGKeyArray | None = None,
    method: Literal["lanczos", "power"] = "lanczos",
    iters: int = 30,
    tol: float = 1e-10,
) -> Scalar:
    """The largest eigenvalue of the Hessian of ℒ + (λ/2)|θ|² at ``params``, matrix-free (HVPs only).

    With ``preconditioner`` P (a positive pytree like ``params``): the largest eigenvalue of
    P^{-1/2}(H + λI)P^{-1/2}, the sharpness that a diagonally preconditioned step sees.

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
    wd = hyper("weight_decay", weight_decay)
    hvp, flat = _hvp_flat(loss, params, wd, preconditioner)
    key = jax.random.key(0) if key is None else key
    v0 = jax.random.normal(key, flat.shape, jnp.result_type(flat.dtype, float))
    if method == "lanczos":
        return _lanczos(hvp, v0, min(iters, int(flat.shape[0])))[0]
    if method == "power":
        lam, _ = _power(hvp, v0, iters, tol, jnp.zeros((), v0.dtype))
        # dominant eigenvalue negative: shift so that the largest (algebraic) one dominates
        return jax.lax.cond(lam < 0, lambda: _power(hvp, v0, iters, tol, lam)[0], lambda: lam)
    raise ValueError(f"`method` must be 'lanczos' or 'power', got {method!r}.")


STATUS = {0: "ok", 1: "diverged", 2: "nan", 3: "invalid", 4: "edge_of_stability"}
"""Status codes of a run (the sweep's ``status`` variable, the Recorder's ``Record.status``)."""


class StabilityGuard(eqx.Module):
    """Where the continuous model holds, as data: the divergence and edge-of-stability flags of a run.

    Attributes:
        step: the steps at which λ_max was estimated (empty when it was not).
        lambda_max: λ_max of the (preconditioned) Hessian of ℒ + (λ/2)|θ|² at those steps.
        lr: η; ``sharpness`` = η·λ_max.
        threshold: the rule's edge of stability for η·λ_max: 2(1+β) for heavy ball (2 for GD); NaN
            when no threshold is known (a bare optax transformation; ``label`` says why).
        diverged_step: first step whose loss or parameters were not finite or exploded (−1: none).
        label: what the threshold is.

    ``edge`` is 1.0 where η·λ_max > threshold, 0.0 where not, NaN where unknown (no threshold, or a
    λ_max that is not finite); ``valid`` is True only when every estimate is finite and at or below a
    known threshold and the run did not diverge.
    """

    step: Int[Array, " P"]
    lambda_max: Float[Array, "*S"]
    lr: Float[Array, "*S"]
    sharpness: Float[Array, "*S"]
    threshold: Float[Array, "*S"]
    diverged_step: Int[Array, ""]
    label: str = eqx.field(static=True, default="2(1+β) (heavy ball)")

    @classmethod
    def from_edge(cls, lam: ArrayLike, edge: Any, step: ArrayLike, diverged_step: ArrayLike = -1) -> StabilityGuard:
        """The guard of λ_max estimates ``lam`` under a rule's :class:`~noether_jax.rules.EdgeOfStability`
        (None: no threshold known)."""
        lam = jnp.asarray(lam)
        if edge is None:
            nan = jnp.full(lam.shape, jnp.nan, lam.dtype)
            return cls(jnp.asarray(step), lam, nan, nan, nan, jnp.asarray(diverged_step), "no threshold known")
        lr = jnp.broadcast_to(jnp.asarray(edge.lr, lam.dtype), lam.shape)
        thr = jnp.broadcast_to(jnp.asarray(edge.threshold, lam.dtype), lam.shape)
        return cls(jnp.asarray(step), lam, lr, lr * lam, thr, jnp.asarray(diverged_step), edge.label)

    @property
    def diverged(self) -> Bool[Array, "*B"]:
        return self.diverged_step >= 0

    def _estimates(self) -> tuple[int, ...]:
        """The axes of the estimates of one run: those after the run axes of ``diverged_step`` (a vmapped
        guard has a leading member axis, which the per-run reductions keep: no member sees another)."""
        return tuple(range(jnp.ndim(self.diverged_step), jnp.ndim(self.sharpness)))

    @property
    def edge(self) -> Float[Array, "*S"]:
        known = jnp.isfinite(self.threshold) & jnp.isfinite(self.sharpness)
        return jnp.where(known, (self.sharpness > self.threshold).astype(self.sharpness.dtype), jnp.nan)

    @property
    def flagged(self) -> Bool[Array, "*S"]:
        """η·λ_max > threshold (False where unknown; see ``edge`` for the NaN-aware flag)."""
        return self.edge == 1.0

    @property
    def any_flagged(self) -> Bool[Array, "*B"]:
        """True when any estimate of a run is beyond the edge of stability (per member when vmapped)."""
        return jnp.any(self.flagged, axis=self._estimates())

    @property
    def valid(self) -> Bool[Array, "*B"]:
        """Every estimate finite and at or below a known threshold, and no divergence (per member when vmapped)."""
        return jnp.all(self.edge == 0.0, axis=self._estimates()) & ~self.diverged

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary for reports (concrete values only)."""
        lam, sharp, edge = (np.asarray(a, float) for a in (self.lambda_max, self.sharpness, self.edge))
        step = np.asarray(self.step)
        finite = np.isfinite(lam)
        out: dict[str, Any] = {
            "diverged": bool(np.asarray(self.diverged)),
            "diverged_step": int(np.asarray(self.diverged_step)) if bool(np.asarray(self.diverged)) else None,
            "checked": int(lam.size),
            "threshold": float(np.min(np.asarray(self.threshold))) if lam.size and np.isfinite(self.threshold).any() else None,
            "threshold_label": self.label,
            "lambda_max": float(np.max(lam[finite])) if finite.any() else None,
            "max_sharpness": float(np.max(sharp[np.isfinite(sharp)])) if np.isfinite(sharp).any() else None,
            "flagged": int(np.sum(edge == 1.0)),
            "not_finite": int(np.sum(~finite)),
            "valid": bool(np.asarray(self.valid)) if lam.size else not bool(np.asarray(self.diverged)),
        }
        if step.size == lam.size and lam.ndim == 1:
            out["step"] = step.tolist()
            out["flagged_steps"] = step[edge == 1.0].tolist()
            out["not_finite_steps"] = step[~finite].tolist()
        return out


def edge_of_stability(lam: ArrayLike, *, lr: ArrayLike, momentum: ArrayLike = 0.0) -> StabilityGuard:
    """Flag η·λ_max > 2(1+β) for given λ_max values (broadcast against ``lr`` and ``momentum``).

    Example:
        >>> from noether_jax.stochastic import edge_of_stability
        >>> g = edge_of_stability(10.0, lr=[0.1, 0.25], momentum=0.0)
        >>> g.flagged.tolist(), g.threshold.tolist()
        ([False, True], [2.0, 2.0])
    """
    lr, beta = hyper("lr", lr), hyper("momentum", momentum)
    lam = jnp.asarray(lam, jnp.result_type(float))
    lam, lr, beta = jnp.broadcast_arrays(lam, lr, beta)
    sharp = lr * lam
    step = jnp.zeros((0,), jnp.int32)
    return StabilityGuard(step, lam, lr, sharp, 2.0 * (1.0 + beta), jnp.asarray(-1, jnp.int32))


def stability_guard(
    loss: Callable[[PyTree], Scalar],
    params: PyTree,
    *,
    lr: ArrayLike,
    momentum: ArrayLike = 0.0,
    weight_decay: ArrayLike = 0.0,
    along_path: bool = False,
    key: PRNGKeyArray | None = None,
    method: Literal["lanczos", "power"] = "lanczos",
    iters: int = 30,
) -> StabilityGuard:
    """Estimate λ_max(H) at ``params`` (or at every step of a path) and flag the edge of stability.

    ``along_path=True``: every leaf of ``params`` has a leading step axis (e.g. the saved ``params`` of
    a run); λ_max is computed at each (vmapped) and ``flagged`` marks the steps beyond the edge. A loss
    that is not finite gives a λ_max that is not finite, which is never valid.

    Example:
        >>> import jax.numpy as jnp
        >>> from noether_jax.stochastic import stability_guard
        >>> loss = lambda p: 0.5 * (3.0 * p[0] ** 2 + p[1] ** 2)           # λ_max = 3
        >>> [bool(stability_guard(loss, jnp.zeros(2), lr=lr).flagged) for lr in (0.6, 0.7)]
        [False, True]
        >>> bool(stability_guard(loss, jnp.zeros(2), lr=0.7, momentum=0.5).flagged)   # 2.1 < 3
        False
    """
    lr, beta = hyper("lr", lr), hyper("momentum", momentum)

    def one(p):
        return lambda_max(loss, p, weight_decay=weight_decay, key=key, method=method, iters=iters)

    lam = jax.vmap(one)(params) if along_path else one(params)
    return edge_of_stability(lam, lr=lr, momentum=beta)

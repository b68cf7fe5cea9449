"""The Recorder's hooks: per-group conservation laws, Noether charges and kinetic symmetry breaking, and
companion runs trained in lockstep (private)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, PyTree

from .. import theory
from .._tree import cast_floats, float_dtype
from ..rules import AbstractAdaptive, AbstractRule
from ..symmetry import KineticSymmetryBreaking, NoetherCharge, gradient_residuals, pair, parts
from ._engine import Hook, Snapshot, Start, Step

BUDGET_PARTS = ("dissipation", "kinetic_asymmetry", "metric", "potential")


class Conservation(Hook):
    """The Recorder's hook: per group X, the rule's laws fed the step's forcing, and |g_𝒜|²."""

    symmetries: dict
    laws: dict
    nld: dict
    rule: AbstractRule | None
    lr: Array

    def _measure(self, p):
        return {k: pair(s, p, p) for k, s in self.symmetries.items()}

    def init(self, start: Start):
        p, g = start.params[0], start.grads[0]
        x0 = self._measure(p)
        if self.rule is not None and (any(self.laws.values()) or self.nld):
            v0 = cast_floats(self.rule.initial_velocity(p, g), float_dtype(p))
            rate0 = {k: jax.jvp(lambda q, s=s: pair(s, q, q), (p,), (v0,))[1] for k, s in self.symmetries.items()}
        else:
            rate0 = {k: jnp.zeros_like(v) for k, v in x0.items()}
        laws = {k: {n: law.init(x0[k], rate0[k]) for n, law in self.laws[k].items()} for k in self.symmetries}
        nld = {n: law.init(x0["scale"], rate0["scale"]) for n, law in self.nld.items()} if "scale" in x0 else {}
        residual = {k: jnp.max(gradient_residuals(s, p, g), initial=0.0) for k, s in self.symmetries.items()}
        return {"laws": laws, "nld": nld, "grad_sq": {k: jnp.full_like(v, jnp.nan) for k, v in x0.items()},
                "residual": residual}

    def step(self, state, info: Step):
        p, p_new, g = info.params[0], info.new_params[0], info.grads[0]
        vel = jax.tree.map(lambda a, b: (a - b) / self.lr.astype(a.dtype), p_new, p)
        forcing = {k: theory.Forcing(pair(s, p, p), pair(s, g, g), pair(s, vel, vel)) for k, s in self.symmetries.items()}
        laws = {k: {n: law.update(state["laws"][k][n], forcing[k]) for n, law in self.laws[k].items()} for k in self.symmetries}
        nld = {n: law.update(state["nld"][n], forcing["scale"]) for n, law in self.nld.items()}
        return {"laws": laws, "nld": nld, "grad_sq": {k: f.grad_sq for k, f in forcing.items()}, "residual": state["residual"]}

    def save(self, state, snap):
        x = self._measure(snap.params[0])

        def law_value(k, name):
            law = self.laws[k].get(name)
            return law.value(state["laws"][k][name]) if law is not None else jnp.full_like(x[k], jnp.nan)

        fdt = jnp.result_type(float)
        nld = {n: law.value(state["nld"][n]) for n, law in self.nld.items()}
        return {"measured": x, "theory": {k: law_value(k, "theory") for k in x}, "identity": {k: law_value(k, "identity") for k in x},
                "grad_sq": state["grad_sq"], "nld": nld, "residual": state["residual"],
                "no_scale": jnp.zeros((0,), fdt)}


class NoetherHook(Hook):
    """Kinetic symmetry breaking and the charge budget of run 0 at every save point.

    At a save point, from the last step θ → θ' with the applied mini-batch gradient g = ∇ℒ_batch(θ), at
    (θ, v) with v = (θ' − θ)/η (where g and the symmetry's generator ξ(θ) meet), per group of every kind:

    * ``ksb``: |δ_gK(θ, v)| / 2K(θ, v), the share of the kinetic energy that the learning rule breaks
      the symmetry by (exactly 0 for translation under a Euclidean kinetic energy; the group's share of
      |v|² for scale);
    * the rates of the charge budget dQ̃/dt = dissipation + kinetic asymmetry + metric + potential:
      −ρQ̃, ⟨p, (∂ξ)v⟩, ⟨∂K/∂θ, ξ⟩ and −⟨g + λθ, ξ⟩ (the gradient of the regularised mini-batch loss).

    NaN at step 0 (no velocity yet). The Record integrates the rates over the save points.
    """

    symmetries: dict
    rule: AbstractRule
    lr: Array

    def init(self, start: Start):
        p, g = start.params[0], start.grads[0]
        return {"q": p, "v": jax.tree.map(jnp.zeros_like, p), "g": g, "started": jnp.asarray(False)}

    def step(self, state, info: Step):
        p, p_new = info.params[0], info.new_params[0]
        v = jax.tree.map(lambda a, b: (a - b) / self.lr.astype(a.dtype), p_new, p)
        return {"q": p, "v": v, "g": info.grads[0], "started": jnp.asarray(True)}

    def save(self, state, snap: Snapshot):
        q, v, g = state["q"], state["v"], state["g"]
        # an adaptive rule's metric: its accumulators after the step (the ones that step divided by)
        kinetic = self.rule.kinetic(self.rule.initial_state(q, snap.opt_states[0])) \
            if isinstance(self.rule, AbstractAdaptive) else self.rule.kinetic()
        two_k = 2.0 * kinetic(q, v, 0.0)
        rho = jnp.asarray(getattr(self.rule, "damping", jnp.nan))
        wd = jnp.asarray(getattr(self.rule, "weight_decay", 0.0))
        grad_v = jax.tree.map(lambda gi, qi: gi + wd.astype(qi.dtype) * qi, g, q)
        out = {}
        for kind, sym in self.symmetries.items():
            ksb, dis, asym, met, pot = [], [], [], [], []
            for s in parts(sym):
                metric, velocity = KineticSymmetryBreaking(kinetic, s).parts(q, v)
                charge = NoetherCharge(kinetic, s)(q, v)
                ksb.append(jnp.abs(metric + velocity) / two_k)
                dis.append(-rho * charge)
                asym.append(velocity)
                met.append(metric)
                pot.append(-s.pair(q, grad_v))
            vals = [jnp.concatenate(x) for x in (ksb, dis, asym, met, pot)]
            mask = state["started"]
            out[kind] = {name: jnp.where(mask, val, jnp.nan) for name, val in zip(("ksb", *BUDGET_PARTS), vals, strict=True)}
        return out


class Companion(eqx.Module):
    """A second optimiser trained in lockstep with a Recorder's run, on the same mini-batches.

    Subclass it: :meth:`start` gives the companion's initial parameters and optax transformation from the
    run's rule and parameters, or None for a probe that only watches run 0 (no second run); :meth:`hook`
    its hook, which sees run 0 (the Recorder's) and run ``run`` (this companion's; 0 for a probe). Its
    outputs land in ``Record.companions[name]``: the hook's :meth:`~Hook.finish` when it has one, else its
    save outputs stacked over the save points.
    """

    name: eqx.AbstractClassVar[str]

    def start(self, rule: AbstractRule, params: PyTree) -> tuple[PyTree, optax.GradientTransformation] | None:  # pragma: no cover
        raise NotImplementedError

    def hook(self, rule: AbstractRule, params: PyTree, run: int) -> Hook:  # pragma: no cover
        raise NotImplementedError

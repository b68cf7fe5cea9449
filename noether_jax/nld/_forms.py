"""Every forcing of NLD eq. 17, in both forms, scored inside a Recorder's (or a sweep member's) training
scan (private).

``Recorder(..., companions=(nj.nld.Eq17Forms(scale_sym, steps=N),))`` keeps, per step n of run 0 and per
scale group, what the forcings of :func:`squared_velocity` need: |θ_𝒜|² before every step and after the
last, the applied mini-batch gradient's |g_𝒜|², the lag products ⟨g_𝒜,n, g_𝒜,n−k⟩ for k = 1 … ``lags``
and |Δθ_𝒜|². After the last step it predicts r² with every forcing in both forms
(:func:`predict_eq17`) and scores each by the library's relative error against the measured r² over all
steps, the median over groups: ``Record.companions["eq17"][f"{forcing}_{form}"]``. This is the scoring of
the ``nld`` experiment (``eq17_forms``) without its per-step lockstep run, so a sweep can ask it of every
member at O(steps × groups) memory and ``lags`` copies of the gradient.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import theory
from ..symmetry import MaskedSymmetry, check_scale
from ..training import Companion, Hook, Start, Step
from ._eq17 import FORCINGS, FORMS, predict_eq17
from ._lockstep import lag_history, lag_products


class _Eq17Buffer(Hook):
    sym: MaskedSymmetry
    steps: int = eqx.field(static=True)
    lags: int = eqx.field(static=True)
    lr: jnp.ndarray
    momentum: jnp.ndarray
    weight_decay: jnp.ndarray

    def init(self, start: Start):
        g, n, dtype = self.sym.n_groups, self.steps, start.loss.dtype
        r2 = jnp.zeros((n + 1, g), dtype).at[0].set(self.sym.group_norms(start.params[0]).astype(dtype))
        hist = lag_history(self.lags, start.grads[0])
        return {"r2": r2, "c0": jnp.zeros((n, g), dtype), "step": jnp.zeros((n, g), dtype),
                "lag": jnp.full((n, self.lags, g), jnp.nan, dtype), "hist": hist}

    def step(self, state, info: Step):
        n, g, p, p_new = info.n, info.grads[0], info.params[0], info.new_params[0]
        dt = state["r2"].dtype
        d = jax.tree.map(jnp.subtract, p_new, p)
        lag, hist = lag_products(self.sym, g, state["hist"], n, dt)
        return {"r2": state["r2"].at[n + 1].set(self.sym.group_norms(p_new).astype(dt)),
                "c0": state["c0"].at[n].set(self.sym.pair(g, g).astype(dt)),
                "step": state["step"].at[n].set(self.sym.pair(d, d).astype(dt)),
                "lag": state["lag"].at[n].set(lag), "hist": hist}

    def finish(self, state):
        r2 = state["r2"]
        # the lag statistics' averaging window: the momentum buffer's own memory 1/(1−β), in steps
        window = jnp.maximum(1.0, jnp.round(1.0 / (1.0 - self.momentum)))
        data = dict(grad_sq=state["c0"], grad_lag=state["lag"], step_sq=state["step"], window=window)
        out = {}
        for forcing in FORCINGS:
            for form in FORMS:
                pred = predict_eq17(forcing, form, r2, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                                    **data)
                out[f"{forcing}_{form}"] = jnp.median(theory.relative_error(pred, r2))
        return out


class Eq17Forms(Companion):
    """Score every eq.-17 forcing in both forms on a Recorder's SGD run (see the module docstring).

    Args:
        sym: the scale groups.
        steps: the Recorder's ``steps`` (the per-step buffers' length).
        lags: the lag products kept (the ``lags`` forcing uses them all; spectral needs ≥ 2).

    Example:
        >>> import jax, noether_jax as nj
        >>> net, params, state = nj.models.functional(nj.models.make_model("cnn_bn", width=2))
        >>> sym = nj.nld.cnn_scale_symmetry(params); ds = nj.data.digits()
        >>> rec = nj.Recorder(net, {"scale": sym}, ds.x_train, ds.y_train, batch_size=32, steps=8, save_every=4,
        ...                   optimizer=nj.rules.sgd(lr=0.05), companions=(nj.nld.Eq17Forms(sym, steps=8),))
        >>> sorted(rec.run(params, state).companions["eq17"])[:3]
        ['lags_bernoulli', 'lags_oscillator', 'noise_aware_bernoulli']
    """

    sym: MaskedSymmetry
    steps: int = eqx.field(static=True)
    lags: int = eqx.field(static=True, default=4)
    name = "eq17"

    def __init__(self, sym: MaskedSymmetry, *, steps: int, lags: int = 4):
        from .._validate import integer

        self.sym = check_scale(sym)
        self.steps = integer("steps", steps)
        self.lags = integer("lags", lags)
        if self.lags < 2:
            raise ValueError(f"`lags` must be ≥ 2 (the spectral forcing needs two), got {lags}.")

    def start(self, rule, params):
        return None  # a probe: it watches the Recorder's own run

    def hook(self, rule, params, run: int) -> Hook:
        nan = jnp.asarray(jnp.nan, jnp.result_type(float))
        get = lambda name: jnp.asarray(getattr(rule, name, nan))  # noqa: E731  (no law: NaN)
        return _Eq17Buffer(self.sym, self.steps, self.lags, get("lr"), get("momentum"), get("weight_decay"))

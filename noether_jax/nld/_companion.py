"""SGD's mapped group RMSProp on the unit sphere as a companion of a Recorder's run (private).

With ``Recorder(..., companions=(nj.nld.RMSPropCompanion(scale_sym),))`` the mapped RMSProp of
:func:`rmsprop_mapping` is trained in lockstep with the Recorder's SGD run, on the same mini-batches,
from θ̂(0) (every group at unit norm), and its hook keeps, over the steps so far, the largest angle
between the two runs' group directions and the largest relative error of lr/√G against η/r² (both
÷(1−β)). This is :func:`compare_rmsprop` without the control run, inside the training scan, so a sweep
can ask it of every member.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from ..symmetry import MaskedSymmetry, check_scale, group_angles, normalise_groups
from ..training import Companion, Hook, Snapshot, Start, Step
from ._lockstep import _sqrt_acc
from ._rmsprop import Accumulate, rmsprop_mapping, sphere_rmsprop


class _RMSPropTrack(Hook):
    sym: MaskedSymmetry
    lr: jnp.ndarray
    momentum: jnp.ndarray
    mapped_lr: jnp.ndarray
    mapped_momentum: jnp.ndarray
    run: int = eqx.field(static=True)

    def _measure(self, params, opt_states):
        p0, p1 = params[0], params[self.run]
        angle = jnp.max(group_angles(self.sym, p1, p0))
        sgd_eff = self.lr / ((1.0 - self.momentum) * self.sym.group_norms(p0))
        acc = _sqrt_acc(opt_states[self.run], self.sym.n_groups, sgd_eff.dtype)
        err = jnp.max(jnp.abs(self.mapped_lr / ((1.0 - self.mapped_momentum) * acc) - sgd_eff) / sgd_eff)
        return angle, err

    def init(self, start: Start):
        angle, err = self._measure(start.params, start.opt_states)
        return {"angle_max": angle, "lr_eff_error_max": err}

    def step(self, state, info: Step):
        angle, err = self._measure(info.new_params, info.opt_states)
        return {"angle_max": jnp.maximum(state["angle_max"], angle), "lr_eff_error_max": jnp.maximum(state["lr_eff_error_max"], err)}

    def save(self, state, snap: Snapshot):
        return state


class RMSPropCompanion(Companion):
    """The mapped group RMSProp of the Recorder's SGD run (see the module docstring).

    Its outputs at each save point (running maxima over the steps so far): ``angle_max`` (degrees, over
    groups) and ``lr_eff_error_max``.

    Example:
        >>> import jax, noether_jax as nj
        >>> net, params, state = nj.models.functional(nj.models.make_model("cnn_bn", width=2))
        >>> sym = nj.nld.cnn_scale_symmetry(params); ds = nj.data.digits()
        >>> rec = nj.Recorder(net, {"scale": sym}, ds.x_train, ds.y_train, batch_size=32, steps=10, save_every=5,
        ...                   optimizer=nj.rules.sgd(lr=0.05), companions=(nj.nld.RMSPropCompanion(sym),))
        >>> out = rec.run(params, state)
        >>> bool(out.companions["rmsprop"]["angle_max"][-1] < 1.0)
        True
    """

    sym: MaskedSymmetry
    accumulate: Accumulate = eqx.field(static=True, default="gradient")
    name = "rmsprop"

    def __init__(self, sym: MaskedSymmetry, *, accumulate: Accumulate = "gradient"):
        self.sym = check_scale(sym)
        self.accumulate = accumulate

    def _mapping(self, rule, params):
        return rmsprop_mapping(self.sym.group_norms(params), lr=rule.lr, momentum=rule.momentum,
                               weight_decay=rule.weight_decay, accumulate=self.accumulate)

    def start(self, rule, params) -> tuple:
        m = self._mapping(rule, params)
        return normalise_groups(self.sym, params), sphere_rmsprop(self.sym, m, rule.weight_decay)

    def hook(self, rule, params, run: int) -> Hook:
        m = self._mapping(rule, params)
        return _RMSPropTrack(self.sym, rule.lr, rule.momentum, m.lr, m.momentum, run)


__all__ = ["RMSPropCompanion"]

"""SGD on a normalised layer against its mapped group RMSProp, in lockstep; the norm-constrained ablation (private)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from .._tree import cast_floats, float_dtype
from ..models import Model
from ..rules import Hyper, sgd
from ..symmetry import MaskedSymmetry, Scale, check_scale, normalise_groups
from ._lockstep import Track, lockstep
from ._rmsprop import Accumulate, RMSPropMapping, rmsprop_mapping, sphere_rmsprop


def constrain_norm(sym: MaskedSymmetry) -> Callable[[PyTree, PyTree], PyTree]:
    """The "constrained filter norm" of NLD Fig. 3 as a post-update (``Recorder(post_update=...)``):
    after every step θ_𝒜 ← θ_𝒜 |θ_𝒜(0)|/|θ_𝒜| for every group, which removes the implicit adaptivity.

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> sym = nj.symmetry.Scale({"w": jnp.array([0, 0])})
        >>> post = nj.nld.constrain_norm(sym)
        >>> [round(v, 9) for v in post({"w": jnp.array([6.0, 8.0])}, {"w": jnp.array([0.0, 1.0])})["w"].tolist()]
        [0.6, 0.8]
    """
    sym = check_scale(sym)

    def post(params, params0):
        return normalise_groups(sym, params, sym.group_norms(params0))

    return post


def cnn_scale_symmetry(params: PyTree) -> MaskedSymmetry:
    """Scale groups of ``models.make_model("cnn_bn" | "vgg_bn")`` built from the architecture (no
    detection): every output channel (``kernel[..., j]`` and ``bias[j]``) of every convolution.

    :func:`noether_jax.symmetry.detect` finds the same groups numerically.

    Example:
        >>> import noether_jax as nj
        >>> net, params, state = nj.models.functional(nj.models.make_model("cnn_bn", width=4))
        >>> nj.nld.cnn_scale_symmetry(params).n_groups
        12
    """
    mask = jax.tree.map(lambda a: np.full(np.shape(a), -1, np.int32), params)
    convs = params["convs"]
    items = convs.items() if isinstance(convs, dict) else enumerate(convs)
    offset, names = 0, []
    for i, conv in items:
        c = conv["kernel"].shape[-1]
        mask["convs"][i]["kernel"] = np.broadcast_to(offset + np.arange(c, dtype=np.int32), conv["kernel"].shape).copy()
        mask["convs"][i]["bias"] = offset + np.arange(c, dtype=np.int32)
        names += [f"convs.{i} channel {j} (kernel[..., {j}] + bias[{j}])" for j in range(c)]
        offset += c
    return Scale(mask, params, names=names)


class Comparison(eqx.Module):
    """SGD (run 0), its mapped group RMSProp (run 1) and a control (run 2), in lockstep.

    ``track`` holds the series (:class:`Track`); ``lr_eff`` (3, N+1, G) is η/r² for SGD and lr/√G
    for the two RMSProp runs (÷(1−β) for all three); ``mapping`` the mapped hyperparameters.
    """

    track: Track
    lr_eff: Float[Array, "3 N1 G"]
    mapping: RMSPropMapping


def compare_rmsprop(
    net: Model,
    sym: MaskedSymmetry,
    x: Float[Array, "n ..."],
    y: Int[Array, " n"],
    params: PyTree,
    state: PyTree,
    hyper: Hyper,
    key: PRNGKeyArray,
    *,
    steps: int,
    batch_size: int,
    accumulate: Accumulate = "gradient",
    control: Literal["scale", "no_momentum", "gradient"] = "scale",
    mismatch: float = 2.0,
    lags: int = 0,
) -> Comparison:
    """Run SGD(η, β, λ) and the group RMSProp of :func:`rmsprop_mapping` on the same model, data and
    mini-batches (the RMSProp run starts from θ̂(0), every group at unit norm), plus a control:

    * ``"scale"``: the mapping with √G × ``mismatch`` (G(0) and gain × mismatch²), i.e. an effective
      learning rate off by that factor;
    * ``"no_momentum"``: the mapping without momentum (lr η/(1−β), β = 0);
    * ``"gradient"``: the eq.-17 ("gradient") accumulator when ``accumulate="momentum"``.

    Pure: jit it, vmap it over ``hyper``.

    Example:
        >>> import jax, noether_jax as nj
        >>> from noether_jax import models, data
        >>> ds = data.digits()
        >>> net, params, state = models.functional(models.make_model("cnn_bn", width=2))
        >>> cmp = nj.nld.compare_rmsprop(net, nj.nld.cnn_scale_symmetry(params), ds.x_train, ds.y_train, params, state,
        ...                              nj.Hyper(0.05), jax.random.key(0), steps=20, batch_size=32)
        >>> bool(cmp.track.angle[1].max() < 1.0), bool(cmp.track.angle[2].max() > cmp.track.angle[1].max())
        (True, True)
    """
    if control not in ("scale", "no_momentum", "gradient"):
        raise ValueError(f"`control` must be 'scale', 'no_momentum' or 'gradient', got {control!r}.")
    return _compare_rmsprop(net, check_scale(sym), x, y, params, state, hyper, key, steps, batch_size, accumulate, control,
                            mismatch, lags)


@eqx.filter_jit  # one program per (model, symmetry, shapes, options): a second call at other η, β, λ compiles nothing
def _compare_rmsprop(net, sym, x, y, params, state, hyper, key, steps, batch_size, accumulate, control, mismatch, lags):
    hyper = cast_floats(hyper, float_dtype(params))  # a float32 model under x64 stays float32
    r0 = sym.group_norms(params)
    u0 = normalise_groups(sym, params)
    lr, beta, wd = hyper.lr, hyper.momentum, hyper.weight_decay
    m = rmsprop_mapping(r0, lr=lr, momentum=beta, weight_decay=wd, accumulate=accumulate)
    if control == "scale":
        c = m._replace(gain=m.gain * mismatch**2, initial_accumulator=m.initial_accumulator * mismatch**2)
    elif control == "no_momentum":
        c = m._replace(lr=lr / (1.0 - beta), momentum=jnp.zeros_like(beta))
    else:
        c = rmsprop_mapping(r0, lr=lr, momentum=beta, weight_decay=wd, accumulate="gradient")
    runs = [
        (params, sgd(lr=lr, momentum=beta, weight_decay=wd).optimizer(), None),
        (u0, sphere_rmsprop(sym, m, wd), None),
        (u0, sphere_rmsprop(sym, c, wd), None),
    ]
    tr = lockstep(net, sym, x, y, runs, state, key, steps=steps, batch_size=batch_size, lags=lags)
    mu = 1.0 - beta
    lr_eff = jnp.stack([
        lr / (mu * tr.r2[0]),
        m.lr / ((1.0 - m.momentum) * tr.accumulator[1]),
        c.lr / ((1.0 - c.momentum) * tr.accumulator[2]),
    ])
    return Comparison(tr, lr_eff, m)


class RMSPropMatch(eqx.Module):
    """How well the mapped RMSProp tracks SGD (jnp scalars, so it can be computed inside jit/vmap).

    Attributes:
        max_angle_deg: the largest angle between a group's direction under SGD and under the mapped
            RMSProp, over groups and the steps in the window.
        control_max_angle_deg: the same for the control run.
        lr_eff_max_rel_error: max over steps and groups of |lr/√G − η/r²| / (η/r²).
        control_lr_eff_max_rel_error: the same for the control.
        final_loss_sgd, final_loss_rmsprop, final_loss_control: the mean mini-batch loss of the last 10 % of steps.
        final_loss_rel_gap, control_final_loss_rel_gap: |final_loss_run − final_loss_sgd| / final_loss_sgd.
        median_lr_eff: the median of η/((1−β)r²) over steps and groups.
        steps, window: the steps of the run and of the window the angles are taken over.
    """

    max_angle_deg: Array
    control_max_angle_deg: Array
    lr_eff_max_rel_error: Array
    control_lr_eff_max_rel_error: Array
    final_loss_sgd: Array
    final_loss_rmsprop: Array
    final_loss_control: Array
    final_loss_rel_gap: Array
    control_final_loss_rel_gap: Array
    median_lr_eff: Array
    steps: int = eqx.field(static=True)
    window: int = eqx.field(static=True)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: float(getattr(self, k)) for k in (
            "max_angle_deg", "control_max_angle_deg", "lr_eff_max_rel_error", "control_lr_eff_max_rel_error",
            "final_loss_sgd", "final_loss_rmsprop", "final_loss_control", "final_loss_rel_gap",
            "control_final_loss_rel_gap", "median_lr_eff")}
        out.update(steps=self.steps, window=self.window)
        return out


def rmsprop_match(cmp: Comparison, *, window: int | None = None) -> RMSPropMatch:
    """The numbers of a :class:`Comparison` (see :class:`RMSPropMatch`); angles over the first ``window``
    steps (default all). Works under jit and vmap.

    Example:
        >>> import jax, noether_jax as nj
        >>> net, params, state = nj.models.functional(nj.models.make_model("cnn_bn", width=2))
        >>> ds = nj.data.digits()
        >>> cmp = nj.nld.compare_rmsprop(net, nj.nld.cnn_scale_symmetry(params), ds.x_train, ds.y_train, params, state,
        ...                              nj.Hyper(0.05), jax.random.key(0), steps=10, batch_size=32)
        >>> m = nj.nld.rmsprop_match(cmp)
        >>> bool(m.max_angle_deg < m.control_max_angle_deg), m.steps
        (True, 10)
    """
    tr = cmp.track
    n = tr.loss.shape[-1]
    w = n if window is None else min(int(window), n)
    tail = max(1, n // 10)
    final = jnp.mean(tr.loss[..., -tail:], axis=-1)
    lre = cmp.lr_eff
    err = jnp.abs(lre[1:] - lre[0]) / lre[0]
    return RMSPropMatch(
        jnp.max(tr.angle[1, : w + 1]), jnp.max(tr.angle[2, : w + 1]), jnp.max(err[0]), jnp.max(err[1]),
        final[0], final[1], final[2], jnp.abs(final[1] - final[0]) / jnp.abs(final[0]),
        jnp.abs(final[2] - final[0]) / jnp.abs(final[0]), jnp.median(lre[0]), int(n), int(w),
    )

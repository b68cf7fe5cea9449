"""The hand-derived symmetric groups of ``resnet`` and ``transformer`` (listed in their docstrings), each
checked by a finite move: α = ±0.3 leaves the loss unchanged to round-off in float64 (norm ε = 1e-12),
while a near miss (the same group with one member left out, or a move no symmetry allows) changes it.

The moves are numpy slicing on the parameter dicts (tests/_groups.py), independent of the library's
symmetry classes; the masks built from the same lists (what a Recorder would take) hold exactly the moved entries.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from _groups import ALL, _down, _shift, _up, arch_groups, arch_symmetries, move

from noether_jax import data, models

ALPHA = 0.3
SYMMETRIC = 1e-10  # |ΔL| of a true group: round-off (ε = 1e-12 relative to O(1) variances)
CHANGES = 1e-4  # |ΔL| a near miss must exceed


def _randomised(params, seed):
    """The initial parameters with every leaf perturbed (BatchNorm/LayerNorm γ, β and biases start at 1 or 0,
    where some moves would be trivially invisible)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: np.asarray(x) + 0.3 * rng.standard_normal(np.shape(x)), params)


@pytest.fixture(scope="module", params=["resnet", "transformer", "transformer_patches"])
def case(request):
    ds = data.digits()
    x, y = ds.x_train[:48], ds.y_train[:48]
    name = request.param
    if name == "resnet":
        model = models.make_model("resnet", width=4, key=1, norm_epsilon=1e-12)
    elif name == "transformer":
        model = models.make_model("transformer", width=8, key=1, norm_epsilon=1e-12)
    else:  # 2×2 patches, two blocks: groups of every block, across blocks for the stream
        import flax.nnx as nnx

        model = models.Transformer((8, 8, 1), 8, 10, depth=2, patch=2, norm_epsilon=1e-12, rngs=nnx.Rngs(1))
    net, params, state = models.functional(model)
    params = _randomised(params, 3)
    loss = jax.jit(lambda p: models.cross_entropy(net(p, state, x, train=True)[0], y))
    return name.split("_")[0], params, loss


def _changes(loss, params, members):
    base = float(loss(params))
    return max(abs(float(loss(move(params, members, a))) - base) for a in (ALPHA, -ALPHA))


def test_every_hand_derived_group_leaves_the_loss_unchanged(case):
    name, params, loss = case
    groups = arch_groups(name, params)
    worst = {}
    for key, gs in groups.items():
        for gname, members in gs:
            moved = move(params, members, ALPHA)
            assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(params))), gname
            worst[key] = max(worst.get(key, 0.0), _changes(loss, params, members))
            assert worst[key] <= SYMMETRIC, (key, gname, worst[key])
    # every kind the docstring names is there
    assert {k.split(":")[0] for k in groups} == {"translation", "scale", "rescale"}


def test_group_counts(case):
    """The number of groups the docstrings' derivations give."""
    name, params, _ = case
    n = {k: len(v) for k, v in arch_groups(name, params).items()}
    if name == "resnet":  # width 4, 2 blocks, 10 classes
        assert n == {"translation": 4 + 1, "scale": 4 * 5, "rescale": 2 * 4 + 4}
    else:
        depth = len(params["blocks"])
        d, tokens, pixels = 8, params["pos"].shape[0], params["embed"]["kernel"].shape[0]
        # head rows + bias; embed rows + bias; pos rows; per block: out rows + bias, mlp_out rows + bias, key biases
        assert n["translation"] == (d + 1) + (pixels + 1) + tokens + depth * ((d + 1) + (2 * d + 1) + d)
        assert n["scale"] == 1
        assert n["rescale"] == depth * (d + d + 2 * d)  # value–out and query–key per (head, channel), MLP units
        assert n["rescale:norms"] == depth * 2 * d + d


def _near_misses(name, params):
    """Moves that are *not* symmetries: a group with one member dropped, or a lone side of a rescale."""
    head = ("head", "kernel")
    out = [("a head column (one class's weights)", [_shift(head, ALL, 3)])]
    if name == "resnet":
        out += [
            ("a BatchNorm's γ_j, β_j without the next conv", [_up(("blocks", 0, "norm1", "scale"), 1), _up(("blocks", 0, "norm1", "bias"), 1)]),
            ("stream channel 0 without block 1's first conv", [m for m in arch_groups(name, params)["rescale"][8][1]
                                                               if m[0] != ("blocks", 1, "conv1", "kernel")]),
            ("stream channel 0 without the head", [m for m in arch_groups(name, params)["rescale"][8][1] if m[0] != head]),
            ("the head's kernel scaled (not before a norm)", [_up(head)]),
        ]
    else:
        stream = arch_groups(name, params)["scale"][0][1]
        a = ("blocks", 0, "attn")
        out += [
            ("the stream's scale without pos", [m for m in stream if m[0] != ("pos",)]),
            ("the stream's scale without the MLP's writer", [m for m in stream if "mlp_out" not in m[0]]),
            ("a value channel without the output row", [_up((*a, "value", "kernel"), ALL, 0, 1), _up((*a, "value", "bias"), 0, 1)]),
            ("query channel against another key channel", [_up((*a, "query", "kernel"), ALL, 0, 1), _up((*a, "query", "bias"), 0, 1),
                                                           _down((*a, "key", "kernel"), ALL, 0, 2), _down((*a, "key", "bias"), 0, 2)]),
            ("norm1 channel 2 without the value kernel", [_up(("blocks", 0, "norm1", "scale"), 2), _up(("blocks", 0, "norm1", "bias"), 2),
                                                          _down((*a, "query", "kernel"), 2, ALL, ALL), _down((*a, "key", "kernel"), 2, ALL, ALL)]),
            ("a query bias translated", [_shift((*a, "query", "bias"), 0, 1)]),
            ("the final norm's β translated", [_shift(("norm", "bias"))]),
        ]
    return out


def test_near_misses_change_the_loss(case):
    name, params, loss = case
    for what, members in _near_misses(name, params):
        assert _changes(loss, params, members) > CHANGES, what


def test_masks_act_like_the_moves(case):
    """The masks handed to a Recorder (tests/_groups.arch_symmetries) hold every group as the moves do: the same
    entries, with c = ±1 (scale, rescale) or d = 1 (translation)."""
    name, params, _ = case
    if name == "transformer" and len(params["blocks"]) > 1:
        pytest.skip("the one-block transformer checks the masks")
    syms = arch_symmetries(name, params)
    groups = arch_groups(name, params)
    for kind, sym in syms.items():
        parts = sym if isinstance(sym, tuple) else (sym,)
        keys = [k for k in groups if k.split(":")[0] == kind]
        for part, key in zip(parts, keys, strict=True):
            assert part.n_groups == len(groups[key]) and list(part.names) == [n for n, _ in groups[key]]
            ids, c, d = (jax.tree.leaves(jax.tree.map(np.asarray, t)) for t in (part.ids, part.scale, part.shift))
            x = jax.tree.leaves(params)
            n = len(groups[key])
            for g in sorted({0, n // 2, n - 1}):  # the first, a middle and the last group of each mask
                want = jax.tree.leaves(move(params, groups[key][g][1], ALPHA))
                for xi, wi, ii, ci, di in zip(x, want, ids, c, d, strict=True):
                    got = np.where(ii == g, xi * np.exp(ci * ALPHA) + di * ALPHA, xi)
                    np.testing.assert_allclose(got, wi, rtol=1e-14, atol=0)

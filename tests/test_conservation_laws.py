"""Counting conservation laws of gradient flow (Marcotte, Gribonval & Peyré, NeurIPS 2023).

Expected counts never come from the code under test; they come from closed forms written here.

Two-layer linear network φ(U, V) = UVᵀ, U ∈ ℝ^{n×r}, V ∈ ℝ^{m×r}, D = (n + m) r, N = n + m.
Write C = (U; V) ∈ ℝ^{N×r} and J = diag(I_n, −I_m). The fields ∇φ_ij are linear in C:
∇φ_ij(C) = A_ij C with A_ij = [[0, E_ij], [E_ji, 0]], and the bracket of C ↦ AC and C ↦ BC is
C ↦ (BA − AB)C. The A_ij span the off-diagonal part of so(n, m) = {A : AᵀJ + JA = 0}; their
commutators give its block-diagonal part so(n) ⊕ so(m), so Lie(W) = {C ↦ AC : A ∈ so(n, m)} and
dim Lie(W)(C) = dim so(n, m) − dim{A ∈ so(n, m) : AC = 0}. For generic C:

* r ≤ N: the columns of C span a J-non-degenerate r-plane; the stabiliser is so of its
  J-orthogonal complement, of dimension (N − r)(N − r − 1)/2, so dim Lie = N r − r(r + 1)/2 and
  there are exactly r(r + 1)/2 laws: the entries of UᵀU − VᵀV (= CᵀJC), whose differential
  dC ↦ 2 sym(CᵀJ dC) is onto the symmetric matrices when C has full column rank.
* r > N: C has full row rank, the stabiliser is trivial, dim Lie = N(N − 1)/2, and there are
  N r − N(N − 1)/2 < r(r + 1)/2 laws (the r(r + 1)/2 entries of UᵀU − VᵀV are then dependent).

The cases are split into r ≤ min(n, m) (the conservative regime), min(n, m) < r ≤ max(n, m), and
r > max(n, m) (beyond: checked against the closed form above, including r > n + m where the count
is *not* r(r + 1)/2).

Two-layer ReLU network x ↦ Σ_j u_j relu(v_jᵀ x): on a region where the activation pattern on the
data is fixed, the loss depends on θ only through the per-neuron rank-one matrices u_j v_jᵀ (the
φ the paper uses for ReLU networks); the laws are |u_j|² − |v_j|², one per hidden unit. This is the
linear case with r = 1 neuron by neuron: (o + d) − 1 dimensions of Lie(W) per neuron, 1 law each.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from noether_jax.symmetry import ConservationCount, count_conservation_laws


def expected_linear(n: int, m: int, r: int) -> int:
    """Closed form from the module docstring."""
    N = n + m
    if r <= N:
        return r * (r + 1) // 2
    return N * r - N * (N - 1) // 2


def lin_phi(t):
    return t["U"] @ t["V"].T


def lin_theta(n, m, r, seed=0):
    kU, kV = jax.random.split(jax.random.PRNGKey(seed))
    return {"U": jax.random.normal(kU, (n, r)), "V": jax.random.normal(kV, (m, r))}


def lin_known(t):
    """Upper triangle of UᵀU − VᵀV."""
    h = t["U"].T @ t["U"] - t["V"].T @ t["V"]
    i, j = np.triu_indices(h.shape[0])
    return h[i, j]


def relu_phi(t):
    """Per-neuron rank-one matrices u_j v_jᵀ (U: o×w, V: d×w), shape (w, o, d)."""
    return jnp.einsum("oj,dj->jod", t["U"], t["V"])


def relu_theta(o, d, w, seed=0):
    kU, kV = jax.random.split(jax.random.PRNGKey(seed))
    return {"U": jax.random.normal(kU, (o, w)), "V": jax.random.normal(kV, (d, w))}


def relu_known(t):
    return jnp.sum(t["U"] ** 2, axis=0) - jnp.sum(t["V"] ** 2, axis=0)


def flat(fn, theta):
    """fn as a function of the flat parameter vector, and that vector."""
    x, unravel = ravel_pytree(theta)
    return (lambda y: jnp.ravel(fn(unravel(y)))), x


def grads(fn, theta) -> np.ndarray:
    """Rows ∇fn_k(θ) in ravel_pytree coordinates."""
    f, x = flat(fn, theta)
    return np.asarray(jax.jacrev(f)(x))


def check_result(res: ConservationCount, expected_laws: int):
    assert isinstance(res, ConservationCount)
    assert res.n_laws == expected_laws, (res.n_laws, expected_laws, res.notes)
    assert res.lie_dim == res.n_params - expected_laws
    assert res.converged
    assert res.probabilistic
    assert len(set(res.point_lie_dims)) == 1, res.point_lie_dims
    assert res.gap > 1e6, res.singular_values  # the rank decision is clear-cut
    assert res.basis.shape == (res.lie_dim, res.n_params)
    np.testing.assert_allclose(np.asarray(res.basis @ res.basis.T), np.eye(res.lie_dim), atol=1e-10)


# ----------------------------------------------------------------------------- linear networks

LINEAR_MIN = [(2, 2, 1), (3, 2, 1), (2, 2, 2), (3, 2, 2), (3, 3, 2), (4, 3, 3), (3, 4, 3)]  # r ≤ min(n, m)
LINEAR_MID = [(1, 3, 2), (2, 4, 3), (1, 2, 2)]  # min(n, m) < r ≤ max(n, m)
LINEAR_BEYOND = [(2, 2, 3), (1, 2, 3), (2, 3, 4), (1, 1, 3), (1, 2, 4)]  # r > max(n, m)


@pytest.mark.parametrize("n,m,r", LINEAR_MIN + LINEAR_MID)
def test_linear_network_has_r_r_plus_1_over_2_laws(n, m, r):
    res = count_conservation_laws(lin_phi, lin_theta(n, m, r))
    assert r <= max(n, m)
    check_result(res, r * (r + 1) // 2)
    assert res.n_params == (n + m) * r
    # W_θ alone is the tangent space at UVᵀ of the matrices of rank k = min(r, n, m):
    # dim nm − (n − k)(m − k) (= (n + m) r − r² when r ≤ min(n, m)), so for r ≥ 2 brackets are
    # needed (depth 1) and for r = 1 they are not (depth 0).
    k = min(r, n, m)
    assert res.rank_w == n * m - (n - k) * (m - k)
    assert res.depth == (1 if r >= 2 else 0)


@pytest.mark.parametrize("n,m,r", LINEAR_BEYOND)
def test_linear_network_beyond_max_n_m_matches_closed_form(n, m, r):
    res = count_conservation_laws(lin_phi, lin_theta(n, m, r))
    check_result(res, expected_linear(n, m, r))
    N = n + m
    if r > N:
        assert res.n_laws < r * (r + 1) // 2  # the entries of UᵀU − VᵀV are no longer independent
        assert res.lie_dim == N * (N - 1) // 2  # all of so(n, m)


@pytest.mark.parametrize("n,m,r", [(3, 2, 2), (2, 4, 3), (2, 2, 3), (1, 1, 3)])
def test_linear_known_laws_are_conserved_and_account_for_the_count(n, m, r):
    theta = lin_theta(n, m, r, seed=3)
    res = count_conservation_laws(lin_phi, theta)
    assert res.reference_point == 0  # the basis is the one at `theta`
    gen = grads(lin_phi, theta)  # rows ∇φ_ij(θ): the generators of W
    dh = grads(lin_known, theta)  # rows ∇h_k(θ), h = UᵀU − VᵀV
    scale = np.linalg.norm(gen) * np.linalg.norm(dh)
    # d/dt h along every field X_j = ∇φ_j is ⟨∇h, X_j⟩ = 0: h is conserved by every gradient flow.
    assert np.max(np.abs(dh @ gen.T)) < 1e-12 * scale
    # ...and then orthogonal to the whole Lie algebra trace found numerically (incl. brackets).
    assert np.max(np.abs(dh @ np.asarray(res.basis).T)) < 1e-10 * np.linalg.norm(dh)
    # The known laws are independent in number n_laws: they are all the laws there are.
    assert np.linalg.matrix_rank(dh, tol=1e-9 * np.linalg.norm(dh)) == expected_linear(n, m, r) == res.n_laws
    assert np.linalg.matrix_rank(dh) + res.lie_dim == res.n_params


def test_linear_count_is_insensitive_to_the_tolerance():
    theta = lin_theta(4, 3, 3, seed=5)
    counts = {tol: count_conservation_laws(lin_phi, theta, tol=tol, num_points=1).n_laws for tol in (1e-5, 1e-11)}
    assert set(counts.values()) == {6}, counts


# ----------------------------------------------------------------------------- ReLU networks


@pytest.mark.parametrize("o,d,w", [(2, 3, 1), (2, 3, 2), (2, 3, 3), (2, 3, 5), (1, 2, 4), (3, 1, 3)])
def test_two_layer_relu_has_one_law_per_hidden_unit(o, d, w):
    res = count_conservation_laws(relu_phi, relu_theta(o, d, w))
    check_result(res, w)
    assert res.n_params == (o + d) * w
    assert res.rank_w == (o + d - 1) * w  # W_θ is already closed (neurons do not interact)
    assert res.depth == 0


def test_relu_known_laws_and_a_real_relu_network_gradient():
    o, d, w, n_data = 2, 3, 4, 7
    theta = relu_theta(o, d, w, seed=11)
    res = count_conservation_laws(relu_phi, theta)
    assert res.reference_point == 0
    kx, ky = jax.random.split(jax.random.PRNGKey(12))
    X, Y = jax.random.normal(kx, (n_data, d)), jax.random.normal(ky, (n_data, o))

    def loss(t):  # an actual two-layer ReLU network and square loss
        pred = jax.nn.relu(X @ t["V"]) @ t["U"].T
        return jnp.mean((pred - Y) ** 2)

    f, x = flat(loss, theta)
    g = np.asarray(jax.grad(lambda y: f(y)[0])(x))
    dh = grads(relu_known, theta)
    gen = grads(relu_phi, theta)
    basis = np.asarray(res.basis)
    # the gradient of the real network lies in W_θ = span ∇(u_j v_jᵀ) (the factorisation is right) ...
    coef, *_ = np.linalg.lstsq(gen.T, g, rcond=None)
    assert np.linalg.norm(gen.T @ coef - g) < 1e-10 * np.linalg.norm(g)
    assert np.linalg.norm(g - basis.T @ (basis @ g)) < 1e-10 * np.linalg.norm(g)
    # ... the per-neuron balances are conserved by it and by every field, and they are all the laws.
    assert np.max(np.abs(dh @ g)) < 1e-12 * np.linalg.norm(dh) * np.linalg.norm(g)
    assert np.max(np.abs(dh @ gen.T)) < 1e-12 * np.linalg.norm(dh) * np.linalg.norm(gen)
    assert np.max(np.abs(dh @ basis.T)) < 1e-10 * np.linalg.norm(dh)
    assert np.linalg.matrix_rank(dh) == w == res.n_laws


@pytest.mark.parametrize("dims", [(2, 2, 2, 2), (2, 3, 2, 1)])
def test_three_layer_relu_one_law_per_hidden_unit(dims):
    """φ = the rank-one matrices W1[:, i] W2[i, j] W3[j, :] per path (fixed activation pattern)."""
    keys = jax.random.split(jax.random.PRNGKey(4), 3)
    theta = {f"W{i + 1}": jax.random.normal(keys[i], (dims[i], dims[i + 1])) for i in range(3)}
    res = count_conservation_laws(lambda t: jnp.einsum("ai,ij,jb->ijab", t["W1"], t["W2"], t["W3"]), theta)
    check_result(res, dims[1] + dims[2])

    def known(t):  # |incoming|² − |outgoing|² for every hidden neuron
        h1 = jnp.sum(t["W1"] ** 2, 0) - jnp.sum(t["W2"] ** 2, 1)
        h2 = jnp.sum(t["W2"] ** 2, 0) - jnp.sum(t["W3"] ** 2, 1)
        return jnp.concatenate([h1, h2])

    dh = grads(known, theta)
    assert np.max(np.abs(dh @ np.asarray(res.basis).T)) < 1e-10 * np.linalg.norm(dh)
    assert np.linalg.matrix_rank(dh) == res.n_laws


@pytest.mark.parametrize("dims", [(2, 2, 2, 2), (3, 2, 2, 3)])
def test_three_layer_linear_network_balancedness_laws_are_all(dims):
    """φ = W1 W2 W3: laws W_iᵀW_i − W_{i+1}W_{i+1}ᵀ, h(h + 1)/2 per hidden width h."""
    keys = jax.random.split(jax.random.PRNGKey(6), 3)
    theta = {f"W{i + 1}": jax.random.normal(keys[i], (dims[i], dims[i + 1])) for i in range(3)}
    res = count_conservation_laws(lambda t: t["W1"] @ t["W2"] @ t["W3"], theta)
    expected = sum(h * (h + 1) // 2 for h in dims[1:-1])
    check_result(res, expected)

    def known(t):
        out = []
        for a, b in (("W1", "W2"), ("W2", "W3")):
            h = t[a].T @ t[a] - t[b] @ t[b].T
            i, j = np.triu_indices(h.shape[0])
            out.append(h[i, j])
        return jnp.concatenate(out)

    dh = grads(known, theta)
    assert np.max(np.abs(dh @ np.asarray(res.basis).T)) < 1e-10 * np.linalg.norm(dh)
    assert np.linalg.matrix_rank(dh) == expected


# ----------------------------------------------------------------------------- no symmetry / controls


def test_identity_map_has_no_law():
    res = count_conservation_laws(lambda x: x, jnp.arange(1.0, 6.0))
    check_result(res, 0)
    assert res.rank_w == 5 and res.depth == 0 and res.n_brackets == 0


def test_generic_full_rank_map_has_no_law():
    A = jax.random.normal(jax.random.PRNGKey(7), (7, 5))
    res = count_conservation_laws(lambda x: jnp.tanh(A @ x) + 0.1 * x[0] * (A @ x), jax.random.normal(jax.random.PRNGKey(8), (5,)))
    check_result(res, 0)


def test_brackets_remove_laws_that_w_alone_would_suggest():
    """φ = (x1, x2 + x1 x3 + x1² x4 / 2) on ℝ⁴: X1 = e1, X2 = (x3 + x1 x4, 1, x1, x1²/2),
    [X1, X2] = (x4, 0, 1, x1), [X1, [X1, X2]] = e4: rank W = 2, depth 1 gives 3, depth 2 gives 4,
    so there is no conservation law even though W_θ suggests 2."""
    phi = lambda x: jnp.stack([x[0], x[1] + x[0] * x[2] + 0.5 * x[0] ** 2 * x[3]])  # noqa: E731
    res = count_conservation_laws(phi, jax.random.normal(jax.random.PRNGKey(9), (4,)))
    check_result(res, 0)
    assert res.rank_w == 2
    assert res.depth == 2


def test_product_of_coordinates_has_d_minus_1_laws():
    """φ = x1 x2 x3 x4: the laws x_i² − x_j² (D − 1 = 3 independent)."""
    res = count_conservation_laws(lambda x: jnp.prod(x)[None], jax.random.normal(jax.random.PRNGKey(10), (4,)))
    check_result(res, 3)
    assert res.rank_w == res.lie_dim == 1


# ----------------------------------------------------------------------------- behaviour


def test_non_generic_point_is_outvoted_by_random_points():
    zero = jax.tree.map(jnp.zeros_like, lin_theta(3, 2, 2))
    alone = count_conservation_laws(lin_phi, zero, num_points=1)
    assert alone.lie_dim == 0 and alone.n_laws == 10  # every field vanishes at 0
    res = count_conservation_laws(lin_phi, zero, num_points=3)
    assert res.point_lie_dims[0] == 0 and res.lie_dim == 7 and res.n_laws == 3
    assert res.reference_point != 0
    assert any("disagree" in note for note in res.notes)


def test_max_depth_reached_is_flagged():
    phi = lambda x: jnp.stack([x[0], x[1] + x[0] * x[2]])  # noqa: E731  Heisenberg-like: 0 laws, needs depth 1
    theta = jax.random.normal(jax.random.PRNGKey(13), (3,))
    capped = count_conservation_laws(phi, theta, max_depth=0)
    assert not capped.converged and capped.n_laws == 1  # only an upper bound
    assert any("max_depth" in note for note in capped.notes)
    full = count_conservation_laws(phi, theta)
    assert full.converged and full.n_laws == 0 and full.depth == 1


def test_pytree_output_and_pytree_input():
    theta = relu_theta(2, 2, 3, seed=14)
    as_list = lambda t: [jnp.outer(t["U"][:, j], t["V"][:, j]) for j in range(3)]  # noqa: E731
    res = count_conservation_laws(as_list, theta)
    check_result(res, 3)


def test_float32_input_is_noted():
    theta = jax.tree.map(lambda a: a.astype(jnp.float32), lin_theta(2, 2, 1))
    res = count_conservation_laws(lin_phi, theta, num_points=1)
    assert any("float32" in note for note in res.notes)
    assert res.tol > 1e-5


def test_bad_arguments():
    theta = lin_theta(2, 2, 1)
    with pytest.raises(ValueError, match="num_points"):
        count_conservation_laws(lin_phi, theta, num_points=0)
    with pytest.raises(ValueError, match="tol"):
        count_conservation_laws(lin_phi, theta, tol=2.0)
    with pytest.raises(ValueError, match="no parameters"):
        count_conservation_laws(lambda t: t, {})

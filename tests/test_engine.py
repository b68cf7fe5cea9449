"""The one training engine and the layered package: a user's own flax model and optax optimiser, as they are.

Ground truth here: a plain optax loop written in the test, the same model in three forms (their series
must be identical, not close), and the package's own import graph.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import noether_jax as nj
from noether_jax import data, models

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("mechanics", "rules", "symmetry", "theory", "training", "stochastic", "nld", "sweeps", "models", "data")
APPLICATION = ("experiments", "plots", "report", "cli")


class Plain(nnx.Module):
    """A user's model: no `train` keyword anywhere."""

    def __init__(self, rngs: nnx.Rngs, width: int = 6, param_dtype=jnp.float32):
        self.l1 = nnx.Linear(64, width, param_dtype=param_dtype, rngs=rngs)
        self.l2 = nnx.Linear(width, 10, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x.reshape(x.shape[0], -1))))


class WithTrain(Plain):
    def __call__(self, x, *, train: bool = True):
        del train
        return super().__call__(x)


class TwoInputs(nnx.Module):
    def __init__(self, rngs):
        self.l = nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, x, mask):
        return self.l(x * mask)


@pytest.fixture(scope="module")
def digits():
    return data.digits(image=False)


def _groups(params):
    """The hand-derived groups of Plain: translation of the head's rows and biases, rescale of l1's units."""
    none = jax.tree.map(lambda a: -np.ones(a.shape, np.int32), params)
    t = jax.tree.map(np.copy, none)
    w = params["l2"]["kernel"].shape[0]
    rows = np.broadcast_to(np.arange(w)[:, None], params["l2"]["kernel"].shape).astype(np.int32)
    t["l2"]["kernel"], t["l2"]["bias"] = rows, np.full((10,), w, np.int32)
    inc, out = jax.tree.map(np.copy, none), jax.tree.map(np.copy, none)
    inc["l1"]["kernel"] = np.broadcast_to(np.arange(w)[None], params["l1"]["kernel"].shape).astype(np.int32)
    inc["l1"]["bias"] = np.arange(w, dtype=np.int32)
    out["l2"]["kernel"] = rows
    return {"translation": nj.symmetry.Translation(t), "rescale": nj.symmetry.Rescale(inc, out)}


def _series(rec_out):
    return {k: np.asarray(v) for k, v in rec_out.measured.items()} | {"loss": np.asarray(rec_out.loss)}


def test_a_model_in_three_forms_gives_identical_series_and_groups(digits):
    plain, with_train = Plain(nnx.Rngs(0)), WithTrain(nnx.Rngs(0))
    net, params, state = models.functional(plain)
    syms = _groups(params)
    kw = dict(batch_size=32, steps=20, save_every=5)
    hyper, key = nj.Hyper(0.1, 0.9, 1e-4), jax.random.key(2)
    runs = {
        "no train keyword": nj.Recorder(plain, syms, digits.x_train, digits.y_train, **kw).run(hyper=hyper, key=key),
        "train keyword": nj.Recorder(with_train, syms, digits.x_train, digits.y_train, **kw).run(hyper=hyper, key=key),
        "pure form": nj.Recorder(net, syms, digits.x_train, digits.y_train, **kw).run(params, state, hyper, key),
        "nnx.split": nj.Recorder(nnx.split(plain), syms, digits.x_train, digits.y_train, **kw).run(hyper=hyper, key=key),
    }
    ref = _series(runs["pure form"])
    for name, out in runs.items():
        for k, v in _series(out).items():
            np.testing.assert_array_equal(v, ref[k], err_msg=f"{name}: {k}")
        assert out.status_name() == "ok"
    batch = (digits.x_train[:128], digits.y_train[:128])
    found = {
        "module": nj.symmetry.detect(plain, batch=batch),
        "train keyword": nj.symmetry.detect(with_train, batch=batch),
        "pure": nj.symmetry.detect(net, params, batch, state=state),
        "nnx.State params": nj.symmetry.detect(net, nnx.split(plain, nnx.Param, ...)[1], batch, state=state),
    }
    names = {k: {kind: f.names(kind) for kind in ("translation", "scale", "rescale")} for k, f in found.items()}
    assert all(v == names["pure"] for v in names.values()), names
    assert len(names["pure"]["translation"]) == 6 + 1 and len(names["pure"]["rescale"]) == 6  # rows + class biases; units


def test_sweep_takes_a_factory_and_matches_the_recorder_member_by_member(digits):
    kw = dict(steps=10, save_every=5, batch_size=16)
    factory = lambda rngs: Plain(rngs, param_dtype=jnp.float64)  # noqa: E731  (float64: members compared to 1e-12)
    ds = nj.sweep(factory, lr=[0.05, 0.2], momentum=[0.0, 0.9], seed=[0, 1], data=digits, progress=False, dtype="float64",
                  symmetries=lambda net, p, s: _groups(p), **kw)
    assert (ds.status.values == 0).all()
    for seed in (0, 1):
        net, params, state = models.functional(factory(nnx.Rngs(seed)))
        rec = nj.Recorder(net, _groups(params), digits.x_train, digits.y_train, **kw)
        for lr in (0.05, 0.2):
            for mom in (0.0, 0.9):
                out = rec.run(params, state, nj.Hyper(lr, mom), nj.sweeps.data_key(seed))
                sel = ds.sel(lr=lr, momentum=mom, seed=seed).squeeze()
                for kind in ("translation", "rescale"):
                    np.testing.assert_allclose(sel[f"measured_{kind}"].values, np.asarray(out.measured[kind]), rtol=1e-12,
                                               atol=1e-14)
                    np.testing.assert_allclose(sel[f"theory_{kind}"].values, np.asarray(out.theory[kind]), rtol=1e-12,
                                               atol=1e-14)


def test_a_bare_optax_transformation_is_measured_only(digits):
    model = Plain(nnx.Rngs(1), param_dtype=jnp.float64)
    net, params, state = models.functional(model)
    syms = _groups(params)
    rec = nj.Recorder(model, syms, digits.x_train, digits.y_train, batch_size=32, steps=12, save_every=4,
                      optimizer=optax.adam(1e-3))
    key = jax.random.key(0)
    out = rec.run(key=key)
    for kind in syms:
        assert np.isnan(np.asarray(out.theory[kind])).all() and np.isnan(np.asarray(out.identity[kind])).all()
        assert np.isfinite(np.asarray(out.measured[kind])).all()
    assert "no law" in out.law and "optax" in out.law
    assert out.guard.threshold.size and np.isnan(np.asarray(out.guard.threshold)).all()  # no threshold: NaN
    assert "no threshold" in out.guard.label and np.isnan(np.asarray(out.guard.edge)).all()
    # ground truth: the same optax.adam loop written here, on the engine's mini-batches
    opt = optax.adam(1e-3)
    p, o = params, opt.init(params)
    loss = models.loss_fn(net)
    expected = [np.asarray(nj.symmetry.pair(syms["rescale"], p, p))]
    for c in range(3):
        for n in range(4 * c, 4 * c + 4):  # step n's batch: fold_in(key, n)
            batch = data.sample_batch(jax.random.fold_in(key, n), digits.x_train, digits.y_train, 32)
            g = jax.grad(lambda q: loss(q, state, batch)[0])(p)
            u, o = opt.update(g, o, p)
            p = optax.apply_updates(p, u)
        expected.append(np.asarray(nj.symmetry.pair(syms["rescale"], p, p)))
    np.testing.assert_allclose(np.asarray(out.measured["rescale"]), np.stack(expected), rtol=1e-10)
    with pytest.raises(ValueError, match="inject_hyperparams"):
        rec.run(hyper=nj.Hyper(0.1), key=key)
    with pytest.raises(TypeError, match="inject_hyperparams"):
        nj.sweep(lambda rngs: Plain(rngs), lr=0.1, steps=2, save_every=1, data=digits, progress=False,
                 optimizer=optax.adam(1e-3))


def test_a_rule_brings_its_laws_and_equals_the_default(digits):
    model = Plain(nnx.Rngs(3), param_dtype=jnp.float64)
    syms = _groups(models.functional(model)[1])
    kw = dict(batch_size=32, steps=10, save_every=5)
    rule = nj.rules.sgd(lr=0.1, momentum=0.9, weight_decay=1e-3)
    by_rule = nj.Recorder(model, syms, digits.x_train, digits.y_train, optimizer=rule, **kw).run()
    default = nj.Recorder(model, syms, digits.x_train, digits.y_train, **kw).run(hyper=nj.Hyper(0.1, 0.9, 1e-3))
    for kind in syms:
        np.testing.assert_array_equal(np.asarray(by_rule.theory[kind]), np.asarray(default.theory[kind]))
        assert np.isfinite(np.asarray(by_rule.theory[kind])).all()
    # the rule's coordinates are the ones a Hyper replaces
    swept = nj.Recorder(model, syms, digits.x_train, digits.y_train, optimizer=rule, **kw).run(hyper=nj.Hyper(0.05))
    assert not np.allclose(np.asarray(swept.measured["rescale"]), np.asarray(by_rule.measured["rescale"]))


def test_a_custom_loss_works_for_the_recorder_and_detect(digits):
    def mse(logits, y):
        return 0.5 * jnp.mean(jnp.sum((logits - jax.nn.one_hot(y, 10)) ** 2, -1))

    model = Plain(nnx.Rngs(4), param_dtype=jnp.float64)
    found = nj.symmetry.detect(model, batch=(digits.x_train[:128], digits.y_train[:128]), loss=mse)
    assert "translation" not in found.symmetries  # no softmax: no translation symmetry
    assert len(found.names("rescale")) == 6
    # (no λ_max probe: this model's mini-batch η·λ_max reaches 2.9 > 2, which the guard rightly flags)
    rec = nj.Recorder(model, found.symmetries, digits.x_train, digits.y_train, batch_size=32, steps=10, save_every=5, loss=mse,
                      sharpness_every=0)
    out = rec.run(hyper=nj.Hyper(0.05))
    assert out.status_name() == "ok" and np.isfinite(np.asarray(out.theory["rescale"])).all()


def test_a_float32_model_runs_in_float32_under_x64(digits):
    assert jax.config.jax_enable_x64
    model32 = models.make_model("mlp", width=8, key=0, dtype=jnp.float32)
    net64, _, _ = models.functional(models.make_model("mlp", width=8, key=0))
    params32 = models.functional(model32)[1]
    params64 = jax.tree.map(lambda a: a.astype(jnp.float64), params32)  # the same initial values in float64
    syms = nj.symmetry.detect(net64, params64, (digits.x_train[:64], digits.y_train[:64])).symmetries
    rec32 = nj.Recorder(model32, syms, digits.x_train, digits.y_train, batch_size=32, steps=20, save_every=10)
    with pytest.warns(UserWarning, match="cast to the model's parameter dtype"):
        out32 = rec32.run(hyper=nj.Hyper(0.1, 0.9, 1e-4))
    assert out32.measured["rescale"].dtype == jnp.float32 and out32.theory["rescale"].dtype == jnp.float32
    assert jax.tree.leaves(out32.params)[0].dtype == jnp.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out64 = nj.Recorder(net64, syms, digits.x_train, digits.y_train, batch_size=32, steps=20, save_every=10).run(
            params64, {}, nj.Hyper(0.1, 0.9, 1e-4))
    scale = np.max(np.abs(np.asarray(out64.measured["rescale"])))
    np.testing.assert_allclose(np.asarray(out32.measured["rescale"]), np.asarray(out64.measured["rescale"]), atol=1e-5 * scale)


def test_bad_models_and_optimisers_get_named_errors(digits):
    with pytest.raises(TypeError, match=r"__call__\(self, x\)"):
        models.functional(TwoInputs(nnx.Rngs(0)))
    model = Plain(nnx.Rngs(0))
    syms = _groups(models.functional(model)[1])
    with pytest.raises(TypeError, match="learning rule.*optax.GradientTransformation"):
        nj.Recorder(model, syms, digits.x_train, digits.y_train, batch_size=8, steps=2, optimizer=42)
    with pytest.raises(TypeError, match="pass it directly"):
        nj.rules.LearningRule(optax.adam(1e-3))
    with pytest.raises(TypeError, match="factory"):
        nj.sweep(model, lr=0.1, steps=2, save_every=1, data=digits, progress=False)
    with pytest.raises(TypeError, match="model"):
        nj.symmetry.detect(lambda x: x, batch=(digits.x_train[:4], digits.y_train[:4]))


def test_engine_lockstep_runs_are_independent_and_flag_their_own_divergence():
    loss = lambda p, s, b: (jnp.mean((b[0] @ p - b[1]) ** 2), s)  # noqa: E731
    x = jax.random.normal(jax.random.key(0), (40, 3))
    y = x @ jnp.array([1.0, -2.0, 0.5])
    eng = nj.training.Engine(loss, [optax.sgd(0.05), optax.sgd(10.0), optax.sgd(0.05)], nj.training.Batches(x, y, batch_size=8),
                             hooks={"w": nj.training.SaveParams(run=2)})
    out = nj.training.run(eng, [jnp.zeros(3)] * 3, [{}] * 3, jax.random.key(1), steps=30, save_every=10)
    assert out.diverged_step.tolist()[0] == -1 and out.diverged_step.tolist()[1] >= 0 and out.diverged_step.tolist()[2] == -1
    np.testing.assert_array_equal(np.asarray(out.params[0]), np.asarray(out.params[2]))  # same batches, same optimiser
    np.testing.assert_array_equal(np.asarray(out.saved["w"][-1]), np.asarray(out.params[2]))
    assert out.loss.shape == (3, 4) and np.isnan(np.asarray(out.loss[:, 0])).all()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            names.add("." * node.level + mod)
            names |= {"." * node.level + (mod + "." if mod else "") + a.name for a in node.names}
    return names


def test_the_library_tier_never_imports_the_application_or_its_dependencies():
    pkg = ROOT / "noether_jax"
    files = [p for sub in LIBRARY for p in (pkg / sub).rglob("*.py")] + [p for p in pkg.glob("_*.py")]
    assert len(files) > 30
    for f in files:
        for name in _imports(f):
            top = name.lstrip(".").split(".")[0]
            assert top not in ("matplotlib", "typer", "rich", "tqdm") or (f.name in ("_sweep.py", "_progress.py") and top == "tqdm"), (f, name)
            stripped = name.lstrip(".")
            assert not any(stripped == a or stripped.startswith(a + ".") for a in APPLICATION), (f, name)
    code = ("import sys, noether_jax as nj; bad = [m for m in ('matplotlib', 'typer', 'xarray', 'sklearn', "
            "'noether_jax.experiments', 'noether_jax.plots', 'noether_jax.report', 'noether_jax.cli') if m in sys.modules]; "
            "assert not bad, bad; nj.plots; assert 'matplotlib' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_no_import_cycles_between_subpackages():
    pkg = ROOT / "noether_jax"
    graph: dict[str, set[str]] = {}
    for sub in [p for p in pkg.iterdir() if p.is_dir() and (p / "__init__.py").exists()]:
        deps = set()
        for f in sub.rglob("*.py"):
            for name in _imports(f):
                if name.startswith(".."):
                    target = name[2:].split(".")[0]
                    if target and (pkg / target).is_dir() and target != sub.name:
                        deps.add(target)
        graph[sub.name] = deps
    seen, stack = {}, []

    def visit(u):
        seen[u] = 1
        stack.append(u)
        for v in graph.get(u, ()):
            assert seen.get(v) != 1, f"import cycle: {' -> '.join(stack[stack.index(v):] + [v])}"
            if not seen.get(v):
                visit(v)
        stack.pop()
        seen[u] = 2

    for u in graph:
        if not seen.get(u):
            visit(u)


def test_sample_batch_is_a_uniform_subset_without_replacement():
    """Ground truth: the exact laws of a uniform S-subset of n (scipy's χ² test): every example is drawn with
    probability S/n, every pair with S(S−1)/(n(n−1)), never one example twice; S = n is a permutation."""
    from scipy.stats import chisquare

    n, s, draws = 40, 7, 4000
    x = jnp.arange(n, dtype=jnp.float32)[:, None]
    keys = jax.random.split(jax.random.key(3), draws)
    idx = np.asarray(jax.vmap(lambda k: data.sample_batch(k, x, jnp.arange(n), s)[1])(keys))
    assert all(len(set(row)) == s for row in idx)
    counts = np.bincount(idx.ravel(), minlength=n)
    assert chisquare(counts).pvalue > 1e-3, counts
    pairs = np.zeros((n, n))
    for row in idx:
        pairs[np.ix_(row, row)] += 1
    upper = pairs[np.triu_indices(n, 1)]
    assert upper.sum() == draws * s * (s - 1) / 2
    assert chisquare(upper).pvalue > 1e-3
    full = np.asarray(data.sample_batch(keys[0], x, jnp.arange(n), n)[1])
    assert sorted(full.tolist()) == list(range(n)) and full.tolist() != list(range(n))

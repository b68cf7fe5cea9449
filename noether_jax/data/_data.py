"""Offline data sets: scikit-learn's ``load_digits`` (real data, shipped with the package) and a
synthetic teacher–student task. Nothing is downloaded.

Mini-batches are drawn by PRNG inside jit (:func:`sample_batch`), so a training loop under
``jax.lax.scan`` needs no host round-trips.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .. import _validate


class Dataset(NamedTuple):
    """Train and test arrays; ``x`` has a leading example axis, ``y`` holds integer class labels."""

    x_train: Float[Array, "n ..."]
    y_train: Int[Array, " n"]
    x_test: Float[Array, "m ..."]
    y_test: Int[Array, " m"]
    n_classes: int

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])


def digits(*, test_fraction: float = 0.25, seed: int = 0, image: bool = True, dtype=None) -> Dataset:
    """scikit-learn's 8×8 handwritten digits (1797 images, 10 classes), standardised per pixel.

    ``image=True`` gives inputs of shape (n, 8, 8, 1) for conv nets, else (n, 64).

    Example:
        >>> import noether_jax as nj
        >>> d = nj.data.digits()
        >>> d.x_train.shape, d.n_classes
        ((1347, 8, 8, 1), 10)
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction}.")
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    if image:
        x_tr, x_te = x_tr.reshape(-1, 8, 8, 1), x_te.reshape(-1, 8, 8, 1)
    dtype = dtype or jnp.result_type(float)
    return Dataset(jnp.asarray(x_tr, dtype), jnp.asarray(y_tr, jnp.int32), jnp.asarray(x_te, dtype), jnp.asarray(y_te, jnp.int32), 10)


def teacher_student(
    *, n_train: int = 2048, n_test: int = 512, d_in: int = 20, n_classes: int = 5, hidden: int = 32, seed: int = 0, dtype=None
) -> Dataset:
    """Labels from a random two-layer ReLU teacher network on Gaussian inputs (a synthetic task).

    Example:
        >>> import noether_jax as nj
        >>> d = nj.data.teacher_student(n_train=100, n_test=10, d_in=4, n_classes=3)
        >>> d.x_train.shape, int(d.y_train.max()) < 3
        ((100, 4), True)
    """
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(d_in, hidden)) / np.sqrt(d_in)
    w2 = rng.normal(size=(hidden, n_classes)) / np.sqrt(hidden)
    x = rng.normal(size=(n_train + n_test, d_in))
    y = np.argmax(np.maximum(x @ w1, 0.0) @ w2, axis=1)
    dtype = dtype or jnp.result_type(float)
    return Dataset(
        jnp.asarray(x[:n_train], dtype), jnp.asarray(y[:n_train], jnp.int32),
        jnp.asarray(x[n_train:], dtype), jnp.asarray(y[n_train:], jnp.int32), n_classes,
    )


def check_batch_size(batch_size: int, n: int) -> int:
    """A clear error for a batch size that is not an integer in 1..n."""
    return _validate.batch_size(batch_size, n)


def sample_batch(key: jax.Array, x: Array, y: Array, batch_size: int) -> tuple[Array, Array]:
    """A mini-batch of ``batch_size`` distinct examples drawn uniformly by PRNG (jit-friendly).

    ``batch_size`` equal to the data size gives the full batch in a random order.
    """
    # the top-k of n uniforms is a uniformly random subset without replacement, in random order;
    # 6× cheaper per step than jax.random.choice(replace=False), which sorts a full permutation
    # (measured in benchmarks/README.md, issue 6).
    idx = jax.lax.top_k(jax.random.uniform(key, (x.shape[0],)), batch_size)[1]
    return x[idx], y[idx]


def load(path: str, *, test_fraction: float = 0.25, seed: int = 0, dtype=None) -> Dataset:
    """A user's data set from a file: ``.npz`` with arrays ``x_train, y_train, x_test, y_test``, or a
    table, ``.csv`` of numbers or a 2-D ``.npy`` array, whose last column is the integer class label (split
    into train and test with ``test_fraction``, stratified). Labels must be integers 0 … n_classes−1.

    Example:
        >>> import numpy as np, tempfile, os, noether_jax as nj
        >>> f = os.path.join(tempfile.mkdtemp(), "d.npz")
        >>> np.savez(f, x_train=np.ones((6, 2)), y_train=np.arange(6) % 3, x_test=np.ones((3, 2)), y_test=np.arange(3))
        >>> d = nj.data.load(f); d.x_train.shape, d.n_classes
        ((6, 2), 3)
    """
    import os

    if not os.path.exists(path):
        raise ValueError(f"the data file {path!r} does not exist (option --data / argument `path`).")
    dtype = dtype or jnp.result_type(float)
    if path.endswith(".npz"):
        try:
            with np.load(path) as f:
                missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f]
                if missing:
                    raise ValueError(f"the data file {path!r} lacks the arrays {missing}; it needs x_train, y_train, x_test, y_test.")
                arrays = {k: np.asarray(f[k]) for k in ("x_train", "y_train", "x_test", "y_test")}
        except (OSError, EOFError) as e:
            raise ValueError(f"the data file {path!r} cannot be read as .npz: {e}.") from None
    elif path.endswith((".csv", ".npy")):
        from sklearn.model_selection import train_test_split

        try:
            table = np.loadtxt(path, delimiter=",", ndmin=2) if path.endswith(".csv") else np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"the data file {path!r} is not a {'CSV' if path.endswith('.csv') else '.npy array'} of numbers: {e}.") from None
        if table.ndim != 2 or table.shape[1] < 2:
            raise ValueError(f"the data file {path!r} must hold a 2-D table (examples × features, label last); got shape {table.shape}.")
        x, yv = table[:, :-1], table[:, -1]
        if not np.all(yv == np.round(yv)):
            raise ValueError(f"the last column of {path!r} must hold integer class labels.")
        x_tr, x_te, y_tr, y_te = train_test_split(x, yv.astype(int), test_size=test_fraction, random_state=seed, stratify=yv)
        arrays = {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}
    else:
        raise ValueError(f"unsupported data file {path!r}: use .npz (x_train, y_train, x_test, y_test), or .csv / .npy "
                         "(a table, label last).")
    for k in ("y_train", "y_test"):
        if not np.issubdtype(arrays[k].dtype, np.integer):
            if np.all(arrays[k] == np.round(arrays[k])):
                arrays[k] = arrays[k].astype(np.int64)
        _validate.labels(arrays[k], name=k)
    n_classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    return Dataset(jnp.asarray(arrays["x_train"], dtype), jnp.asarray(arrays["y_train"], jnp.int32),
                   jnp.asarray(arrays["x_test"], dtype), jnp.asarray(arrays["y_test"], jnp.int32), n_classes)

"""Issue 18 benchmark: the fixed cost of one ``nj.simulate`` call (a one-step solve at d = 10), against the
same diffrax solve jitted directly. Median of 40 calls after the compile, float64.

    .venv/bin/python benchmarks/simulate_overhead.py
"""

from __future__ import annotations

import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import noether_jax as nj

nj.enable_x64()


def median_ms(f, n=40):
    jax.block_until_ready(f())
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(f())
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def main():
    lag = nj.rules.sgd(lr=0.1, momentum=0.9).lagrangian(lambda q: jnp.sum(jnp.cos(q)))
    q0, v0 = jnp.linspace(0, 1, 10), jnp.zeros(10)
    field = nj.euler_lagrange(lag)

    @jax.jit
    def direct(y0, t1):
        return diffrax.diffeqsolve(diffrax.ODETerm(field), diffrax.Tsit5(), 0.0, t1, None, y0, None,
                                   stepsize_controller=diffrax.PIDController(rtol=1e-7, atol=1e-9), max_steps=16384).ys

    print(f"nj.simulate, one step:         {median_ms(lambda: nj.simulate(lag, q0, v0, t1=1e-3).q):.3f} ms per call")
    print(f"nj.simulate, throw=False:      {median_ms(lambda: nj.simulate(lag, q0, v0, t1=1e-3, throw=False).q):.3f} ms per call")
    print(f"diffrax diffeqsolve, jit:      {median_ms(lambda: direct((q0, v0), 1e-3)):.3f} ms per call")


if __name__ == "__main__":
    main()

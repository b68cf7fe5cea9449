"""Issue 18 benchmark: diffrax Tsit5 on a pytree state against one flat vector, the layout ``nj.simulate`` uses.

The modified flow of SGD(η = 0.05, β = 0.9) on ℒ = Σ log cosh over ``L`` = 20 parameter arrays of 50 entries
(a network's many leaves), t ∈ [0, 20], rtol = 1e-8, atol = 1e-10, float64. Both solves are one jitted
``diffeqsolve`` of the same field with the same controller (same steps); ``flat`` ravels (q, v) into one
vector as ``nj.simulate`` does. Median µs per solver step of 7 calls, after the compile.

    .venv/bin/python benchmarks/simulate_leaves.py
"""

import time, jax, jax.numpy as jnp, numpy as np, diffrax, noether_jax as nj
from jax.flatten_util import ravel_pytree
nj.enable_x64()
L = 20  # arrays in q (and as many in v)
q0 = [jnp.linspace(0, 1, 50) + i for i in range(L)]
loss = lambda q: sum(jnp.sum(jnp.log(jnp.cosh(x))) for x in q)
rule = nj.rules.sgd(lr=0.05, momentum=0.9)
lag = rule.lagrangian(loss); field = nj.euler_lagrange(lag)
v0 = [jnp.zeros(50)] * L
ctrl = diffrax.PIDController(rtol=1e-8, atol=1e-10)
flat0, unr = ravel_pytree((q0, v0))
@jax.jit
def tree_solve(y):
    return diffrax.diffeqsolve(diffrax.ODETerm(field), diffrax.Tsit5(), 0.0, 20.0, None, y, None, stepsize_controller=ctrl, max_steps=100000).stats["num_steps"]
@jax.jit
def flat_solve(y):
    f = lambda t, y, a: ravel_pytree(field(t, unr(y), a))[0]
    return diffrax.diffeqsolve(diffrax.ODETerm(f), diffrax.Tsit5(), 0.0, 20.0, None, y, None, stepsize_controller=ctrl, max_steps=100000).stats["num_steps"]
def tm(f, x):
    n = int(f(x)); ts=[]
    for _ in range(7):
        t=time.perf_counter(); jax.block_until_ready(f(x)); ts.append(time.perf_counter()-t)
    return np.median(ts)/n*1e6, n
for _ in range(2):
    print("pytree (q, v) with", 2*L, "leaves: µs/step %.1f (%d steps)" % tm(tree_solve, (q0, v0)))
    print("one flat vector:            µs/step %.1f (%d steps)" % tm(flat_solve, flat0))

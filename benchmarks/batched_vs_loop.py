"""Why batches: one batched matrix product vs a Python loop of per-sample products.

Computes ``Y = X @ W`` for ``X: [N, D_in]``, ``W: [D_in, D_out]`` three ways,
in NumPy and in jitted JAX:

* ``batched``: one ``[N, D_in] x [D_in, D_out]`` product;
* ``loop``: ``N`` separate ``[D_in] x [D_in, D_out]`` vector-matrix products
  from Python (the weights are read from memory ``N`` times; per-call overhead);
* ``vmap`` (JAX): the per-sample function vectorised by ``jax.vmap``, which
  compiles to the batched product.

    python benchmarks/batched_vs_loop.py             # N=100, 784 -> 200, ~10 s

Prints a table and ``speedup batched/loop (min times) numpy=X.X jax=Y.Y``.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _harness  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--d-in", type=int, default=784)
    p.add_argument("--d-out", type=int, default=200)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    _harness.print_machine()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.d_in)).astype(np.float32)
    w = rng.standard_normal((args.d_in, args.d_out)).astype(np.float32)
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    one = jax.jit(lambda xi, w: xi @ w)       # [D_in] -> [D_out]
    batched = jax.jit(lambda x, w: x @ w)
    vmapped = jax.jit(jax.vmap(lambda xi, w: xi @ w, in_axes=(0, None)))
    rows = [xj[i] for i in range(args.n)]     # pre-sliced: time the products only

    np.testing.assert_allclose(np.stack([np.asarray(one(r, wj)) for r in rows]),
                               np.asarray(batched(xj, wj)), rtol=1e-4, atol=1e-4)
    runs = {
        "numpy batched": lambda: x @ w,
        "numpy loop": lambda: [x[i] @ w for i in range(args.n)],
        "jax batched": lambda: batched(xj, wj),
        "jax vmap": lambda: vmapped(xj, wj),
        "jax loop": lambda: [one(r, wj) for r in rows],
    }
    times = _harness.bench(runs, warmup=3, rounds=args.rounds)
    _harness.table(times, title=f"Y = X @ W, X [{args.n}, {args.d_in}], "
                                f"W [{args.d_in}, {args.d_out}]", unit="us")
    # Minimum, as timeit does: sub-millisecond calls are the ones a busy
    # machine distorts most (a multi-threaded BLAS waiting for a stolen core).
    best = {k: min(v) for k, v in times.items()}
    print(f"speedup batched/loop (min times) numpy={best['numpy loop'] / best['numpy batched']:.1f} "
          f"jax={best['jax loop'] / best['jax batched']:.1f}")


if __name__ == "__main__":
    main()

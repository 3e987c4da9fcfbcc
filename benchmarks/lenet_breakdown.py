"""Where the course convnet's CPU train step spends its time (diagnostics, not a race).

Two tables, both with interleaved rounds (``_harness.py``):

1. The step's five large matrix products, alone, as fundl's CPU lowering
   (im2col) runs them, in GFLOP/s (minimum times): they bound the step.
2. Ablations of the fundl step (``convnet_mnist``, batch 100, SGD): the
   forward pass alone; the step with conv1's parameters frozen (no conv-1
   weight gradient, no pool-1 backward and no conv-2 input gradient); the
   whole step.

    python benchmarks/lenet_breakdown.py        # ~1 min
"""
from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import _harness  # noqa: E402

# (name, lhs shape, rhs shape, contracting dims): conv = patches x kernel matrix
PRODUCTS = [
    ("conv1 forward   [57600,25]x[25,32]", (25, 57600), (25, 32), ((0,), (0,))),
    ("conv1 weight grad [25,57600]x[57600,32]", (25, 57600), (57600, 32), ((1,), (0,))),
    ("conv2 forward   [1600,800]x[800,64]", (1600, 800), (800, 64), ((1,), (0,))),
    ("conv2 weight grad [800,1600]x[1600,64]", (1600, 800), (1600, 64), ((0,), (0,))),
    ("conv2 input grad [1600,64]x[64,800]", (1600, 64), (800, 64), ((1,), (1,))),
]


def main():
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax import lax

    from fundl import models, train
    _harness.print_machine()
    rng = np.random.default_rng(0)
    runs, flops = {}, {}
    for name, a, b, dims in PRODUCTS:
        x, w = (jnp.asarray(rng.standard_normal(s, dtype=np.float32)) for s in (a, b))
        f = jax.jit(lambda x, w, dims=dims: lax.dot_general(x, w, (dims, ((), ()))).sum())
        runs[name] = lambda f=f, x=x, w=w: f(x, w)
        flops[name] = 2 * np.prod(a) * np.prod(b) / a[dims[0][0]]  # 2 * M * K * N
    times = _harness.bench(runs, warmup=3, rounds=20)
    _harness.table(times, title="matrix products of the step (each alone)")
    total = 0.0
    for name, ts in times.items():
        total += min(ts)
        print(f"{name:42s} {flops[name] / min(ts) / 1e9:6.1f} GFLOP/s (min)")
    print(f"sum of minimum times: {total * 1e3:.2f} ms for "
          f"{sum(flops.values()) / 1e6:.0f} MFLOP")

    x = rng.standard_normal((100, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 100).astype(np.int32)
    model = models.convnet_mnist()
    _, params = model.init(jax.random.key(0), x.shape)
    opt = optax.sgd(0.1)

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

    def frozen_step(p, o):
        def l2(p):
            return loss({**p, "conv1": jax.tree_util.tree_map(lax.stop_gradient, p["conv1"])})
        g = jax.grad(l2)(p)
        u, o = opt.update(g, o, p)
        return optax.apply_updates(p, u), o

    fwd = jax.jit(loss)
    frozen = jax.jit(frozen_step)
    full = train.make_train_step(model, opt, donate=False)
    o = opt.init(params)
    runs = {"forward only": lambda: fwd(params),
            "step, conv1 frozen": lambda: frozen(params, o),
            "full step": lambda: full(params, {}, o, (x, y), None)}
    _harness.table(_harness.bench(runs, warmup=3, rounds=30),
                   title="fundl convnet_mnist step, batch 100: ablations")


if __name__ == "__main__":
    main()

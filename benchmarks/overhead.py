"""Per-step overhead of a tiny train step, where Python dispatch dominates the compute.

The model is an MLP 32 -> 64 (ReLU) -> 10, batch 8, cross-entropy, plain SGD
(lr 0.1); every step also returns the loss and the accuracy. Per step:

* ``jax.jit``: the same computation written in plain JAX (the same params dict),
  one ``jax.jit`` with the old buffers donated: the floor.
* ``fundl``: ``fundl.train.make_train_step(model, optax.sgd(0.1))``, called with a
  typed key as :func:`fundl.train.fit` does (the bare step takes the same key).
* ``nnx.jit``: flax NNX, ``nnx.Optimizer`` updated inside ``nnx.jit``;
  ``nnx.cached_partial``: the same step with the model and optimizer traversal
  cached (NNX's documented fast path, flax "Performance considerations").
* ``eqx.filter_jit``: equinox ``eqx.nn.MLP``, ``eqx.filter_value_and_grad``.

Each is timed two ways: ``async`` (``--inner`` steps back to back, one
``block_until_ready`` at the end: what a training loop does) and ``sync``
(``block_until_ready`` after every step: dispatch plus the round trip). Rounds
are interleaved (``_harness.bench``); the table gives median microseconds per step
and the ratio to ``jax.jit``.

The loop: one epoch of ``--epoch-steps`` batches over in-memory NumPy data,
host-shuffled, metrics read once at the end:

* ``bare loop``: ``for idx in batches: params, ... = step(..., (x[idx], y[idx]), key)``
  over the bare ``jax.jit`` step, the losses kept on the device and summed at the end;
* ``fundl run_epoch``: ``fundl._loop.run_epoch`` (``fit``'s epoch loop: a key per step,
  device-side metric sums read every 20 steps, ``on_nonfinite='stop'`` as ``fit``) over
  the fundl step and the same slices;
* ``fundl fit``: ``fundl.train.fit(..., epochs=1, progress=False)`` as a whole (its data
  checks, the copy of the trees and the evaluation-free epoch; the step is
  compiled at the first call and reused after).

    python benchmarks/overhead.py                 # ~1 min on 2 cores
    python benchmarks/overhead.py --rounds 30     # steadier medians
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import _harness  # noqa: E402

D_IN, D_HID, D_OUT, BATCH, LR = 32, 64, 10, 8, 0.1


def data(n):
    """``n`` random examples: ``x: float32 [n, 32]``, ``y: int32 [n]``."""
    import numpy as np
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, D_IN)).astype(np.float32), rng.integers(0, D_OUT, n).astype(np.int32)


def fundl_setup():
    """``(model, params, step)``: fundl's MLP, its params and ``make_train_step``."""
    import jax
    import optax
    import fundl.layers as L
    from fundl.train import make_train_step
    model = L.Serial(L.Dense(D_HID), L.ReLU(), L.Dense(D_OUT))
    _, params = model.init(jax.random.key(0), (BATCH, D_IN))
    return model, params, make_train_step(model, optax.sgd(LR))


def bare_step():
    """The same step in plain JAX, one ``jax.jit`` with donation: ``step(p, s, o, batch, key)``."""
    import jax
    import jax.numpy as jnp
    import optax
    opt = optax.sgd(LR)

    def loss_fn(p, x, y):
        h = jax.nn.relu(x @ p["dense1"]["w"] + p["dense1"]["b"])
        logits = h @ p["dense2"]["w"] + p["dense2"]["b"]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == y)

    def step(params, state, opt_state, batch, key):
        x, y = batch
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, {"loss": loss, "accuracy": acc}

    return jax.jit(step, donate_argnums=(0, 1, 2)), opt


def runner(step, trees, batch, key, sync):
    """A zero-argument callable running one step on carried trees (donated each call)."""
    import jax
    box = [trees]

    def one():
        *new, m = step(*box[0], batch, key)
        box[0] = tuple(new)
        return jax.block_until_ready(m) if sync else m
    return one


def nnx_steps(x, y):
    """``{name: (step, args)}`` for ``nnx.jit`` and ``nnx.cached_partial``."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(D_IN, D_HID, rngs=rngs)
            self.l2 = nnx.Linear(D_HID, D_OUT, rngs=rngs)

        def __call__(self, x):
            return self.l2(jax.nn.relu(self.l1(x)))

    def make(**jit_kw):
        @nnx.jit(**jit_kw)
        def train_step(model, optimizer, x, y):
            def loss_fn(model):
                logits = model(x)
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
                return loss, jnp.mean(jnp.argmax(logits, -1) == y)
            (loss, acc), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
            optimizer.update(model, grads)
            return {"loss": loss, "accuracy": acc}
        model = MLP(nnx.Rngs(0))
        return train_step, model, nnx.Optimizer(model, optax.sgd(LR), wrt=nnx.Param)

    step, model, opt = make()
    out = {"nnx.jit": lambda: step(model, opt, x, y)}
    cstep, cmodel, copt = make(graph=True, graph_updates=True)
    with nnx.set_graph_mode(True), nnx.set_graph_updates(True):
        cached = nnx.cached_partial(cstep, cmodel, copt)
    out["nnx.cached_partial"] = lambda: cached(x, y)
    return out


def eqx_step(x, y):
    """A zero-argument callable: one equinox ``filter_jit`` step on carried model/opt state."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax
    model = eqx.nn.MLP(D_IN, D_OUT, D_HID, depth=1, activation=jax.nn.relu, key=jax.random.key(0))
    opt = optax.sgd(LR)

    @eqx.filter_jit
    def step(model, opt_state, x, y):
        def loss_fn(model):
            logits = jax.vmap(model)(x)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, jnp.mean(jnp.argmax(logits, -1) == y)
        (loss, acc), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model)
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, {"loss": loss, "accuracy": acc}

    box = [(model, opt.init(eqx.filter(model, eqx.is_array)))]

    def one():
        m, o, metrics = step(*box[0], x, y)
        box[0] = (m, o)
        return metrics
    return one


def step_contestants(sync):
    """``{name: fn}`` for the per-step table (``sync``: wait after every step)."""
    import jax
    import jax.numpy as jnp
    x, y = (jnp.asarray(a) for a in data(BATCH))
    key = jax.random.key(1)
    model, params, fstep = fundl_setup()
    bstep, opt = bare_step()
    copy = lambda t: jax.tree.map(jnp.copy, t)
    out = {"jax.jit": runner(bstep, (copy(params), {}, opt.init(params)), (x, y), key, sync),
           "fundl": runner(fstep, (copy(params), {}, opt.init(params)), (x, y), key, sync)}
    wait = jax.block_until_ready if sync else (lambda m: m)
    for name, fn in nnx_steps(x, y).items():
        out[name] = (lambda fn: lambda: wait(fn()))(fn)
    eq = eqx_step(x, y)
    out["eqx.filter_jit"] = lambda: wait(eq())
    return out


def epoch_contestants(n_steps):
    """``{name: fn}``: one epoch each of the bare loop, ``run_epoch`` and ``fit``."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from fundl import _loop
    from fundl.train import fit
    x, y = data(n_steps * BATCH)
    model, params, fstep = fundl_setup()
    bstep, opt = bare_step()
    key = jax.random.key(1)
    rng = np.random.default_rng(0)
    copy = jax.jit(lambda t: jax.tree.map(jnp.copy, t))
    slices = lambda order: ((x[order[i:i + BATCH]], y[order[i:i + BATCH]])
                            for i in range(0, len(x), BATCH))

    def bare():
        trees, losses = copy((params, {}, opt.init(params))), []
        for batch in slices(rng.permutation(len(x))):
            *trees, m = bstep(*trees, batch, key)
            losses.append(m["loss"])
        return float(sum(jax.device_get(losses))) / len(losses)

    def run_epoch():
        trees = copy((params, {}, opt.init(params)))
        r = _loop.run_epoch(fstep, trees, slices(rng.permutation(len(x))),
                            key_for_step=_loop.StepKeys(key, 0), steps=n_steps,
                            progress=False, on_nonfinite="stop", where="fit")
        return r.metrics["loss"]

    sgd = optax.sgd(LR)  # one optimizer object: fit reuses its compiled step across calls

    def fit_once():
        return fit(model, params, {}, sgd, (x, y), epochs=1, batch_size=BATCH,
                   key=1, progress=False).history[-1]["train_loss"]

    return {"bare loop": bare, "fundl run_epoch": run_epoch, "fundl fit": fit_once}


def report(times, title, base, unit_scale=1e6, unit="us"):
    """A markdown table: median, min and the ratio of medians to ``base``."""
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"\n### {title}\n")
    print(f"| contestant | median {unit} | min {unit} | ratio vs {base} |")
    print("|---|---:|---:|---:|")
    for n, t in times.items():
        print(f"| {n} | {med[n] * unit_scale:.1f} | {min(t) * unit_scale:.1f} | "
              f"{med[n] / med[base]:.3f} |")
    return med


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=15, help="interleaved timed rounds")
    p.add_argument("--inner", type=int, default=200, help="steps per timed sample")
    p.add_argument("--epoch-steps", type=int, default=500, help="steps in the loop epoch")
    p.add_argument("--epoch-rounds", type=int, default=7, help="interleaved epochs timed")
    args = p.parse_args(argv)
    _harness.print_machine()
    meds = {}
    for sync in (False, True):
        mode = "sync (block_until_ready every step)" if sync else "async (one block per sample)"
        times = _harness.bench(step_contestants(sync), warmup=20, rounds=args.rounds,
                               inner=args.inner)
        meds[sync] = report(times, f"Per step, {mode}: MLP 32-64-10, batch {BATCH}", "jax.jit")
    t0 = time.perf_counter()
    epoch = epoch_contestants(args.epoch_steps)
    times = _harness.bench(epoch, warmup=1, rounds=args.epoch_rounds, inner=1, gap=0.05)
    emed = report({n: [s / args.epoch_steps for s in t] for n, t in times.items()},
                  f"One epoch of {args.epoch_steps} steps, per step", "bare loop")
    print(f"\n(epoch section {time.perf_counter() - t0:.0f} s)")
    print(f"ratio fundl/jax.jit async={meds[False]['fundl'] / meds[False]['jax.jit']:.3f} "
          f"sync={meds[True]['fundl'] / meds[True]['jax.jit']:.3f} "
          f"run_epoch/bare={emed['fundl run_epoch'] / emed['bare loop']:.3f} "
          f"fit/bare={emed['fundl fit'] / emed['bare loop']:.3f}")


if __name__ == "__main__":
    main()

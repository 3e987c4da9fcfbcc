"""MAML (Finn et al., 2017) on few-shot sinusoid regression: jax.grad through SGD steps.

A task is a sinusoid ``y = A sin(x - phase)``, ``A ~ U[0.1, 5]``, ``phase ~ U[0, pi]``,
``x ~ U[-5, 5]``. The learner sees ``K`` (x, y) pairs of a new task (the support
set), takes a few SGD steps from the meta-learned initialisation, and is scored
on other points of the same task (the query set).

MAML learns the initialisation ``theta`` by gradient descent on

    meta_loss(theta) = mean over tasks of  MSE_query(adapt(theta, support))
    adapt(theta, support) = theta - alpha * grad MSE_support(theta)   (repeated)

The meta-gradient flows *through* the inner SGD steps, so it contains
second-order terms (Hessian-vector products of the support loss); jax.grad
builds them by itself. ``--first-order`` detaches the inner gradients
(``jax.lax.stop_gradient``): first-order MAML, cheaper, usually a little worse.

Model: ``fundl.models.mlp((40, 40, 1))`` with ReLU, as in the paper.

    python experiments/maml_sinusoid.py               # ~10-20 s on 2 CPU cores
    python experiments/maml_sinusoid.py --first-order
    python experiments/maml_sinusoid.py --help

The last line printed is ``meta_test_mse_before=... meta_test_mse_after=...``: the
query MSE on unseen test tasks of the meta-learned model before adaptation and
after ``--test-steps`` SGD steps on each task's ``K`` support points.
"""
from __future__ import annotations

import argparse
import math
import time


def parse_args(argv=None):
    from fundl.experiment import (add_compile_cache_flags,
                                  non_negative_float, non_negative_int, positive_float, positive_int)

    p = argparse.ArgumentParser(description="MAML on few-shot sinusoid regression with fundl.")
    p.add_argument("--iterations", type=positive_int, default=5000, help="meta-training steps (default 5000)")
    p.add_argument("--meta-batch", type=positive_int, default=25, help="tasks per meta-step (default 25)")
    p.add_argument("--k-shot", type=positive_int, default=10, help="support points per task, K (default 10)")
    p.add_argument("--k-query", type=positive_int, default=10, help="query points per training task (default 10)")
    p.add_argument("--inner-steps", type=non_negative_int, default=1, help="SGD steps inside meta-training (default 1)")
    p.add_argument("--inner-lr", type=non_negative_float, default=0.01, help="inner SGD learning rate alpha (default 0.01)")
    p.add_argument("--meta-lr", type=positive_float, default=1e-3, help="Adam learning rate of the meta-step (default 1e-3)")
    p.add_argument("--hidden", type=positive_int, default=40, help="width of the two hidden layers (default 40)")
    p.add_argument("--first-order", action="store_true", help="first-order MAML: detach inner gradients")
    p.add_argument("--test-tasks", type=positive_int, default=500, help="unseen tasks for the final evaluation (default 500)")
    p.add_argument("--test-steps", type=non_negative_int, default=10, help="SGD steps of adaptation at test time (default 10)")
    p.add_argument("--test-query", type=positive_int, default=100, help="query points per test task (default 100)")
    p.add_argument("--log-every", type=positive_int, default=1000, help="meta-steps between progress lines (default 1000)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed (default 0)")
    add_compile_cache_flags(p)
    return p.parse_args(argv)


def sample_tasks(rng, n_tasks: int, k_support: int, k_query: int):
    """``n_tasks`` sinusoid tasks: ``((xs, ys), (xq, yq))``, ``xs: [T, K, 1]``, ``xq: [T, Q, 1]``.

    Sampled on the host with NumPy (``rng``: a ``np.random.Generator``): cheap,
    and no random-number kernels to compile.
    """
    import numpy as np

    amp = rng.uniform(0.1, 5.0, (n_tasks, 1, 1))
    phase = rng.uniform(0.0, math.pi, (n_tasks, 1, 1))
    x = rng.uniform(-5.0, 5.0, (n_tasks, k_support + k_query, 1))
    y = amp * np.sin(x - phase)
    x, y = x.astype(np.float32), y.astype(np.float32)
    return (x[:, :k_support], y[:, :k_support]), (x[:, k_support:], y[:, k_support:])


def make_fns(model, *, inner_lr: float, first_order: bool):
    """The inner loop and the meta-objective for ``model`` (``[K, 1] -> [K, 1]``).

    * ``adapt(params, x, y, steps)``: ``steps`` SGD steps (rate ``inner_lr``) on the
      MSE of one task's points ``x, y: [K, 1]``; returns the adapted parameters.
    * ``meta_loss(params, support, query, steps)``: mean over tasks of the query
      MSE after adapting on the support set; ``support = (xs, ys)``, ``xs: [T, K, 1]``,
      ``query = (xq, yq)``, ``xq: [T, Q, 1]``; ``steps`` is static (a Python int).
    """
    import jax
    import jax.numpy as jnp

    def mse(params, x, y):
        return jnp.mean((model.apply(params, x) - y) ** 2)

    def adapt(params, x, y, steps: int):
        def sgd_step(p, _):
            g = jax.grad(mse)(p, x, y)
            if first_order:
                g = jax.lax.stop_gradient(g)  # "detach": no second-order terms
            return jax.tree_util.tree_map(lambda a, d: a - inner_lr * d, p, g), None

        # A scan over the steps: differentiable (the meta-gradient goes through every
        # step) and compiled once whatever the number of steps.
        return jax.lax.scan(sgd_step, params, None, length=steps)[0] if steps else params

    def meta_loss(params, support, query, steps: int):
        def one(xs, ys, xq, yq):
            return mse(adapt(params, xs, ys, steps), xq, yq)
        return jnp.mean(jax.vmap(one)(*support, *query))

    return adapt, meta_loss


def evaluate(meta_loss, params, tasks, steps: int):
    """Query MSE of ``params`` on ``tasks`` after ``steps`` adaptation steps (0: none)."""
    support, query = tasks
    return float(meta_loss(params, support, query, steps))


def main(argv=None):
    args = parse_args(argv)
    from fundl.experiment import setup_compile_cache

    setup_compile_cache(args)  # before anything compiles
    t0 = time.perf_counter()

    import jax
    import numpy as np
    import optax

    from fundl import models

    model = models.mlp((args.hidden, args.hidden, 1), activation="relu", flatten=False, name="net")
    rng = np.random.default_rng(args.seed)
    test_tasks = sample_tasks(np.random.default_rng(args.seed + 10_000), args.test_tasks,
                              args.k_shot, args.test_query)   # unseen tasks, fixed
    # Initialising under jit compiles the initialisers once, not one per parameter shape.
    params = jax.jit(lambda k: model.init(k, (args.k_shot, 1))[1])(jax.random.key(args.seed))
    adapt, meta_loss = make_fns(model, inner_lr=args.inner_lr, first_order=args.first_order)
    opt = optax.adam(args.meta_lr)
    opt_state = opt.init(params)

    def meta_step(carry, tasks):
        params, opt_state = carry
        support, query = tasks
        loss, g = jax.value_and_grad(meta_loss)(params, support, query, args.inner_steps)
        updates, opt_state = opt.update(g, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    @jax.jit
    def run_chunk(carry, tasks):
        # Many meta-steps in one compiled call (a scan over pre-sampled task batches).
        return jax.lax.scan(meta_step, carry, tasks)

    ev = jax.jit(meta_loss, static_argnums=3)
    before0, after0 = evaluate(ev, params, test_tasks, 0), evaluate(ev, params, test_tasks, args.test_steps)
    print(f"init: meta_test_mse_before={before0:.4f} meta_test_mse_after={after0:.4f}  "
          f"({'first' if args.first_order else 'second'}-order MAML, K={args.k_shot}, "
          f"{args.inner_steps} inner step(s), alpha={args.inner_lr})", flush=True)
    history = []
    carry, done = (params, opt_state), 0
    while done < args.iterations:
        n = min(args.log_every, args.iterations - done)
        (xs, ys), (xq, yq) = sample_tasks(rng, n * args.meta_batch, args.k_shot, args.k_query)
        shape = lambda a: a.reshape((n, args.meta_batch) + a.shape[1:])
        carry, losses = run_chunk(carry, ((shape(xs), shape(ys)), (shape(xq), shape(yq))))
        done += n
        history.append(float(losses.mean()))
        print(f"iter {done:>6}  meta_train_loss={history[-1]:.4f}  {time.perf_counter() - t0:.1f}s",
              flush=True)
    params = carry[0]
    before = evaluate(ev, params, test_tasks, 0)
    after = evaluate(ev, params, test_tasks, args.test_steps)
    one_step = evaluate(ev, params, test_tasks, 1)
    print(f"after 1 adaptation step: meta_test_mse={one_step:.4f}; total {time.perf_counter() - t0:.1f}s")
    print(f"meta_test_mse_before={before:.4f} meta_test_mse_after={after:.4f}")
    return {"before": before, "after": after, "after_one_step": one_step, "init_before": before0,
            "init_after": after0, "history": history, "params": params, "model": model,
            "adapt": adapt, "test_tasks": test_tasks}


if __name__ == "__main__":
    main()

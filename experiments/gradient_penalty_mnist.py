"""Input-gradient regularisation (double backpropagation) on MNIST.

The penalty is the squared norm of each example's loss gradient with respect to
its *input* (Drucker & LeCun, 1992; the same construction as WGAN-GP's penalty):

    objective(params) = CE(params) + lambda * mean_i || d CE_i / d x_i ||^2

``fundl.autodiff.gradient_penalty`` computes the per-example norms with
``jax.grad`` inside the objective, so ``jax.grad(objective)`` differentiates a
gradient (second order). Two identical MLPs are trained, without and with the
penalty; reported on the test set: accuracy, the mean input-gradient norm, and
accuracy under an FGSM perturbation (``x + eps * sign(grad_x CE)``, pixels in
[0, 1]), which small input gradients make harder.

Data: real MNIST IDX files from ``--data-dir`` (default ``../shared/data/mnist``
next to the repository), a random subset for speed; falls back to scikit-learn's
8x8 digits (``fundl.data.load('digits')``) when the directory is absent.

    python experiments/gradient_penalty_mnist.py                  # ~20-30 s on 2 CPU cores
    python experiments/gradient_penalty_mnist.py --lam 0.1 --epochs 8

The last line printed is
``baseline_test_acc=... gp_test_acc=... baseline_fgsm_acc=... gp_fgsm_acc=...``.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO / "experiments") not in sys.path:  # the demos' shared data helper lives beside this script
    sys.path.insert(0, str(REPO / "experiments"))
from _demo_data import DEFAULT_MNIST, load_subset  # noqa: E402


def parse_args(argv=None):
    from fundl.experiment import (add_compile_cache_flags,
                                  non_negative_float, non_negative_int, positive_float, positive_int)

    p = argparse.ArgumentParser(description="Input-gradient regularisation (double backprop) on MNIST.")
    p.add_argument("--data-dir", default=str(DEFAULT_MNIST),
                   help=f"MNIST IDX directory (default {DEFAULT_MNIST}); sklearn digits if absent")
    p.add_argument("--train-size", type=positive_int, default=6000, help="training subset size (default 6000)")
    p.add_argument("--test-size", type=positive_int, default=2000, help="test subset size (default 2000)")
    p.add_argument("--epochs", type=positive_int, default=5, help="epochs (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="batch size (default 128)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--lam", type=non_negative_float, default=1.0, help="penalty weight lambda (default 1.0)")
    p.add_argument("--hidden", type=positive_int, default=256, help="hidden units of the MLP (default 256)")
    p.add_argument("--fgsm-eps", type=non_negative_float, default=0.1, help="FGSM step in pixel units, [0, 1] scale (default 0.1)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed (default 0)")
    add_compile_cache_flags(p)
    args = p.parse_args(argv)
    if args.batch_size > args.train_size:
        p.error(f"argument --batch-size: {args.batch_size} exceeds --train-size "
                f"{args.train_size}; lower it")
    return args


def make_objective(model, lam: float):
    """``objective(params, x, y) -> (loss, (ce, mean_sq_grad_norm))``."""
    import jax.numpy as jnp

    import fundl.autodiff as AD
    import fundl.functional as F

    def objective(params, x, y):
        def per_example_ce(xx):
            return F.cross_entropy(model.apply(params, xx), y, reduction="none")   # [N]
        ce = jnp.mean(per_example_ce(x))
        if lam == 0:
            return ce, (ce, jnp.zeros(()))
        norms = AD.gradient_penalty(per_example_ce, x)                       # [N], differentiable
        pen = jnp.mean(norms ** 2)
        return ce + lam * pen, (ce, pen)

    return objective


def train(model, params, data, args, lam: float, log=print):
    """Adam for ``args.epochs`` epochs on the objective with penalty weight ``lam``."""
    import jax
    import numpy as np
    import optax

    x, y = data
    opt = optax.adam(args.lr)
    objective = make_objective(model, lam)

    @jax.jit
    def step(params, opt_state, x, y):
        (loss, aux), g = jax.value_and_grad(objective, has_aux=True)(params, x, y)
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, aux

    opt_state = opt.init(params)
    rng = np.random.default_rng(args.seed + 1)
    steps = len(y) // args.batch_size   # drop the last partial batch: one compiled shape
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(y))
        ces, pens = [], []
        for s in range(steps):
            idx = order[s * args.batch_size:(s + 1) * args.batch_size]
            params, opt_state, (ce, pen) = step(params, opt_state, x[idx], y[idx])
            ces.append(ce)
            pens.append(pen)
        log(f"  lambda={lam:g} epoch {epoch}/{args.epochs}  train_ce={float(np.mean(ces)):.4f}  "
            f"grad_norm_sq={float(np.mean(pens)):.4f}")
    return params


def make_assess(model, eps: float):
    """``assess(params, x, y)`` -> test accuracy, mean input-gradient norm, FGSM accuracy at ``eps``."""
    import jax
    import jax.numpy as jnp

    import fundl.autodiff as AD
    import fundl.functional as F

    @jax.jit
    def run(params, x, y):
        ce = lambda xx: F.cross_entropy(model.apply(params, xx), y, reduction="none")
        acc = jnp.mean(jnp.argmax(model.apply(params, x), -1) == y)
        norms = AD.gradient_penalty(ce, x)
        g = jax.grad(lambda xx: jnp.sum(ce(xx)))(x)
        x_adv = jnp.clip(x + eps * jnp.sign(g), 0.0, 1.0)
        adv = jnp.mean(jnp.argmax(model.apply(params, x_adv), -1) == y)
        return acc, jnp.mean(norms), adv

    def assess(params, x, y):
        acc, norm, adv = (float(v) for v in run(params, x, y))
        return {"accuracy": acc, "grad_norm": norm, "fgsm_accuracy": adv}

    return assess


def main(argv=None):
    args = parse_args(argv)
    from fundl.experiment import setup_compile_cache

    setup_compile_cache(args)  # before anything compiles
    t0 = time.perf_counter()
    import jax

    from fundl import models

    train_data, test_data, source = load_subset(args.data_dir, args.train_size, args.test_size, args.seed)
    print(f"data: {source}; {len(train_data[1])} train / {len(test_data[1])} test images "
          f"{train_data[0].shape[1:]}", flush=True)
    model = models.mlp((args.hidden, 10), activation="relu")
    params0 = jax.jit(lambda k: model.init(k, (args.batch_size,) + train_data[0].shape[1:])[1])(
        jax.random.key(args.seed))
    assess = make_assess(model, args.fgsm_eps)   # compiled once, used for both models
    results = {}
    for name, lam in (("baseline", 0.0), ("gp", args.lam)):
        params = train(model, params0, train_data, args, lam)
        results[name] = assess(params, *test_data)
        r = results[name]
        print(f"{name:>8} (lambda={lam:g}): test_acc={r['accuracy']:.4f}  "
              f"mean_input_grad_norm={r['grad_norm']:.4f}  fgsm_acc(eps={args.fgsm_eps:g})="
              f"{r['fgsm_accuracy']:.4f}  {time.perf_counter() - t0:.1f}s", flush=True)
    b, g = results["baseline"], results["gp"]
    print(f"baseline_test_acc={b['accuracy']:.4f} gp_test_acc={g['accuracy']:.4f} "
          f"baseline_fgsm_acc={b['fgsm_accuracy']:.4f} gp_fgsm_acc={g['fgsm_accuracy']:.4f}")
    return results


if __name__ == "__main__":
    main()

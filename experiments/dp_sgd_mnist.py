"""DP-SGD (Abadi et al., 2016) on MNIST with per-example gradients.

Each step computes every example's gradient (``jax.vmap`` of ``jax.grad``:
``fundl.autodiff.per_example_grads``), clips each to L2 norm ``C``
(``clip_per_example``), sums, adds Gaussian noise of standard deviation
``sigma * C`` and divides by the batch size (``add_noise``; all three in
``dp_sgd_grads``). Clipping bounds what any single example can contribute to
the update by ``C``; the noise hides that contribution. The script checks the
bound on a batch (every clipped per-example norm <= C, and removing any one
example changes the summed gradient by at most C), then trains the same MLP
with DP-SGD and with plain SGD and reports both test accuracies.

The epsilon printed is the Renyi-DP bound of the Poisson-subsampled Gaussian
mechanism (integer orders, Mironov et al. 2017/2019) with sampling rate
``q = batch / N``. This script draws shuffled fixed-size batches, not Poisson
samples, so the figure is indicative only; use a maintained accountant (e.g.
Google's ``dp_accounting``) with Poisson sampling for a real guarantee.

Data: real MNIST IDX files from ``--data-dir`` (default ``../shared/data/mnist``),
a random subset; falls back to scikit-learn's digits when the directory is absent.

    python experiments/dp_sgd_mnist.py                      # ~20-30 s on 2 CPU cores
    python experiments/dp_sgd_mnist.py --noise-multiplier 0.8 --epochs 10

The last line printed is ``dp_test_acc=... nonprivate_test_acc=... epsilon=...``.
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO / "experiments") not in sys.path:  # the demos' shared data helper lives beside this script
    sys.path.insert(0, str(REPO / "experiments"))
from _demo_data import DEFAULT_MNIST, load_subset  # noqa: E402


def parse_args(argv=None):
    from fundl.experiment import (add_compile_cache_flags, non_negative_float, non_negative_int, open_unit_float,
                                  positive_float, positive_int)

    p = argparse.ArgumentParser(description="DP-SGD with per-example clipping on MNIST.")
    p.add_argument("--data-dir", default=str(DEFAULT_MNIST),
                   help=f"MNIST IDX directory (default {DEFAULT_MNIST}); sklearn digits if absent")
    p.add_argument("--train-size", type=positive_int, default=6000, help="training subset size (default 6000)")
    p.add_argument("--test-size", type=positive_int, default=2000, help="test subset size (default 2000)")
    p.add_argument("--epochs", type=positive_int, default=5, help="epochs (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=200, help="batch size (default 200)")
    p.add_argument("--lr", type=positive_float, default=0.5, help="SGD learning rate (default 0.5)")
    p.add_argument("--max-norm", type=positive_float, default=1.0, help="per-example clipping bound C (default 1.0)")
    p.add_argument("--noise-multiplier", type=non_negative_float, default=1.1, help="sigma: noise std is sigma*C (default 1.1)")
    p.add_argument("--delta", type=open_unit_float, default=1e-5, help="delta of the (epsilon, delta) report (default 1e-5)")
    p.add_argument("--hidden", type=positive_int, default=64, help="hidden units (default 64)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed (default 0)")
    add_compile_cache_flags(p)
    args = p.parse_args(argv)
    if args.batch_size > args.train_size:
        p.error(f"argument --batch-size: {args.batch_size} exceeds --train-size "
                f"{args.train_size}; lower it")
    return args


def rdp_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    """(epsilon, delta)-DP of ``steps`` Poisson-subsampled Gaussian steps, via Renyi DP.

    For an integer order ``a``: ``A_a = sum_k C(a, k) (1-q)^(a-k) q^k exp((k^2 - k) / (2 sigma^2))``,
    RDP ``= steps * log(A_a) / (a - 1)``, ``epsilon = min_a RDP + log(1/delta) / (a - 1)``.
    """
    if sigma == 0:
        return math.inf
    if q >= 1:  # no subsampling: the Gaussian mechanism's RDP a / (2 sigma^2)
        return min(steps * a / (2 * sigma ** 2) + math.log(1 / delta) / (a - 1) for a in range(2, 257))
    best = math.inf
    for a in range(2, 257):
        terms = [math.lgamma(a + 1) - math.lgamma(k + 1) - math.lgamma(a - k + 1)
                 + (a - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * sigma ** 2)
                 for k in range(a + 1)]
        m = max(terms)
        log_a = m + math.log(sum(math.exp(t - m) for t in terms))
        best = min(best, steps * log_a / (a - 1) + math.log(1 / delta) / (a - 1))
    return best


def make_loss(model):
    import fundl.functional as F

    def loss(params, batch):
        x, y = batch
        return F.cross_entropy(model.apply(params, x), y)
    return loss


def check_clipping(loss, params, batch, max_norm: float):
    """Clip a batch's per-example gradients; return the largest norms before and after,
    and the largest change of the summed gradient when one example is removed."""
    import jax
    import jax.numpy as jnp

    import fundl.autodiff as AD

    @jax.jit
    def run(params, batch):
        per = AD.per_example_grads(loss, params, batch)
        clipped, norms = AD.clip_per_example(per, max_norm)
        after = AD.per_example_norms(clipped)
        # Removing example i changes sum_j clip(g_j) by exactly clip(g_i): its norm.
        total = jax.tree_util.tree_map(lambda a: a.sum(0), clipped)
        change = jnp.sqrt(sum(jnp.sum(jnp.reshape(t[None] - (t[None] - a), (a.shape[0], -1)) ** 2, 1)
                              for t, a in zip(jax.tree_util.tree_leaves(total),
                                              jax.tree_util.tree_leaves(clipped))))
        return jnp.max(norms), jnp.max(after), jnp.mean(norms > max_norm), jnp.max(change)

    before, after, frac, change = (float(v) for v in run(params, batch))
    return {"max_norm_before": before, "max_norm_after": after, "fraction_clipped": frac,
            "max_sensitivity": change}


def train(model, params, data, args, private: bool, log=print):
    """SGD with (``private``) or without DP-SGD gradients."""
    import jax
    import numpy as np
    import optax

    import fundl.autodiff as AD

    x, y = data
    loss = make_loss(model)
    opt = optax.sgd(args.lr)

    @jax.jit
    def step(params, opt_state, batch, key):
        if private:
            g, norms = AD.dp_sgd_grads(loss, params, batch, key=key, max_norm=args.max_norm,
                                       noise_multiplier=args.noise_multiplier)
            clipped = (norms > args.max_norm).mean()
        else:
            g, clipped = jax.grad(loss)(params, batch), 0.0
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss(params, batch), clipped

    opt_state = opt.init(params)
    rng = np.random.default_rng(args.seed + 1)
    key = jax.random.key(args.seed + 2)
    steps = len(y) // args.batch_size
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(y))
        losses, fracs = [], []
        for s in range(steps):
            idx = order[s * args.batch_size:(s + 1) * args.batch_size]
            params, opt_state, l, c = step(params, opt_state, (x[idx], y[idx]),
                                           jax.random.fold_in(key, (epoch - 1) * steps + s))
            losses.append(l)
            fracs.append(c)
        log(f"  {'DP-SGD' if private else 'SGD   '} epoch {epoch}/{args.epochs}  "
            f"train_loss={float(np.mean(losses)):.4f}"
            + (f"  clipped={float(np.mean(fracs)):.2f}" if private else ""))
    return params


def make_accuracy(model):
    """``accuracy(params, x, y) -> float``, compiled once."""
    import jax
    import jax.numpy as jnp

    run = jax.jit(lambda p, x, y: jnp.mean(jnp.argmax(model.apply(p, x), -1) == y))
    return lambda params, x, y: float(run(params, x, y))


def main(argv=None):
    args = parse_args(argv)
    from fundl.experiment import setup_compile_cache

    setup_compile_cache(args)  # before anything compiles
    t0 = time.perf_counter()
    import jax

    from fundl import models

    train_data, test_data, source = load_subset(args.data_dir, args.train_size, args.test_size, args.seed)
    n = len(train_data[1])
    print(f"data: {source}; {n} train / {len(test_data[1])} test images", flush=True)
    model = models.mlp((args.hidden, 10), activation="tanh")
    params0 = jax.jit(lambda k: model.init(k, (args.batch_size,) + train_data[0].shape[1:])[1])(
        jax.random.key(args.seed))

    chk = check_clipping(make_loss(model), params0,
                         (train_data[0][:args.batch_size], train_data[1][:args.batch_size]),
                         args.max_norm)
    ok = chk["max_norm_after"] <= args.max_norm * (1 + 1e-5) and \
        chk["max_sensitivity"] <= args.max_norm * (1 + 1e-5)
    print(f"clip check on one batch: max per-example norm {chk['max_norm_before']:.3f} -> "
          f"{chk['max_norm_after']:.6f} (C={args.max_norm:g}); removing one example changes the "
          f"clipped sum by at most {chk['max_sensitivity']:.6f}: {'OK' if ok else 'VIOLATED'}", flush=True)
    if not ok:
        raise SystemExit("per-example clipping does not bound each example's contribution")

    accuracy = make_accuracy(model)
    dp_params = train(model, params0, train_data, args, private=True)
    dp_acc = accuracy(dp_params, *test_data)
    print(f"DP-SGD: test_acc={dp_acc:.4f}  {time.perf_counter() - t0:.1f}s", flush=True)
    sgd_params = train(model, params0, train_data, args, private=False)
    sgd_acc = accuracy(sgd_params, *test_data)
    print(f"SGD:    test_acc={sgd_acc:.4f}  {time.perf_counter() - t0:.1f}s", flush=True)
    steps = args.epochs * (n // args.batch_size)
    eps = rdp_epsilon(args.batch_size / n, args.noise_multiplier, steps, args.delta)
    print(f"privacy (indicative, Poisson-sampling RDP bound): epsilon={eps:.2f} at delta={args.delta:g} "
          f"after {steps} steps, q={args.batch_size / n:.4f}, sigma={args.noise_multiplier:g}")
    print(f"dp_test_acc={dp_acc:.4f} nonprivate_test_acc={sgd_acc:.4f} epsilon={eps:.2f}")
    return {"dp_accuracy": dp_acc, "sgd_accuracy": sgd_acc, "epsilon": eps, "clip_check": chk}


if __name__ == "__main__":
    main()

"""Quickstart: a small convnet on scikit-learn's handwritten digits, end to end.

The digits (1,797 real 8x8 grayscale scans, 10 classes) ship with scikit-learn,
so nothing is downloaded. A fixed stratified split keeps 360 test images; the
pixels are standardised with the training set's mean and standard deviation.

    python experiments/quickstart.py                 # ~0.98 test accuracy, well under a minute on 2 CPU cores
    python experiments/quickstart.py --epochs 1      # smoke run

The last line printed is ``test_accuracy=0.xxxx``.
"""
from __future__ import annotations

import argparse
import time


def parse_args(argv=None):
    from fundl.experiment import add_compile_cache_flags, non_negative_int, positive_float, positive_int

    p = argparse.ArgumentParser(description="Train a small convnet on sklearn's 8x8 digits with fundl.")
    p.add_argument("--epochs", type=positive_int, default=20, help="passes over the 1,437 training images (default 20)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="examples per step (default 32)")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="Adam learning rate (default 2e-3)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed for initialisation and shuffling (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (per-epoch lines only)")
    add_compile_cache_flags(p)
    return p.parse_args(argv)


def load_digits_nhwc():
    """Train/test arrays: ``x: [N, 8, 8, 1]`` float32 standardised, ``y: [N]`` int32."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32)[..., None]  # [1797, 8, 8, 1], values 0..16
    y = digits.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=360, stratify=y, random_state=0)
    # Statistics of the training set only, so the test set stays unseen.
    mean, std = x_tr.mean(), x_tr.std()
    return ((x_tr - mean) / std, y_tr), ((x_te - mean) / std, y_te)


def convnet():
    import fundl.layers as L

    return L.Serial(
        L.Conv(16, 3, padding=1), L.ReLU(), L.MaxPool(2),   # [N, 8, 8, 1] -> [N, 4, 4, 16]
        L.Conv(32, 3, padding=1), L.ReLU(), L.MaxPool(2),   # -> [N, 2, 2, 32]
        L.Flatten(), L.Dropout(0.3),                        # -> [N, 128]; drop 30% while training
        L.Dense(64), L.ReLU(), L.Dense(10),                 # -> [N, 10] logits
    )


def main(argv=None):
    args = parse_args(argv)
    from fundl.experiment import setup_compile_cache

    setup_compile_cache(args)  # before anything compiles
    t0 = time.perf_counter()
    import jax
    import optax

    from fundl.train import count_params, evaluate, fit

    train, test = load_digits_nhwc()
    model = convnet()
    k_init, k_fit = jax.random.split(jax.random.key(args.seed))
    # Initialising under jit compiles every initialiser in one go, instead of once per
    # parameter shape when run op by op (seconds saved on a small CPU).
    params = jax.jit(lambda k: model.init(k, (args.batch_size,) + train[0].shape[1:])[1])(k_init)
    print(f"digits: {len(train[0])} train / {len(test[0])} test; "
          f"convnet with {count_params(params):,} parameters")

    def report(r, *trees):  # fit prints these lines itself when its progress bar is on
        print(f"epoch {r['epoch']}/{args.epochs}  train_loss={r['train_loss']:.4f}  "
              f"test_acc={r['test_accuracy']:.4f}  {r['seconds']:.2f}s", flush=True)

    result = fit(model, params, {}, optax.adam(args.lr), train, epochs=args.epochs,
                 batch_size=args.batch_size, key=k_fit, eval_data=test,
                 progress=not args.no_progress, callback=report if args.no_progress else None,
                 drop_last=True)  # one batch shape, one compilation of the step
    print(f"total {time.perf_counter() - t0:.1f}s (JAX import and compilation included)")
    final = evaluate(model, result.params, result.state, test)  # also covers --epochs 0
    print(f"test_accuracy={final['accuracy']:.4f}")


if __name__ == "__main__":
    main()

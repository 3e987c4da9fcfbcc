"""Data for the higher-order-gradient demos (gradient penalty, DP-SGD): a random MNIST subset in [0, 1]."""
from __future__ import annotations

import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist"


def load_subset(data_dir, train_size: int, test_size: int, seed: int):
    """``(x_train, y_train), (x_test, y_test), source``: ``x`` float32 in [0, 1], ``[N, H, W, 1]``."""
    import numpy as np

    import fundl.data as D

    if pathlib.Path(data_dir).is_dir():
        train, test = D.load_idx(data_dir, "train"), D.load_idx(data_dir, "test")
        source = f"MNIST from {data_dir}"
    else:
        train, test = D.load("digits", "train"), D.load("digits", "test")
        source = f"sklearn digits ({data_dir} not found)"
    rng = np.random.default_rng(seed)
    i = rng.permutation(len(train.y))[:train_size]
    j = rng.permutation(len(test.y))[:test_size]
    scale = float(train.x.max()) or 1.0  # 255 for MNIST, 16 for the sklearn digits
    f = lambda x: (x.astype(np.float32) / scale)
    return (f(train.x[i]), train.y[i]), (f(test.x[j]), test.y[j]), source

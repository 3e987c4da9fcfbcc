"""scikit-learn's handwritten digits (shipped with sklearn: nothing to download)."""
from __future__ import annotations

import numpy as np

from ._dataset import Dataset

DIGITS_TEST_SIZE = 360


def load_digits_split(split: str) -> Dataset:
    """The 1,797 8x8 digits, split 1,437 train / 360 test exactly as the quickstart does.

    The split is ``train_test_split(test_size=360, stratify=y, random_state=0)``:
    deterministic and stratified, so every class keeps its share in both halves.

    Args:
      split: ``'train'`` or ``'test'``.

    Returns:
      :class:`Dataset` with ``x: [N, 8, 8, 1] uint8`` (values 0..16, as
      scanned), ``y: [N] int32``, ``num_classes=10``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.uint8)[..., None]   # float 0..16 -> uint8, exact
    y = digits.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=DIGITS_TEST_SIZE, stratify=y,
                                              random_state=0)
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    return Dataset(np.ascontiguousarray(x), y, "digits", 10)

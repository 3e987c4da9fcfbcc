"""Reader for CIFAR-10's python version (``cifar-10-batches-py``, from cifar-10-python.tar.gz).

Each batch file is a pickled dict with ``b'data'``: ``[10000, 3072] uint8``
(1024 red, 1024 green, 1024 blue values per image, rows in C order) and
``b'labels'``: 10,000 ints in ``[0, 9]``. Training is ``data_batch_1`` to
``data_batch_5``, test is ``test_batch``.

Pickle runs code from the file it reads: only point this at a copy you trust.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ._dataset import Dataset
from ._errors import CorruptDataError

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


def find_cifar10_dir(directory) -> Path | None:
    """``directory/cifar-10-batches-py`` or ``directory`` itself, whichever holds the batches."""
    for cand in (Path(directory) / CIFAR10_DIR, Path(directory) / "cifar10" / CIFAR10_DIR, Path(directory)):
        if (cand / "test_batch").is_file() or (cand / "data_batch_1").is_file():
            return cand
    return None


def _read_batch(path: Path):
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        data, labels = d[b"data"], d[b"labels"]
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise CorruptDataError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e}); "
                               f"expected a pickled dict with b'data' and b'labels'") from e
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise CorruptDataError(f"{path}: b'data' must be [N, 3072] uint8; got {data.dtype}{list(data.shape)}")
    if labels.shape != (len(data),):
        raise CorruptDataError(f"{path}: {len(data):,} images but labels of shape {list(labels.shape)}")
    bad = (labels < 0) | (labels > 9)
    if bad.any():
        i = int(np.argmax(bad))
        raise CorruptDataError(f"{path}: label {int(labels[i])} at index {i} is outside [0, 9] "
                               f"(CIFAR-10 has 10 classes); {int(bad.sum())} labels are out of "
                               "range: the file is damaged or not CIFAR-10")
    return data, labels


def load_cifar10_pickle(directory, split: str) -> Dataset | str:
    """Load a CIFAR-10 split from the python-pickle batches.

    Args:
      directory: ``cifar-10-batches-py`` itself or a folder containing it.
      split: ``'train'`` (50,000 images) or ``'test'`` (10,000).

    Returns:
      :class:`Dataset` with ``x: [N, 32, 32, 3] uint8`` (NHWC), ``y: [N] int32``,
      or a string saying what is missing.

    Raises:
      CorruptDataError: a batch file is damaged (the message names it).
    """
    root = find_cifar10_dir(directory)
    if root is None:
        return f"no {CIFAR10_DIR}/ (data_batch_1..5, test_batch) in {directory}"
    missing = [f for f in CIFAR10_FILES[split] if not (root / f).is_file()]
    if missing:
        return f"{root} lacks {', '.join(missing)}"
    parts = [_read_batch(root / f) for f in CIFAR10_FILES[split]]
    x = np.concatenate([d for d, _ in parts]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    y = np.concatenate([lab for _, lab in parts]).astype(np.int32)
    return Dataset(np.ascontiguousarray(x), y, "cifar10", 10)

"""TFDS's TensorFlow-free reading path: ``tfds.data_source`` over prepared array_record files.

Nothing here downloads: data must already be prepared in a TFDS data dir
(``DIR/mnist/3.0.1/mnist-train.array_record-*`` and ``dataset_info.json``) in a
random-access format (array_record, or parquet). Reading needs neither
TensorFlow nor network; *preparing* the copy does (TFDS encodes the images
with TensorFlow), once, elsewhere.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._dataset import Dataset
from ._errors import CorruptDataError

_CHUNK = 2048  # records per __getitems__ call


def default_tfds_dir() -> Path:
    """TFDS's default data dir: ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
    return Path(os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets")


def prepare_command(name: str, directory: str = "DIR") -> str:
    """The one-liner that prepares a readable copy (needs network and TensorFlow)."""
    return (f"python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
            f"data_dir='{directory}', file_format='array_record').download_and_prepare()\"")


def try_load_tfds(name: str, split: str, data_dir, num_classes: int) -> Dataset | str:
    """Load a split prepared by TFDS under ``data_dir``, TensorFlow-free.

    Args:
      name: TFDS name (``'mnist'``, ``'fashion_mnist'``, ``'cifar10'``).
      split: ``'train'`` or ``'test'``.
      data_dir: a TFDS data dir (holding ``name/VERSION/``).
      num_classes: recorded in the result.

    Returns:
      The :class:`Dataset` (``x: [N, H, W, C] uint8``, ``y: [N] int32``), or a
      string saying why this source does not have it.

    Raises:
      CorruptDataError: the prepared files exist but cannot be read.
    """
    if not (Path(data_dir) / name).is_dir():  # cheap, and spares TFDS's warnings
        return f"no prepared copy ({Path(data_dir) / name}/ does not exist)"
    try:
        import tensorflow_datasets as tfds
        from tensorflow_datasets.core.file_adapters import FileFormat
    except ImportError as e:  # pragma: no cover - tfds is a dependency
        return f"tensorflow_datasets cannot be imported ({e})"
    data_dir = str(data_dir)
    builder = tfds.builder(name, data_dir=data_dir)
    where = builder.data_path
    if not builder.is_prepared():
        return f"no prepared copy at {where}"
    formats = builder.info.available_file_formats()
    if not formats & FileFormat.with_random_access():
        have = ", ".join(sorted(f.value for f in formats)) or "no format"
        return (f"the copy at {where} is in {have} format, which only TensorFlow reads; "
                f"prepare it again with file_format='array_record'")
    if split not in builder.info.splits:
        return f"the copy at {where} has no split {split!r} (has {sorted(builder.info.splits)})"
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        n = len(source)
        shape = tuple(builder.info.features["image"].shape)
        x = np.empty((n, *shape), np.uint8)
        y = np.empty((n,), np.int32)
        for start in range(0, n, _CHUNK):
            stop = min(n, start + _CHUNK)
            for i, ex in enumerate(source.__getitems__(list(range(start, stop))), start):
                x[i] = ex["image"]
                y[i] = ex["label"]
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise CorruptDataError(f"{where}: the prepared TFDS copy of {name!r} cannot be read "
                               f"({type(e).__name__}: {e}); delete it and prepare it again") from e
    bad = (y < 0) | (y >= num_classes)
    if n and bad.any():
        i = int(np.argmax(bad))
        raise CorruptDataError(f"{where}: label {int(y[i])} at index {i} of split {split!r} is "
                               f"outside [0, {num_classes - 1}] ({num_classes} classes); "
                               f"{int(bad.sum())} labels are out of range")
    return Dataset(x, y, name, num_classes)

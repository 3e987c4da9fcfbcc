"""Host-side minibatches: a reproducible shuffle per epoch, sharded across processes."""
from __future__ import annotations

import math
import operator
from typing import Iterator

import numpy as np

from .._argcheck import check_bool
from .._errors import ConfigError, ShapeError


def _int(value, arg: str, where: str, minimum: int) -> int:
    try:
        v = operator.index(value)
    except TypeError:
        raise ConfigError(f"{where}: {arg} must be an int; got {arg}={value!r}") from None
    if v < minimum:
        raise ConfigError(f"{where}: {arg} must be >= {minimum}; got {arg}={v}")
    return v


def _check_array(a, arg: str, where: str) -> None:
    """``a`` must be an array of rank >= 1 (rows are picked by index arrays)."""
    if not hasattr(a, "shape") or len(a.shape) < 1:
        got = f"{type(a).__name__}" + (f" of shape {tuple(a.shape)}" if hasattr(a, "shape") else "")
        raise ShapeError(f"{where}: {arg} must be an array [N, ...] (np.ndarray or jax.Array); "
                         f"got {got}. Convert it first: np.asarray({arg})")


def num_batches(n: int, batch_size: int, *, drop_remainder: bool = False) -> int:
    """How many batches :func:`batches` yields per epoch for ``n`` examples.

    Args:
      n: number of examples.
      batch_size: the (global) batch size.
      drop_remainder: whether the last partial batch is dropped.

    Returns:
      ``n // batch_size`` if ``drop_remainder`` else ``ceil(n / batch_size)``.

    Example:
      >>> num_batches(10, 4), num_batches(10, 4, drop_remainder=True)
      (3, 2)
    """
    n = _int(n, "n", "num_batches", 0)
    batch_size = _int(batch_size, "batch_size", "num_batches", 1)
    check_bool(drop_remainder, "drop_remainder", "num_batches")
    return n // batch_size if drop_remainder else math.ceil(n / batch_size)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of epoch ``epoch``: a function of ``(seed, epoch)`` only."""
    return np.random.Generator(np.random.PCG64([seed, epoch])).permutation(n)


def batches(x, y, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True,
            drop_remainder: bool = False, process_index: int = 0,
            process_count: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Minibatches of one epoch, in an order fixed by ``(seed, epoch)``.

    The permutation is drawn from ``numpy.random.Generator(PCG64([seed, epoch]))``
    and depends on nothing else, so a run resumed at epoch ``e`` sees exactly
    the data order it would have seen. Every example appears exactly once per
    epoch; the last, smaller batch is kept unless ``drop_remainder``.

    With several processes (``jax.process_count()``), each process calls this
    with the same arguments and its own ``process_index``: the *global* batch
    of ``batch_size`` rows is formed identically everywhere, and process ``i``
    gets rows ``[i * B // P, (i + 1) * B // P)`` of it (``B`` the global batch's
    size, ``P = process_count``). Full batches split evenly; a last partial
    batch is split as evenly as possible (sizes may differ by one, and may be
    zero), so every process yields the same number of batches. Use
    ``drop_remainder=True`` for training, where every step must have one shape.

    Args:
      x: ``[N, ...]`` array (e.g. ``[N, H, W, C]`` images), indexed on the host.
      y: ``[N, ...]`` array (e.g. ``[N]`` int32 labels).
      batch_size: the global batch size; divisible by ``process_count``.
      seed: non-negative int, fixed for the whole run.
      epoch: non-negative int, the epoch number.
      shuffle: ``False`` keeps the stored order.
      drop_remainder: drop the last batch if it is smaller than ``batch_size``.
      process_index: this process's index in ``[0, process_count)``.
      process_count: number of processes sharing each global batch.

    Returns:
      An iterator of ``(x_batch, y_batch)`` NumPy arrays, ``[batch_size // process_count, ...]``
      each (smaller for a last partial batch). Arguments are checked when
      ``batches`` is called, not at the first ``next``.

    Raises:
      ShapeError: ``x`` or ``y`` not an array of rank >= 1 (a list, ``None``), or they differ
        in length.
      ConfigError: a bad ``batch_size``, ``seed``, ``epoch`` or process argument, a
        non-bool ``shuffle`` or ``drop_remainder``,
        including a ``batch_size`` not divisible by ``process_count``.

    Example:
      >>> import numpy as np
      >>> x, y = np.arange(10)[:, None], np.arange(10)
      >>> [yb.tolist() for _, yb in batches(x, y, 4, shuffle=False)]
      [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
      >>> [yb.tolist() for _, yb in batches(x, y, 4, shuffle=False, process_index=1, process_count=2)]
      [[2, 3], [6, 7], [9]]
    """
    where = "batches"
    batch_size = _int(batch_size, "batch_size", where, 1)
    seed = _int(seed, "seed", where, 0)
    epoch = _int(epoch, "epoch", where, 0)
    process_count = _int(process_count, "process_count", where, 1)
    process_index = _int(process_index, "process_index", where, 0)
    if process_index >= process_count:
        raise ConfigError(f"{where}: process_index must be in [0, {process_count}); "
                          f"got process_index={process_index}")
    if batch_size % process_count:
        raise ConfigError(f"{where}: batch_size (the global batch) must be divisible by "
                          f"process_count; got batch_size={batch_size}, process_count={process_count}. "
                          f"Use a multiple of {process_count}, e.g. "
                          f"{max(process_count, batch_size // process_count * process_count)}")
    check_bool(shuffle, "shuffle", where)
    check_bool(drop_remainder, "drop_remainder", where)
    _check_array(x, "x", where)
    _check_array(y, "y", where)
    n = len(x)
    if len(y) != n:
        raise ShapeError(f"{where}: x and y must have the same length; got len(x)={n}, len(y)={len(y)}")
    order = epoch_permutation(n, seed, epoch) if shuffle else None

    def generate():
        for b in range(num_batches(n, batch_size, drop_remainder=drop_remainder)):
            start = b * batch_size
            size = min(batch_size, n - start)
            lo = start + process_index * size // process_count
            hi = start + (process_index + 1) * size // process_count
            if order is None:
                yield x[lo:hi], y[lo:hi]
            else:
                idx = order[lo:hi]
                yield x[idx], y[idx]

    return generate()

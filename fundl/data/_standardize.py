"""Standardisation statistics computed from the training split only."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._argcheck import check_bool
from .._errors import ConfigError, DataError, ShapeError

_CHUNK_ELEMS = 1 << 22  # ~4M values (32 MiB in float64) per chunk


class Standardizer(NamedTuple):
    """Mean and standard deviation of the training pixels; call it to standardise.

    Attributes:
      mean: a ``float`` (one statistic over every pixel) or a float64 ``[C]``
        array (per channel).
      std: same form as ``mean``; population standard deviation (``ddof=0``).

    Calling ``s(x)`` returns ``(x - mean) / std`` as float32 with ``x``'s shape
    (``[..., C]`` when per channel); it works on NumPy and JAX arrays alike
    (a JAX array stays on its device; a list is converted with ``np.asarray``).
    Per channel, ``x``'s last axis must have the ``C`` channels of the statistics
    (a ShapeError otherwise, rather than broadcasting 1 channel to ``C``).
    """

    mean: float | np.ndarray
    std: float | np.ndarray

    def __call__(self, x):
        if not hasattr(x, "astype"):  # a list or a scalar
            x = np.asarray(x)
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        if mean.ndim == 1 and (x.ndim < 1 or x.shape[-1] != mean.shape[0]):
            raise ShapeError(f"Standardizer: the statistics are per channel, for {mean.shape[0]} "
                             f"channels (the last axis of x_train), but x has shape "
                             f"{tuple(x.shape)}: {x.shape[-1] if x.ndim else 'no'} channel(s). "
                             "Apply it to data of the training set's channel layout [..., C], or "
                             "build one with standardizer(x_train, per_channel=False)")
        return (x.astype(np.float32) - mean) / std


def _check_finite(x) -> None:
    """DataError naming the first NaN/Inf of a float ``x`` (chunked: no full-size mask copy)."""
    if not np.issubdtype(x.dtype, np.inexact):
        return
    rows = max(1, _CHUNK_ELEMS // max(1, x[0].size))
    for i in range(0, len(x), rows):
        finite = np.isfinite(x[i:i + rows])
        if not finite.all():
            j = np.unravel_index(int(np.argmin(finite)), finite.shape)
            idx = (i + int(j[0]), *(int(k) for k in j[1:]))
            raise DataError(f"standardizer: x_train holds {x[idx]} at index {idx}; NaN/Inf "
                            "would make every statistic NaN. Fix or drop those rows, or pass "
                            "allow_nonfinite=True to compute the statistics over the finite "
                            "values only")


def standardizer(x_train, *, per_channel: bool | None = None,
                 allow_nonfinite: bool = False) -> Standardizer:
    """Statistics of the training set, for ``(x - mean) / std``.

    Computed in float64, chunk by chunk along the first axis (two passes: mean,
    then mean squared deviation), so a uint8 data set never needs a float copy.
    Use the training split only, so the test set stays unseen.

    Args:
      x_train: ``[N, ..., C]`` array, typically ``[N, H, W, C]`` uint8.
      per_channel: ``True``: one mean/std per channel (last axis), returned as
        ``[C]`` arrays; ``False``: one scalar over all values. Default: per
        channel for ``[N, H, W, C]`` data with ``C > 1`` (RGB), scalar otherwise
        (grayscale).
      allow_nonfinite: compute the statistics over the finite values only
        (ignoring NaN/Inf; they stay NaN/Inf after standardising). By default
        NaN/Inf in float ``x_train`` is refused, since a single one makes every
        statistic NaN.

    Returns:
      :class:`Standardizer` ``(mean, std)``.

    Raises:
      ShapeError: ``x_train`` is empty or a scalar.
      ConfigError: a standard deviation is zero (constant data), or ``per_channel`` is
        neither None nor a bool.
      DataError: float ``x_train`` holds NaN or Inf (the first one's index is
        named) and ``allow_nonfinite`` is False.

    Example:
      >>> import numpy as np
      >>> x = np.array([0, 0, 255, 255], np.uint8).reshape(4, 1, 1, 1)
      >>> s = standardizer(x)
      >>> s
      Standardizer(mean=127.5, std=127.5)
      >>> s(x).ravel()
      array([-1., -1.,  1.,  1.], dtype=float32)
    """
    if per_channel is not None:
        check_bool(per_channel, "per_channel", "standardizer")
    x = np.asarray(x_train)
    if x.ndim < 1 or x.size == 0:
        raise ShapeError(f"standardizer: x_train must be a non-empty [N, ..., C] array; got shape {x.shape}")
    if not allow_nonfinite:
        _check_finite(x)
    if per_channel is None:
        per_channel = x.ndim == 4 and x.shape[-1] > 1
    if per_channel and x.ndim < 2:
        raise ShapeError(f"standardizer: per_channel=True needs [N, ..., C] data; got shape {x.shape}")
    axes = tuple(range(x.ndim - 1)) if per_channel else None
    rows = max(1, _CHUNK_ELEMS // max(1, x[0].size))
    count = x.size // x.shape[-1] if per_channel else x.size

    masked = allow_nonfinite and np.issubdtype(x.dtype, np.inexact)

    def chunks():
        for i in range(0, len(x), rows):
            c = x[i:i + rows].astype(np.float64)
            yield np.ma.masked_invalid(c) if masked else c

    if masked:  # count the finite values only
        count = sum(np.ma.count(c, axis=axes) for c in chunks())
    total = sum(c.sum(axis=axes) for c in chunks())
    mean = np.ma.filled(total / count, np.nan) if masked else total / count
    sq = sum(np.square(c - mean).sum(axis=axes) for c in chunks())
    if masked:
        sq = np.ma.filled(sq, np.nan)
    std = np.sqrt(sq / count)
    if np.any(std == 0):
        which = f" in channel(s) {np.flatnonzero(std == 0).tolist()}" if per_channel else ""
        raise ConfigError(f"standardizer: x_train has zero standard deviation{which} "
                          f"(constant data): cannot divide by it")
    if per_channel:
        return Standardizer(mean, std)
    return Standardizer(float(mean), float(std))

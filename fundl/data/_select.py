"""Subsets of a labelled data set by class (e.g. MNIST's digits 0-4), labels renumbered."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._argcheck import check_bool
from .._errors import ConfigError, DataError, ShapeError


def parse_classes(spec: str | Sequence[int], where: str = "classes") -> tuple[int, ...]:
    """Class labels from ``'0-4'``, ``'5,7,9'``, ``'0-2,7'`` or a sequence of ints.

    Returns:
      The labels, sorted and distinct.

    Example:
      >>> parse_classes("0-2,7")
      (0, 1, 2, 7)
    """
    if isinstance(spec, str):
        out = []
        try:
            for part in spec.split(","):
                lo, _, hi = part.strip().partition("-")
                out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        except ValueError:
            raise ConfigError(f"{where}: expected class labels such as '0-4' or '5,7,9'; got "
                              f"{spec!r}") from None
    else:
        out = list(spec)
    if not out or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0
                      for c in out):
        raise ConfigError(f"{where}: expected a non-empty set of labels >= 0, e.g. '0-4'; got "
                          f"{spec!r}")
    if len(set(out)) != len(out):
        raise ConfigError(f"{where}: a label appears twice in {spec!r}")
    return tuple(sorted(int(c) for c in out))


def select_classes(x, y, classes, *, limit: int | None = None, allow_missing: bool = False):
    """The examples whose label is one of ``classes``, relabelled ``0 .. len(classes) - 1``.

    Labels map in sorted order: ``classes=(5, 6, 7, 8, 9)`` turns digit 5 into
    label 0 and digit 9 into label 4, so a model with ``len(classes)`` outputs
    trains on them. The examples keep their order.

    Args:
      x: ``[N, ...]`` examples.
      y: ``[N]`` integer labels.
      classes: labels to keep (a sequence of ints, or a string as
        :func:`parse_classes` reads, e.g. ``'5-9'``).
      limit: keep only the first ``limit`` selected examples.
      allow_missing: accept ``classes`` of which ``x, y`` hold no example (e.g. a small
        test subset); by default that is a DataError, since such a class would still get
        a label (a model output no example trains or tests).

    Returns:
      ``(x_sel [M, ...], y_sel [M] int32)`` NumPy arrays.

    Raises:
      ShapeError: bad shapes, non-integer labels, or no example of any of ``classes``.
      DataError: some of ``classes`` have no example (the absent labels are named), unless
        ``allow_missing``.
      ConfigError: a bad ``classes`` spec or ``limit``.

    Example:
      >>> import numpy as np
      >>> x, y = np.arange(7)[:, None], np.array([3, 5, 9, 6, 1, 7, 8])
      >>> select_classes(x, y, "5-9")
      (array([[1],
             [2],
             [3],
             [5],
             [6]]), array([0, 4, 1, 2, 3], dtype=int32))
    """
    classes = parse_classes(classes, "select_classes: classes")
    x, y = np.asarray(x), np.asarray(y)
    if y.ndim != 1 or len(x) != len(y) or not np.issubdtype(y.dtype, np.integer):
        raise ShapeError(f"select_classes: expected x [N, ...] and integer labels y [N]; got x "
                         f"{x.shape} and y {y.shape} ({y.dtype})")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"select_classes: limit must be a positive int or None; got {limit!r}")
    check_bool(allow_missing, "allow_missing", "select_classes")
    keep = np.isin(y, classes)
    if not keep.any():
        raise ShapeError(f"select_classes: no example has a label in {list(classes)}; the labels "
                         f"present are {sorted(set(y.tolist()))[:20]}")
    absent = sorted(set(classes) - set(np.unique(y[keep]).tolist()))
    if absent and not allow_missing:
        raise DataError(f"select_classes: no example has label(s) {absent} of classes="
                        f"{list(classes)}; they would still be numbered (a model output no "
                        f"example trains). Labels present: {sorted(set(y.tolist()))[:20]}; "
                        "drop the absent ones from classes, or pass allow_missing=True")
    lookup = np.full(max(classes) + 1, -1, np.int32)
    lookup[list(classes)] = np.arange(len(classes), dtype=np.int32)
    xs, ys = x[keep][:limit], lookup[y[keep]][:limit]
    return xs, ys

"""The in-memory split every loader returns."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Dataset(NamedTuple):
    """One split of a labelled image data set, held in host memory as stored.

    Attributes:
      x: ``[N, H, W, C]`` images, ``uint8`` (channels last; ``C = 1`` for
        grayscale). Not standardised: see :func:`fundl.data.standardizer`.
      y: ``[N]`` ``int32`` labels in ``[0, num_classes)``.
      name: the data set's name, e.g. ``'mnist'``.
      num_classes: number of classes.

    Example:
      >>> import numpy as np
      >>> ds = Dataset(np.zeros((2, 8, 8, 1), np.uint8), np.array([0, 1], np.int32), "toy", 2)
      >>> ds
      Dataset(name='toy', x=uint8[2, 8, 8, 1], y=int32[2], num_classes=2)
      >>> x, y, name, num_classes = ds   # a NamedTuple: unpacks like a tuple
    """

    x: np.ndarray
    y: np.ndarray
    name: str
    num_classes: int

    def __repr__(self) -> str:  # the arrays' shapes, not their contents
        def spec(a):
            a = np.asarray(a)
            return f"{a.dtype}[{', '.join(str(d) for d in a.shape)}]"
        return (f"Dataset(name={self.name!r}, x={spec(self.x)}, y={spec(self.y)}, "
                f"num_classes={self.num_classes})")

"""What every ``init`` records while a summary or a parameter check is active.

:class:`Recorder` collects one :class:`Row` per layer initialised: its path,
shapes, its own parameter count (not those of layers it initialises inside) and
its own MACs, so that each parameter and each MAC is counted once.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np

from . import _layer

Shape = tuple


class Row(NamedTuple):
    """One layer as recorded by :func:`fundl.summary`.

    Attributes:
      path: ``/``-joined names below the model (the model's name for the model itself).
      layer: the layer.
      input_shape, output_shape: its shapes.
      params: its own parameters (not those of layers it contains; 0 for a
        shared use).
      macs: its own multiply-accumulates.
      shared: a use of parameters owned by another node.
    """

    path: str
    layer: "_layer.Layer"
    input_shape: Shape
    output_shape: Shape
    params: int
    macs: int
    shared: bool

    @property
    def type_name(self) -> str:
        return self.layer.type_name


class Recorder:
    """Collects a :class:`Row` for every layer initialised while it is active.

    ``rows`` holds every layer, composites included (``has_children``); the
    parameter count of a row excludes those of the layers initialised inside
    it, so each parameter and each MAC is counted once, whether a layer holds
    its children in fields or initialises other layers inside its ``build``.
    """

    def __init__(self):
        self.rows: list[Row] = []
        self.paths: list[tuple] = []  # each row's full path, names from the outermost layer
        self.has_children: list[bool] = []
        self._open: list[list] = []

    def enter(self) -> None:
        self._open.append([0, False])

    def exit(self, layer, ctx, input_shape, output_shape, params) -> None:
        nested, has_children = self._open.pop()
        total = 0 if ctx.shared else sum(math.prod(np.shape(p))
                                         for p in jax.tree_util.tree_leaves(params))
        path = "/".join(ctx.path[1:]) or ctx.path[0]
        self.rows.append(Row(path, layer, input_shape, output_shape, total - nested,
                             int(layer.macs(input_shape, output_shape, params)), ctx.shared))
        self.has_children.append(has_children)
        self.paths.append(ctx.path)
        if self._open:
            self._open[-1][0] += total
            self._open[-1][1] = True



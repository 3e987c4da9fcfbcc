"""``fundl.summary``: a per-layer table of output shapes, parameters and MACs.

Computed from shapes alone: ``init`` runs under ``jax.eval_shape``, so no
parameter array is materialised and nothing is run (a VGG-16 summary costs no
memory). Every layer records its own parameters and MACs as it is
initialised (those of the layers it initialises inside are theirs), so each
is counted once; the table shows the leaves and any composite that has
parameters or MACs of its own.
"""
from __future__ import annotations

from typing import NamedTuple

import jax

from . import _context
from ._errors import ConfigError
from ._layer import Layer
from ._record import Recorder


class Summary(NamedTuple):
    """The result of :func:`summary`; ``str(s)`` is the table.

    Attributes:
      rows: one :class:`~fundl._record.Row` per use of a leaf layer (and per composite
        with parameters or MACs of its own), in the order their ``init`` finished.
      input_shape: the shape given (batch included).
      output_shape: the model's output shape.
      total_params: parameters of the model (shared parameters counted once).
      total_macs: multiply-accumulates of one forward pass over the whole batch.
    """

    rows: tuple
    input_shape: tuple
    output_shape: tuple
    total_params: int
    total_macs: int

    def __str__(self):
        head = ("layer", "type", "output shape", "params", "MACs")
        body = [(r.path, r.type_name, str(r.output_shape),
                 "shared" if r.shared else f"{r.params:,}", f"{r.macs:,}") for r in self.rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
                  for i, h in enumerate(head)]

        def line(cells):
            return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths)))

        rule = "-" * len(line(head))
        return "\n".join([line(head), rule, *map(line, body), rule,
                          f"input shape: {self.input_shape}   output shape: {self.output_shape}",
                          f"total params: {self.total_params:,}",
                          f"total MACs: {self.total_macs:,}"])


def summary(model: Layer, input_shape) -> Summary:
    """Per-layer output shapes, parameter counts and multiply-accumulates.

    MACs per call on the whole batch: conv ``C_out * prod(out_spatial) *
    (C_in / groups) * prod(kernel)`` per example; dense ``in * out`` per example;
    pooling, activations and normalisation 0. Use a batch of 1 for per-example
    figures.

    Args:
      model: any layer.
      input_shape: ``(N, *spatial, C)``, or a tuple of shapes for multi-input models.

    Returns:
      A :class:`Summary`; ``print(summary(...))`` shows the table.

    Example:
      >>> import fundl
      >>> s = fundl.summary(fundl.models.convnet_mnist(), (1, 28, 28, 1))
      >>> s.total_params, s.total_macs
      (105506, 1333200)
    """
    if not isinstance(model, Layer):
        raise ConfigError(f"summary: model must be a fundl Layer; got {type(model).__name__}")
    rec, box = Recorder(), {}

    def init():  # the key is made inside the abstract trace, so nothing leaks into a caller's
        box["out"], params, _ = model.init_with_state(jax.random.key(0), input_shape)
        return params

    with _context.using(recorder=rec, path=(), shared=False, frame=None, shapes_only=True):
        params = jax.eval_shape(init)
    total = sum(int(_numel(p.shape)) for p in jax.tree_util.tree_leaves(params))
    rows = tuple(r for r, kids in zip(rec.rows, rec.has_children)
                 if not kids or r.params or r.macs)
    return Summary(rows, tuple(input_shape), box["out"], total, sum(r.macs for r in rec.rows))


def _numel(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n

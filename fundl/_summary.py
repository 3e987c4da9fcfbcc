"""``fundl.summary``: a per-layer table of output shapes, parameters and MACs.

Computed from shapes alone: ``init`` runs under ``jax.eval_shape``, so no
parameter array is materialised and nothing is run (a VGG-16 summary costs no
memory). Each leaf layer records a row as it is initialised.
"""
from __future__ import annotations

from typing import NamedTuple

import jax

from ._layer import _RECORDER, Layer, Row
from ._errors import ConfigError


class Summary(NamedTuple):
    """The result of :func:`summary`; ``str(s)`` is the table.

    Attributes:
      rows: one :class:`Row` per use of a leaf layer, in execution order.
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
        body = [(r.path, r.kind, str(r.output_shape),
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
    rows, box = [], {}

    def init(key):
        box["out"], params, _ = model.init_with_state(key, input_shape)
        return params

    token = _RECORDER.set(rows)
    try:
        params = jax.eval_shape(init, jax.random.key(0))
    finally:
        _RECORDER.reset(token)
    total = sum(int(_numel(p.shape)) for p in jax.tree_util.tree_leaves(params))
    return Summary(tuple(rows), tuple(input_shape), box["out"], total, sum(r.macs for r in rows))


def _numel(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n

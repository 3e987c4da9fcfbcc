"""One-off layers from functions: :func:`layer` and :func:`stateful_layer`.

For a reusable layer, subclass :class:`~fundl.layers.Layer` instead.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

from ._errors import ConfigError
from ._fields import snake, value_repr
from ._layer import Layer, brief


class FunctionLayer(Layer):
    """A leaf layer from a pair of functions (see :func:`layer`); compared by identity of them.

    Attributes:
      title: the type name shown in messages and summaries.
      init_fn: ``(key, input_shape) -> (output_shape, params)``, or
        ``(output_shape, params, state)`` for a stateful one.
      apply_fn: ``(params, x, *, key, train) -> y``, or for a stateful one
        ``(params, state, x, *, key, train) -> (y, new_state)``.
      macs_fn: ``(input_shape, output_shape, params) -> int``, or None.
      shown: hyper-parameters shown in ``repr`` (a tuple of ``(key, value)``).
      has_state: whether it is stateful.
    """

    title: str
    init_fn: Callable
    apply_fn: Callable
    macs_fn: Callable | None = None
    shown: tuple = ()
    has_state: bool = False

    def __post_init__(self):
        if not isinstance(self.title, str) or not self.title:
            raise ConfigError(f"layer: kind must be a non-empty string; got {self.title!r}")
        for arg in ("init_fn", "apply_fn"):
            if not callable(getattr(self, arg)):
                raise ConfigError(f"layer {self.title!r}: {arg} must be callable; got "
                                  f"{getattr(self, arg)!r}")
        if isinstance(self.shown, Mapping):
            object.__setattr__(self, "shown", tuple(self.shown.items()))
        super().__post_init__()

    @property
    def type_name(self) -> str:
        return self.title

    @property
    def stateful(self) -> bool:
        return self.has_state

    def build_with_state(self, key, input_shape):
        out = self.init_fn(key, input_shape)
        n = 3 if self.has_state else 2
        if not isinstance(out, tuple) or len(out) != n:
            raise ConfigError(f"{self.label()}: init must return "
                              f"{'(output_shape, params, state)' if n == 3 else '(output_shape, params)'}"
                              f"; got {brief(out)}")
        return out if n == 3 else (*out, {})

    def forward_with_state(self, params, state, x, *, key, train):
        if self.has_state:
            return self.apply_fn(params, state, x, key=key, train=train)
        return self.apply_fn(params, x, key=key, train=train), state

    def macs(self, input_shape, output_shape, params) -> int:
        return int(self.macs_fn(input_shape, output_shape, params)) if self.macs_fn else 0

    def __repr__(self):
        cfg = "".join(f"{k}={value_repr(v)}, " for k, v in self.shown)
        return f"{self.title}({cfg}name={self.name!r})"


def layer(kind: str, name: str | None, init: Callable, apply: Callable, *, config=None,
          macs: Callable | None = None) -> Layer:
    """A stateless leaf layer from two functions: the shortcut for one-off layers.

    For a reusable layer, subclass :class:`Layer` instead (see :mod:`fundl.layers`).

    Args:
      kind: the type name shown in messages and summaries, e.g. ``'Scale'``.
      name: parameter key; defaults to ``kind`` in snake case.
      init: ``(key, input_shape) -> (output_shape, params)``.
      apply: ``(params, x, *, key, train) -> y``.
      config: hyper-parameters, shown in ``repr``.
      macs: ``(input_shape, output_shape, params) -> int``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> scale = layer('Scale', None, lambda key, s: (s, {'a': jnp.ones(())}),
      ...               lambda p, x, *, key, train: p['a'] * x)
      >>> scale.name, scale.init(jax.random.key(0), (2, 3))[0]
      ('scale', (2, 3))
    """
    return FunctionLayer(kind, init, apply, macs, tuple(dict(config or {}).items()), False,
                         name=name if name is not None else snake(kind))


def stateful_layer(kind: str, name: str | None, init_fn: Callable, apply_fn: Callable, *,
                   config=None, macs: Callable | None = None) -> Layer:
    """A leaf layer with state from two functions: ``init_fn(key, input_shape) ->
    (output_shape, params, state)`` and ``apply_fn(params, state, x, *, key, train) ->
    (y, new_state)``."""
    return FunctionLayer(kind, init_fn, apply_fn, macs, tuple(dict(config or {}).items()), True,
                         name=name if name is not None else snake(kind))



"""One-off layers from functions: :func:`layer` and :func:`stateful_layer`.

For a reusable layer, subclass :class:`~fundl.layers.Layer` instead.
"""
from __future__ import annotations

import functools
import inspect
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
        ``(params, state, x, *, key, train) -> (y, new_state)``; ``key`` / ``train`` may be
        left out of its signature (they are then not passed).
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
        _check_apply(self.apply_fn, self.has_state, self.where())

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
        given = {"key": key, "train": train}
        kw = {k: given[k] for k in _keywords(self.apply_fn)}
        if self.has_state:
            return self.apply_fn(params, state, x, **kw)
        return self.apply_fn(params, x, **kw), state

    def macs(self, input_shape, output_shape, params) -> int:
        return int(self.macs_fn(input_shape, output_shape, params)) if self.macs_fn else 0

    def __repr__(self):
        cfg = "".join(f"{k}={value_repr(v)}, " for k, v in self.shown)
        return f"{self.title}({cfg}name={self.name!r})"


@functools.lru_cache(maxsize=512)
def _keywords(fn) -> tuple[str, ...]:
    """Which of ``key=`` and ``train=`` ``fn`` accepts (both when it takes ``**kwargs`` or its
    signature cannot be read), so that ``apply=lambda p, x: ...`` works too."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return ("key", "train")
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return ("key", "train")
    names = {p.name for p in params if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                  inspect.Parameter.POSITIONAL_OR_KEYWORD)}
    return tuple(k for k in ("key", "train") if k in names)


def _check_apply(fn, stateful: bool, where: str) -> None:
    """Refuse at construction an apply function that cannot take its positional arguments."""
    form = "(params, state, x, *, key, train)" if stateful else "(params, x, *, key, train)"
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*([None] * (3 if stateful else 2)), **{k: None for k in _keywords(fn)})
    except TypeError:
        raise ConfigError(f"{where}: apply must have the signature {form} (key= and train= "
                          f"may be left out); got {fn!r} with signature {sig}"[:300]) from None


def layer(kind: str, name: str | None, init: Callable, apply: Callable, *, config=None,
          macs: Callable | None = None) -> Layer:
    """A stateless leaf layer from two functions: the shortcut for one-off layers.

    For a reusable layer, subclass :class:`Layer` instead (see :mod:`fundl.layers`).

    Args:
      kind: the type name shown in messages and summaries, e.g. ``'Scale'``.
      name: parameter key; defaults to ``kind`` in snake case.
      init: ``(key, input_shape) -> (output_shape, params)``.
      apply: ``(params, x, *, key, train) -> y``; ``key`` and ``train`` are passed only if
        ``apply`` accepts them, so ``lambda params, x: ...`` is fine for a layer that needs
        neither.
      config: hyper-parameters, shown in ``repr``.
      macs: ``(input_shape, output_shape, params) -> int``.

    Raises:
      ConfigError: if ``init`` or ``apply`` is not callable, or ``apply`` cannot take
        ``(params, x)``.

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
    (y, new_state)`` (``key`` and ``train`` passed only if ``apply_fn`` accepts them)."""
    return FunctionLayer(kind, init_fn, apply_fn, macs, tuple(dict(config or {}).items()), True,
                         name=name if name is not None else snake(kind))



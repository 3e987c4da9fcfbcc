"""The layer protocol: a layer is a small named pair of pure functions.

Data layout: channels last everywhere, ``x: [N, *spatial, C]`` (NHWC in 2-d).

A :class:`Layer` carries

* ``init(key, input_shape)``: computes the output shape and the named parameter
  pytree (and, for layers with batch-norm statistics, the state pytree) from
  shapes alone; it never runs the network;
* ``apply(params, x, *, key=None, train=False)``: computes the output.

Layers whose subtree holds running statistics (``layer.stateful``) take and
return their state explicitly: ``init`` returns ``(out_shape, params, state)``
and ``apply(params, x, state=state, train=...)`` returns ``(y, new_state)``.
Stateless layers keep the short forms, so an MLP needs no state plumbing.
Generic code (train steps, combinators) uses the uniform forms
``init_with_state`` / ``apply_with_state``, which always carry a state
(``{}`` for stateless layers).

Parameters are dicts with named leaves (``{'w': ..., 'b': ...}``) nested by
layer name; layers without parameters contribute no entry.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax

from ._errors import ConfigError, ShapeError

Shape = tuple  # a tuple of ints, e.g. (N, H, W, C); multi-input layers take a tuple of shapes
Params = Any   # a (possibly empty) dict pytree of arrays
State = Any

# Path of layer names being initialised or applied, for error messages and summaries.
_PATH: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("fundl_path", default=())
# Active summary recorder (see fundl._summary); None outside summary().
_RECORDER: contextvars.ContextVar[Any] = contextvars.ContextVar("fundl_recorder", default=None)
# True while initialising a use of shared parameters (counted once, at the owner).
_SHARED_USE: contextvars.ContextVar[bool] = contextvars.ContextVar("fundl_shared", default=False)


class Row(NamedTuple):
    """One leaf layer as recorded by :func:`fundl.summary`."""

    path: str
    kind: str
    input_shape: Shape
    output_shape: Shape
    params: int
    macs: int
    shared: bool


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Layer:
    """A named pair of pure functions; see the module docstring.

    Attributes:
      name: the key of this layer's parameters inside its parent's dict.
      kind: the layer type, e.g. ``'Conv'`` or ``'Serial'``.
      init_fn: ``(key, input_shape) -> (output_shape, params, state)``.
      apply_fn: ``(params, state, x, *, key, train) -> (y, state)``.
      stateful: whether the subtree holds state (batch-norm statistics).
      children: ``((name, Layer), ...)`` for combinators, in order.
      config: the hyper-parameters, for ``repr``, summaries and model surgery.
      macs_fn: ``(input_shape, output_shape, params) -> int`` multiply-accumulates
        of one call on the whole batch (leaf layers; ``None`` means 0).
    """

    name: str
    kind: str
    init_fn: Callable
    apply_fn: Callable
    stateful: bool = False
    children: tuple = ()
    config: Mapping = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))
    macs_fn: Callable | None = None

    # -- the uniform forms ---------------------------------------------------
    def init_with_state(self, key, input_shape) -> tuple[Shape, Params, State]:
        """Output shape, parameters and state for ``input_shape`` (includes the batch)."""
        input_shape = _check_shape(input_shape, self)
        with _scope(self.name) as path:
            out_shape, params, state = self.init_fn(key, input_shape)
            rec = _RECORDER.get()
            if rec is not None and not self.children:
                shared = _SHARED_USE.get()
                n = 0 if shared else sum(int(_size(p)) for p in jax.tree_util.tree_leaves(params))
                macs = int(self.macs_fn(input_shape, out_shape, params)) if self.macs_fn else 0
                rec.append(Row("/".join(path[1:]) or path[0], self.kind, input_shape,
                               out_shape, n, macs, shared))
        return out_shape, params, state

    def apply_with_state(self, params, state, x, *, key=None, train=False):
        """``(y, new_state)``; ``state`` is ``{}`` for stateless layers."""
        with _scope(self.name):
            return self.apply_fn(params, state, x, key=key, train=train)

    # -- the short forms -----------------------------------------------------
    def init(self, key, input_shape):
        """Initialise from shapes alone.

        Args:
          key: a ``jax.random`` key.
          input_shape: the input's shape including the batch, e.g. ``(N, H, W, C)``;
            a tuple of shapes for layers with several inputs.

        Returns:
          ``(output_shape, params)``, or ``(output_shape, params, state)`` when
          ``self.stateful``.
        """
        out_shape, params, state = self.init_with_state(key, input_shape)
        return (out_shape, params, state) if self.stateful else (out_shape, params)

    def apply(self, params, x, *, state=None, key=None, train=False):
        """Run the layer.

        Args:
          params: the pytree from ``init``.
          x: the input, ``[N, *spatial, C]`` (or a tuple for multi-input layers).
          state: the state pytree from ``init`` (required iff ``self.stateful``).
          key: a ``jax.random`` key, needed by dropout when ``train=True``.
          train: training mode (dropout active, batch statistics used and updated).

        Returns:
          ``y``, or ``(y, new_state)`` when ``self.stateful``.
        """
        if self.stateful:
            if state is None:
                raise ConfigError(
                    f"{self.kind} '{self.name}': this model holds batch-norm statistics; "
                    "pass state=... (the state returned by init) and use the returned "
                    "(y, new_state)")
            return self.apply_with_state(params, state, x, key=key, train=train)
        if state not in (None, {}):
            raise ConfigError(f"{self.kind} '{self.name}': state was given but this model is stateless")
        y, _ = self.apply_with_state(params, {}, x, key=key, train=train)
        return y

    def rename(self, name: str) -> "Layer":
        """The same layer under another name (the key of its parameters)."""
        if not isinstance(name, str) or not name or "/" in name:
            raise ConfigError(f"{self.kind}: name must be a non-empty string without '/'; got {name!r}")
        return dataclasses.replace(self, name=name)

    def __repr__(self):
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        head = f"{self.kind}({cfg})" if cfg else f"{self.kind}()"
        if not self.children:
            return f"{head} '{self.name}'"
        inner = "\n".join("  " + repr(c).replace("\n", "\n  ") for _, c in self.children)
        return f"{head} '{self.name}' [\n{inner}\n]"


def layer(kind: str, name: str | None, init: Callable, apply: Callable, *, config=None,
          macs: Callable | None = None) -> Layer:
    """Build a stateless leaf layer from short-form functions.

    Args:
      kind: layer type name, e.g. ``'Dense'``.
      name: parameter key; defaults to ``kind.lower()``.
      init: ``(key, input_shape) -> (output_shape, params)``.
      apply: ``(params, x, *, key, train) -> y``.
      config: hyper-parameters, shown in ``repr``.
      macs: ``(input_shape, output_shape, params) -> int``.
    """

    def init_fn(key, input_shape):
        out_shape, params = init(key, input_shape)
        return out_shape, params, {}

    def apply_fn(params, state, x, *, key, train):
        return apply(params, x, key=key, train=train), state

    return Layer(_default_name(kind, name), kind, init_fn, apply_fn, False, (),
                 types.MappingProxyType(dict(config or {})), macs)


def stateful_layer(kind: str, name: str | None, init_fn: Callable, apply_fn: Callable, *,
                   config=None, macs: Callable | None = None) -> Layer:
    """Build a leaf layer with state from uniform-form functions (see :class:`Layer`)."""
    return Layer(_default_name(kind, name), kind, init_fn, apply_fn, True, (),
                 types.MappingProxyType(dict(config or {})), macs)


def _default_name(kind: str, name) -> str:
    """``name`` checked, or ``kind`` in snake case (``'BatchNorm'`` -> ``'batch_norm'``)."""
    if name is None:
        return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(kind))
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"{kind}: name must be a non-empty string without '/'; got {name!r}")
    return name


# -- helpers for combinators and leaf layers ---------------------------------

def unique_children(layers: Sequence[Layer], where: str) -> tuple[tuple[str, Layer], ...]:
    """Give each child a unique name: repeated names get a 1-based suffix (conv1, conv2)."""
    for i, l in enumerate(layers):
        if not isinstance(l, Layer):
            raise ConfigError(f"{where}: argument {i} must be a fundl Layer; got {type(l).__name__} {l!r}")
    counts: dict[str, int] = {}
    for l in layers:
        counts[l.name] = counts.get(l.name, 0) + 1
    seen: dict[str, int] = {}
    out = []
    taken = {l.name for l in layers if counts[l.name] == 1}
    for l in layers:
        if counts[l.name] == 1:
            out.append((l.name, l))
            continue
        i = seen.get(l.name, 0)
        while True:
            i += 1
            candidate = f"{l.name}{i}"
            if candidate not in taken:
                break
        seen[l.name] = i
        taken.add(candidate)
        out.append((candidate, l.rename(candidate)))
    return tuple(out)


def split_key(key, n: int):
    """``n`` independent keys, or ``n`` Nones when ``key`` is None."""
    if key is None:
        return [None] * n
    return list(jax.random.split(key, n))


def child_entry(tree: Mapping, name: str, owner: Layer | str, what: str = "params"):
    """``tree[name]`` with a readable error; empty dict when the child has nothing."""
    if not isinstance(tree, Mapping):
        raise ShapeError(f"{_label(owner)}: {what} must be a dict keyed by layer name; "
                         f"got {type(tree).__name__}")
    return tree.get(name, {})


def put(tree: dict, name: str, value) -> None:
    """Store a child's params/state unless empty (layers without parameters add no key)."""
    if not (isinstance(value, Mapping) and len(value) == 0):
        tree[name] = value


def current_path() -> str:
    """The ``/``-joined names of the layers being initialised or applied."""
    return "/".join(_PATH.get())


def label(kind: str) -> str:
    """``"Conv 'net/conv1'"``: the layer being initialised or applied, for messages."""
    return f"{kind} '{current_path()}'"


def _label(owner) -> str:
    return f"{owner.kind} '{current_path() or owner.name}'" if isinstance(owner, Layer) else str(owner)


@contextlib.contextmanager
def _scope(name: str):
    token = _PATH.set(_PATH.get() + (name,))
    try:
        yield _PATH.get()
    finally:
        _PATH.reset(token)


@contextlib.contextmanager
def shared_use():
    """Mark initialisation of a layer whose parameters are owned elsewhere."""
    token = _SHARED_USE.set(True)
    try:
        yield
    finally:
        _SHARED_USE.reset(token)


def _size(p) -> int:
    n = 1
    for d in p.shape:
        n *= int(d)
    return n


def is_shape(s) -> bool:
    """True for a single shape: a tuple/list of ints."""
    return isinstance(s, (tuple, list)) and all(isinstance(d, int) and not isinstance(d, bool) for d in s)


def _check_shape(input_shape, owner: Layer):
    if is_shape(input_shape):
        if any(d < 1 for d in input_shape):
            raise ShapeError(f"{owner.kind} '{owner.name}': input_shape entries must be positive "
                             f"ints (batch included, e.g. (1, 28, 28, 1)); got {tuple(input_shape)!r}")
        return tuple(input_shape)
    if isinstance(input_shape, (tuple, list)) and input_shape and all(is_shape(s) for s in input_shape):
        return tuple(_check_shape(s, owner) for s in input_shape)
    raise ShapeError(f"{owner.kind} '{owner.name}': input_shape must be a tuple of ints including the "
                     f"batch, e.g. (1, 28, 28, 1), or a tuple of such shapes; got {input_shape!r}")

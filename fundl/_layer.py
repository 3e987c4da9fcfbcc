"""The layer core: :class:`Layer`, the base class of every layer type.

Data layout: channels last everywhere, ``x: [N, *spatial, C]`` (NHWC in 2-d).

A layer type is a small class whose fields are its hyper-parameters (and, for
combinators, its child layers). Subclasses of :class:`Layer` become frozen
dataclasses automatically, so a layer is an immutable value: equal fields
make equal (and equally hashed) layers, ``layer.replace(**fields)`` returns a
changed copy, and ``repr`` shows the fields. Parameters and state never live
in the layer: they are dicts created by ``init`` and passed to ``apply``.

The public protocol (documented for users in :mod:`fundl.layers`):

* a leaf layer implements ``build(key, input_shape) -> (output_shape,
  params)`` and ``forward(params, x, *, key, train) -> y``; a layer with state
  sets ``stateful = True`` and implements ``build -> (output_shape, params,
  state)`` and ``forward(params, x, *, state, key, train) -> (y, new_state)``;
  ``macs(input_shape, output_shape, params)`` counts its own multiply-accumulates;
* combinators implement the uniform hooks ``build_with_state`` /
  ``forward_with_state`` directly;
* callers use ``init`` / ``apply`` (short forms) or ``init_with_state`` /
  ``apply_with_state`` (uniform forms), which add what every layer needs: the
  layer path in error messages, summary records, the check of params and
  state against the model at the outermost ``apply``, and per-path train modes.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import numpy as np

from . import _context
from ._errors import ConfigError, ShapeError

Shape = tuple  # a tuple of ints, e.g. (N, H, W, C); multi-input layers take a tuple of shapes
Params = Any   # a (possibly empty) dict pytree of arrays
State = Any


# -- the base class ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Layer:
    """Base class of every layer; see the module docstring and :mod:`fundl.layers`.

    Attributes:
      name: the key of this layer's parameters inside its parent's dict
        (keyword-only; default :attr:`default_name`, else the class name in
        snake case).
      stateful: whether ``init`` returns a state and ``apply`` takes and
        returns one (batch-norm statistics); for combinators, whether any
        child is stateful.
    """

    name: str | None = dataclasses.field(default=None, kw_only=True)

    default_name: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _check_hooks(cls)
        dataclasses.dataclass(frozen=True, eq=False, repr=False)(cls)
        init = cls.__init__
        if getattr(init, "_fundl_finishes", False):
            return

        def __init__(self, *args, **kw):
            init(self, *args, **kw)
            self._finish()

        __init__.__doc__, __init__.__wrapped__ = init.__doc__, init
        __init__._fundl_finishes = True
        cls.__init__ = __init__

    def __post_init__(self):
        self._resolve_name()

    def _finish(self) -> None:
        """After every construction: the name resolved, list fields of layers as tuples,
        child names distinct."""
        self._resolve_name()
        for f in self._field_names():  # lists of child layers are stored as tuples
            v = getattr(self, f)
            if isinstance(v, list) and any(isinstance(c, Layer) for c in v):
                object.__setattr__(self, f, tuple(v))
        keys = [k for k, _ in self.children()]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ConfigError(f"{self.where()}: child layers must have distinct names (they key "
                              f"the params); {twice} appear more than once. Give them names, "
                              f"e.g. L.Dense(8, name='proj1')")

    def _resolve_name(self) -> None:
        """``name`` from ``default_name`` or the class name when None; checked."""
        name = self.name
        if name is None:
            name = type(self).default_name or _snake(type(self).__name__)
        if not isinstance(name, str) or not name or "/" in name:
            raise ConfigError(f"{self.type_name}: name must be a non-empty string without '/'; "
                              f"got name={name!r}")
        object.__setattr__(self, "name", name)

    # -- identity --------------------------------------------------------------------
    @property
    def type_name(self) -> str:
        """The name shown in messages and summaries (the class name)."""
        return type(self).__name__

    def __eq__(self, other):
        if self is other:
            return True
        if type(self) is not type(other):
            return NotImplemented if not isinstance(other, Layer) else False
        return all(_same(getattr(self, f), getattr(other, f)) for f in self._field_names())

    def __hash__(self):
        h = self.__dict__.get("_fundl_hash")
        if h is None:
            h = hash((type(self), tuple(_hashable(getattr(self, f)) for f in self._field_names())))
            object.__setattr__(self, "_fundl_hash", h)
        return h

    @classmethod
    def _field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **fields) -> "Layer":
        """A copy with some fields changed, validated as a new layer would be.

        Example:
          >>> import fundl.layers as L
          >>> L.Dense(10).replace(features=5)
          Dense(features=5, name='dense')
        """
        names = self._field_names()
        unknown = sorted(set(fields) - set(names))
        if unknown:
            raise ConfigError(f"{self.label()}: replace got unknown field(s) {unknown}; "
                              f"{self.type_name}'s fields are {list(names)}")
        new = object.__new__(type(self))
        for f in names:
            object.__setattr__(new, f, fields[f] if f in fields else getattr(self, f))
        new.__post_init__()
        new._finish()
        return new

    def rename(self, name: str) -> "Layer":
        """The same layer under another name (the key of its parameters)."""
        return self.replace(name=name)

    def __repr__(self):
        return _repr(self, "")

    # -- structure -------------------------------------------------------------------
    def children(self) -> tuple[tuple[str, "Layer"], ...]:
        """``((key, layer), ...)``: the child layers held in fields, in field order.

        A child's key is its name (the key of its params in this layer's
        params). Layers that build children on the fly (not as fields) have
        none here; they cannot be edited by :mod:`fundl.surgery`.
        """
        out = []
        for f in self._field_names():
            v = getattr(self, f)
            for c in (v if isinstance(v, tuple) else (v,)):
                if isinstance(c, Layer):
                    out.append((c.name, c))
        return tuple(out)

    def with_child(self, key: str, layer: "Layer") -> "Layer":
        """A copy with the child under ``key`` replaced by ``layer`` (renamed ``key``).

        Works for children held in fields (a layer, or a tuple of layers).
        """
        if not isinstance(layer, Layer):
            raise ConfigError(f"{self.where()}: a child must be a fundl Layer; got "
                              f"{type(layer).__name__} {layer!r}")
        new = layer if layer.name == key else layer.rename(key)
        for f in self._field_names():
            v = getattr(self, f)
            if isinstance(v, Layer) and v.name == key:
                return self.replace(**{f: new})
            if isinstance(v, tuple) and any(isinstance(c, Layer) and c.name == key for c in v):
                return self.replace(**{f: tuple(new if isinstance(c, Layer) and c.name == key
                                                else c for c in v)})
        raise ConfigError(f"{self.where()}: no child {key!r}; children are "
                          f"{[k for k, _ in self.children()]}")

    @property
    def stateful(self) -> bool:
        return any(c.stateful for _, c in self.children())

    def where(self) -> str:
        """``"Conv 'conv1'"``: this layer by its own name, for construction-time messages."""
        return f"{self.type_name} '{self.name}'"

    def _set(self, **fields) -> None:
        """Store normalised field values (in ``__post_init__``; the dataclass is frozen)."""
        for k, v in fields.items():
            object.__setattr__(self, k, v)

    def label(self) -> str:
        """``"Conv 'net/conv1'"``: this layer at the current path, for messages."""
        path = _context.current_path()
        return f"{self.type_name} '{path or self.name}'"

    # -- the protocol: override these -------------------------------------------------
    def build(self, key, input_shape):
        """``(output_shape, params)``, or ``(output_shape, params, state)`` when stateful."""
        raise NotImplementedError(f"{self.type_name} must implement build(key, input_shape) "
                                  "(or build_with_state for a combinator)")

    def forward(self, params, x, *, key, train, **state):
        """``y``, or ``(y, new_state)`` with a ``state=`` argument when stateful."""
        raise NotImplementedError(f"{self.type_name} must implement forward(params, x, *, key, "
                                  "train) (or forward_with_state for a combinator)")

    def macs(self, input_shape, output_shape, params) -> int:
        """This layer's own multiply-accumulates for one call on the whole batch.

        Child layers count their own; ``params`` holds shapes
        (``jax.ShapeDtypeStruct``). Default 0.
        """
        return 0

    def build_with_state(self, key, input_shape):
        """``(output_shape, params, state)``: the uniform form of :meth:`build`."""
        out = self.build(key, input_shape)
        n = 3 if self.stateful else 2
        if not isinstance(out, tuple) or len(out) != n:
            what = "(output_shape, params, state)" if n == 3 else "(output_shape, params)"
            raise ConfigError(f"{self.label()}: build must return {what}"
                              f"{' (the layer is stateful)' if n == 3 else ''}; got {_brief(out)}")
        return out if n == 3 else (*out, {})

    def forward_with_state(self, params, state, x, *, key, train):
        """``(y, new_state)``: the uniform form of :meth:`forward`."""
        if self.stateful:
            out = self.forward(params, x, state=state, key=key, train=train)
            if not isinstance(out, tuple) or len(out) != 2:
                raise ConfigError(f"{self.label()}: forward of a stateful layer must return "
                                  f"(y, new_state); got {_brief(out)}")
            return out
        return self.forward(params, x, key=key, train=train), state

    # -- what callers use ---------------------------------------------------------------
    def init_with_state(self, key, input_shape) -> tuple[Shape, Params, State]:
        """Output shape, parameters and state for ``input_shape`` (includes the batch)."""
        input_shape = check_shape(input_shape, self)
        parent = _context.current().frame
        frame = _context.InitFrame()
        with _context.scope(self.name), _context.using(frame=frame) as ctx:
            rec = ctx.recorder
            if rec is not None:
                rec.enter()
            out_shape, params, state = self.build_with_state(key, input_shape)
            _check_built(self, params, state, frame)
            if rec is not None:
                rec.exit(self, ctx, input_shape, out_shape, params)
        if parent is not None and state:
            parent.child_state.append(self.name)
        return out_shape, params, state

    def apply_with_state(self, params, state, x, *, key=None, train=None):
        """``(y, new_state)``; ``state`` is ``{}`` for stateless layers.

        The outermost call checks ``params`` and ``state`` against the model
        (keys, shapes, dtype kinds; at trace time under ``jit``) and accepts
        ``train`` as a bool or a mapping ``{path pattern: bool}``. A nested call
        (inside another layer's ``forward``) without ``train`` inherits the
        mode of that layer.
        """
        ctx = _context.current()
        if ctx.root is None:
            return _apply_root(self, params, state, x, key, train, ctx)
        if ctx.modes is not None:
            train = ctx.modes.mode(ctx.path[ctx.root + 1:] + (self.name,))
        elif train is None:
            train = ctx.mode
        return _forward_in_scope(self, params, state, x, key, train)

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

    def apply(self, params, x, *, state=None, key=None, train=None):
        """Run the layer.

        Args:
          params: the pytree from ``init`` (checked against the model: keys,
            shapes and dtype kinds).
          x: the input, ``[N, *spatial, C]`` (or a tuple for multi-input layers).
          state: the state pytree from ``init`` (required iff ``self.stateful``).
          key: a ``jax.random`` key, needed by dropout when ``train=True``.
          train: training mode (dropout active, batch statistics used and
            updated), or a mapping ``{path pattern: bool}`` choosing it per
            layer (first matching pattern wins; unmatched layers evaluate),
            e.g. ``{'backbone': False, '*': True}``. Default: ``False`` at
            the top level; inside another layer's ``forward``, that layer's mode.

        Returns:
          ``y``, or ``(y, new_state)`` when ``self.stateful``.
        """
        if self.stateful:
            if state is None:
                raise ConfigError(
                    f"{self.label()}: this model holds batch-norm statistics; pass "
                    "state=... (the state returned by init) and use the returned (y, new_state)")
            return self.apply_with_state(params, state, x, key=key, train=train)
        if state not in (None, {}):
            raise ConfigError(f"{self.label()}: state was given but this model is stateless")
        y, _ = self.apply_with_state(params, {}, x, key=key, train=train)
        return y


_HOOKS = {"build": ("key", "input_shape"), "forward": ("params", "x", "*key", "*train"),
          "build_with_state": ("key", "input_shape"),
          "forward_with_state": ("params", "state", "x", "*key", "*train")}


def _check_hooks(cls) -> None:
    """A subclass's hooks must take the protocol's arguments (a clear error at class creation
    instead of a TypeError deep inside an apply)."""
    for hook, args in _HOOKS.items():
        fn = cls.__dict__.get(hook)
        if fn is None:
            continue
        try:
            params = list(inspect.signature(fn).parameters.values())[1:]
        except (TypeError, ValueError):
            continue
        kinds = {p.kind for p in params}
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = {p.name for p in params}
        need_pos = [a for a in args if not a.startswith("*")]
        need_kw = [a[1:] for a in args if a.startswith("*")]
        ok = ((len(positional) >= len(need_pos) or inspect.Parameter.VAR_POSITIONAL in kinds)
              and (inspect.Parameter.VAR_KEYWORD in kinds or all(k in names for k in need_kw)))
        if not ok:
            want = ", ".join(need_pos) + (", *, " + ", ".join(need_kw) if need_kw else "")
            raise TypeError(f"{cls.__name__}.{hook} must have the signature ({want}) (plus "
                            f"state=... for a stateful layer's forward); got "
                            f"{inspect.signature(fn)}")


def _apply_root(layer: Layer, params, state, x, key, train, ctx):
    """The outermost apply: check the mode and the trees, then apply with the context set."""
    from . import _modes, _paramcheck

    train = False if train is None else train
    modes = _modes.from_train(train, layer)
    want = _paramcheck.check(layer, params, state, x)
    with _context.using(root=len(ctx.path), modes=modes, expected=want):
        mode = modes.mode(()) if modes is not None else bool(train)
        return _forward_in_scope(layer, params, state, x, key, mode)


def _forward_in_scope(layer: Layer, params, state, x, key, train):
    """``layer.forward_with_state`` under its name (in the path and on JAX's name stack),
    its output shape checked against the one its ``build`` promised."""
    ctx = _context.current()
    with _context.using(path=ctx.path + (layer.name,), mode=train) as inner, \
            jax.named_scope(layer.name):
        y, new_state = layer.forward_with_state(params, state, x, key=key, train=train)
        if inner.expected is not None:
            inner.expected.check_output(layer, inner.path[inner.root:], y)
    return y, new_state


# -- one-off layers from functions ---------------------------------------------------------

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
                              f"; got {_brief(out)}")
        return out if n == 3 else (*out, {})

    def forward_with_state(self, params, state, x, *, key, train):
        if self.has_state:
            return self.apply_fn(params, state, x, key=key, train=train)
        return self.apply_fn(params, x, key=key, train=train), state

    def macs(self, input_shape, output_shape, params) -> int:
        return int(self.macs_fn(input_shape, output_shape, params)) if self.macs_fn else 0

    def __repr__(self):
        cfg = "".join(f"{k}={_value_repr(v)}, " for k, v in self.shown)
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
                         name=name if name is not None else _snake(kind))


def stateful_layer(kind: str, name: str | None, init_fn: Callable, apply_fn: Callable, *,
                   config=None, macs: Callable | None = None) -> Layer:
    """A leaf layer with state from two functions: ``init_fn(key, input_shape) ->
    (output_shape, params, state)`` and ``apply_fn(params, state, x, *, key, train) ->
    (y, new_state)``."""
    return FunctionLayer(kind, init_fn, apply_fn, macs, tuple(dict(config or {}).items()), True,
                         name=name if name is not None else _snake(kind))


# -- summaries: what every init records ------------------------------------------------------

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
    layer: Layer
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

    def exit(self, layer: Layer, ctx, input_shape, output_shape, params) -> None:
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


# -- helpers for combinators and layer authors ------------------------------------------------

def unique_children(layers: Sequence[Layer], where: str) -> tuple[Layer, ...]:
    """Each child under a unique name: repeated names get a 1-based suffix (conv1, conv2)."""
    for i, l in enumerate(layers):
        if not isinstance(l, Layer):
            raise ConfigError(f"{where}: argument {i} must be a fundl Layer; got "
                              f"{type(l).__name__} {l!r}")
    counts: dict[str, int] = {}
    for l in layers:
        counts[l.name] = counts.get(l.name, 0) + 1
    seen: dict[str, int] = {}
    out = []
    taken = {l.name for l in layers if counts[l.name] == 1}
    for l in layers:
        if counts[l.name] == 1:
            out.append(l)
            continue
        i = seen.get(l.name, 0)
        while True:
            i += 1
            candidate = f"{l.name}{i}"
            if candidate not in taken:
                break
        seen[l.name] = i
        taken.add(candidate)
        out.append(l.rename(candidate))
    return tuple(out)


def split_key(key, n: int):
    """``n`` independent keys, or ``n`` Nones when ``key`` is None."""
    if key is None:
        return [None] * n
    return list(jax.random.split(key, n))


def child_entry(tree: Mapping, name: str, owner: Layer | str, what: str = "params"):
    """``tree[name]`` with a readable error; empty dict when the child has nothing."""
    if not isinstance(tree, Mapping):
        who = owner.label() if isinstance(owner, Layer) else str(owner)
        raise ShapeError(f"{who}: {what} must be a dict keyed by layer name; "
                         f"got {type(tree).__name__}")
    return tree.get(name, {})


def put(tree: dict, name: str, value) -> None:
    """Store a child's params/state unless empty (layers without parameters add no key)."""
    if not (isinstance(value, Mapping) and len(value) == 0):
        tree[name] = value


def current_path() -> str:
    """The ``/``-joined names of the layers being initialised or applied."""
    return _context.current_path()


def label(type_name: str) -> str:
    """``"Conv 'net/conv1'"``: a layer of this type at the current path, for messages."""
    return f"{type_name} '{_context.current_path()}'"


def is_shape(s) -> bool:
    """True for a single shape: a tuple/list of ints."""
    return isinstance(s, (tuple, list)) and all(isinstance(d, int) and not isinstance(d, bool)
                                                for d in s)


def check_shape(input_shape, owner: Layer):
    """``input_shape`` as a tuple of positive ints (or a tuple of such shapes)."""
    if is_shape(input_shape):
        if any(d < 1 for d in input_shape):
            raise ShapeError(f"{owner.label()}: input_shape entries must be positive ints (batch "
                             f"included, e.g. (1, 28, 28, 1)); got {tuple(input_shape)!r}")
        return tuple(input_shape)
    if (isinstance(input_shape, (tuple, list)) and input_shape
            and all(is_shape(s) for s in input_shape)):
        return tuple(check_shape(s, owner) for s in input_shape)
    raise ShapeError(f"{owner.label()}: input_shape must be a tuple of ints including the batch, "
                     f"e.g. (1, 28, 28, 1), or a tuple of such shapes; got {input_shape!r}")


def _check_built(layer: Layer, params, state, frame) -> None:
    for what, tree in (("params", params), ("state", state)):
        if not isinstance(tree, Mapping):
            raise ConfigError(f"{layer.label()}: init must give {what} as a dict (named "
                              f"leaves, e.g. {{'w': ..., 'b': ...}}; {{}} for none); got "
                              f"{type(tree).__name__}")
    if frame.child_state and not state:
        raise ConfigError(f"{layer.label()}: the layers {frame.child_state} initialised inside "
                          f"its build hold state (batch-norm statistics), which "
                          f"{layer.type_name} drops. Set stateful = True on the class, return "
                          "(output_shape, params, state) with their states under their names, "
                          "and pass state through forward (see fundl.layers, 'a layer with state')")


def _brief(value) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}"
    return type(value).__name__


def _snake(name: str) -> str:
    """``'BatchNorm' -> 'batch_norm'``, ``'ReLU' -> 'relu'``, ``'MultiHeadAttention' ->
    'multi_head_attention'``."""
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    s = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z]{2,})", "_", s)
    return s.lower()


# -- equality, hashing and repr of fields ------------------------------------------------------

def _same(a, b) -> bool:
    """Field equality: layers and containers by value, callables by identity."""
    if isinstance(a, Layer) or isinstance(b, Layer):
        return a == b
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(_same(x, y) for x, y in zip(a, b)))
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return (isinstance(a, Mapping) and isinstance(b, Mapping) and a.keys() == b.keys()
                and all(_same(a[k], b[k]) for k in a))
    if callable(a) or callable(b):
        return a is b
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (type(a) is type(b) and a.shape == b.shape and a.dtype == b.dtype
                and bool(np.array_equal(a, b)))
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001  (an exotic value that cannot compare)
        return a is b


def equal_except_name(a: Layer, b: Layer) -> bool:
    """Whether two layers compute the same function (equal fields but for their own name)."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    return all(_same(getattr(a, f), getattr(b, f)) for f in a._field_names() if f != "name")


def _hashable(v):
    if isinstance(v, Layer):
        return v
    if isinstance(v, (tuple, list)):
        return (type(v).__name__, tuple(_hashable(x) for x in v))
    if isinstance(v, Mapping):
        return ("map", tuple(sorted((repr(k), _hashable(x)) for k, x in v.items())))
    if callable(v):
        return ("id", id(v))
    if isinstance(v, np.ndarray):
        return ("array", v.shape, str(v.dtype), v.tobytes())
    try:
        hash(v)
        return v
    except TypeError:
        return ("repr", repr(v))


def _value_repr(v) -> str:
    if isinstance(v, Layer):
        return repr(v)
    if callable(v) and not isinstance(v, type):
        name = getattr(v, "__qualname__", None) or getattr(v, "__name__", None)
        if not name or "<lambda>" in name or "<locals>" in name:
            # compared by identity: show which object, so unequal layers print differently
            return f"<{name or type(v).__name__} at {id(v):#x}>"
        return name
    if isinstance(v, type):
        return v.__name__
    return repr(v)


def _repr(layer: Layer, indent: str) -> str:
    """``Type(field=value, ..., name='x')``: fields that differ from their defaults; child
    layers one per line."""
    parts, nested = [], False
    for f in dataclasses.fields(layer):
        v = getattr(layer, f.name)
        if f.name == "name" or not f.repr:
            continue
        if f.default is not dataclasses.MISSING and _same(v, f.default):
            continue
        if isinstance(v, Layer) or (isinstance(v, tuple) and v and all(
                isinstance(c, Layer) for c in v)):
            nested = True
            inner = indent + "    "
            kids = (v,) if isinstance(v, Layer) else v
            body = "".join(f"{inner}{_repr(c, inner)},\n" for c in kids)
            text = (_repr(v, indent + "  ") if isinstance(v, Layer)
                    else f"(\n{body}{indent}  )")
            parts.append(f"{f.name}={text}")
        else:
            parts.append(f"{f.name}={_value_repr(v)}")
    parts.append(f"name={layer.name!r}")
    if not nested:
        return f"{layer.type_name}({', '.join(parts)})"
    inner = "".join(f"{indent}  {p},\n" for p in parts)
    return f"{layer.type_name}(\n{inner}{indent})"

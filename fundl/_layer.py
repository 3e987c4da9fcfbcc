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
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax

from . import _context, _fields, _modes
from ._errors import ConfigError, ShapeError
from ._keys import as_key, as_optional_key
from ._patterns import matches

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
            name = type(self).default_name or _fields.snake(type(self).__name__)
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
        return all(_fields.same(getattr(self, f), getattr(other, f)) for f in self._field_names())

    def __hash__(self):
        h = self.__dict__.get("_fundl_hash")
        if h is None:
            h = hash((type(self), tuple(_fields.hashable(getattr(self, f))
                                        for f in self._field_names())))
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

    def __call__(self, *args, **kwargs):
        """Refused: a layer holds no parameters, so it is applied with them explicitly.

        Raises:
          TypeError: saying to use ``layer.apply(params, x)``.
        """
        raise TypeError(f"{self.label()}: fundl layers are not callable: use "
                        "layer.apply(params, x) (after params = layer.init(key, input_shape)[1]; "
                        "with batch norm, (y, state) = layer.apply(params, x, state=state))")

    def __repr__(self):
        return _fields.fields_repr(self, "")

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
                              f"{' (the layer is stateful)' if n == 3 else ''}; got {brief(out)}")
        return out if n == 3 else (*out, {})

    def forward_with_state(self, params, state, x, *, key, train):
        """``(y, new_state)``: the uniform form of :meth:`forward`."""
        if self.stateful:
            out = self.forward(params, x, state=state, key=key, train=train)
            if not isinstance(out, tuple) or len(out) != 2:
                raise ConfigError(f"{self.label()}: forward of a stateful layer must return "
                                  f"(y, new_state); got {brief(out)}")
            return out
        return self.forward(params, x, key=key, train=train), state

    # -- what callers use ---------------------------------------------------------------
    def init_with_state(self, key, input_shape) -> tuple[Shape, Params, State]:
        """Output shape, parameters and state for ``input_shape`` (includes the batch)."""
        input_shape = check_shape(input_shape, self)
        key = as_key(key, f"{self.label()}.init")
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
          key: a ``jax.random`` key, or an int seed (``jax.random.key(seed)``).
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
          key: a ``jax.random`` key (or an int seed), needed by dropout when ``train=True``.
          train: training mode (dropout active, batch statistics used and
            updated), or a mapping ``{path pattern: bool}`` choosing it per
            layer (first matching pattern wins; unmatched layers evaluate),
            e.g. ``{'backbone': False, '*': True}``; a pattern matching no layer
            (nor parameter) path is refused as a typo. Default: ``False`` at
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
    from . import _paramcheck

    train = False if train is None else train
    key = as_optional_key(key, f"{layer.label()}.apply")
    modes = _modes.from_train(train, layer)
    if modes is not None:
        modes = _SeenModes(modes.rules)
    want = _paramcheck.check(layer, params, state, x)
    with _context.using(root=len(ctx.path), modes=modes, expected=want):
        mode = modes.mode(()) if modes is not None else bool(train)
        out = _forward_in_scope(layer, params, state, x, key, mode)
    if modes is not None:
        modes.check_used(layer, params)
    return out


class _SeenModes(_modes.Modes):
    """:class:`fundl._modes.Modes` that records the layer paths it was asked about, so that a
    ``train`` pattern matching no layer (a typo: ``{'fc9/*': False}``) is refused, as
    ``fit(frozen=...)`` refuses one matching no parameter (a parameter path counts: fit's
    ``frozen=('*/w',)`` becomes ``train={'*/w': False, '*': True}``)."""

    def __init__(self, rules):
        super().__init__(rules)
        self.seen = []

    def mode(self, path):
        self.seen.append("/".join(path))
        return super().mode(path)

    def check_used(self, layer, params):
        from ._freeze import _path
        leaves = jax.tree_util.tree_flatten_with_path(params)[0]
        paths = self.seen + [_path(kp) for kp, _ in leaves]
        for pattern, _ in self.rules:
            if not any(matches(p, pattern) for p in paths):
                paths = ", ".join(repr(p) for p in dict.fromkeys(self.seen) if p)
                raise ConfigError(
                    f"{layer.label()}.apply: train pattern {pattern!r} matches no layer of the "
                    f"model (a typo?); patterns are layer paths relative to the model, e.g. "
                    f"'*' or one of: {paths[:300]}")


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


def brief(value) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}"
    return type(value).__name__






"""Combinators: build any DAG of layers from smaller layers.

* :class:`Serial` — a chain; :class:`Parallel` — fan-out to branches, fan-in by
  sum or concatenation; :class:`Residual` — ``body(x) + shortcut(x)``;
* :class:`Graph` — a general DAG of named nodes with several inputs and outputs,
  where a node may reuse another node's parameters (weight sharing; gradients
  accumulate over every use because the same arrays feed every use);
* :class:`Sum`, :class:`Concat`, :class:`Multiply` — fan-in layers on a tuple of inputs.

Each is a layer type whose fields hold its children; parameters of a
combinator are a dict keyed by child name; children without parameters
contribute no key. Data layout: channels last.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY
from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import _context, _scan
from ._errors import ConfigError, ShapeError
from ._layer import Layer, child_entry, is_shape, put, split_key, unique_children


def _init_children(children, key, shape_of):
    """Init ``children`` (each on ``shape_of(i, child)``); ``(shapes, params, state)``."""
    params, state, shapes = {}, {}, []
    for i, (child, k) in enumerate(zip(children, split_key(key, len(children)))):
        s_out, p, s = child.init_with_state(k, shape_of(i, child))
        shapes.append(s_out)
        put(params, child.name, p)
        put(state, child.name, s)
    return shapes, params, state


def _apply_child(owner, child, params, state, x, key, train):
    return child.apply_with_state(child_entry(params, child.name, owner),
                                  child_entry(state, child.name, owner, "state"),
                                  x, key=key, train=train)


class Serial(Layer):
    """Apply layers one after the other: ``y = f_n(...f_2(f_1(x)))``.

    Children with the same name are renamed ``conv1, conv2, ...``; the
    parameters are ``{child_name: child_params}``.

    Args:
      *layers: the layers, in order.
      scan: run each stretch of consecutive equal layers (equal fields but
        for the name, so the same computation; parameters of equal shapes,
        output shape = input shape; e.g. the repeated blocks of a ResNet
        stage) as one ``lax.scan``, so XLA compiles the repeated layer once.
        ``True`` scans stretches of at least 8 copies (shorter ones compiled
        faster unrolled on CPU, see BENCHMARKS.md), an int ``k >= 2``
        stretches of at least ``k``, ``False`` none. The parameter and state
        trees are the same as without ``scan``, and so are the results up to
        float rounding. Children that differ run as usual. Under a per-path
        ``train`` mapping the chain runs unrolled.
      name: the key of this chain's parameters in a parent (default ``'serial'``).

    Example:
      >>> import jax, fundl.layers as L
      >>> net = L.Serial(L.Dense(4), L.ReLU(), L.Dense(2))
      >>> out_shape, params = net.init(jax.random.key(0), (8, 3))
      >>> out_shape, sorted(params)
      ((8, 2), ['dense1', 'dense2'])
    """

    layers: tuple = ()
    _: KW_ONLY
    scan: bool | int = False

    def __init__(self, *layers: Layer, scan: bool | int = False, name: str | None = None):
        self._set(layers=layers, scan=scan, name=name)
        self.__post_init__()

    def __post_init__(self):
        super().__post_init__()
        if not self.layers:
            raise ConfigError(f"{self.where()}: needs at least one layer; got none")
        _scan.min_run(self.scan, self.where())
        self._set(layers=unique_children(tuple(self.layers), self.where()))

    def build_with_state(self, key, input_shape):
        shape = input_shape
        params, state = {}, {}
        for child, k in zip(self.layers, split_key(key, len(self.layers))):
            shape, p, s = child.init_with_state(k, shape)
            put(params, child.name, p)
            put(state, child.name, s)
        return shape, params, state

    def forward_with_state(self, params, state, x, *, key, train):
        kids, keys = self.layers, split_key(key, len(self.layers))
        min_run = _scan.min_run(self.scan, self.where())
        if _context.current().modes is not None:
            min_run = 0  # per-path modes may differ between copies: run them one by one
        new_state, i = {}, 0
        while i < len(kids):
            stop = _scan.stretch(kids, params, state, i) if min_run else i + 1
            done = (min_run and stop - i >= min_run
                    and _scan.apply_run(kids[i:stop], params, state, x, keys[i:stop],
                                        train=train, owner=self))
            if done:
                x, states = done
                new_state.update(states)
                i = stop
                continue
            x, s = _apply_child(self, kids[i], params, state, x, keys[i], train)
            put(new_state, kids[i].name, s)
            i += 1
        return x, new_state


def _merge_shapes(mode, shapes, who: Layer, what: str = "input"):
    """Output shape of fan-in ``mode`` ('sum' | 'concat' | 'multiply' | None), or a clear error
    (``what``: 'input' for fan-in layers, 'branch' for Parallel)."""
    if mode is None:
        return tuple(shapes)
    first = shapes[0]
    if mode in ("sum", "multiply"):
        for i, s in enumerate(shapes):
            if s != first:
                raise ShapeError(f"{who.label()}: merge={mode!r} needs equal {what} shapes; "
                                 f"{what} 0 gives {first} but {what} {i} gives {s}")
        return first
    for i, s in enumerate(shapes):
        if len(s) != len(first) or s[:-1] != first[:-1]:
            raise ShapeError(f"{who.label()}: merge='concat' joins channels (last axis) and "
                             f"needs equal leading dims; {what} 0 gives {first} but {what} {i} "
                             f"gives {s}")
    return first[:-1] + (sum(s[-1] for s in shapes),)


def _merge(mode, ys):
    if mode is None:
        return tuple(ys)
    if mode == "concat":
        return jnp.concatenate(ys, axis=-1)
    out = ys[0]
    for y in ys[1:]:
        out = out + y if mode == "sum" else out * y
    return out


class Parallel(Layer):
    """Fan the same input out to several branches and merge their outputs.

    Args:
      *branches: layers that each receive ``x``.
      merge: ``'concat'`` (channels, the last axis; leading dims must agree),
        ``'sum'`` (shapes must agree) or ``None`` (return a tuple).
      name: parameter key (default ``'parallel'``).

    Shapes: ``x: [N, ..., C]`` → ``[N, ..., sum(C_i)]`` for concat.

    Example:
      >>> import fundl.layers as L
      >>> net = Parallel(L.Dense(2), L.Dense(3))
      >>> net.init(jax.random.key(0), (4, 5))[0]
      (4, 5)
    """

    branches: tuple = ()
    _: KW_ONLY
    merge: str | None = "concat"

    def __init__(self, *branches: Layer, merge: str | None = "concat", name: str | None = None):
        self._set(branches=branches, merge=merge, name=name)
        self.__post_init__()

    def __post_init__(self):
        super().__post_init__()
        if not self.branches:
            raise ConfigError(f"{self.where()}: needs at least one branch; got none")
        if self.merge not in ("sum", "concat", None):
            raise ConfigError(f"{self.where()}: merge must be 'sum', 'concat' or None; got "
                              f"merge={self.merge!r}")
        self._set(branches=unique_children(tuple(self.branches), self.where()))

    def build_with_state(self, key, input_shape):
        shapes, params, state = _init_children(self.branches, key, lambda i, c: input_shape)
        return _merge_shapes(self.merge, shapes, self, "branch"), params, state

    def forward_with_state(self, params, state, x, *, key, train):
        ys, new_state = [], {}
        for child, k in zip(self.branches, split_key(key, len(self.branches))):
            y, s = _apply_child(self, child, params, state, x, k, train)
            ys.append(y)
            put(new_state, child.name, s)
        return _merge(self.merge, ys), new_state


class Residual(Layer):
    """``y = activation(body(x) + shortcut(x))``: a residual connection.

    Args:
      body: the residual branch (its parameters live under ``'body'``).
      shortcut: ``None`` for the identity, or a layer (e.g. a strided 1x1 conv
        with batch norm: a projection shortcut; under ``'shortcut'``).
      projection: ``'always'`` uses ``shortcut`` whenever given; ``'auto'`` uses it
        only when ``body`` changes the shape (as in ResNet: a projection when the
        stride or the channel count changes, the identity otherwise). With
        ``'auto'`` the shortcut's parameters exist only if it is used.
      activation: optional function applied after the sum (``jax.nn.relu`` in
        ResNet); compared by identity.
      name: parameter key (default ``'residual'``).

    Shapes: ``x: [N, *spatial, C]`` → ``body``'s output shape, which must equal the
    shortcut's output shape.

    Example:
      >>> import fundl.layers as L
      >>> block = Residual(L.Serial(L.Dense(8), L.Tanh(), L.Dense(8)))
      >>> sorted(block.init(jax.random.key(0), (2, 8))[1])
      ['body']
    """

    body: Layer
    shortcut: Layer | None = None
    _: KW_ONLY
    projection: str = "always"
    activation: Callable | None = None

    def __post_init__(self):
        super().__post_init__()
        where = self.where()
        if not isinstance(self.body, Layer):
            raise ConfigError(f"{where}: body must be a fundl Layer; got {self.body!r}")
        if self.shortcut is not None and not isinstance(self.shortcut, Layer):
            raise ConfigError(f"{where}: shortcut must be a fundl Layer or None; got "
                              f"{self.shortcut!r}")
        if self.projection not in ("always", "auto"):
            raise ConfigError(f"{where}: projection must be 'always' or 'auto'; got "
                              f"projection={self.projection!r}")
        if self.projection == "auto" and self.shortcut is None:
            raise ConfigError(f"{where}: projection='auto' needs a shortcut layer to use when "
                              "shapes change")
        if self.activation is not None and (not callable(self.activation)
                                            or isinstance(self.activation, Layer)):
            raise ConfigError(f"{where}: activation must be a function such as jax.nn.relu, or "
                              f"None; got {self.activation!r}")
        if self.body.name != "body":
            self._set(body=self.body.rename("body"))
        if self.shortcut is not None and self.shortcut.name != "shortcut":
            self._set(shortcut=self.shortcut.rename("shortcut"))

    def _uses_shortcut(self, in_shape, out_shape) -> bool:
        return self.shortcut is not None and (self.projection == "always"
                                              or tuple(out_shape) != tuple(in_shape))

    def build_with_state(self, key, input_shape):
        kb, ks = split_key(key, 2)
        out, pb, sb = self.body.init_with_state(kb, input_shape)
        params, state = {}, {}
        put(params, "body", pb)
        put(state, "body", sb)
        use = self._uses_shortcut(input_shape, out)
        s_out = input_shape
        if use:
            s_out, ps, ss = self.shortcut.init_with_state(ks, input_shape)
            put(params, "shortcut", ps)
            put(state, "shortcut", ss)
        if s_out != out:
            hint = "" if use else " (identity shortcut: give a projection shortcut, e.g. a 1x1 Conv)"
            raise ShapeError(f"{self.label()}: body output shape {out} != shortcut output "
                             f"shape {s_out}{hint}")
        return out, params, state

    def forward_with_state(self, params, state, x, *, key, train):
        kb, ks = split_key(key, 2)
        y, sb = _apply_child(self, self.body, params, state, x, kb, train)
        new_state = {}
        put(new_state, "body", sb)
        sc = x
        # Same static rule as init: the shapes decide whether the projection is used.
        if self._uses_shortcut(jnp.shape(x), jnp.shape(y)):
            sc, ss = _apply_child(self, self.shortcut, params, state, x, ks, train)
            put(new_state, "shortcut", ss)
        if jnp.shape(y) != jnp.shape(sc):
            raise ShapeError(f"{self.label()}: body output {jnp.shape(y)} != shortcut output "
                             f"{jnp.shape(sc)}; were these params made by init for this input "
                             "shape?")
        y = y + sc
        return (self.activation(y) if self.activation is not None else y), new_state


class _FanIn(Layer):
    """A parameter-free layer on a tuple of equally shaped (or concatenable) inputs."""

    mode = "sum"

    def build(self, key, input_shape):
        if is_shape(input_shape):
            raise ShapeError(f"{self.label()}: expects a tuple of inputs; got one input of "
                             f"shape {input_shape}")
        return _merge_shapes(self.mode, list(input_shape), self), {}

    def forward(self, params, x, *, key, train):
        if not isinstance(x, (tuple, list)):
            raise ShapeError(f"{self.label()}: expects a tuple of inputs; got one "
                             f"{type(x).__name__} of shape {jnp.shape(x)}")
        _merge_shapes(self.mode, [tuple(jnp.shape(a)) for a in x], self)
        return _merge(self.mode, list(x))


class Sum(_FanIn):
    """Fan-in: the elementwise sum of a tuple of equally shaped inputs.

    Example:
      >>> Sum().apply({}, (jnp.ones(2), jnp.ones(2)))
      Array([2., 2.], dtype=float32)
    """


class Concat(_FanIn):
    """Fan-in: concatenate a tuple of inputs along the channel (last) axis.

    Example:
      >>> Concat().init(jax.random.key(0), ((4, 2), (4, 3)))[0]
      (4, 5)
    """

    mode = "concat"


class Multiply(_FanIn):
    """Fan-in: the elementwise product of a tuple of equally shaped inputs (gates).

    Example:
      >>> Multiply().apply({}, (jnp.array([3.0, 3.0]), jnp.array([0.5, 0.5])))
      Array([1.5, 1.5], dtype=float32)
    """

    mode = "multiply"


class Node(NamedTuple):
    """A node of a :class:`Graph`.

    Attributes:
      name: the node's name; its output is referred to by this name, and its
        parameters live under this key.
      layer: the layer computing the node.
      inputs: the name of the input (a graph input or an earlier node), or a
        sequence of names (the layer then receives a tuple).
      share: the name of an earlier node whose parameters (and state) this node
        reuses; that node's layer must have the same parameter structure.
    """

    name: str
    layer: Layer
    inputs: str | Sequence[str]
    share: str | None = None


def _names(value, arg: str, where: str) -> tuple[str, ...]:
    """A name or a non-empty sequence of names (strings) as a tuple; a ConfigError otherwise."""
    if isinstance(value, str):
        return (value,)
    names = tuple(value) if isinstance(value, Sequence) else None
    if not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}: {arg} must be a name or a non-empty sequence of names "
                          f"(strings, e.g. 'x' or ('a', 'b')); got {value!r}"[:300])
    return names


class Graph(Layer):
    """A general DAG of layers, with weight sharing between nodes.

    Args:
      inputs: the name of the single input, or a sequence of names (the graph
        then takes a tuple of inputs and ``init`` a tuple of shapes).
      nodes: :class:`Node` s in topological order (each reads only graph inputs
        or earlier nodes).
      outputs: a node name, or a sequence of names (the graph returns a tuple).
      name: parameter key (default ``'graph'``).

    Parameters are ``{node_name: params}`` for every node that owns parameters;
    a node with ``share='other'`` reads ``params['other']``, so ``jax.grad``
    returns for ``'other'`` the sum of the gradients over all its uses.

    Example (a siamese pair):
      >>> import jax, fundl.layers as L
      >>> enc = L.Serial(L.Dense(8), L.ReLU())
      >>> net = L.Graph(inputs=('a', 'b'), outputs='d', nodes=[
      ...     L.Node('left', enc, 'a'),
      ...     L.Node('right', enc, 'b', share='left'),
      ...     L.Node('d', L.Concat(), ('left', 'right'))])
      >>> out, params = net.init(jax.random.key(0), ((4, 3), (4, 3)))
      >>> out, sorted(params)
      ((4, 16), ['left'])
    """

    inputs: str | tuple
    nodes: tuple
    outputs: str | tuple

    def __post_init__(self):
        super().__post_init__()
        where = self.where()
        in_names = _names(self.inputs, "inputs", where)
        if len(set(in_names)) != len(in_names):
            raise ConfigError(f"{where}: input names must be unique; got {in_names}")
        nodes, known, owner = [], set(in_names), {}
        for i, node in enumerate(self.nodes):
            node = self._check_node(where, i, node, known, owner)
            nodes.append(node)
            known.add(node.name)
            owner[node.name] = owner[node.share] if node.share is not None else node.name
        outs = _names(self.outputs, "outputs", where)
        for o in outs:
            if o not in known:
                raise ConfigError(f"{where}: output {o!r} is not a graph input or node (known: "
                                  f"{sorted(known)})")
        self._set(inputs=self.inputs if isinstance(self.inputs, str) else in_names,
                  nodes=tuple(nodes),
                  outputs=self.outputs if isinstance(self.outputs, str) else outs)
        object.__setattr__(self, "owner", owner)

    @staticmethod
    def _check_node(where, i, node, known, owner) -> Node:
        if not isinstance(node, Node):
            raise ConfigError(f"{where}: nodes[{i}] must be a Node(name, layer, inputs, "
                              f"share=None); got {node!r}")
        if node.name in known:
            raise ConfigError(f"{where}: node name {node.name!r} is used twice")
        srcs = _names(node.inputs, "inputs", f"{where}: node {node.name!r}")
        for src in srcs:
            if src not in known:
                raise ConfigError(f"{where}: node {node.name!r} reads {src!r}, which is neither a "
                                  f"graph input nor an earlier node (known: {sorted(known)})")
        if node.share is not None and node.share not in owner:
            raise ConfigError(f"{where}: node {node.name!r} shares parameters with "
                              f"{node.share!r}, which is not an earlier node")
        if not isinstance(node.layer, Layer):
            raise ConfigError(f"{where}: node {node.name!r} needs a Layer; got {node.layer!r}")
        return Node(node.name, node.layer.rename(node.name),
                    node.inputs if isinstance(node.inputs, str) else srcs, node.share)

    def children(self):
        return tuple((n.name, n.layer) for n in self.nodes)

    def with_child(self, key: str, layer: Layer) -> "Graph":
        """The graph with node ``key`` computed by ``layer`` (same inputs and sharing)."""
        if key not in self.owner:
            raise ConfigError(f"{self.where()}: no node {key!r}; nodes are "
                              f"{[n.name for n in self.nodes]}")
        nodes = tuple(n._replace(layer=layer) if n.name == key else n for n in self.nodes)
        return self.replace(nodes=nodes)

    def _bind(self, x):
        names = (self.inputs,) if isinstance(self.inputs, str) else self.inputs
        if len(names) == 1:
            return {names[0]: x}
        if not isinstance(x, (tuple, list)) or len(x) != len(names):
            raise ShapeError(f"{self.label()}: expects a tuple of {len(names)} inputs {names}; "
                             f"got {type(x).__name__}")
        return dict(zip(names, x))

    @staticmethod
    def _node_input(values, node):
        return (values[node.inputs] if isinstance(node.inputs, str)
                else tuple(values[s] for s in node.inputs))

    def _out(self, values):
        return (values[self.outputs] if isinstance(self.outputs, str)
                else tuple(values[o] for o in self.outputs))

    def build_with_state(self, key, input_shape):
        shapes = self._bind(input_shape)
        params, state = {}, {}
        for node, k in zip(self.nodes, split_key(key, len(self.nodes))):
            o, shape = self.owner[node.name], self._node_input(shapes, node)
            if o == node.name:
                shapes[node.name], p, s = node.layer.init_with_state(k, shape)
                put(params, node.name, p)
                put(state, node.name, s)
                continue
            shapes[node.name], p, s = _shared_init(node.layer, k, shape)
            if _shape_tree((p, s)) != _shape_tree((params.get(o, {}), state.get(o, {}))):
                raise ShapeError(f"{self.label()}: node {node.name!r} shares parameters with "
                                 f"{o!r}, but its layer needs parameters of another structure "
                                 f"or shape for input {shape}")
        return self._out(shapes), params, state

    def forward_with_state(self, params, state, x, *, key, train):
        values, new_state = self._bind(x), {}
        for node, k in zip(self.nodes, split_key(key, len(self.nodes))):
            o = self.owner[node.name]
            st = new_state.get(o, child_entry(state, o, self, "state"))
            values[node.name], s = node.layer.apply_with_state(
                child_entry(params, o, self), st, self._node_input(values, node), key=k,
                train=train)
            put(new_state, o, s)
        return self._out(values), new_state


def _shared_init(child, key, shape):
    """Shapes of a shared use's params, computed abstractly (no arrays are made)."""
    box = {}

    def f(k):
        box["shape"], p, s = child.init_with_state(k, shape)
        return p, s

    with _context.using(shared=True, shapes_only=True):
        p, s = jax.eval_shape(f, key)
    return box["shape"], p, s


def _shape_tree(tree):
    """The tree with every array replaced by its shape, for structure comparisons."""
    return jax.tree_util.tree_map(lambda a: ("array", tuple(a.shape)), tree)

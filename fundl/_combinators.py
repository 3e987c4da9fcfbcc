"""Combinators: build any DAG of layers from smaller layers.

* :func:`Serial` — a chain; :func:`Parallel` — fan-out to branches, fan-in by
  sum or concatenation; :func:`Residual` — ``body(x) + shortcut(x)``;
* :func:`Graph` — a general DAG of named nodes with several inputs and outputs,
  where a node may reuse another node's parameters (weight sharing; gradients
  accumulate over every use because the same arrays feed every use);
* :func:`Sum`, :func:`Concat` — fan-in layers on a tuple of inputs.

Parameters of a combinator are a dict keyed by child name; children without
parameters contribute no key. Data layout: channels last.
"""
from __future__ import annotations

import types
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import _scan
from ._errors import ConfigError, ShapeError
from ._layer import (Layer, _default_name, child_entry, is_shape, label, layer, put, shared_use,
                     split_key, unique_children)


def _combinator(kind, name, children, init_fn, apply_fn, config=None) -> Layer:
    stateful = any(c.stateful for _, c in children)
    return Layer(_default_name(kind, name), kind, init_fn, apply_fn, stateful, tuple(children),
                 types.MappingProxyType(dict(config or {})))


def Serial(*layers: Layer, scan: bool | int = False, name: str | None = None) -> Layer:
    """Apply layers one after the other: ``y = f_n(...f_2(f_1(x)))``.

    Children with the same name are renamed ``conv1, conv2, ...``; the
    parameters are ``{child_name: child_params}``.

    Args:
      *layers: the layers, in order.
      scan: run each stretch of consecutive copies of one layer (same
        constructor and arguments, parameters of equal shapes, output shape
        = input shape; e.g. the repeated blocks of a ResNet stage) as one
        ``lax.scan``, so XLA compiles the repeated layer once. ``True``
        scans stretches of at least 8 copies (shorter ones compiled faster
        unrolled on CPU, see BENCHMARKS.md), an int ``k >= 2`` stretches of
        at least ``k``, ``False`` none. The parameter and state trees are the
        same as without ``scan``, and so are the results up to float
        rounding. Children that differ run as usual.
      name: the key of this chain's parameters in a parent (default ``'serial'``).

    Example:
      >>> import jax, fundl.layers as L
      >>> net = L.Serial(L.Dense(4), L.ReLU(), L.Dense(2))
      >>> out_shape, params = net.init(jax.random.key(0), (8, 3))
      >>> out_shape, sorted(params)
      ((8, 2), ['dense1', 'dense2'])
    """
    if not layers:
        raise ConfigError("Serial: needs at least one layer; got none")
    min_run = _scan.min_run(scan, "Serial")
    children = unique_children(layers, "Serial")
    sigs = [_scan.signature(c) for _, c in children] if min_run else None

    def init_fn(key, shape):
        params, state = {}, {}
        for (n, child), k in zip(children, split_key(key, len(children))):
            shape, p, s = child.init_with_state(k, shape)
            put(params, n, p)
            put(state, n, s)
        return shape, params, state

    def apply_fn(params, state, x, *, key, train):
        new_state, keys, i = {}, split_key(key, len(children)), 0
        while i < len(children):
            stop = _scan.stretch(children, sigs, params, state, i) if min_run else i + 1
            done = (min_run and stop - i >= min_run
                    and _scan.apply_run(children[i:stop], params, state, x, keys[i:stop],
                                        train=train, owner="Serial"))
            if done:
                x, states = done
                new_state.update(states)
                i = stop
                continue
            n, child = children[i]
            x, s = child.apply_with_state(child_entry(params, n, "Serial"),
                                          child_entry(state, n, "Serial", "state"),
                                          x, key=keys[i], train=train)
            put(new_state, n, s)
            i += 1
        return x, new_state

    return _combinator("Serial", name, children, init_fn, apply_fn,
                       {"scan": scan} if min_run else None)


def _merge_shapes(mode, shapes, who):
    """Output shape of fan-in ``mode`` ('sum' | 'concat' | None), or a clear error."""
    if mode is None:
        return tuple(shapes)
    first = shapes[0]
    if mode == "sum":
        for i, s in enumerate(shapes):
            if s != first:
                raise ShapeError(f"{label(who)}: merge='sum' needs equal branch shapes; branch 0 gives "
                                 f"{first} but branch {i} gives {s}")
        return first
    for i, s in enumerate(shapes):
        if len(s) != len(first) or s[:-1] != first[:-1]:
            raise ShapeError(f"{label(who)}: merge='concat' joins channels (last axis) and needs equal "
                             f"leading dims; branch 0 gives {first} but branch {i} gives {s}")
    return first[:-1] + (sum(s[-1] for s in shapes),)


def _merge(mode, ys):
    if mode is None:
        return tuple(ys)
    if mode == "sum":
        out = ys[0]
        for y in ys[1:]:
            out = out + y
        return out
    return jnp.concatenate(ys, axis=-1)


def _check_merge(mode, kind):
    if mode not in ("sum", "concat", None):
        raise ConfigError(f"{kind}: merge must be 'sum', 'concat' or None; got {mode!r}")


def Parallel(*branches: Layer, merge: str | None = "concat", name: str | None = None) -> Layer:
    """Fan the same input out to several branches and merge their outputs.

    Args:
      *branches: layers that each receive ``x``.
      merge: ``'concat'`` (channels, the last axis; leading dims must agree),
        ``'sum'`` (shapes must agree) or ``None`` (return a tuple).
      name: parameter key (default ``'parallel'``).

    Shapes: ``x: [N, ..., C]`` → ``[N, ..., sum(C_i)]`` for concat.
    """
    if not branches:
        raise ConfigError("Parallel: needs at least one branch; got none")
    _check_merge(merge, "Parallel")
    children = unique_children(branches, "Parallel")

    def init_fn(key, shape):
        params, state, shapes = {}, {}, []
        for (n, child), k in zip(children, split_key(key, len(children))):
            s_out, p, s = child.init_with_state(k, shape)
            shapes.append(s_out)
            put(params, n, p)
            put(state, n, s)
        return _merge_shapes(merge, shapes, "Parallel"), params, state

    def apply_fn(params, state, x, *, key, train):
        ys, new_state = [], {}
        for (n, child), k in zip(children, split_key(key, len(children))):
            y, s = child.apply_with_state(child_entry(params, n, "Parallel"),
                                          child_entry(state, n, "Parallel", "state"),
                                          x, key=k, train=train)
            ys.append(y)
            put(new_state, n, s)
        return _merge(merge, ys), new_state

    return _combinator("Parallel", name, children, init_fn, apply_fn, {"merge": merge})


def Residual(body: Layer, shortcut: Layer | None = None, *, projection: str = "always",
             activation=None, name: str | None = None) -> Layer:
    """``y = activation(body(x) + shortcut(x))``: a residual connection.

    Args:
      body: the residual branch.
      shortcut: ``None`` for the identity, or a layer (e.g. a strided 1x1 conv
        with batch norm: a projection shortcut).
      projection: ``'always'`` uses ``shortcut`` whenever given; ``'auto'`` uses it
        only when ``body`` changes the shape (as in ResNet: a projection when the
        stride or the channel count changes, the identity otherwise). With
        ``'auto'`` the shortcut's parameters exist only if it is used.
      activation: optional function applied after the sum (``jax.nn.relu`` in ResNet).
      name: parameter key (default ``'residual'``); the children are ``body`` and ``shortcut``.

    Shapes: ``x: [N, *spatial, C]`` → ``body``'s output shape, which must equal the
    shortcut's output shape.
    """
    if projection not in ("always", "auto"):
        raise ConfigError(f"Residual: projection must be 'always' or 'auto'; got {projection!r}")
    if projection == "auto" and shortcut is None:
        raise ConfigError("Residual: projection='auto' needs a shortcut layer to use when shapes change")
    children = (("body", body.rename("body")),)
    if shortcut is not None:
        children += (("shortcut", shortcut.rename("shortcut")),)
    body, short = children[0][1], (children[1][1] if shortcut is not None else None)

    def init_fn(key, shape):
        kb, ks = split_key(key, 2)
        out, pb, sb = body.init_with_state(kb, shape)
        params, state = {}, {}
        put(params, "body", pb)
        put(state, "body", sb)
        use = short is not None and (projection == "always" or out != shape)
        if use:
            s_out, ps, ss = short.init_with_state(ks, shape)
            put(params, "shortcut", ps)
            put(state, "shortcut", ss)
        else:
            s_out = shape
        if s_out != out:
            hint = "" if use else " (identity shortcut: give a projection shortcut, e.g. a 1x1 Conv)"
            raise ShapeError(f"{label('Residual')}: body output shape {out} != shortcut output "
                             f"shape {s_out}{hint}")
        return out, params, state

    def apply_fn(params, state, x, *, key, train):
        kb, ks = split_key(key, 2)
        y, sb = body.apply_with_state(child_entry(params, "body", "Residual"),
                                      child_entry(state, "body", "Residual", "state"),
                                      x, key=kb, train=train)
        new_state = {}
        put(new_state, "body", sb)
        # Same static rule as init: the shapes decide whether the projection is used.
        if short is not None and (projection == "always" or y.shape != x.shape):
            sc, ss = short.apply_with_state(child_entry(params, "shortcut", "Residual"),
                                            child_entry(state, "shortcut", "Residual", "state"),
                                            x, key=ks, train=train)
            put(new_state, "shortcut", ss)
        else:
            sc = x
        if y.shape != sc.shape:
            raise ShapeError(f"{label('Residual')}: body output {y.shape} != shortcut output {sc.shape}; "
                             "were these params made by init for this input shape?")
        y = y + sc
        return (activation(y) if activation is not None else y), new_state

    cfg = {"projection": projection}
    if activation is not None:
        cfg["activation"] = getattr(activation, "__name__", repr(activation))
    return _combinator("Residual", name, children, init_fn, apply_fn, cfg)


def Sum(*, name: str | None = None) -> Layer:
    """Fan-in: the elementwise sum of a tuple of equally shaped inputs."""

    def init(key, shapes):
        if is_shape(shapes):
            raise ShapeError(f"{label('Sum')}: expects a tuple of inputs; got one input of shape {shapes}")
        return _merge_shapes("sum", list(shapes), "Sum"), {}

    return layer("Sum", name, init, lambda p, xs, *, key, train: _merge("sum", list(xs)))


def Concat(*, name: str | None = None) -> Layer:
    """Fan-in: concatenate a tuple of inputs along the channel (last) axis."""

    def init(key, shapes):
        if is_shape(shapes):
            raise ShapeError(f"{label('Concat')}: expects a tuple of inputs; got one input of shape {shapes}")
        return _merge_shapes("concat", list(shapes), "Concat"), {}

    return layer("Concat", name, init, lambda p, xs, *, key, train: _merge("concat", list(xs)))


class Node(NamedTuple):
    """A node of a :func:`Graph`.

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


def Graph(inputs: str | Sequence[str], nodes: Sequence[Node], outputs: str | Sequence[str], *,
          name: str | None = None) -> Layer:
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
    in_names = (inputs,) if isinstance(inputs, str) else tuple(inputs)
    out_names = (outputs,) if isinstance(outputs, str) else tuple(outputs)
    known = set(in_names)
    if len(known) != len(in_names):
        raise ConfigError(f"Graph: input names must be unique; got {in_names}")
    children, sources = [], {}
    for i, node in enumerate(nodes):
        if not isinstance(node, Node):
            raise ConfigError(f"Graph: nodes[{i}] must be a Node(name, layer, inputs, share=None); got {node!r}")
        if node.name in known:
            raise ConfigError(f"Graph: node name {node.name!r} is used twice")
        srcs = (node.inputs,) if isinstance(node.inputs, str) else tuple(node.inputs)
        for s in srcs:
            if s not in known:
                raise ConfigError(f"Graph: node {node.name!r} reads {s!r}, which is neither a graph input "
                                  f"nor an earlier node (known: {sorted(known)})")
        if node.share is not None and node.share not in {n for n, _ in children}:
            raise ConfigError(f"Graph: node {node.name!r} shares parameters with {node.share!r}, "
                              "which is not an earlier node")
        if not isinstance(node.layer, Layer):
            raise ConfigError(f"Graph: node {node.name!r} needs a Layer; got {node.layer!r}")
        children.append((node.name, node.layer.rename(node.name)))
        sources[node.name] = (srcs, isinstance(node.inputs, str), node.share)
        known.add(node.name)
    for o in out_names:
        if o not in known:
            raise ConfigError(f"Graph: output {o!r} is not a graph input or node (known: {sorted(known)})")
    children = tuple(children)
    owner = {n: (sources[n][2] or n) for n, _ in children}
    # A chain of shares resolves to the first owner.
    for n in owner:
        while owner[owner[n]] != owner[n]:
            owner[n] = owner[owner[n]]

    def _inputs(values, n):
        srcs, single, _ = sources[n]
        return values[srcs[0]] if single else tuple(values[s] for s in srcs)

    def _bind(x):
        if len(in_names) == 1:
            return {in_names[0]: x}
        if not isinstance(x, (tuple, list)) or len(x) != len(in_names):
            raise ShapeError(f"{label('Graph')}: expects a tuple of {len(in_names)} inputs {in_names}; "
                             f"got {type(x).__name__}")
        return dict(zip(in_names, x))

    def _out(values):
        return values[out_names[0]] if isinstance(outputs, str) else tuple(values[o] for o in out_names)

    def init_fn(key, shape):
        shapes = _bind(shape)
        params, state = {}, {}
        for (n, child), k in zip(children, split_key(key, len(children))):
            if owner[n] == n:
                shapes[n], p, s = child.init_with_state(k, _inputs(shapes, n))
                put(params, n, p)
                put(state, n, s)
                continue
            shapes[n], p, s = _shared_init(child, k, _inputs(shapes, n))
            o = owner[n]
            if _shape_tree((p, s)) != _shape_tree((params.get(o, {}), state.get(o, {}))):
                raise ShapeError(f"{label('Graph')}: node {n!r} shares parameters with {o!r}, but its "
                                 f"layer needs parameters of another structure or shape for input "
                                 f"{_inputs(shapes, n)}")
        return _out(shapes), params, state

    def apply_fn(params, state, x, *, key, train):
        values, new_state = _bind(x), {}
        for (n, child), k in zip(children, split_key(key, len(children))):
            o = owner[n]
            st = new_state.get(o, child_entry(state, o, "Graph", "state"))
            values[n], s = child.apply_with_state(child_entry(params, o, "Graph"), st,
                                                  _inputs(values, n), key=k, train=train)
            put(new_state, o, s)
        return _out(values), new_state

    return _combinator("Graph", name, children, init_fn, apply_fn,
                       {"inputs": in_names, "outputs": out_names})


def _shared_init(child, key, shape):
    """Shapes of a shared use's params, computed abstractly (no arrays are made)."""
    box = {}

    def f(k):
        box["shape"], p, s = child.init_with_state(k, shape)
        return p, s

    with shared_use():
        p, s = jax.eval_shape(f, key)
    return box["shape"], p, s


def _shape_tree(tree):
    """The tree with every array replaced by its shape, for structure comparisons."""
    return jax.tree_util.tree_map(lambda a: ("array", tuple(a.shape)), tree)

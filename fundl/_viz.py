"""Computation graphs from jaxprs, as Graphviz DOT text (implementation of :mod:`fundl.viz`).

:func:`trace` runs ``jax.make_jaxpr`` on a function (or on its gradient) and
turns the jaxpr into a :class:`Dag`: one node per argument leaf, per operation
(``dot_general``, ``add``, ...) and per output, an edge from each value's
producer to each consumer. Two kinds of clusters group the operations:

* *scopes*: the name stack (``jax.named_scope``); fundl layers are traced under
  ``jax.named_scope(layer.name)`` so a model's ``'residual/body/fc1'`` tree
  shows. In a gradient graph the backward operations (JAX marks them
  ``transpose``) get their own clusters, labelled ``(backward)``;
* *calls*: sub-jaxprs of call-like primitives (``jit``, ``custom_jvp_call``,
  ``custom_vjp_call``, ``closed_call``, ``checkpoint``) are drawn inside a
  cluster, their inputs wired to the caller's values.

Loops and conditionals (``scan``, ``while``, ``cond``) stay single nodes.
"""
from __future__ import annotations

import inspect
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax

from ._errors import ConfigError, FundlError, ShapeError
from ._layer import Layer

# Primitives whose single sub-jaxpr is a plain function call (inputs and outputs map 1:1).
_CALLS = {"jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "remat", "remat2", "checkpoint", "custom_lin"}
# Parameters worth printing on a node (short and informative).
_SHOWN_PARAMS = ("y", "axes", "permutation", "new_sizes", "shape", "new_dtype", "axis",
                 "dimension", "window_dimensions", "window_strides", "padding", "start_indices",
                 "limit_indices", "strides", "length")


class RenderError(FundlError):
    """Graphviz is missing or failed to render."""


class DagNode(NamedTuple):
    """A node of a :class:`Dag`.

    Attributes:
      id: the DOT identifier (``'n12'``).
      kind: ``'input'`` (an argument leaf), ``'const'`` (a captured array),
        ``'op'`` (a primitive) or ``'output'``.
      op: the primitive's name for ops (``'dot_general'``), the argument path
        for inputs (``'params/fc1/w'``), the output path for outputs.
      label: the text drawn (operator name, parameters, literal operands, shapes).
      shapes: the output shape(s), e.g. ``('f32[8,4]',)``.
      cluster: the id of the innermost cluster holding the node, or ``None``.
      backward: True for operations of the backward pass (gradient graphs).
    """

    id: str
    kind: str
    op: str
    label: str
    shapes: tuple
    cluster: int | None
    backward: bool


class Cluster(NamedTuple):
    """A cluster: a name scope (a fundl layer) or a call (a ``jit``'d function)."""

    id: int
    label: str
    parent: int | None
    kind: str  # 'scope' | 'call'
    backward: bool


class Dag(NamedTuple):
    """A computation DAG traced from a jaxpr; :meth:`to_dot` gives Graphviz text.

    Attributes:
      nodes: the :class:`DagNode` s, in trace order.
      edges: ``(src_id, dst_id)`` pairs, one per operand (an operand used twice
        gives two edges).
      clusters: the :class:`Cluster` s.
    """

    nodes: tuple
    edges: tuple
    clusters: tuple

    def node(self, node_id: str) -> DagNode:
        """The node with this id."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def find(self, op: str | None = None, *, kind: str | None = None) -> list:
        """Nodes whose ``op`` equals ``op`` (and/or whose ``kind`` equals ``kind``)."""
        return [n for n in self.nodes if (op is None or n.op == op) and (kind is None or n.kind == kind)]

    def inputs_of(self, node_id: str) -> list:
        """The producers of a node's operands, in operand order (repeats kept)."""
        return [self.node(s) for s, d in self.edges if d == node_id]

    def cluster_path(self, node: DagNode) -> list:
        """Labels of the clusters holding ``node``, outermost first."""
        by_id = {c.id: c for c in self.clusters}
        out, c = [], node.cluster
        while c is not None:
            out.append(by_id[c].label)
            c = by_id[c].parent
        return out[::-1]

    def to_dot(self, *, title: str | None = None, rankdir: str = "TB") -> str:
        """Graphviz DOT text: nodes with operator names and shapes, clusters nested."""
        return _to_dot(self, title, rankdir)


# -- tracing ---------------------------------------------------------------------------

def _arg_names(fn, n: int) -> list:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = []
    for i in range(n):
        if i < len(params) and params[i].kind in (params[i].POSITIONAL_ONLY,
                                                   params[i].POSITIONAL_OR_KEYWORD):
            names.append(params[i].name)
        else:
            names.append(f"arg{i}")
    return names


def _leaf_paths(prefix: str, tree) -> list:
    out = []
    for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        s = jax.tree_util.keystr(kp, simple=True, separator="/")
        out.append(f"{prefix}/{s}" if s and prefix else (s or prefix))
    return out


def _aval_str(v) -> str:
    aval = getattr(v, "aval", None)
    if aval is None:
        return "?"
    try:
        return aval.str_short(short_dtypes=True)
    except TypeError:
        return aval.str_short()


def _scopes(eqn):
    """(scope names, backward?) from an equation's name stack."""
    stack = getattr(getattr(eqn.source_info, "name_stack", None), "stack", ())
    names, backward = [], False
    for s in stack:
        kind = type(s).__name__
        name = getattr(s, "name", str(s))
        if kind == "Transform":
            backward |= name == "transpose"
        else:
            names.append(name)
    return names, backward


def _sub_jaxpr(eqn):
    """The sub-jaxpr of a call-like equation, or None."""
    if eqn.primitive.name not in _CALLS:
        return None
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if sub is None:
            continue
        inner = getattr(sub, "jaxpr", sub)
        consts = getattr(sub, "consts", ())
        if len(inner.invars) == len(eqn.invars) and len(inner.outvars) == len(eqn.outvars):
            return inner, consts
    return None


def _param_text(eqn) -> str:
    parts = []
    for k in _SHOWN_PARAMS:
        if k in eqn.params:
            v = eqn.params[k]
            if v is None:
                continue
            s = getattr(v, "name", None) if k == "new_dtype" else None
            s = s or str(v)
            if len(s) <= 24:
                parts.append(f"{k}={s}")
    return ", ".join(parts)


class _Lit(NamedTuple):
    value: object


class _Builder:
    def __init__(self, max_depth, scopes=True):
        self.nodes, self.edges, self.clusters = [], [], []
        self.index = {}  # (parent, key) -> cluster id
        self.max_depth = max_depth
        self.scopes = scopes  # draw name-stack scopes (fundl layers) as clusters

    def add_node(self, kind, op, label, shapes, cluster, backward):
        nid = f"n{len(self.nodes)}"
        self.nodes.append(DagNode(nid, kind, op, label, tuple(shapes), cluster, backward))
        return nid

    def cluster(self, parent, key, label, kind, backward):
        k = (parent, key)
        if k not in self.index:
            cid = len(self.clusters)
            self.clusters.append(Cluster(cid, label, parent, kind, backward))
            self.index[k] = cid
        return self.index[k]

    def scope_cluster(self, base, names, backward):
        c = base
        for i, name in enumerate(names):
            label = f"{name} (backward)" if backward else name
            c = self.cluster(c, ("scope", backward, tuple(names[:i + 1])), label, "scope", backward)
        return c

    def read(self, env, v):
        if type(v).__name__ == "Literal":
            return _Lit(v.val)
        return env[v]

    def walk(self, jaxpr, env, base, backward_in, depth):
        for eqn in jaxpr.eqns:
            names, bw = _scopes(eqn)
            names = names if self.scopes else []
            backward = backward_in or bw
            cluster = self.scope_cluster(base, names, backward) if names else base
            ins = [self.read(env, v) for v in eqn.invars]
            sub = _sub_jaxpr(eqn) if depth < self.max_depth else None
            prim = eqn.primitive.name
            if sub is not None:
                inner, consts = sub
                fname = eqn.params.get("name")
                fname = getattr(fname, "__name__", fname)
                label = f"{prim}: {fname}" if fname else prim
                cid = self.cluster(cluster, ("call", len(self.clusters)), label, "call", backward)
                inner_env = {}
                for cv, c in zip(inner.constvars, consts):
                    inner_env[cv] = self.add_node("const", "const", f"const\n{_aval_str(cv)}",
                                                  [_aval_str(cv)], cid, backward)
                for iv, val in zip(inner.invars, ins):
                    inner_env[iv] = val
                self.walk(inner, inner_env, cid, backward, depth + 1)
                for ov, iv in zip(eqn.outvars, inner.outvars):
                    env[ov] = self.read(inner_env, iv)
                continue
            shapes = [_aval_str(v) for v in eqn.outvars]
            head = prim
            p = _param_text(eqn)
            if p:
                head += f"[{p}]"
            lits = [_short(x.value) for x in ins if isinstance(x, _Lit)]
            lines = [head] + ([f"with {', '.join(lits)}"] if lits else []) + [", ".join(shapes)]
            nid = self.add_node("op", prim, "\n".join(lines), shapes, cluster, backward)
            for x in ins:
                if not isinstance(x, _Lit):
                    self.edges.append((x, nid))
            for v in eqn.outvars:
                env[v] = nid


def _short(value) -> str:
    s = str(value)
    return s if len(s) <= 12 else s[:11] + "…"


def trace(fn: Callable, *args, grad: bool = False, argnums: int = 0, expand: bool | int = True,
          layer_names: bool = True, prune: bool = True) -> Dag:
    """Trace ``fn(*args)`` (or its gradient) into a :class:`Dag`.

    Args:
      fn: a function of arrays/pytrees, or a fundl :class:`~fundl.layers.Layer`
        (then ``args`` are ``(params, x)``, or ``(params, state, x)`` for a
        stateful layer, traced in inference mode). Pass the function itself,
        not a ``jax.jit`` of it: a jitted function traced before is not re-traced,
        and its layers' names are missing.
      *args: example arguments (only shapes and dtypes matter).
      grad: draw ``jax.grad(fn, argnums)`` instead: the forward operations and
        the backward ones (marked ``backward``, in ``(backward)`` clusters);
        ``fn`` must return a scalar.
      argnums: which argument(s) ``grad`` differentiates: an int or a sequence of ints
        indexing ``args`` (checked even without ``grad``).
      expand: draw the insides of ``jit`` / ``custom_jvp`` / ``custom_vjp`` /
        ``checkpoint`` calls as clusters; ``False`` keeps each call one node;
        an int limits the nesting depth.
      layer_names: draw the name-stack scopes as clusters (fundl layers apply
        under ``jax.named_scope(layer.name)``, so a model's layer tree shows);
        ``False`` draws no scope clusters.
      prune: leave out operations whose results reach no output (e.g. the
        loss value itself in a gradient graph).

    Returns:
      A :class:`Dag`.
    """
    if isinstance(fn, Layer):
        layer = fn
        if layer.stateful:
            fn = lambda params, state, x: layer.apply_with_state(params, state, x)[0]
        else:
            fn = lambda params, x: layer.apply(params, x)
    if not callable(fn):
        raise ConfigError(f"trace: fn must be a function or a fundl Layer; got {type(fn).__name__}")
    if isinstance(expand, bool) or expand is None:
        depth = 1 << 30 if expand else 0
    elif isinstance(expand, int) and expand >= 0:
        depth = expand
    else:
        raise ConfigError(f"trace: expand must be True, False or a depth >= 0; got {expand!r}")
    _check_args(fn, args)
    if grad or argnums != 0:  # the default 0 is fine without grad, even for fn()
        argnums = _check_argnums(argnums, len(args))
    names = _arg_names(fn, len(args))
    if grad:
        out = jax.eval_shape(fn, *args)
        if not hasattr(out, "shape") or out.shape != ():
            raise ShapeError(f"trace: grad=True needs fn to return a scalar (a loss); got "
                             f"{getattr(out, 'shape', type(out).__name__)}. Wrap it, e.g. "
                             "lambda params, x: jnp.sum(model.apply(params, x))")
    target = jax.grad(fn, argnums=argnums) if grad else fn
    closed, out_shape = jax.make_jaxpr(target, return_shape=True)(*args)

    b = _Builder(depth, scopes=layer_names)
    env = {}
    in_paths = [p for name, a in zip(names, args) for p in _leaf_paths(name, a)]
    for v, path in zip(closed.jaxpr.invars, in_paths):
        env[v] = b.add_node("input", path, f"{path}\n{_aval_str(v)}", [_aval_str(v)], None, False)
    for cv in closed.jaxpr.constvars:
        env[cv] = b.add_node("const", "const", f"const\n{_aval_str(cv)}", [_aval_str(cv)], None, False)
    b.walk(closed.jaxpr, env, None, False, 0)

    if grad:
        nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
        prefix = [names[i] for i in nums]
        trees = (out_shape,) if isinstance(argnums, int) else tuple(out_shape)
        out_paths = ["grad " + p for pre, t in zip(prefix, trees) for p in _leaf_paths(pre, t)]
    else:
        out_paths = _leaf_paths("output", out_shape)
    for v, path in zip(closed.jaxpr.outvars, out_paths):
        src = b.read(env, v)
        nid = b.add_node("output", path, f"{path}\n{_aval_str(v)}", [_aval_str(v)], None, False)
        if isinstance(src, _Lit):
            lit = b.add_node("const", "literal", f"{_short(src.value)}", [_aval_str(v)], None, False)
            b.edges.append((lit, nid))
        else:
            b.edges.append((src, nid))
    nodes, edges = b.nodes, b.edges
    if prune:
        nodes, edges = _prune(nodes, edges)
    return Dag(tuple(nodes), tuple(edges), tuple(b.clusters))


def _check_args(fn, args) -> None:
    """Refuse example arguments ``fn`` cannot take (e.g. none at all), before tracing."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # not readable (a builtin): tracing will tell
        return
    try:
        sig.bind(*args)
    except TypeError as e:
        raise ConfigError(f"trace: fn{sig} cannot take the {len(args)} example argument(s) "
                          f"given ({e}); pass fn's example arguments after it (only shapes and "
                          "dtypes matter): graph(fn, *args) or trace(fn, *args), e.g. "
                          "graph(loss, params, x)") from None


def _check_argnums(argnums, n: int):
    """``argnums`` (an int or a sequence of ints) within the ``n`` arguments, made >= 0."""
    nums = (argnums,) if isinstance(argnums, int) else argnums
    ok = isinstance(nums, (tuple, list)) and len(nums) > 0 and all(
        isinstance(i, int) and not isinstance(i, bool) and -n <= i < n for i in nums)
    if not ok:
        raise ConfigError(f"trace: argnums must be an int or a non-empty sequence of ints "
                          f"indexing fn's {n} example argument(s) (0..{n - 1}); got "
                          f"argnums={argnums!r}")
    fixed = tuple(i % n for i in nums)
    return fixed[0] if isinstance(argnums, int) else fixed


def _prune(nodes, edges):
    """Drop operations and constants whose values reach no output (dead code)."""
    preds = {}
    for s, d in edges:
        preds.setdefault(d, []).append(s)
    live = set()
    stack = [n.id for n in nodes if n.kind == "output"]
    while stack:
        n = stack.pop()
        if n not in live:
            live.add(n)
            stack.extend(preds.get(n, []))
    keep = [n for n in nodes if n.kind == "input" or n.id in live]
    ids = {n.id for n in keep}
    return keep, [(s, d) for s, d in edges if s in ids and d in ids]


def graph(fn: Callable, *args, grad: bool = False, argnums: int = 0, expand: bool | int = True,
          layer_names: bool = True, prune: bool = True, title: str | None = None,
          rankdir: str = "TB") -> str:
    """Graphviz DOT text of the computation DAG of ``fn(*args)`` (or of its gradient).

    Nodes: the arguments' leaves (named by path: ``params/fc1/w``), operations
    (primitive name, notable parameters, literal operands, output shapes) and
    outputs. Clusters: fundl layers / ``jax.named_scope`` s and ``jit`` /
    ``custom_jvp`` / ``custom_vjp`` / ``checkpoint`` calls, nested; in a gradient
    graph (``grad=True``) the backward operations are red and grouped in
    ``(backward)`` clusters. A shared sub-network appears as one weight node
    feeding two clusters. See :func:`trace` for the arguments; write a picture
    with :func:`render`.

    Example:
      >>> import jax, jax.numpy as jnp, fundl.layers as L
      >>> net = L.Residual(L.Serial(L.Dense(4, name="fc"), L.Tanh()))
      >>> _, p = net.init(jax.random.key(0), (2, 4))
      >>> dot = graph(net, p, jnp.ones((2, 4)))
      >>> dot.splitlines()[0], 'label="residual"' in dot, 'dot_general' in dot
      ('digraph fundl {', True, True)
    """
    dag = trace(fn, *args, grad=grad, argnums=argnums, expand=expand, layer_names=layer_names,
                prune=prune)
    return dag.to_dot(title=title, rankdir=rankdir)


# -- DOT ---------------------------------------------------------------------------------

_STYLE = {
    "input": 'shape=ellipse, style=filled, fillcolor="#e8f0fe"',
    "const": 'shape=note, style=filled, fillcolor="#f1f3f4"',
    "output": 'shape=ellipse, peripheries=2, style=filled, fillcolor="#ceead6"',
    "op": 'shape=box, style="rounded,filled", fillcolor="#d2e3fc"',
    "op_backward": 'shape=box, style="rounded,filled", fillcolor="#fad2cf"',
}


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _to_dot(dag: Dag, title, rankdir) -> str:
    if rankdir not in ("TB", "LR", "BT", "RL"):
        raise ConfigError(f"to_dot: rankdir must be 'TB', 'LR', 'BT' or 'RL'; got {rankdir!r}")
    children = {}
    for c in dag.clusters:
        children.setdefault(c.parent, []).append(c)
    members = {}
    for n in dag.nodes:
        members.setdefault(n.cluster, []).append(n)

    lines = ["digraph fundl {", f"  rankdir={rankdir};",
             '  node [fontname="Helvetica", fontsize=10];',
             '  edge [color="#5f6368", arrowsize=0.6];']
    if title:
        lines.append(f"  label={_q(title)}; labelloc=t; fontsize=14;")

    def node_line(n, ind):
        style = _STYLE["op_backward" if n.kind == "op" and n.backward else n.kind]
        return f"{ind}{n.id} [label={_q(n.label)}, {style}];"

    def nonempty(c):
        return bool(members.get(c.id)) or any(nonempty(ch) for ch in children.get(c.id, []))

    children = {k: [c for c in v if nonempty(c)] for k, v in children.items()}

    def emit(cluster, ind):
        # A cluster holding nothing but one sub-cluster is drawn as one, labels joined.
        label, c = cluster.label, cluster
        while not members.get(c.id) and len(children.get(c.id, [])) == 1:
            c = children[c.id][0]
            label = f"{label} / {c.label}"
        color = "#c5221f" if c.backward else ("#1a73e8" if cluster.kind == "scope" else "#9aa0a6")
        style = "rounded" if cluster.kind == "scope" else "rounded,dashed"
        lines.append(f"{ind}subgraph cluster_{cluster.id} {{")
        lines.append(f'{ind}  label={_q(label)}; style="{style}"; color="{color}"; '
                     f'fontcolor="{color}"; fontname="Helvetica"; fontsize=10;')
        for n in members.get(c.id, []):
            lines.append(node_line(n, ind + "  "))
        for ch in children.get(c.id, []):
            emit(ch, ind + "  ")
        lines.append(f"{ind}}}")

    for n in members.get(None, []):
        lines.append(node_line(n, "  "))
    for c in children.get(None, []):
        emit(c, "  ")
    for s, d in dag.edges:
        lines.append(f"  {s} -> {d};")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- rendering ---------------------------------------------------------------------------

def render(dot: str, path, *, format: str | None = None, timeout: float = 60.0) -> Path:
    """Write a picture of DOT text with Graphviz's ``dot`` executable.

    Args:
      dot: DOT text, e.g. from :func:`graph`.
      path: the file to write; its suffix chooses the format (``.svg``,
        ``.png``, ``.pdf``) unless ``format`` is given.
      format: a Graphviz output format (``'svg'``, ``'png'``, ...).
      timeout: seconds to wait for ``dot``.

    Returns:
      The path written.

    Raises:
      RenderError: the ``dot`` executable is not on ``PATH`` (install Graphviz:
        ``apt-get install graphviz``, ``brew install graphviz`` or
        ``conda install graphviz``), or it failed (its message is included).
    """
    if not isinstance(dot, str) or not dot.lstrip().startswith(("digraph", "graph", "strict")):
        raise ConfigError("render: dot must be Graphviz DOT text (e.g. from fundl.viz.graph); "
                          f"got {type(dot).__name__} {str(dot)[:40]!r}")
    path = Path(os.fspath(path))
    fmt = format or path.suffix.lstrip(".").lower()
    if not fmt:
        raise ConfigError(f"render: cannot tell the format from path {str(path)!r}; give it a "
                          "suffix such as .svg or .png, or pass format='svg'")
    exe = shutil.which("dot")
    if exe is None:
        raise RenderError("render: the Graphviz 'dot' executable was not found on PATH; install "
                          "Graphviz (apt-get install graphviz / brew install graphviz / conda "
                          "install graphviz), or paste the DOT text into any Graphviz viewer")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run([exe, f"-T{fmt}", "-o", str(path)], input=dot.encode(),
                              capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise RenderError(f"render: dot did not finish in {timeout} s") from e
    if proc.returncode != 0:
        raise RenderError(f"render: dot -T{fmt} failed (exit {proc.returncode}): "
                          f"{proc.stderr.decode(errors='replace').strip()[:500]}")
    return path

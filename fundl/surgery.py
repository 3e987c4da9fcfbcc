"""Model surgery: look up, replace, remove and insert layers by path, then carry weights over.

Layers are immutable values, so every edit returns a new model and leaves the
input untouched. A *path* names a layer the way the params tree does: the
keys from the model down to the layer, joined by ``/`` and relative to the
model (the model's own name is not part of it): ``'fc'``,
``'layer4/block2/body/conv1'``, ``'classifier/fc3'``; ``''`` is the model
itself. :func:`paths` lists every path of a model.

An edited layer keeps the key of the layer it replaces, so the params of every
unchanged layer keep their keys; :func:`adapt` then initialises the new model
and keeps every old group of arrays whose path, names, shapes and dtypes still
match (a new classifier head on a trained backbone)::

    >>> import jax, fundl, fundl.layers as L
    >>> net = L.Serial(L.Dense(4, name="hidden"), L.ReLU(), L.Dense(3, name="head"))
    >>> _, params = net.init(jax.random.key(0), (2, 4))
    >>> net5 = fundl.surgery.replace(net, "head", L.Dense(5))
    >>> p5, _, report = fundl.surgery.adapt(net5, params, {}, key=jax.random.key(1),
    ...                                     input_shape=(2, 4))
    >>> report.kept, report.initialised, report.dropped
    (['hidden'], ['head'], ['head'])
    >>> bool((p5["hidden"]["w"] == params["hidden"]["w"]).all()), p5["head"]["w"].shape
    (True, (4, 5))

Only layers held in fields can be entered (children of ``Serial``,
``Parallel``, ``Residual``, ``Graph`` nodes and of user layers that keep their
sub-layers as fields); a layer that builds sub-layers inside ``build`` is a
leaf here and can only be replaced as a whole.
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import NamedTuple

import jax
import numpy as np

from ._combinators import Graph, Parallel, Residual, Serial
from ._errors import ConfigError, FundlError
from ._keys import as_key
from ._layer import Layer

__all__ = ["get", "paths", "replace", "remove", "insert", "adapt", "Report"]

_LIST_ALL = 24  # unknown-path messages list every path of models with at most this many


# -- looking layers up ------------------------------------------------------------------------

def _check_layer(fn: str, arg: str, value) -> None:
    if not isinstance(value, Layer):
        raise ConfigError(f"{fn}: {arg} must be a fundl Layer (e.g. fundl.models.resnet18() or "
                          f"L.Dense(10)); got {type(value).__name__} {_short(value)}")


def _short(value, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


def _keys(fn: str, path) -> tuple[str, ...]:
    """``'a/b'`` -> ``('a', 'b')``; ``''`` -> ``()``."""
    if not isinstance(path, str):
        raise ConfigError(f"{fn}: path must be a string of '/'-joined layer names such as "
                          f"'layer4/block2' ('' for the model itself); got "
                          f"{type(path).__name__} {path!r}")
    keys = tuple(path.split("/")) if path else ()
    if any(not k for k in keys):
        raise ConfigError(f"{fn}: path {path!r} has an empty component; write keys joined by "
                          f"single '/' without a leading or trailing one, e.g. "
                          f"{'/'.join(k for k in keys if k)!r}")
    return keys


def _at(prefix) -> str:
    """``"'layer4'"``, or ``"'' (the model)"`` for the empty path."""
    path = "/".join(prefix)
    return f"{path!r}" if path else "'' (the model)"


def _child(fn: str, model: Layer, parent: Layer, keys: tuple, i: int) -> Layer:
    """The child ``keys[i]`` of ``parent`` (the layer at ``keys[:i]``), or a clear error."""
    kids = parent.children()
    names = [k for k, _ in kids]
    found = [c for k, c in kids if k == keys[i]]
    if len(found) == 1:
        return found[0]
    path, here = "/".join(keys), f"{parent.type_name} '{parent.name}' at {_at(keys[:i])}"
    if found:
        raise ConfigError(f"{fn}: path {path!r} is ambiguous: {here} holds {len(found)} "
                          f"children named {keys[i]!r}; give them distinct names")
    if not kids:
        raise ConfigError(
            f"{fn}: no layer at path {path!r}: {here} holds no child layers in its fields (a "
            "leaf, or a layer that builds its sub-layers inside build/forward, which surgery "
            "cannot enter; paths name layers, not their arrays); edit it as a whole, e.g. "
            f"fundl.surgery.replace(model, {'/'.join(keys[:i])!r}, new_layer)")
    close = difflib.get_close_matches(keys[i], names, n=1)
    hint = f" Did you mean {'/'.join(keys[:i] + (close[0],))!r}?" if close else ""
    if i == 0 and keys[0] == model.name:
        hint += (f" Paths are relative to the model and do not start with its name: try "
                f"{'/'.join(keys[1:])!r}.")
    every = paths(model)
    listing = f" Valid paths: {every}." if len(every) <= _LIST_ALL else (
        " fundl.surgery.paths(model) lists every valid path.")
    raise ConfigError(f"{fn}: no layer at path {path!r}: the deepest valid prefix is "
                      f"{_at(keys[:i])}, a {parent.type_name} whose children are {names}, "
                      f"not {keys[i]!r}.{hint}{listing}")


def _chain(fn: str, model: Layer, keys: tuple) -> list[Layer]:
    """``[model, layer at keys[:1], ..., layer at keys]``."""
    chain = [model]
    for i in range(len(keys)):
        chain.append(_child(fn, model, chain[-1], keys, i))
    return chain


def get(model: Layer, path: str) -> Layer:
    """The layer at ``path`` (``'/'``-joined params keys below the model; ``''``: the model).

    Example:
      >>> import fundl.layers as L
      >>> net = L.Serial(L.Dense(4), L.Residual(L.Dense(4)), name="net")
      >>> get(net, "residual/body")
      Dense(features=4, name='body')
    """
    _check_layer("surgery.get", "model", model)
    return _chain("surgery.get", model, _keys("surgery.get", path))[-1]


def paths(model: Layer) -> list[str]:
    """Every layer path below ``model``, depth first in child order (``''`` not included).

    ``Graph`` nodes that reuse another node's parameters (``share=``) are
    listed too; their parameters live under the owner node's key.

    Example:
      >>> import fundl.layers as L
      >>> paths(L.Serial(L.Dense(4), L.Residual(L.Dense(4)), L.ReLU()))
      ['dense', 'residual', 'residual/body', 'relu']
    """
    _check_layer("surgery.paths", "model", model)
    out: list[str] = []

    def visit(layer: Layer, prefix: str) -> None:
        for key, child in layer.children():
            path = f"{prefix}{key}"
            out.append(path)
            visit(child, path + "/")

    visit(model, "")
    return out


# -- editing ----------------------------------------------------------------------------------

def _rebuild(fn: str, chain: list, keys: tuple, new: Layer, what: str) -> Layer:
    """The model with the layer at ``keys`` (``chain[len(keys)]``) replaced by ``new``.

    ``chain[i]`` is the layer at ``keys[:i]``; each ancestor gets its edited
    child through ``with_child`` (which gives the child the old key).
    """
    for i in reversed(range(len(keys))):
        try:
            new = chain[i].with_child(keys[i], new)
        except FundlError as e:
            raise type(e)(f"{fn}: {what} at {'/'.join(keys)!r}: the parent "
                          f"{chain[i].type_name} at {_at(keys[:i])} refused the edited "
                          f"child: {e}") from e
    return new


def replace(model: Layer, path: str, layer: Layer) -> Layer:
    """A new model with the layer at ``path`` replaced by ``layer``.

    ``layer`` takes the old layer's key as its name, so the params of every other
    layer keep their keys (use :func:`adapt` to carry them over). Editing a
    child of a ``BasicBlock``/``Bottleneck`` turns that block into a plain
    ``Residual`` with the same parameter keys.

    Args:
      model: the model (not modified).
      path: ``'/'``-joined keys, e.g. ``'fc'`` or ``'layer4/block2/body/conv1'``;
        ``''`` replaces the model itself (``layer`` then takes the model's name).
      layer: the new layer.

    Example:
      >>> import fundl.layers as L
      >>> net = L.Serial(L.Dense(8), L.ReLU(), L.Dense(3, name="head"))
      >>> replace(net, "head", L.Dense(5)).layers[-1]
      Dense(features=5, name='head')
    """
    fn = "surgery.replace"
    _check_layer(fn, "model", model)
    _check_layer(fn, "layer", layer)
    keys = _keys(fn, path)
    chain = _chain(fn, model, keys)
    if not keys:
        return layer if layer.name == model.name else layer.rename(model.name)
    return _rebuild(fn, chain, keys, layer, f"putting {layer.type_name} '{layer.name}'")


def _serial_parent(fn: str, model: Layer, path: str, action: str, fix: str):
    """``(keys, chain, parent)`` for an edit of the Serial holding the layer at ``path``."""
    _check_layer(fn, "model", model)
    keys = _keys(fn, path)
    if not keys:
        raise ConfigError(f"{fn}: path '' is the model itself, which has no parent to "
                          f"{action}; give the path of a layer inside a Serial, e.g. "
                          f"{(paths(model) or ['fc'])[0]!r}")
    chain = _chain(fn, model, keys)
    parent = chain[-2]
    if not isinstance(parent, Serial):
        raise ConfigError(
            f"{fn}: cannot {action} at {path!r}: its parent {parent.type_name} '{parent.name}' "
            f"at {_at(keys[:-1])} is not a Serial ({_why_fixed(parent)}); only a Serial's "
            f"chain can grow or shrink. {fix}")
    return keys, chain, parent


def _why_fixed(parent: Layer) -> str:
    if isinstance(parent, Residual):
        return "a Residual adds its body to its shortcut; both have fixed places"
    if isinstance(parent, Graph):
        return "other graph nodes read a node's output by name"
    if isinstance(parent, Parallel):
        return "a Parallel merges a fixed set of branches"
    return "its children are fixed fields"


def remove(model: Layer, path: str) -> Layer:
    """A new model without the layer at ``path``, which must be a child of a ``Serial``.

    The other children keep their names (and params keys). Anywhere else (a
    ``Residual``'s body, a ``Graph`` node, ...) there is no place to remove
    from: replace the layer with ``L.Identity()`` instead.

    Example:
      >>> import fundl.layers as L
      >>> net = L.Serial(L.Dense(8), L.Dropout(0.5), L.Dense(3))
      >>> [l.name for l in remove(net, "dropout").layers]
      ['dense1', 'dense2']
    """
    fn = "surgery.remove"
    keys, chain, parent = _serial_parent(
        fn, model, path, "remove a layer", "Replace the layer with one that passes its input "
        f"through instead: fundl.surgery.replace(model, {path!r}, L.Identity()) (when the "
        "shapes allow)")
    if len(parent.layers) == 1:
        raise ConfigError(
            f"{fn}: {path!r} is the only layer of Serial '{parent.name}' at "
            f"{_at(keys[:-1])}, and a Serial needs at least one; replace it with "
            f"L.Identity() (fundl.surgery.replace(model, {path!r}, L.Identity())) or remove "
            f"the Serial itself")
    new_parent = parent.replace(layers=tuple(c for c in parent.layers if c.name != keys[-1]))
    return _rebuild(fn, chain, keys[:-1], new_parent, "removing a child")


def insert(model: Layer, path: str, layer: Layer, *, after: bool = False) -> Layer:
    """A new model with ``layer`` inserted before (or ``after``) the layer at ``path``.

    The layer at ``path`` must be a child of a ``Serial``. ``layer`` keeps its
    name, which must differ from every sibling's (a Serial would otherwise
    renumber the clashing children and change their params keys): rename it
    with ``layer.rename(...)``.

    Example:
      >>> import fundl.layers as L
      >>> net = L.Serial(L.Dense(8), L.Dense(3, name="head"))
      >>> [l.name for l in insert(net, "head", L.Dropout(0.2)).layers]
      ['dense', 'dropout', 'head']
    """
    fn = "surgery.insert"
    _check_layer(fn, "layer", layer)
    if not isinstance(after, bool):
        raise ConfigError(f"{fn}: after must be True or False; got {after!r}")
    keys, chain, parent = _serial_parent(
        fn, model, path, "insert a layer", "Wrap the layer in a Serial instead: "
        f"fundl.surgery.replace(model, {path!r}, L.Serial(fundl.surgery.get(model, {path!r}), "
        "new_layer)) (its params then move one level down, under its own name)")
    names = [c.name for c in parent.layers]
    if layer.name in names:
        free = next(f"{layer.name}_{i}" for i in range(1, len(names) + 2)
                    if f"{layer.name}_{i}" not in names)
        raise ConfigError(
            f"{fn}: the new {layer.type_name} is named {layer.name!r}, like a sibling of "
            f"{path!r} in Serial '{parent.name}' at {_at(keys[:-1])}, whose children are "
            f"{names}; the Serial would renumber both and change their params keys. Give it a "
            f"free name, e.g. layer.rename({free!r})")
    i = names.index(keys[-1]) + (1 if after else 0)
    new_parent = parent.replace(layers=parent.layers[:i] + (layer,) + parent.layers[i:])
    return _rebuild(fn, chain, keys[:-1], new_parent, f"inserting {layer.type_name}")


# -- carrying weights over ----------------------------------------------------------------------

class Report(NamedTuple):
    """What :func:`adapt` kept, initialised and dropped.

    Each entry is the path of one group of arrays: the arrays directly under
    one dict of the params (one layer's ``{'w', 'b'}``) or, prefixed
    ``'state:'``, of the state (a batch norm's ``{'mean', 'var'}``). The model
    itself (a single layer) has the path ``''``.

    Attributes:
      kept: sorted paths whose old arrays were kept (same keys, shapes, dtypes).
      initialised: sorted paths that got fresh arrays from the new model's init.
      dropped: sorted old paths not carried over: absent from the new model,
        or present with other keys, shapes or dtypes (then also initialised).
      reasons: ``{path: why}`` for every initialised or dropped path, e.g.
        ``"w (512, 1000) -> (512, 10)"``, ``"new"`` or ``"not in the new model"``.
    """

    kept: list
    initialised: list
    dropped: list
    reasons: dict

    def __str__(self) -> str:
        n_state = sum(p.startswith("state:") for p in self.kept)
        n, plural = len(self.kept), "s" if len(self.kept) != 1 else ""
        lines = [f"kept {n} group{plural} of arrays ({n - n_state} params, {n_state} state), "
                 f"initialised {len(self.initialised)}, dropped {len(self.dropped)}"]
        for title, items in (("initialised", self.initialised), ("dropped", self.dropped)):
            for p in items[:20]:
                shown = p if p not in ("", "state:") else p + "(the model)"
                lines.append(f"  {title:<11} {shown}: {self.reasons[p]}")
            if len(items) > 20:
                lines.append(f"  ... and {len(items) - 20} more {title} (report.{title})")
        return "\n".join(lines)


def _groups(fn: str, arg: str, tree, prefix: str = "") -> dict:
    """``{path: {leaf_key: array}}`` for every dict of ``tree`` holding arrays directly."""
    if not isinstance(tree, Mapping):
        raise ConfigError(f"{fn}: {arg} must be a dict of dicts of arrays as returned by init; "
                          f"got {type(tree).__name__} at {prefix.rstrip('/') or 'the top'!r}")
    out, leaves = {}, {}
    for k, v in tree.items():
        if not isinstance(k, str):
            raise ConfigError(f"{fn}: {arg} keys must be strings (layer and array names); got "
                              f"{k!r} at {prefix.rstrip('/') or 'the top'!r}")
        if isinstance(v, Mapping):
            out.update(_groups(fn, arg, v, f"{prefix}{k}/"))
        elif isinstance(v, (jax.Array, np.ndarray, np.generic)):
            leaves[k] = v
        else:
            raise ConfigError(f"{fn}: {arg} leaf {prefix + k!r} must be an array (jax or "
                              f"numpy); got {type(v).__name__} {_short(v)}")
    if leaves:
        out[prefix.rstrip("/")] = leaves
    return out


def _mismatch(old: dict | None, new: dict) -> str | None:
    """Why ``old`` arrays cannot stand in for ``new`` ones, or None when they can."""
    if old is None:
        return "new"
    if sorted(old) != sorted(new):
        return f"arrays {sorted(old)} -> {sorted(new)}"
    diffs = []
    for k in sorted(new):
        (s0, d0), (s1, d1) = _sig(old[k]), _sig(new[k])
        if s0 != s1 and d0 != d1:
            diffs.append(f"{k} {s0} {d0} -> {s1} {d1}")
        elif s0 != s1:
            diffs.append(f"{k} {s0} -> {s1}")
        elif d0 != d1:
            diffs.append(f"{k} {d0} -> {d1}")
    return ", ".join(diffs) or None


def _sig(a) -> tuple:
    return tuple(np.shape(a)), np.dtype(a.dtype).name


def _merge(fresh: dict, old_groups: dict, prefix: str, tag: str, report: dict) -> dict:
    """``fresh`` with each group of arrays taken from ``old_groups`` where it fits."""
    out = {}
    for k, v in fresh.items():
        if isinstance(v, Mapping):
            out[k] = _merge(v, old_groups, f"{prefix}{k}/", tag, report)
    leaves = {k: v for k, v in fresh.items() if not isinstance(v, Mapping)}
    if leaves:
        path = prefix.rstrip("/")
        why = _mismatch(old_groups.get(path), leaves)
        if why is None:
            report["kept"].append(tag + path)
            leaves = {k: old_groups[path][k] for k in leaves}
        else:
            report["initialised"].append(tag + path)
            report["reasons"][tag + path] = why
    return {k: out[k] if k in out else leaves[k] for k in fresh}


def adapt(new_model: Layer, params, state, *, key, input_shape):
    """Params and state for ``new_model``, keeping every old group of arrays that still fits.

    ``new_model`` is initialised at ``input_shape`` with ``key``; then each
    group of arrays (the arrays directly under one dict: a layer's
    ``{'w', 'b'}``, a batch norm's ``{'scale', 'bias'}``, or in the state its
    ``{'mean', 'var'}``) is the old group, unchanged (the same array objects),
    when the old tree has the same path with the same array names, shapes and
    dtypes, and the fresh one otherwise. Kept arrays are shared with the old
    trees: a train step that donates the new params (the default) invalidates
    the old ones too; copy what you still need (``np.array(a)``) first.

    Args:
      new_model: the edited model (e.g. from :func:`replace`).
      params: the old model's params (a dict of dicts of arrays).
      state: the old model's state; ``{}`` (or None) for a stateless one.
      key: a ``jax.random`` key (or an int seed) for the fresh arrays.
      input_shape: ``new_model``'s input shape, batch included, e.g. ``(1, 224, 224, 3)``.

    Returns:
      ``(params, state, report)``: ``new_model``'s params and state (``{}``
      when it is stateless) and a :class:`Report` (``print(report)`` for a summary).

    Raises:
      ConfigError: bad arguments, or old params and state none of whose paths
      exists in the new model although both have some (most likely the trees
      of another model, or wrapped in the model's name).

    Example:
      >>> import jax, fundl.layers as L
      >>> old = L.Serial(L.Dense(4, name="a"), L.BatchNorm(name="bn"))
      >>> _, p, s = old.init(jax.random.key(0), (2, 4))
      >>> new = L.Serial(L.Dense(4, name="a"), L.Dense(5, name="out"))
      >>> p2, s2, report = adapt(new, p, s, key=jax.random.key(1), input_shape=(2, 4))
      >>> print(report)
      kept 1 group of arrays (1 params, 0 state), initialised 1, dropped 2
        initialised out: new
        dropped     bn: not in the new model
        dropped     state:bn: not in the new model
      >>> p2["a"]["w"] is p["a"]["w"], s2
      (True, {})
    """
    fn = "surgery.adapt"
    _check_layer(fn, "new_model", new_model)
    old_p = _groups(fn, "params", params)
    old_s = _groups(fn, "state", {} if state is None else state)
    key = as_key(key, fn)
    _, fresh_p, fresh_s = new_model.init_with_state(key, input_shape)
    report = {"kept": [], "initialised": [], "reasons": {}}
    new_p = _merge(fresh_p, old_p, "", "", report)
    new_s = _merge(fresh_s, old_s, "", "state:", report)
    old = [*old_p, *(f"state:{k}" for k in old_s)]
    kept = set(report["kept"])
    dropped = sorted(p for p in old if p not in kept)
    for p in dropped:
        report["reasons"].setdefault(p, "not in the new model")
    new_paths = kept | set(report["initialised"])
    if old and new_paths and not new_paths & set(old):
        raise ConfigError(
            f"{fn}: no path of the old params or state exists in new_model "
            f"{new_model.type_name} '{new_model.name}' (old paths such as {sorted(old)[:3]}, "
            f"new ones such as {sorted(new_paths)[:3]}); were they made by init of a model "
            f"with the same layer names? Paths are relative to the model (no model name).")
    return new_p, new_s, Report(sorted(report["kept"]), sorted(report["initialised"]),
                                dropped, dict(sorted(report["reasons"].items())))

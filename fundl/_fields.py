"""Fields of a layer type: equality, hashing and ``repr`` (callables compare by identity).

A layer's identity is its type and its fields (hyper-parameters and child
layers): two layers with equal fields are ``==`` and hash equal; callables in
fields (activations, initialisers) compare by identity; containers and child
layers compare by value. ``repr`` shows the fields that differ from their
defaults, child layers one per line.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import numpy as np

from . import _layer


def same(a, b) -> bool:
    """Field equality: layers and containers by value, callables by identity."""
    if isinstance(a, _layer.Layer) or isinstance(b, _layer.Layer):
        return a == b
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(same(x, y) for x, y in zip(a, b)))
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return (isinstance(a, Mapping) and isinstance(b, Mapping) and a.keys() == b.keys()
                and all(same(a[k], b[k]) for k in a))
    if callable(a) or callable(b):
        return a is b
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (type(a) is type(b) and a.shape == b.shape and a.dtype == b.dtype
                and bool(np.array_equal(a, b)))
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001  (an exotic value that cannot compare)
        return a is b


def equal_except_name(a, b) -> bool:
    """Whether two layers compute the same function (equal fields but for their own name).

    A child layer that carries its owner's name (the layer wrapped by ``Remat``) is
    part of the owner's identity, so it is compared but for its name too.
    """
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    for f in a._field_names():
        if f == "name":
            continue
        u, v = getattr(a, f), getattr(b, f)
        named = (isinstance(u, _layer.Layer) and isinstance(v, _layer.Layer)
                 and u.name == a.name and v.name == b.name)
        if not (equal_except_name(u, v) if named else same(u, v)):
            return False
    return True


def hashable(v):
    if isinstance(v, _layer.Layer):
        return v
    if isinstance(v, (tuple, list)):
        return (type(v).__name__, tuple(hashable(x) for x in v))
    if isinstance(v, Mapping):
        return ("map", tuple(sorted((repr(k), hashable(x)) for k, x in v.items())))
    if callable(v):
        return ("id", id(v))
    if isinstance(v, np.ndarray):
        return ("array", v.shape, str(v.dtype), v.tobytes())
    try:
        hash(v)
        return v
    except TypeError:
        return ("repr", repr(v))


def value_repr(v) -> str:
    if isinstance(v, _layer.Layer):
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


def fields_repr(layer, indent: str) -> str:
    """``Type(field=value, ..., name='x')``: fields that differ from their defaults; child
    layers one per line."""
    parts, nested = [], False
    for f in dataclasses.fields(layer):
        v = getattr(layer, f.name)
        if f.name == "name" or not f.repr:
            continue
        if f.default is not dataclasses.MISSING and same(v, f.default):
            continue
        if isinstance(v, _layer.Layer) or (isinstance(v, tuple) and v and all(
                isinstance(c, _layer.Layer) for c in v)):
            nested = True
            inner = indent + "    "
            kids = (v,) if isinstance(v, _layer.Layer) else v
            body = "".join(f"{inner}{fields_repr(c, inner)},\n" for c in kids)
            text = (fields_repr(v, indent + "  ") if isinstance(v, _layer.Layer)
                    else f"(\n{body}{indent}  )")
            parts.append(f"{f.name}={text}")
        else:
            parts.append(f"{f.name}={value_repr(v)}")
    parts.append(f"name={layer.name!r}")
    if not nested:
        return f"{layer.type_name}({', '.join(parts)})"
    inner = "".join(f"{indent}  {p},\n" for p in parts)
    return f"{layer.type_name}(\n{inner}{indent})"


def snake(name: str) -> str:
    """``'BatchNorm' -> 'batch_norm'``, ``'ReLU' -> 'relu'``, ``'MultiHeadAttention' ->
    'multi_head_attention'``."""
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    s = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z]{2,})", "_", s)
    return s.lower()

"""Params and state checked against the model, at the outermost ``apply``.

The expected trees come from the model's own ``init`` for the input's shape,
run abstractly (``jax.eval_shape``: nothing is allocated) and cached per
``(model, input shapes)``. Under ``jax.jit`` the check runs while tracing, so
the compiled function pays nothing. Every mismatch is reported at once, each
naming the layer path, the leaf, what was received and what was expected.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _context
from ._errors import FundlError, ShapeError
from ._layer import Layer
from ._record import Recorder

_MAX_LISTED = 12


class Expected(NamedTuple):
    """What ``init`` gives for one input shape: abstract trees, and the layer and the
    input and output shapes at each path (``layers`` in the order of the init calls'
    ends: children before their parent, siblings in order)."""

    params: dict
    state: dict
    layers: dict   # path below the model (tuple of names) -> Layer
    outputs: dict  # path from the model's name (tuple of names) -> output shape
    inputs: dict   # path from the model's name (tuple of names) -> input shape

    def check_output(self, layer: Layer, path: tuple, y) -> None:
        """Raise a ShapeError if ``y`` (what ``layer`` at ``path`` computed) does not have
        the shape its ``build`` promised."""
        want = self.outputs.get(path)
        if want is None:
            return
        got = _shape_of(y)
        if not _fits(got, want):
            raise ShapeError(f"{layer.label()}: forward returned shape {got} but build promised "
                             f"{want} for the same input; make forward and build agree (the "
                             "layers after it were built for the promised shape)")


def _shape_of(y):
    """The shape of ``y`` (nested tuples for tuple outputs); symbolic dimensions as None."""
    if isinstance(y, (tuple, list)):
        return tuple(_shape_of(a) for a in y)
    return tuple(None if jax.export.is_symbolic_dim(d) else int(d) for d in np.shape(y))


def _fits(got, want) -> bool:
    """``got == want``, where a None in ``got`` (a symbolic dimension) matches any size."""
    if isinstance(got, tuple) and isinstance(want, tuple):
        return len(got) == len(want) and all(_fits(g, w) for g, w in zip(got, want))
    return got is None or got == want


def input_shapes(x):
    """The shape of ``x``, or a tuple of shapes for a tuple of inputs; None if not array-like.

    A tuple/list holding arrays is several inputs; one holding only Python numbers
    (``x.tolist()``) is one array-like input, as ``jnp`` ops read it.
    """
    if isinstance(x, (tuple, list)):
        if not _holds_array(x):
            try:
                return tuple(np.shape(x))
            except ValueError:  # ragged
                return None
        shapes = [input_shapes(a) for a in x]
        return None if any(s is None or not _flat(s) for s in shapes) else tuple(shapes)
    shape = getattr(x, "shape", None)
    if shape is None:
        return None
    # a symbolic dimension (a batch-polymorphic export) as the size it stands for
    return tuple(_context.concrete(d) for d in shape)


def _holds_array(x) -> bool:
    if isinstance(x, (tuple, list)):
        return any(_holds_array(a) for a in x)
    return hasattr(x, "shape")


def _flat(s) -> bool:
    return all(isinstance(d, int) for d in s)


@functools.lru_cache(maxsize=256)
def expected(layer: Layer, shapes) -> Expected:
    """The abstract params and state ``layer.init`` gives for ``shapes`` (cached)."""
    rec = Recorder()

    def f():
        # the key is made inside the abstract trace: made outside, it would be staged
        # into the caller's trace (a jit of apply) as a dead random_seed equation
        _, p, s = layer.init_with_state(jax.random.key(0), shapes)
        return p, s

    with _context.using(path=(), recorder=rec, shared=False, root=None, modes=None,
                        frame=None, expected=None, shapes_only=True):
        params, state = jax.eval_shape(f)
    layers, outputs, inputs = {}, {}, {}
    for path, row in zip(rec.paths, rec.rows):
        layers.setdefault(path[1:], row.layer)
        outputs.setdefault(path, _normal(row.output_shape))
        inputs.setdefault(path, _normal(row.input_shape))
    return Expected(params, state, layers, outputs, inputs)


def _normal(shape):
    """A recorded output shape (tuple of ints, or nested tuples of them) as tuples."""
    if isinstance(shape, (tuple, list)) and shape and not all(isinstance(d, int) for d in shape):
        return tuple(_normal(s) for s in shape)
    return tuple(int(d) for d in shape)


def check(layer: Layer, params, state, x) -> Expected | None:
    """Raise a ShapeError listing every way ``params``/``state`` differ from what ``layer``
    needs for input ``x`` (or the init's own ShapeError when ``x`` does not fit the model).

    Returns:
      The :class:`Expected` trees and output shapes (``None`` when ``x`` is not array-like).
    """
    shapes = input_shapes(x)
    if shapes is None:
        return None
    want = expected(layer, shapes)
    problems: list[tuple[tuple, str]] = []
    _compare(params, want.params, (), "params", problems)
    _compare(state, want.state, (), "state", problems)
    if problems:
        message = _message(layer, want, problems, shapes)
        first = _forward_error(layer, params, state, x)
        raise ShapeError(f"{first}\n{message}" if first else message)
    return want


def _forward_error(layer: Layer, params, state, x) -> str | None:
    """The error a layer's own forward gives for these trees and input (abstractly), if any:
    it says more precisely when the input, not the params, is what does not fit."""
    from ._layer import _forward_in_scope

    def run(p, s, x):
        with _context.using(root=len(_context.current().path), modes=None):
            return _forward_in_scope(layer, p, s, x, None, False)

    try:
        jax.eval_shape(run, params, state, x)
    except FundlError as e:
        return str(e)
    except Exception:  # noqa: BLE001  (misshapen params may fail inside an op: say nothing)
        return None
    return None


def _kind(dtype) -> str:
    for kind, base in (("floating", jnp.floating), ("integer", jnp.integer),
                       ("complex", jnp.complexfloating), ("bool", jnp.bool_)):
        if jnp.issubdtype(dtype, base):
            return kind
    return str(dtype)


def _leaf_info(a):
    shape = getattr(a, "shape", None)
    dtype = getattr(a, "dtype", None)
    if shape is None or dtype is None:
        try:
            arr = np.asarray(a)
        except Exception:  # noqa: BLE001
            return None, None
        shape, dtype = arr.shape, arr.dtype
    return tuple(shape), dtype


def _compare(got, want, path, what, problems) -> None:
    if isinstance(want, Mapping):
        if not isinstance(got, Mapping):
            problems.append((path, f"{what} must be a dict with keys {sorted(want)}; got "
                                   f"{type(got).__name__}"))
            return
        for k in want:
            if k not in got:
                problems.append((path, f"{what} is missing {k!r}"))
            else:
                _compare(got[k], want[k], path + (k,), what, problems)
        for k in got:
            if k not in want:
                kind = "a layer's" if isinstance(got[k], Mapping) else "an"
                problems.append((path, f"{what} has {kind} unexpected entry {k!r} (expected "
                                       f"keys: {sorted(want) or 'none'})"))
        return
    shape, dtype = (None, None) if isinstance(got, Mapping) else _leaf_info(got)
    leaf = f"{what} {path[-1]!r}"
    if shape is None:
        problems.append((path[:-1], f"{leaf} must be an array; got {type(got).__name__}"))
    elif shape != tuple(want.shape):
        problems.append((path[:-1], f"{leaf} has shape {shape}, expected {tuple(want.shape)}"))
    elif _kind(dtype) != _kind(want.dtype):
        problems.append((path[:-1], f"{leaf} has dtype {np.dtype(dtype).name} "
                                    f"({_kind(dtype)}), expected a {_kind(want.dtype)} dtype "
                                    f"such as {np.dtype(want.dtype).name}"))


def _owner(want: Expected, path: tuple) -> tuple[tuple, Layer]:
    """The innermost layer whose path is a prefix of ``path``."""
    for n in range(len(path), -1, -1):
        if path[:n] in want.layers:
            return path[:n], want.layers[path[:n]]
    return (), None


def _message(layer: Layer, want: Expected, problems, shapes) -> str:
    prefix = _context.current().path
    lines = []
    for path, text in problems[:_MAX_LISTED]:
        at, owner = _owner(want, path)
        owner = owner or layer
        full = "/".join(prefix + (layer.name,) + at)
        rest = "/".join(path[len(at):])
        where = f"{owner.type_name} '{full}'" + (f" (entry {rest!r})" if rest else "")
        lines.append(f"{where}: {text}")
    more = len(problems) - _MAX_LISTED
    if more > 0:
        lines.append(f"... and {more} more")
    head = (lines[0] if len(problems) == 1 else
            f"{layer.label()}: params/state do not fit the model ({len(problems)} problems):\n  "
            + "\n  ".join(lines))
    return (f"{head}\nThe expected shapes are those {layer.type_name}.init gives for input "
            f"shape {shapes}: either the params/state were made for another model (or input "
            "shape), or the input is not what the model was built for. To carry params over to "
            "an edited model, use fundl.surgery.adapt(model, params, state, ...).")

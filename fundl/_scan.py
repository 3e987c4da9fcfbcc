"""Runs of identical layers under ``lax.scan``: one compiled body instead of one per layer.

``Serial(..., scan=True)`` (or ``scan=k``: stretches of at least ``k``)
groups consecutive children that are copies of one layer (equal layers but
for their names: same type and fields, recursively, callables compared by
identity; and parameter and state trees of the same shapes) and that keep the input's shape, as the repeated residual blocks of
a ResNet stage do. Each group runs as one ``lax.scan``
over the children's parameters, stacked along a new leading axis at call
time, so XLA traces and compiles the block once. The parameter and state
trees keep their usual layout (``block2``, ``block3``, ...), so a model
built with and without ``scan`` shares checkpoints. The values are the same
computation; only XLA's fusion choices may differ (float32 results agree to
rounding).
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from ._errors import ConfigError
from ._fields import equal_except_name
from ._layer import child_entry, put

# scan=True: stretches of fewer copies compiled faster unrolled (ResNet-50's
# runs of 2-5 blocks took 1.5x longer scanned; ResNet-101/152's runs of 22/35
# blocks 0.6-0.8x with this threshold; BENCHMARKS.md).
DEFAULT_MIN_RUN = 8


def min_run(scan, where: str) -> int:
    """The shortest stretch that ``scan`` runs as a ``lax.scan`` (0: none)."""
    if isinstance(scan, bool):
        return DEFAULT_MIN_RUN if scan else 0
    if isinstance(scan, int) and scan >= 2:
        return scan
    raise ConfigError(f"{where}: scan must be True, False or an int >= 2 (the shortest stretch "
                      f"of identical layers to scan); got scan={scan!r}")


def _shapes(tree):
    return jax.tree_util.tree_structure(tree), [(jnp.shape(a), jnp.result_type(a))
                                               for a in jax.tree_util.tree_leaves(tree)]


def stretch(children, params, state, i: int) -> int:
    """End (exclusive) of the longest stretch of copies of ``children[i]`` starting at ``i``.

    Copies are equal layers but for their names (same type and fields, so the
    same computation; callables in fields compare by identity) with parameter
    and state trees of the same shapes (a ResNet stage's first block, with its
    projection shortcut, is not a copy of the next ones).
    """
    entry = lambda tree, j: (tree.get(children[j].name, {})  # noqa: E731
                             if isinstance(tree, Mapping) else {})
    first = _shapes((entry(params, i), entry(state, i)))
    j = i + 1
    while (j < len(children) and equal_except_name(children[j], children[i])
           and _shapes((entry(params, j), entry(state, j))) == first):
        j += 1
    return j


def apply_run(children, params_tree, state_tree, x, keys, *, train, owner):
    """Apply ``children`` in order as one ``lax.scan``; returns ``(y, new_state_entries)``.

    Args:
      children: layers that are copies of one another (see :func:`stretch`).
      params_tree, state_tree: the parent's dicts (keyed by child name).
      x: the input of the first child.
      keys: one key (or None) per child.
      train: the mode.
      owner: the parent layer, for error messages.

    Returns:
      ``(y, {name: new_state})``, or ``None`` when the layer changes the
      shape of its input (then it cannot be the body of a scan).
    """
    names = [c.name for c in children]
    ps = [child_entry(params_tree, n, owner) for n in names]
    ss = [child_entry(state_tree, n, owner, "state") for n in names]
    layer0 = children[0]
    out, _ = jax.eval_shape(lambda p, s, x, k: layer0.apply_with_state(p, s, x, key=k, train=train),
                            ps[0], ss[0], x, keys[0])
    if _shapes(out) != _shapes(x):  # the carry of a scan keeps its shape
        return None
    stack = lambda *a: jnp.stack(a)  # noqa: E731
    xs = (jax.tree_util.tree_map(stack, *ps), jax.tree_util.tree_map(stack, *ss),
          None if keys[0] is None else jnp.stack(keys))

    def body(h, slab):
        p, s, k = slab
        return layer0.apply_with_state(p, s, h, key=k, train=train)

    y, new = jax.lax.scan(body, x, xs, length=len(children))
    out = {}
    for i, n in enumerate(names):
        put(out, n, jax.tree_util.tree_map(lambda a, i=i: a[i], new))
    return y, out

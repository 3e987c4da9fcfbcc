"""Activation rematerialisation (gradient checkpointing): :class:`Remat`.

``Remat(layer)`` computes what ``layer`` computes, but under ``jax.checkpoint``:
the backward pass recomputes the layer's intermediate activations from its
input instead of keeping them in memory from the forward pass. Memory falls
(only the wrapped layer's inputs are kept, or what ``policy`` saves); compute
rises by about one extra forward pass of the layer. Wrap the repeated blocks of
a deep network (``fundl.models.resnet50(remat=True)`` wraps each residual block).
On the CPU backend the saving happens only inside a ``lax.scan`` (see
:class:`Remat`, "Backends"). :class:`RematSerial` checkpoints stretches of a
``Serial``'s children without a new parameter level (VGG's ``remat=True``).

``Remat`` adds no level to the parameter tree: it takes the wrapped layer's
name, and its params and state are the wrapped layer's own, so a model with and
without ``Remat`` shares checkpoints, :mod:`fundl.surgery` paths and
``train``/``frozen`` patterns. Data layout: that of the wrapped layer.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import KW_ONLY

import jax

from ._combinators import Serial
from ._errors import ConfigError
from ._layer import Layer, child_entry, put, split_key

# jax.checkpoint_policies that are policies themselves (the others build one from arguments:
# pass the built policy, e.g. jax.checkpoint_policies.save_only_these_names('x')).
POLICY_NAMES = ("nothing_saveable", "everything_saveable", "dots_saveable",
                "dots_with_no_batch_dims_saveable", "checkpoint_dots",
                "checkpoint_dots_with_no_batch_dims")


def check_policy(policy, where: str):
    """``policy`` normalised: ``None``, a name of :data:`POLICY_NAMES` (a named policy given
    as the function itself becomes its name), or another callable ``(prim, *args, **params)
    -> bool``.

    Raises:
      ConfigError: for anything else, listing the names.
    """
    if policy is None:
        return None
    if isinstance(policy, str):
        if policy in POLICY_NAMES and hasattr(jax.checkpoint_policies, policy):
            return policy
    elif callable(policy) and not isinstance(policy, (Layer, type)):
        for n in POLICY_NAMES:
            if getattr(jax.checkpoint_policies, n, None) is policy:
                return n
        return policy
    raise ConfigError(f"{where}: policy must be None (save nothing: recompute everything), a "
                      f"name among {list(POLICY_NAMES)}, or a policy function from "
                      f"jax.checkpoint_policies (e.g. jax.checkpoint_policies.dots_saveable, "
                      f"or one built by save_only_these_names(...)); got {policy!r}"[:400])


def policy_function(policy) -> Callable | None:
    """The callable ``jax.checkpoint`` takes for a normalised ``policy``."""
    return getattr(jax.checkpoint_policies, policy) if isinstance(policy, str) else policy


def checkpointed(fn, policy):
    """``fn(params, state, x, key)`` under ``jax.checkpoint`` with ``policy`` (normalised).

    Everything static (the mode, the layers) is closed over by ``fn``; a ``None`` key
    stays out of the traced arguments.
    """
    def call(params, state, x, key):
        if key is None:
            return jax.checkpoint(lambda p, s, x: fn(p, s, x, None),
                                  policy=policy_function(policy))(params, state, x)
        return jax.checkpoint(fn, policy=policy_function(policy))(params, state, x, key)

    return call


class Remat(Layer):
    """``layer`` recomputed in the backward pass (``jax.checkpoint``): less memory, more compute.

    The forward values, the new state and the gradients are those of ``layer``
    (up to float rounding of the recomputation; keys and the train mode pass
    through, so dropout draws the same masks when recomputed). The params and
    state are exactly ``layer``'s (no extra nesting level): ``Remat`` takes
    ``layer``'s name, and renaming the ``Remat`` renames ``layer``. It is
    transparent to :mod:`fundl.surgery` (its children are ``layer``'s
    children, at the same paths) and to :func:`fundl.summary` (``layer``'s rows,
    a leaf ``layer``'s typed ``Remat``).

    Args:
      layer: the layer to rematerialise (any fundl Layer; typically a residual
        block or a stretch of convolutions).
      policy: which intermediates may still be saved: ``None`` (nothing: the
        backward pass recomputes everything from the input), a name among
        ``'nothing_saveable'``, ``'everything_saveable'``, ``'dots_saveable'``
        (keep matmul/conv outputs, recompute the elementwise ops),
        ``'dots_with_no_batch_dims_saveable'``, ``'checkpoint_dots'``,
        ``'checkpoint_dots_with_no_batch_dims'``, or a policy function from
        ``jax.checkpoint_policies``.
      name: the key of the params (default: ``layer``'s name).

    Shapes: those of ``layer``, e.g. ``[N, H, W, C] -> [N, H', W', C']``.

    Backends: ``jax.checkpoint`` keeps the recomputation apart with XLA optimization
    barriers. The CPU compiler removes them and merges the recomputation back into the
    forward pass, so on the CPU a ``Remat`` saves memory only inside a loop: the body of a
    ``Serial(..., scan=...)`` of wrapped copies (ResNet-50's train step: 0.64x the peak
    memory with ``scan=2, remat=True``, 1.11x with ``remat=True`` alone; BENCHMARKS.md).

    Example:
      >>> import jax, jax.numpy as jnp, fundl.layers as L
      >>> block = L.Remat(L.Serial(L.Dense(8), L.ReLU(), L.Dense(4), name="mlp"))
      >>> out, params = block.init(jax.random.key(0), (2, 3))
      >>> out, sorted(params), block.name
      ((2, 4), ['dense1', 'dense2'], 'mlp')
      >>> g = jax.grad(lambda p: block.apply(p, jnp.ones((2, 3))).sum())(params)
      >>> g["dense1"]["w"].shape
      (3, 8)
    """

    layer: Layer
    policy: str | Callable | None = None

    def __post_init__(self):
        if not isinstance(self.layer, Layer):
            raise ConfigError(f"Remat '{self.name or 'remat'}': layer must be a fundl Layer "
                              f"(e.g. L.BasicBlock(64) or L.Serial(...)); got "
                              f"{type(self.layer).__name__} {self.layer!r}"[:300])
        if self.name is None:
            self._set(name=self.layer.name)
        super().__post_init__()
        if self.layer.name != self.name:
            self._set(layer=self.layer.rename(self.name))
        self._set(policy=check_policy(self.policy, self.where()))

    @property
    def stateful(self) -> bool:
        return self.layer.stateful

    def children(self):
        """``layer``'s children (``Remat`` adds no level to the paths)."""
        return self.layer.children()

    def with_child(self, key: str, layer: Layer) -> "Remat":
        """A copy whose ``layer`` has the child under ``key`` replaced by ``layer``."""
        return self.replace(layer=self.layer.with_child(key, layer))

    def build_with_state(self, key, input_shape):
        return self.layer.build_with_state(key, input_shape)

    def forward_with_state(self, params, state, x, *, key, train):
        def run(p, s, x, k):
            return self.layer.forward_with_state(p, s, x, key=k, train=train)

        return checkpointed(run, self.policy)(params, state, x, key)

    def macs(self, input_shape, output_shape, params) -> int:
        return self.layer.macs(input_shape, output_shape, params)


class RematSerial(Serial):
    """A :class:`~fundl.layers.Serial` whose named stretches of children run under
    ``jax.checkpoint`` (as ``torch.utils.checkpoint.checkpoint_sequential`` does), with the
    parameter tree of the plain ``Serial``: ``fundl.models.vgg(..., remat=True)``'s
    ``features``, one segment per stage (its convolutions, batch norms, ReLUs and pool).

    Wrapping a group of a ``Serial``'s children in :class:`Remat` would put their params under
    a new key; segments keep them where they are.

    Fields: those of ``Serial`` (``scan`` must stay False), and

    * ``segments``: tuples of child names; each maximal stretch of consecutive children of
      one segment runs as one checkpointed call. Names of no child are dropped (a
      child removed by :mod:`fundl.surgery`); children in no segment run as usual.
    * ``policy``: as :class:`Remat`'s.

    Shapes: those of the chain, e.g. VGG's ``[N, 224, 224, 3] -> [N, 7, 7, 512]``.

    Example:
      >>> import jax, fundl.layers as L
      >>> net = RematSerial(L.Dense(4), L.ReLU(), L.Dense(2), segments=(("dense1", "relu"),))
      >>> sorted(net.init(jax.random.key(0), (3, 5))[1])
      ['dense1', 'dense2']
    """

    _: KW_ONLY
    segments: tuple = ()
    policy: str | Callable | None = None

    def __init__(self, *layers: Layer, segments=(), policy=None, name: str | None = None):
        self._set(segments=segments, policy=policy)
        super().__init__(*layers, name=name)

    def __post_init__(self):
        super().__post_init__()
        where = self.where()
        if self.scan is not False:
            raise ConfigError(f"{where}: scan must be False with remat segments; got "
                              f"scan={self.scan!r}")
        segs = self.segments
        if not isinstance(segs, (tuple, list)) or not all(
                isinstance(s, (tuple, list)) and all(isinstance(n, str) for n in s)
                for s in segs):
            raise ConfigError(f"{where}: segments must be tuples of child names, e.g. "
                              f"(('conv1', 'relu1'),); got segments={segs!r}"[:300])
        names = {c.name for c in self.layers}
        segs = tuple(t for t in (tuple(n for n in s if n in names) for s in segs) if t)
        self._set(segments=segs, policy=check_policy(self.policy, where))

    def forward_with_state(self, params, state, x, *, key, train):
        if not self.segments:
            return super().forward_with_state(params, state, x, key=key, train=train)
        group = {n: g for g, seg in enumerate(self.segments) for n in seg}
        kids, keys = self.layers, split_key(key, len(self.layers))
        new_state, i = {}, 0
        while i < len(kids):
            g, j = group.get(kids[i].name), i + 1
            while g is not None and j < len(kids) and group.get(kids[j].name) == g:
                j += 1
            run = kids[i:j]
            ps = {c.name: child_entry(params, c.name, self) for c in run}
            ss = {c.name: child_entry(state, c.name, self, "state") for c in run}
            chain = functools.partial(_chain, self, run, train)
            if g is not None:
                chain = jax.checkpoint(chain, policy=policy_function(self.policy))
            x, states = chain(ps, ss, x, keys[i:j])
            new_state.update(states)
            i = j
        return x, new_state


def _chain(owner, run, train, params, state, x, keys):
    """Apply the children ``run`` in order; ``(y, {name: new_state})``."""
    new_state = {}
    for child, k in zip(run, keys):
        x, s = child.apply_with_state(params[child.name], state[child.name], x, key=k,
                                      train=train)
        put(new_state, child.name, s)
    return x, new_state


def unwrap(layer: Layer) -> Layer:
    """The layer a :class:`Remat` (possibly nested) wraps; any other layer itself."""
    while isinstance(layer, Remat):
        layer = layer.layer
    return layer

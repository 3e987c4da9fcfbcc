"""Layers and combinators (``import fundl.layers as L``).

Data layout: channels last, ``x: [N, *spatial, C]``. A layer is a value of a
small class whose fields are its hyper-parameters (and, for combinators,
its child layers)::

    >>> import jax, jax.numpy as jnp, fundl.layers as L
    >>> conv = L.Conv(32, 5, stride=2)
    >>> isinstance(conv, L.Conv), conv == L.Conv(32, 5, stride=2), conv.stride
    (True, True, 2)
    >>> conv.replace(stride=1)
    Conv(out_channels=32, kernel_size=5, name='conv')

``out_shape, params = layer.init(key, input_shape)`` computes shapes and
parameters (named dicts, nested by layer name) without running the network;
``y = layer.apply(params, x)`` computes. Layers holding batch-norm statistics
are ``stateful``: ``init`` also returns ``state``, and ``apply(params, x,
state=state, train=...)`` returns ``(y, new_state)``. ``apply`` checks the
params and state against the model (missing, extra or misshapen leaves raise
a ``ShapeError`` naming the layer path); ``train`` may be a mapping
``{path pattern: bool}`` to run parts of a model in eval mode.

Writing your own layers
=======================

Subclass :class:`Layer`. The class becomes a frozen dataclass: annotated
class attributes are its fields (hyper-parameters), ``name`` is a keyword-only
field every layer has (default: ``default_name`` if the class sets it, else
the class name in snake case). Validate fields in ``__post_init__`` (call
``super().__post_init__()`` first; store normalised values with
``object.__setattr__``, the dataclass being frozen). Do not decorate the
class with ``@dataclass`` yourself, and do not redeclare ``name``.

(a) A leaf layer with parameters implements ``build`` and ``forward`` (and,
for :func:`fundl.summary`, ``macs``)::

    >>> class Scale(L.Layer):
    ...     '''y = x * s + t per channel: [N, C] -> [N, C]; s, t: [C].'''
    ...     init_scale: float = 1.0
    ...
    ...     def build(self, key, input_shape):        # -> (output_shape, params)
    ...         c = input_shape[-1]
    ...         return input_shape, {"s": jnp.full((c,), self.init_scale), "t": jnp.zeros((c,))}
    ...
    ...     def forward(self, params, x, *, key, train):   # -> y
    ...         return x * params["s"][None] + params["t"][None]
    ...
    ...     def macs(self, input_shape, output_shape, params):
    ...         return 0                                # elementwise: no MACs counted
    >>> out, p = Scale(2.0).init(jax.random.key(0), (4, 3))
    >>> Scale(2.0).apply(p, jnp.ones((4, 3)))[0]
    Array([2., 2., 2.], dtype=float32)

(b) A composite layer made of other fundl layers holds them in fields (so
:mod:`fundl.surgery` can edit them, and ``repr``/``==`` see them) and
initialises and applies them with their own ``init`` / ``apply``, putting each
child's params under the child's name. Every layer initialised inside another
is recorded once by :func:`fundl.summary` (its own row, its own MACs); the
composite's ``macs`` counts only what it computes itself::

    >>> class Gate(L.Layer):
    ...     '''y = x * sigmoid(dense(x)).'''
    ...     dense: L.Layer
    ...
    ...     def build(self, key, input_shape):
    ...         _, p = self.dense.init(key, input_shape)
    ...         return input_shape, {self.dense.name: p}
    ...
    ...     def forward(self, params, x, *, key, train):
    ...         return x * jax.nn.sigmoid(self.dense.apply(params[self.dense.name], x))
    >>> gate = Gate(L.Dense(3, name="proj"))
    >>> sorted(gate.init(jax.random.key(0), (2, 3))[1])
    ['proj']

(c) A layer with state sets ``stateful = True`` (a plain class attribute, not a
field); ``build`` returns ``(output_shape, params, state)`` and ``forward``
takes ``state=`` and returns ``(y, new_state)``. In eval mode
(``train=False``) return the state unchanged::

    >>> class RunningMean(L.Layer):
    ...     '''y = x - running mean: [N, C] -> [N, C].'''
    ...     momentum: float = 0.1
    ...     stateful = True
    ...
    ...     def build(self, key, input_shape):
    ...         return input_shape, {}, {"mean": jnp.zeros(input_shape[-1])}
    ...
    ...     def forward(self, params, x, *, state, key, train):
    ...         if not train:
    ...             return x - state["mean"][None], state
    ...         m = (1 - self.momentum) * state["mean"] + self.momentum * x.mean(0)
    ...         return x - m[None], {"mean": m}
    >>> _, p, s = RunningMean().init(jax.random.key(0), (4, 2))
    >>> y, s = RunningMean().apply(p, jnp.ones((4, 2)), state=s, train=True)
    >>> s["mean"]
    Array([0.1, 0.1], dtype=float32)

Combinators (``Serial``, ``Residual``, ...) implement the uniform hooks
``build_with_state(key, input_shape) -> (out, params, state)`` and
``forward_with_state(params, state, x, *, key, train) -> (y, new_state)``
instead, so that stateless and stateful children mix. For a one-off
parameter-free function use :class:`Lambda`; :func:`layer` builds a leaf from
two functions.
"""
from ._blocks import BasicBlock, Bottleneck
from ._combinators import Concat, Graph, Multiply, Node, Parallel, Residual, Serial, Sum
from ._conv_layers import Conv, ConvTranspose, Dense
from ._function_layer import layer, stateful_layer
from ._layer import Layer
from ._norm import BatchNorm, LayerNorm
from ._pool_layers import AdaptiveAvgPool, AvgPool, GlobalAvgPool, MaxPool
from ._remat import Remat
from ._simple_layers import (ELU, GELU, Dropout, Elementwise, Flatten, Identity, Lambda,
                             LeakyReLU, LogSoftmax, ReLU, Reshape, Sigmoid, Softmax, Softplus,
                             Tanh)

__all__ = [
    "Layer", "layer", "stateful_layer",
    "Dense", "Conv", "ConvTranspose", "MaxPool", "AvgPool", "AdaptiveAvgPool", "GlobalAvgPool",
    "Flatten", "Reshape", "Identity", "Lambda", "Elementwise", "Dropout", "BatchNorm",
    "LayerNorm",
    "ReLU", "LeakyReLU", "ELU", "GELU", "Sigmoid", "Tanh", "Softplus", "Softmax", "LogSoftmax",
    "Serial", "Parallel", "Residual", "Graph", "Node", "Sum", "Concat", "Multiply",
    "BasicBlock", "Bottleneck", "Remat",
]

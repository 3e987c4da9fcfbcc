"""Parameter-free elementwise and reshaping layers: Flatten, Identity, Dropout, activations.

Data layout: channels last, ``x: [N, *spatial, C]`` (NHWC in 2-d); apart
from Flatten (``[N, ...] -> [N, prod(...)]``, row-major over that layout)
every layer here maps any shape to the same shape. Activations follow
``torch.nn`` (``ReLU``, ``LeakyReLU``, ``ELU``, ``GELU``, ``Sigmoid``,
``Tanh``, ``Softplus``, ``Softmax``, ``LogSoftmax``) and call the ops in
:mod:`fundl._activations`; hyper-parameters are validated at construction
(ConfigError naming the layer, the argument and the value).
"""
from __future__ import annotations

import math
import numbers

import jax  # noqa: F401  (the doctest examples use jax.random)
import jax.numpy as jnp

from . import _activations as _act
from ._checks import min_rank
from ._errors import ConfigError, ShapeError
from ._layer import Layer, label, layer
from ._util import check_name, check_number, is_int

__all__ = [
    "ELU", "Dropout", "Flatten", "GELU", "Identity", "LeakyReLU", "LogSoftmax", "ReLU", "Sigmoid",
    "Softmax", "Softplus", "Tanh",
]


# -- reshaping, identity, dropout ------------------------------------------

def Flatten(*, name: str | None = None) -> Layer:
    """Flatten all axes after the batch: ``[N, d1, ..., dk] -> [N, d1 * ... * dk]``.

    Order is row-major over the channels-last layout, i.e. ``x.reshape(N, -1)``
    (for NHWC the channel index varies fastest). Note this differs from
    PyTorch's NCHW flatten order, which matters when porting Dense weights.

    Args:
      name: parameter key (default ``'flatten'``).

    Example:
      >>> Flatten().init(jax.random.key(0), (8, 4, 4, 64))[0]
      (8, 1024)
    """
    kind = "Flatten"
    name = check_name(kind, name, "flatten")
    layout = "[N, ...] with at least 2 axes"

    def init(key, input_shape):
        min_rank(label(kind), input_shape, 2, layout)
        return (input_shape[0], math.prod(input_shape[1:])), {}

    def apply(params, x, *, key, train):
        shape = jnp.shape(x)
        min_rank(label(kind), shape, 2, layout)
        return jnp.reshape(x, (shape[0], math.prod(shape[1:])))

    return layer(kind, name, init, apply)


def Identity(*, name: str | None = None) -> Layer:
    """Return the input unchanged (any shape).

    Args:
      name: parameter key (default ``'identity'``).

    Example:
      >>> Identity().init(jax.random.key(0), (8, 3))[0]
      (8, 3)
    """
    return layer("Identity", check_name("Identity", name, "identity"),
                 lambda key, shape: (shape, {}),
                 lambda params, x, *, key, train: x)


def Dropout(rate: float, *, name: str | None = None) -> Layer:
    """Randomly zero elements with probability ``rate``, scaling the rest by ``1/(1-rate)``.

    Active only when ``apply(..., train=True, key=key)``; with ``train=False``
    it is the identity. The key is passed at call time (combinators split the
    key they are given among their children).

    Shapes: any -> same.

    Args:
      rate: probability of dropping an element, ``0 <= rate < 1``
        (``torch.nn.Dropout(p=rate)``).
      name: parameter key (default ``'dropout'``).

    Example:
      >>> layer = Dropout(0.5)
      >>> _, params = layer.init(jax.random.key(0), (4, 8))
      >>> y = layer.apply(params, jnp.ones((4, 8)), key=jax.random.key(1), train=True)
      >>> sorted(set(y.ravel().tolist())) in ([0.0, 2.0], [2.0], [0.0])
      True
    """
    kind = "Dropout"
    name = check_name(kind, name, "dropout")
    where = f"{kind} '{name}'"
    if (isinstance(rate, bool) or not isinstance(rate, numbers.Real)
            or not 0.0 <= rate < 1.0):
        raise ConfigError(f"{where}: rate (probability of dropping) must be a number in "
                          f"[0, 1); got rate={rate!r}")
    rate = float(rate)

    def apply(params, x, *, key, train):
        if not train or rate == 0.0:
            return x
        if key is None:
            raise ConfigError(f"{label(kind)}: train=True needs a random key; pass "
                              "key=jax.random.key(...) to apply (or train=False to evaluate)")
        return _act.dropout(x, rate, key=key, train=True)

    return layer(kind, name, lambda key, shape: (shape, {}), apply, config={"rate": rate})


# -- activations ---------------------------------------------------------------

def _activation(kind, name, fn, config=None, check=None):
    """Elementwise (shape-preserving) layer ``y = fn(x)``; ``name`` already validated."""

    def init(key, input_shape):
        if check is not None:
            check(label(kind), input_shape)
        return input_shape, {}

    def apply(params, x, *, key, train):
        if check is not None:
            check(label(kind), jnp.shape(x))
        return fn(x)

    return layer(kind, name, init, apply, config=config)


def ReLU(*, name: str | None = None) -> Layer:
    """``max(x, 0)`` (``torch.nn.ReLU``). Shapes: any -> same.

    Example:
      >>> ReLU().apply({}, jnp.array([-1.0, 2.0]))
      Array([0., 2.], dtype=float32)
    """
    return _activation("ReLU", check_name("ReLU", name, "relu"), _act.relu)


def LeakyReLU(negative_slope: float = 0.01, *, name: str | None = None) -> Layer:
    """``x if x >= 0 else negative_slope * x`` (``torch.nn.LeakyReLU``). Shapes: any -> same.

    Example:
      >>> LeakyReLU(0.1).apply({}, jnp.array([-1.0, 2.0]))
      Array([-0.1,  2. ], dtype=float32)
    """
    kind = "LeakyReLU"
    name = check_name(kind, name, "leaky_relu")
    slope = check_number(negative_slope, "negative_slope", f"{kind} '{name}'")
    return _activation(kind, name, lambda x: _act.leaky_relu(x, negative_slope=slope),
                       {"negative_slope": slope})


def ELU(alpha: float = 1.0, *, name: str | None = None) -> Layer:
    """``x if x > 0 else alpha * (exp(x) - 1)`` (``torch.nn.ELU``). Shapes: any -> same.

    Example:
      >>> ELU().init(jax.random.key(0), (2, 3))[0]
      (2, 3)
    """
    kind = "ELU"
    name = check_name(kind, name, "elu")
    alpha = check_number(alpha, "alpha", f"{kind} '{name}'")
    return _activation(kind, name, lambda x: _act.elu(x, alpha=alpha), {"alpha": alpha})


def GELU(approximate: str = "none", *, name: str | None = None) -> Layer:
    """Gaussian error linear unit (``torch.nn.GELU``); ``approximate='tanh'`` for the tanh form.

    Shapes: any -> same.

    Example:
      >>> GELU(approximate='tanh').init(jax.random.key(0), (2, 3))[0]
      (2, 3)
    """
    kind = "GELU"
    name = check_name(kind, name, "gelu")
    if approximate not in ("none", "tanh"):
        raise ConfigError(f"{kind} '{name}': approximate must be 'none' or 'tanh'; "
                          f"got approximate={approximate!r}")
    return _activation(kind, name, lambda x: _act.gelu(x, approximate=approximate),
                       {"approximate": approximate})


def Sigmoid(*, name: str | None = None) -> Layer:
    """``1 / (1 + exp(-x))`` (``torch.nn.Sigmoid``). Shapes: any -> same.

    Example:
      >>> Sigmoid().apply({}, jnp.zeros(2))
      Array([0.5, 0.5], dtype=float32)
    """
    return _activation("Sigmoid", check_name("Sigmoid", name, "sigmoid"), _act.sigmoid)


def Tanh(*, name: str | None = None) -> Layer:
    """Hyperbolic tangent (``torch.nn.Tanh``). Shapes: any -> same.

    Example:
      >>> Tanh().apply({}, jnp.zeros(2))
      Array([0., 0.], dtype=float32)
    """
    return _activation("Tanh", check_name("Tanh", name, "tanh"), _act.tanh)


def Softplus(beta: float = 1, threshold: float = 20, *, name: str | None = None) -> Layer:
    """``log(1 + exp(beta * x)) / beta`` (``torch.nn.Softplus``).

    Linear (``y = x``) where ``beta * x > threshold``, for numerical stability.

    Shapes: any -> same.

    Example:
      >>> Softplus(beta=2).init(jax.random.key(0), (2, 3))[0]
      (2, 3)
    """
    kind = "Softplus"
    name = check_name(kind, name, "softplus")
    where = f"{kind} '{name}'"
    beta = check_number(beta, "beta", where)
    threshold = check_number(threshold, "threshold", where)
    if beta <= 0:
        raise ConfigError(f"{where}: beta must be > 0; got beta={beta!r}")
    return _activation(kind, name, lambda x: _act.softplus(x, beta=beta, threshold=threshold),
                       {"beta": beta, "threshold": threshold})


def _axis_layer(kind, name, default, axis, fn):
    name = check_name(kind, name, default)
    if not is_int(axis):
        raise ConfigError(f"{kind} '{name}': axis must be an int; got axis={axis!r}")
    axis = int(axis)

    def check(lab, shape):
        if not -len(shape) <= axis < len(shape):
            raise ShapeError(f"{lab}: axis={axis} is out of range for input shape "
                             f"{tuple(shape)} (rank {len(shape)})")

    return _activation(kind, name, lambda x: fn(x, axis=axis), {"axis": axis}, check)


def Softmax(axis: int = -1, *, name: str | None = None) -> Layer:
    """``exp(x) / sum(exp(x), axis)`` (``torch.nn.Softmax(dim=axis)``). Shapes: any -> same.

    Example:
      >>> Softmax().apply({}, jnp.zeros((1, 4)))
      Array([[0.25, 0.25, 0.25, 0.25]], dtype=float32)
    """
    return _axis_layer("Softmax", name, "softmax", axis, _act.softmax)


def LogSoftmax(axis: int = -1, *, name: str | None = None) -> Layer:
    """``log(softmax(x, axis))``, computed stably (``torch.nn.LogSoftmax(dim=axis)``).

    Shapes: any -> same.

    Example:
      >>> LogSoftmax().init(jax.random.key(0), (8, 10))[0]
      (8, 10)
    """
    return _axis_layer("LogSoftmax", name, "log_softmax", axis, _act.log_softmax)

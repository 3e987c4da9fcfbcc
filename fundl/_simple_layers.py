"""Parameter-free layers: Flatten, Reshape, Identity, Lambda, Dropout and the activations.

Data layout: channels last, ``x: [N, *spatial, C]`` (NHWC in 2-d). Flatten
(``[N, ...] -> [N, prod(...)]``, row-major over that layout) and Reshape
change the shape; every other layer here maps any shape to the same shape
(:class:`Elementwise`). Activations follow ``torch.nn`` (``ReLU``,
``LeakyReLU``, ``ELU``, ``GELU``, ``Sigmoid``, ``Tanh``, ``Softplus``,
``Softmax``, ``LogSoftmax``) and call the ops in :mod:`fundl._activations`;
hyper-parameters are validated at construction (ConfigError naming the
layer, the argument and the value).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import jax  # noqa: F401  (the doctest examples use jax.random)
import jax.numpy as jnp

from . import _activations as _act
from ._checks import min_rank
from ._errors import ConfigError, ShapeError
from ._layer import Layer
from ._util import check_number, is_int

__all__ = [
    "ELU", "Dropout", "Elementwise", "Flatten", "GELU", "Identity", "Lambda", "LeakyReLU",
    "LogSoftmax", "ReLU", "Reshape", "Sigmoid", "Softmax", "Softplus", "Tanh",
]


# -- reshaping --------------------------------------------------------------------------

class Flatten(Layer):
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

    _LAYOUT = "[N, ...] with at least 2 axes"

    def build(self, key, input_shape):
        min_rank(self.label(), input_shape, 2, self._LAYOUT)
        return (input_shape[0], math.prod(input_shape[1:])), {}

    def forward(self, params, x, *, key, train):
        shape = jnp.shape(x)
        min_rank(self.label(), shape, 2, self._LAYOUT)
        return jnp.reshape(x, (shape[0], math.prod(shape[1:])))


class Reshape(Layer):
    """Reshape every example: ``[N, *dims] -> [N, *shape]`` (``torch.nn.Unflatten`` /
    ``x.view(N, *shape)``), row-major, the batch axis kept.

    Args:
      shape: the per-example shape; one entry may be ``-1`` (inferred).
      name: parameter key (default ``'reshape'``).

    Example:
      >>> Reshape((7, 7, 16)).init(jax.random.key(0), (8, 784))[0]
      (8, 7, 7, 16)
    """

    shape: tuple

    def __post_init__(self):
        super().__post_init__()
        shape = self.shape
        if is_int(shape):
            shape = (shape,)
        if (not isinstance(shape, (tuple, list)) or not shape
                or not all(is_int(d) and (d >= 1 or d == -1) for d in shape)
                or list(shape).count(-1) > 1):
            raise ConfigError(f"{self.where()}: shape must be a tuple of positive ints, one of "
                              f"them may be -1; got shape={self.shape!r}")
        self._set(shape=tuple(int(d) for d in shape))

    def _target(self, in_shape):
        size = math.prod(in_shape[1:])
        known = math.prod(d for d in self.shape if d != -1)
        out = tuple(size // known if d == -1 else d for d in self.shape)
        if math.prod(out) != size or (-1 in self.shape and size % known):
            raise ShapeError(f"{self.label()}: cannot reshape an example of shape "
                             f"{tuple(in_shape[1:])} ({size} values) to {self.shape}; got "
                             f"input shape {tuple(in_shape)}")
        return (in_shape[0], *out)

    def build(self, key, input_shape):
        min_rank(self.label(), input_shape, 1, "[N, ...]")
        return self._target(input_shape), {}

    def forward(self, params, x, *, key, train):
        return jnp.reshape(x, self._target(jnp.shape(x)))


# -- shape-preserving layers ------------------------------------------------------------

class Elementwise(Layer):
    """Base of the parameter-free layers that keep the input's shape: ``y = compute(x)``.

    Subclasses implement ``compute(x)``; :func:`fundl.models.convolutionize` treats
    them as acting on each position's channel vector alone.
    """

    def compute(self, x):
        raise NotImplementedError

    def check(self, shape) -> None:
        """Raise a ShapeError if ``fn`` cannot take an input of this shape."""

    def build(self, key, input_shape):
        self.check(input_shape)
        return input_shape, {}

    def forward(self, params, x, *, key, train):
        self.check(jnp.shape(x))
        return self.compute(x)


class Identity(Elementwise):
    """Return the input unchanged (any shape).

    Example:
      >>> Identity().init(jax.random.key(0), (8, 3))[0]
      (8, 3)
    """

    def compute(self, x):
        return x


class Lambda(Elementwise):
    """A parameter-free function as a layer: ``y = fn(x)``, the shape kept.

    Use it for elementwise functions (``Lambda(jax.nn.silu)``); a function that
    changes the shape is an error at ``init`` (write a :class:`Layer` instead).
    Two Lambdas are equal when they hold the same function object.

    Args:
      fn: ``x -> y`` with ``y.shape == x.shape``; called with the input array.
      name: parameter key (default the function's name, else ``'lambda'``).

    Example:
      >>> Lambda(jax.nn.silu).name, Lambda(jax.nn.silu).init(jax.random.key(0), (2, 3))[0]
      ('silu', (2, 3))
    """

    fn: Callable

    def __post_init__(self):
        if not callable(self.fn) or isinstance(self.fn, Layer):
            raise ConfigError(f"Lambda: fn must be a function x -> y (e.g. jax.nn.silu); got "
                              f"{self.fn!r}")
        if self.name is None:
            fname = getattr(self.fn, "__name__", "")
            self._set(name=fname if fname.isidentifier() else "lambda")
        super().__post_init__()

    def compute(self, x):
        return self.fn(x)

    def build(self, key, input_shape):
        out = jax.eval_shape(self.fn, jax.ShapeDtypeStruct(input_shape, jnp.float32))
        if getattr(out, "shape", None) != tuple(input_shape):
            got = getattr(out, "shape", type(out).__name__)
            raise ShapeError(f"{self.label()}: fn must keep the input's shape; it maps "
                             f"{tuple(input_shape)} to {got}. Use Reshape, or write a Layer")
        return input_shape, {}



class Dropout(Elementwise):
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

    rate: float

    def __post_init__(self):
        super().__post_init__()
        rate = self.rate
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0.0 <= rate < 1.0:
            raise ConfigError(f"{self.where()}: rate (probability of dropping) must be a number "
                              f"in [0, 1); got rate={rate!r}")
        self._set(rate=float(rate))

    def forward(self, params, x, *, key, train):
        if not train or self.rate == 0.0:
            return x
        if key is None:
            raise ConfigError(f"{self.label()}: train=True needs a random key; pass "
                              "key=jax.random.key(...) to apply (or train=False to evaluate)")
        return _act.dropout(x, self.rate, key=key, train=True)


# -- activations ----------------------------------------------------------------------

class ReLU(Elementwise):
    """``max(x, 0)`` (``torch.nn.ReLU``). Shapes: any -> same.

    Example:
      >>> ReLU().apply({}, jnp.array([-1.0, 2.0]))
      Array([0., 2.], dtype=float32)
    """

    default_name = "relu"

    def compute(self, x):
        return _act.relu(x)


class LeakyReLU(Elementwise):
    """``x if x >= 0 else negative_slope * x`` (``torch.nn.LeakyReLU``). Shapes: any -> same.

    Example:
      >>> LeakyReLU(0.1).apply({}, jnp.array([-1.0, 2.0]))
      Array([-0.1,  2. ], dtype=float32)
    """

    negative_slope: float = 0.01
    default_name = "leaky_relu"

    def __post_init__(self):
        super().__post_init__()
        self._set(negative_slope=check_number(self.negative_slope, "negative_slope", self.where()))

    def compute(self, x):
        return _act.leaky_relu(x, negative_slope=self.negative_slope)


class ELU(Elementwise):
    """``x if x > 0 else alpha * (exp(x) - 1)`` (``torch.nn.ELU``). Shapes: any -> same.

    Example:
      >>> ELU().init(jax.random.key(0), (2, 3))[0]
      (2, 3)
    """

    alpha: float = 1.0
    default_name = "elu"

    def __post_init__(self):
        super().__post_init__()
        self._set(alpha=check_number(self.alpha, "alpha", self.where()))

    def compute(self, x):
        return _act.elu(x, alpha=self.alpha)


class GELU(Elementwise):
    """Gaussian error linear unit (``torch.nn.GELU``); ``approximate='tanh'`` for the tanh form.

    Shapes: any -> same.

    Example:
      >>> GELU(approximate='tanh').init(jax.random.key(0), (2, 3))[0]
      (2, 3)
    """

    approximate: str = "none"
    default_name = "gelu"

    def __post_init__(self):
        super().__post_init__()
        if self.approximate not in ("none", "tanh"):
            raise ConfigError(f"{self.where()}: approximate must be 'none' or 'tanh'; "
                              f"got approximate={self.approximate!r}")

    def compute(self, x):
        return _act.gelu(x, approximate=self.approximate)


class Sigmoid(Elementwise):
    """``1 / (1 + exp(-x))`` (``torch.nn.Sigmoid``). Shapes: any -> same.

    Example:
      >>> Sigmoid().apply({}, jnp.zeros(2))
      Array([0.5, 0.5], dtype=float32)
    """

    def compute(self, x):
        return _act.sigmoid(x)


class Tanh(Elementwise):
    """Hyperbolic tangent (``torch.nn.Tanh``). Shapes: any -> same.

    Example:
      >>> Tanh().apply({}, jnp.zeros(2))
      Array([0., 0.], dtype=float32)
    """

    def compute(self, x):
        return _act.tanh(x)


class Softplus(Elementwise):
    """``log(1 + exp(beta * x)) / beta`` (``torch.nn.Softplus``).

    Linear (``y = x``) where ``beta * x > threshold``, for numerical stability.

    Shapes: any -> same.

    Example:
      >>> Softplus(beta=2).init(jax.random.key(0), (2, 3))[0]
      (2, 3)
    """

    beta: float = 1.0
    threshold: float = 20.0

    def __post_init__(self):
        super().__post_init__()
        beta = check_number(self.beta, "beta", self.where())
        threshold = check_number(self.threshold, "threshold", self.where())
        if beta <= 0:
            raise ConfigError(f"{self.where()}: beta must be > 0; got beta={beta!r}")
        self._set(beta=beta, threshold=threshold)

    def compute(self, x):
        return _act.softplus(x, beta=self.beta, threshold=self.threshold)


class _AxisActivation(Elementwise):
    """An activation along one axis (Softmax, LogSoftmax)."""

    axis: int = -1

    def __post_init__(self):
        super().__post_init__()
        if not is_int(self.axis):
            raise ConfigError(f"{self.where()}: axis must be an int; got axis={self.axis!r}")
        self._set(axis=int(self.axis))

    def check(self, shape) -> None:
        if not -len(shape) <= self.axis < len(shape):
            raise ShapeError(f"{self.label()}: axis={self.axis} is out of range for input shape "
                             f"{tuple(shape)} (rank {len(shape)})")


class Softmax(_AxisActivation):
    """``exp(x) / sum(exp(x), axis)`` (``torch.nn.Softmax(dim=axis)``). Shapes: any -> same.

    Example:
      >>> Softmax().apply({}, jnp.zeros((1, 4)))
      Array([[0.25, 0.25, 0.25, 0.25]], dtype=float32)
    """

    def compute(self, x):
        return _act.softmax(x, axis=self.axis)


class LogSoftmax(_AxisActivation):
    """``log(softmax(x, axis))``, computed stably (``torch.nn.LogSoftmax(dim=axis)``).

    Shapes: any -> same.

    Example:
      >>> LogSoftmax().init(jax.random.key(0), (8, 10))[0]
      (8, 10)
    """

    def compute(self, x):
        return _act.log_softmax(x, axis=self.axis)

"""Dense layer op, activations and dropout with ``torch.nn.functional`` semantics.

Layout is channels-last throughout: features live on the last axis, so a
dense weight is ``[in, out]`` (the transpose of torch's ``[out, in]``) and
``linear(x, w)`` equals ``torch.nn.functional.linear(x, w.T)``. Every
activation is element-wise except ``softmax`` / ``log_softmax`` (one axis).
Like ``jax.nn``, most ops are jitted so an eager call is a single dispatch.
"""
from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from ._argcheck import check_bool, check_float_input
from ._errors import ConfigError, ShapeError
from ._keys import as_key
from ._util import check_number, is_int

__all__ = [
    "linear", "relu", "leaky_relu", "elu", "gelu", "sigmoid", "tanh", "softplus",
    "softmax", "log_softmax", "dropout",
]


def linear(x, w, b=None):
    """Affine map ``x @ w + b`` over the last axis.

    Args:
      x: input, shape ``[..., in]``.
      w: weight, shape ``[in, out]`` (torch stores ``[out, in]``; pass ``w_torch.T``).
      b: optional bias, shape ``[out]``.

    Returns:
      Array of shape ``[..., out]``.

    Raises:
      ShapeError: if ``x`` is a scalar, ``w`` is not 2-d, ``x.shape[-1] != w.shape[0]``
        or ``b.shape != (out,)``.

    Example:
      >>> x, w, b = jnp.ones((8, 3)), jnp.ones((3, 4)), jnp.zeros((4,))
      >>> linear(x, w, b).shape
      (8, 4)
    """
    x, w = jnp.asarray(x), jnp.asarray(w)
    check_float_input(x, "linear", "x")
    check_float_input(w, "linear", "w")
    if x.ndim < 1:
        raise ShapeError(f"linear: x must have at least 1 dim [..., in]; got shape {x.shape}")
    if w.ndim != 2:
        raise ShapeError(f"linear: w must be 2-d [in, out]; got shape {w.shape}")
    if x.shape[-1] != w.shape[0]:
        raise ShapeError(
            f"linear: x.shape[-1] (got {x.shape[-1]}) must equal w.shape[0] ({w.shape[0]}); "
            f"x has shape {x.shape}, w has shape {w.shape} (layout [in, out])")
    if b is not None:
        b = jnp.asarray(b)
        if b.shape != (w.shape[1],):
            raise ShapeError(
                f"linear: b must have shape (out,) = ({w.shape[1]},); got {b.shape}")
    return _linear_core(x, w, b)


@jax.jit
def _linear_core(x, w, b):
    y = x @ w
    if b is None:
        return y
    # Explicit leading singleton axes: implicit rank promotion may be disabled.
    return y + b.reshape((1,) * (y.ndim - 1) + b.shape)


def relu(x):
    """``max(x, 0)`` element-wise (any shape); the gradient at 0 is 0, as in torch.

    Example:
      >>> relu(jnp.array([-1.0, 2.0]))
      Array([0., 2.], dtype=float32)
    """
    return jax.nn.relu(x)


def _check_coef(value, arg: str, where: str):
    """A coefficient: a finite Python number (checked, as the layer versions check it) or an
    array (passed through: its value is not free to check)."""
    if isinstance(value, (jax.Array, np.ndarray)):
        return value
    return check_number(value, arg, where)


def leaky_relu(x, negative_slope: float = 0.01):
    """``x`` if ``x > 0`` else ``negative_slope * x``.

    Args:
      x: input, any shape ``[...]``; the output has the same shape.
      negative_slope: slope for ``x <= 0`` (torch default 0.01); also the gradient at 0.

    Raises:
      ConfigError: if ``negative_slope`` is not a finite number (e.g. a string).

    Example:
      >>> leaky_relu(jnp.array([-1.0, 2.0]), 0.1)
      Array([-0.1,  2. ], dtype=float32)
    """
    return _leaky_relu(x, _check_coef(negative_slope, "negative_slope", "leaky_relu"))


@jax.jit
def _leaky_relu(x, negative_slope):
    x = jnp.asarray(x)
    # Strict ``>`` so the gradient at 0 is ``negative_slope``, like torch.
    return jnp.where(x > 0, x, negative_slope * x)


def elu(x, alpha: float = 1.0):
    """``x`` if ``x > 0`` else ``alpha * (exp(x) - 1)``.

    Args:
      x: input, any shape ``[...]``; the output has the same shape.
      alpha: saturation value for ``x -> -inf`` is ``-alpha`` (torch default 1.0).

    Raises:
      ConfigError: if ``alpha`` is not a finite number (e.g. a string).

    Example:
      >>> elu(jnp.array([0.0, 1.0]))
      Array([0., 1.], dtype=float32)
    """
    return _elu(x, _check_coef(alpha, "alpha", "elu"))


@jax.jit
def _elu(x, alpha):
    x = jnp.asarray(x)
    # Zero the unused branch's input: exp(large x) = inf would turn its zero
    # cotangent into a NaN gradient (where(), not minimum(), keeps grad(0) = alpha).
    neg = jnp.where(x > 0, jnp.zeros((), x.dtype), x)
    return jnp.where(x > 0, x, alpha * jnp.expm1(neg))


def gelu(x, approximate: str = "none"):
    """Gaussian error linear unit.

    Args:
      x: input, any shape ``[...]``; the output has the same shape.
      approximate: ``'none'`` (torch default): exact ``x * Phi(x)`` with the erf;
        ``'tanh'``: the tanh approximation.

    Raises:
      ConfigError: if ``approximate`` is not ``'none'`` or ``'tanh'``.

    Example:
      >>> gelu(jnp.array([0.0]))
      Array([0.], dtype=float32)
    """
    if approximate not in ("none", "tanh"):
        raise ConfigError(
            f"gelu: approximate must be 'none' or 'tanh' (as in torch); got {approximate!r}")
    return jax.nn.gelu(x, approximate=(approximate == "tanh"))


def sigmoid(x):
    """Logistic function ``1 / (1 + exp(-x))``, element-wise (any shape).

    Example:
      >>> sigmoid(jnp.array([0.0]))
      Array([0.5], dtype=float32)
    """
    return jax.nn.sigmoid(x)


def tanh(x):
    """Hyperbolic tangent, element-wise (any shape).

    Example:
      >>> tanh(jnp.array([0.0]))
      Array([0.], dtype=float32)
    """
    return jnp.tanh(x)


def softplus(x, beta: float = 1.0, threshold: float = 20.0):
    """``log(1 + exp(beta * x)) / beta``, linear (``x``) where ``beta * x > threshold``.

    The linear regime is torch's: above the threshold the output is exactly
    ``x`` (not ``log1p(exp(.))``), which also matters for the gradient (exactly 1).

    Args:
      x: input, any shape ``[...]``; the output has the same shape.
      beta: sharpness (torch default 1.0).
      threshold: switch to the identity where ``beta * x > threshold`` (default 20.0).

    Raises:
      ConfigError: if ``beta`` is not a number > 0 (``beta=0`` would give inf everywhere) or
        ``threshold`` is not a finite number.

    Example:
      >>> softplus(jnp.array([0.0, 30.0]))
      Array([ 0.6931472, 30.       ], dtype=float32)
    """
    beta = _check_coef(beta, "beta", "softplus")
    threshold = _check_coef(threshold, "threshold", "softplus")
    if isinstance(beta, float) and beta <= 0:
        raise ConfigError(f"softplus: beta must be > 0 (beta=0 divides by zero); got beta={beta!r}")
    return _softplus(x, beta, threshold)


@jax.jit
def _softplus(x, beta, threshold):
    x = jnp.asarray(x)
    z = beta * x
    # logaddexp(z, 0) is the overflow-free log1p(exp(z)).
    return jnp.where(z > threshold, x, jnp.logaddexp(z, 0.0) / beta)


def _check_axis(name, x, axis):
    if not is_int(axis):
        raise ConfigError(f"{name}: axis must be an int (one axis, e.g. -1 for the channels); "
                          f"got axis={axis!r}")
    if not -x.ndim <= axis < x.ndim:
        raise ShapeError(f"{name}: axis {axis} is out of range for input of shape {x.shape}")


def softmax(x, axis: int = -1):
    """Normalised exponentials along ``axis``.

    Args:
      x: input, e.g. logits ``[N, ..., C]``; the output has the same shape.
      axis: the axis that sums to 1; default -1, the channel axis (channels last).
        Unlike torch's ``dim`` it has a default.

    Raises:
      ConfigError: if ``axis`` is not an int.
      ShapeError: if ``axis`` is out of range.

    Example:
      >>> softmax(jnp.array([0.0, 0.0]))
      Array([0.5, 0.5], dtype=float32)
    """
    x = jnp.asarray(x)
    _check_axis("softmax", x, axis)
    return jax.nn.softmax(x, axis=axis)


def log_softmax(x, axis: int = -1):
    """``x - logsumexp(x, axis)``: stable for large-magnitude inputs.

    Args:
      x: input, e.g. logits ``[N, ..., C]``; the output has the same shape.
      axis: the normalised axis; default -1, the channel axis (channels last).

    Raises:
      ConfigError: if ``axis`` is not an int.
      ShapeError: if ``axis`` is out of range.

    Example:
      >>> log_softmax(jnp.array([0.0, 0.0]))
      Array([-0.6931472, -0.6931472], dtype=float32)
    """
    x = jnp.asarray(x)
    _check_axis("log_softmax", x, axis)
    return jax.nn.log_softmax(x, axis=axis)


def dropout(x, rate: float, *, key=None, train: bool = True):
    """Inverted dropout: zero each element with probability ``rate``, scale the rest.

    ``rate`` is torch's ``p`` (probability of DROPPING). Kept elements are
    multiplied by ``1 / (1 - rate)`` so the expectation is unchanged; the keep
    mask is ``jax.random.bernoulli(key, 1 - rate, x.shape)``.

    Args:
      x: input, any shape ``[...]``; the output has the same shape.
      rate: drop probability, a Python number in ``[0, 1)``.
      key: a ``jax.random`` key or an int seed; required when ``train`` and ``rate > 0``.
      train: ``False`` (evaluation) returns ``x`` unchanged.

    Raises:
      ConfigError: if ``rate`` is not in ``[0, 1)``, ``train`` is not a bool, or a key is
        needed but missing.

    Example:
      >>> y = dropout(jnp.ones((4, 8)), 0.5, key=jax.random.key(0))
      >>> sorted(set(y.ravel().tolist()))
      [0.0, 2.0]
    """
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise ConfigError(f"dropout: rate must be a Python number in [0, 1); got {rate!r}")
    if not (0.0 <= rate < 1.0) or math.isnan(rate):
        raise ConfigError(
            f"dropout: rate is the probability of dropping and must be in [0, 1); got {rate!r}")
    if not check_bool(train, "train", "dropout") or rate == 0:
        return x
    if key is None:
        raise ConfigError(
            f"dropout: train=True with rate={rate} needs randomness; pass key= (a jax.random "
            "key, e.g. jax.random.key(0) or a split of one) at call time, or train=False")
    key = as_key(key, "dropout")
    x = jnp.asarray(x)
    # Not wrapped in jit: bernoulli is itself jitted with a traced p, so eager
    # calls with any rate share one compiled sampler per shape.
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype))

"""Parameter initialisers, with PyTorch's defaults.

An initialiser is a callable ``(key, shape, dtype) -> array``, the same
convention as ``jax.nn.initializers``, so those can be passed directly as a
layer's ``w_init`` / ``b_init``.

PyTorch initialises ``nn.Linear`` / ``nn.Conv*d`` weights with
``kaiming_uniform_(a=sqrt(5))``, which works out to ``U(-1/sqrt(fan_in),
1/sqrt(fan_in))``, and their biases with the same bound.  ``fan_in`` is
computed from PyTorch's weight layout, which differs from ours (channels
last); the ``fan_in_*`` helpers below map our layouts to PyTorch's numbers:

* Dense ``w: [in, out]``: ``fan_in = in``;
* Conv ``w: [*kernel, C_in // groups, C_out]``:
  ``fan_in = C_in // groups * prod(kernel)``;
* ConvTranspose ``w: [*kernel, C_in, C_out // groups]``: PyTorch stores this
  as ``(C_in, C_out // groups, *kernel)`` and takes dim 1 as "fan in", so
  ``fan_in = C_out // groups * prod(kernel)``.
"""
from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp

from . import _context
from ._errors import ConfigError, ShapeError
from ._keys import as_key

__all__ = [
    "check_initializer",
    "fan_in_conv",
    "fan_in_conv_transpose",
    "fan_in_dense",
    "ones",
    "torch_conv_init",
    "torch_conv_transpose_init",
    "torch_default",
    "torch_dense_init",
    "uniform",
    "zeros",
]

Initializer = Callable  # (key, shape, dtype) -> array


def uniform(bound: float) -> Initializer:
    """``U(-bound, bound)``.

    Args:
      bound: half-width of the interval (a finite number ``>= 0``).

    Returns:
      An initialiser ``(key, shape, dtype=float32) -> array`` (``key``: a ``jax.random`` key
      or an int seed).

    Raises:
      ConfigError: if ``bound`` is not a number, negative or not finite.

    >>> w = uniform(0.1)(jax.random.key(0), (3, 4))
    >>> bool(abs(w).max() <= 0.1)
    True
    """
    if getattr(bound, "shape", None) == () and not isinstance(bound, jax.core.Tracer):
        bound = bound.item()  # a concrete 0-d array
    if isinstance(bound, bool) or not isinstance(bound, numbers.Real):
        raise ConfigError(f"uniform: bound must be a number (the half-width, >= 0); got "
                          f"{type(bound).__name__} {bound!r}"[:200])
    bound = float(bound)
    if not 0 <= bound < math.inf:
        raise ConfigError(f"uniform: bound must be >= 0 and finite; got {bound!r}")

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(as_key(key, "initializer"), shape, dtype, -bound, bound)

    return init


def torch_default(fan_in: int) -> Initializer:
    """PyTorch's default for weights and biases: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

    Equals ``kaiming_uniform_(a=sqrt(5))`` for weights and PyTorch's bias rule.

    Args:
      fan_in: number of inputs feeding one output unit (see the module doc), an int ``>= 1``
        (fundl's layers never have an empty input, so ``fan_in == 0``, where PyTorch would
        use bound 0, is a mistake here).

    Returns:
      An initialiser ``(key, shape, dtype=float32) -> array``.

    Raises:
      ConfigError: if ``fan_in`` is not an int ``>= 1``.

    >>> b = torch_default(256)(jax.random.key(0), (200,))
    >>> bool(abs(b).max() <= 1 / 16)
    True
    """
    if isinstance(fan_in, bool) or not isinstance(fan_in, numbers.Integral) or fan_in < 1:
        raise ConfigError(f"torch_default: fan_in must be an int >= 1 (the inputs feeding one "
                          f"output unit, e.g. fan_in_dense(w_shape)); got {fan_in!r}"[:200])
    return uniform(1.0 / math.sqrt(fan_in))


def _check_w_shape(w_shape, where: str, rank: int, form: str) -> tuple[int, ...]:
    """``w_shape`` as a tuple of ints of rank ``>= rank``, or a ShapeError naming ``form``."""
    try:
        shape = tuple(int(d) for d in w_shape)
    except (TypeError, ValueError):
        shape = None
    if shape is None or len(shape) < rank:
        raise ShapeError(f"{where}: w_shape must be a weight shape {form}; got {w_shape!r}"[:200])
    return shape


def fan_in_dense(w_shape) -> int:
    """``fan_in`` of a Dense weight ``[in, out]``: ``in``.

    Raises:
      ShapeError: if ``w_shape`` is not a shape of rank >= 1.
    """
    return _check_w_shape(w_shape, "fan_in_dense", 1, "[in, out]")[0]


def fan_in_conv(w_shape) -> int:
    """``fan_in`` of a Conv weight ``[*kernel, C_in // groups, C_out]``.

    Raises:
      ShapeError: if ``w_shape`` is not a shape of rank >= 2.
    """
    shape = _check_w_shape(w_shape, "fan_in_conv", 2, "[*kernel, C_in // groups, C_out]")
    return math.prod(shape[:-1])


def fan_in_conv_transpose(w_shape) -> int:
    """PyTorch's ``fan_in`` of a ConvTranspose weight ``[*kernel, C_in, C_out // groups]``.

    PyTorch's layout is ``(C_in, C_out // groups, *kernel)`` and it reads dim 1
    as the fan-in, giving ``C_out // groups * prod(kernel)``.

    Raises:
      ShapeError: if ``w_shape`` is not a shape of rank >= 2.
    """
    shape = _check_w_shape(w_shape, "fan_in_conv_transpose", 2,
                           "[*kernel, C_in, C_out // groups]")
    return shape[-1] * math.prod(shape[:-2])


def torch_dense_init(key, shape, dtype=jnp.float32):
    """PyTorch's ``nn.Linear`` weight init for a ``[in, out]`` weight.

    >>> torch_dense_init(jax.random.key(0), (256, 200)).shape
    (256, 200)
    """
    return torch_default(fan_in_dense(shape))(key, shape, dtype)


def torch_conv_init(key, shape, dtype=jnp.float32):
    """PyTorch's ``nn.Conv*d`` weight init for a ``[*kernel, C_in // groups, C_out]`` weight.

    >>> torch_conv_init(jax.random.key(0), (5, 5, 1, 32)).shape
    (5, 5, 1, 32)
    """
    return torch_default(fan_in_conv(shape))(key, shape, dtype)


def torch_conv_transpose_init(key, shape, dtype=jnp.float32):
    """PyTorch's ``nn.ConvTranspose*d`` weight init for ``[*kernel, C_in, C_out // groups]``.

    >>> torch_conv_transpose_init(jax.random.key(0), (4, 4, 8, 3)).shape
    (4, 4, 8, 3)
    """
    return torch_default(fan_in_conv_transpose(shape))(key, shape, dtype)


def zeros(key, shape, dtype=jnp.float32):
    """All zeros (``key`` unused)."""
    del key
    return jnp.zeros(shape, dtype)


def ones(key, shape, dtype=jnp.float32):
    """All ones (``key`` unused)."""
    del key
    return jnp.ones(shape, dtype)


def check_initializer(fn, arg: str, where: str):
    """Raise ConfigError unless ``fn`` is None or a callable that accepts ``(key, shape,
    dtype)`` (checked at construction; a signature Python cannot read passes)."""
    if fn is not None and not callable(fn):
        raise ConfigError(f"{where}: {arg} must be a callable (key, shape, dtype) -> array, "
                          f"e.g. jax.nn.initializers.lecun_normal(); got {fn!r}")
    if fn is None:
        return fn
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C callable: not readable, trusted
        return fn
    try:
        sig.bind(None, None, None)
    except TypeError:
        raise ConfigError(f"{where}: {arg} must accept (key, shape, dtype), as the "
                          f"initialisers of jax.nn.initializers do, e.g. lambda key, shape, "
                          f"dtype: jnp.zeros(shape, dtype); got {fn!r} with signature "
                          f"{sig}"[:300]) from None
    return fn


def run_initializer(fn, key, shape, dtype, arg: str, where: str):
    """Call an initialiser and check it returned the requested shape.

    In an abstract init that needs only shapes (``fundl.summary``, the check of
    params against a model) the initialiser is not traced at all.
    """
    if _context.current().shapes_only:
        return jnp.zeros(tuple(shape), dtype)
    value = jnp.asarray(fn(key, tuple(shape), dtype))
    if value.shape != tuple(shape):
        raise ConfigError(f"{where}: {arg} returned shape {value.shape} but the parameter "
                          f"needs shape {tuple(shape)}")
    return value

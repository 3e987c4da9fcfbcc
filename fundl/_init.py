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

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from . import _context
from ._errors import ConfigError
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
      bound: half-width of the interval (``>= 0``).

    Returns:
      An initialiser ``(key, shape, dtype=float32) -> array`` (``key``: a ``jax.random`` key
      or an int seed).

    >>> w = uniform(0.1)(jax.random.key(0), (3, 4))
    >>> bool(abs(w).max() <= 0.1)
    True
    """
    bound = float(bound)
    if not bound >= 0:
        raise ConfigError(f"uniform: bound must be >= 0; got {bound!r}")

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(as_key(key, "initializer"), shape, dtype, -bound, bound)

    return init


def torch_default(fan_in: int) -> Initializer:
    """PyTorch's default for weights and biases: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

    Equals ``kaiming_uniform_(a=sqrt(5))`` for weights and PyTorch's bias rule
    (bound 0 when ``fan_in == 0``, as PyTorch does).

    Args:
      fan_in: number of inputs feeding one output unit (see the module doc).

    Returns:
      An initialiser ``(key, shape, dtype=float32) -> array``.

    >>> b = torch_default(256)(jax.random.key(0), (200,))
    >>> bool(abs(b).max() <= 1 / 16)
    True
    """
    return uniform(1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0)


def fan_in_dense(w_shape) -> int:
    """``fan_in`` of a Dense weight ``[in, out]``: ``in``."""
    return int(w_shape[0])


def fan_in_conv(w_shape) -> int:
    """``fan_in`` of a Conv weight ``[*kernel, C_in // groups, C_out]``."""
    return math.prod(int(d) for d in w_shape[:-1])


def fan_in_conv_transpose(w_shape) -> int:
    """PyTorch's ``fan_in`` of a ConvTranspose weight ``[*kernel, C_in, C_out // groups]``.

    PyTorch's layout is ``(C_in, C_out // groups, *kernel)`` and it reads dim 1
    as the fan-in, giving ``C_out // groups * prod(kernel)``.
    """
    return int(w_shape[-1]) * math.prod(int(d) for d in w_shape[:-2])


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
    """Raise ConfigError unless ``fn`` is None or callable (checked at construction)."""
    if fn is not None and not callable(fn):
        raise ConfigError(f"{where}: {arg} must be a callable (key, shape, dtype) -> array, "
                          f"e.g. jax.nn.initializers.lecun_normal(); got {fn!r}")
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

"""Argument checks shared by several entry points, each free (host side or at trace time):
the optimizer of :func:`fundl.train.make_train_step` and :func:`fundl.train.fit`, the scalar
loss, and integer inputs reaching float computations.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ._errors import ConfigError, DataError

INT_INPUT_FIX = ("convert it first: x.astype(np.float32) / 255 (images in [0, 1]), or "
                 "fundl.data.standardizer(x_train)(x)")


def check_optimizer(optimizer, where: str) -> None:
    """Refuse anything but an Optax ``GradientTransformation`` (``init`` and ``update``).

    Raises:
      ConfigError: e.g. for ``optimizer='adam'`` (a name: build it with ``optax.adam(1e-3)``
        or :func:`fundl.experiment.make_optimizer`).
    """
    if hasattr(optimizer, "init") and hasattr(optimizer, "update"):
        return
    hint = ""
    if isinstance(optimizer, str):
        hint = (f"; a name is not an optimizer: build it, e.g. optax.{optimizer}(1e-3) or "
                f"fundl.experiment.make_optimizer({optimizer!r}, 1e-3)")
    raise ConfigError(f"{where}: optimizer must be an optax GradientTransformation "
                      f"(e.g. optax.adam(1e-3)); got {type(optimizer).__name__} "
                      f"{optimizer!r}"[:300] + hint)


def check_scalar_loss(loss, where: str = "loss_fn"):
    """``loss`` itself when it is a scalar (shape ``()``); checked at trace time (free).

    Raises:
      ConfigError: for a per-example loss ``[N]`` or any other non-scalar shape.
    """
    shape = jnp.shape(loss)
    if shape != ():
        raise ConfigError(f"{where}: loss_fn must return a scalar (the batch mean); got shape "
                          f"{tuple(shape)}: reduce it, e.g. jnp.mean(...) or reduction='mean'")
    return loss


def check_float_input(x, where: str, what: str = "input x") -> None:
    """Refuse an integer (or bool) array where a float computation begins (its dtype is static:
    free at trace time); float, complex and non-array inputs pass.

    Args:
      x: the array (or tracer) to check.
      where: the layer (its label, ``"Conv 'net/conv1'"``) or function (``'conv'``).
      what: the argument's name in the message (``'x'``, ``'w'``).

    Raises:
      DataError: naming ``where``, the dtype received and how to convert (:data:`INT_INPUT_FIX`
        for inputs; ``.astype(np.float32)`` for weights).
    """
    dtype = getattr(x, "dtype", None)
    if dtype is None or not (jnp.issubdtype(dtype, jnp.integer) or dtype == np.bool_):
        return
    fix = INT_INPUT_FIX if what in ("input x", "x") else f"cast it: {what}.astype(np.float32)"
    raise DataError(f"{where}: {what} has dtype {np.dtype(dtype).name}, but {where.split(' ')[0]} "
                    "computes in floating point (integers would enter unscaled, e.g. pixels "
                    f"0..255, or wrap around in integer arithmetic); {fix}")


def check_bool(value, arg: str, where: str) -> bool:
    """``value`` when it is a ``bool`` (NumPy's included); the one check of on/off arguments,
    so that ``shuffle='no'`` is not taken as ``True``.

    Raises:
      ConfigError: naming ``where`` and ``arg``, for anything else (a string, an int, None).

    Example:
      >>> check_bool(True, "shuffle", "fit")
      True
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ConfigError(f"{where}: {arg} must be True or False; got {type(value).__name__} "
                      f"{value!r}"[:200])


def check_callable(value, arg: str, where: str, form: str, *, optional: bool = False) -> None:
    """Refuse a non-callable where a function is expected, when it is passed, not at its
    first call (``optional``: ``None`` passes).

    Args:
      form: the expected signature for the message, e.g. ``'loss_fn(logits, y) -> scalar'``.

    Raises:
      ConfigError: naming ``where``, ``arg``, what was received and ``form``.
    """
    if (optional and value is None) or callable(value):
        return
    raise ConfigError(f"{where}: {arg} must be a function {form}; got {type(value).__name__} "
                      f"{value!r}"[:200])

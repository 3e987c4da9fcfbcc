"""The one normaliser of random keys: every function that takes a ``key`` accepts a typed
``jax.random.key(...)``, a legacy ``jax.random.PRNGKey(...)`` (``uint32[2]``) or an int seed,
and refuses anything else with the same message (:data:`KEY_FORMS`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import ConfigError

KEY_FORMS = "a jax.random.key(seed), a legacy jax.random.PRNGKey(seed) (uint32[2]) or an int seed"


# Concrete (non-tracer) array classes seen holding typed keys (jax's PRNGKeyArray): every
# instance is a key array, so one of shape () is accepted at once (a train step checks its key
# on every call: ~0.5 us instead of ~4 us).
_KEY_ARRAY_TYPES: set = set()


def as_key(key, where: str, arg: str = "key"):
    """A typed scalar ``jax.random`` key from any accepted form.

    Args:
      key: a typed key (shape ``()``), a legacy key (``uint32[2]``) or a Python/NumPy
        int seed (``jax.random.key(seed)``); traced keys under ``jit`` are fine.
      where: the function or layer named in the message, e.g. ``'fit'``.
      arg: the argument's name in the message.

    Returns:
      A typed key of shape ``()``: ``as_key(3, 'f')`` equals ``jax.random.key(3)``.

    Raises:
      ConfigError: for anything else (a string, a float, a bool, a key array of
        shape ``(3,)``, a ``uint32`` array not of shape ``(2,)``), with :data:`KEY_FORMS`.
    """
    if type(key) in _KEY_ARRAY_TYPES and key.shape == ():
        return key
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        return jax.random.key(int(key))
    if isinstance(key, (jax.Array, np.ndarray)):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            if key.shape == ():
                if not isinstance(key, jax.core.Tracer):
                    _KEY_ARRAY_TYPES.add(type(key))
                return key
            problem = f"a key array of shape {tuple(key.shape)} (one key is needed: index or split it)"
        elif key.dtype == np.uint32 and key.shape == (2,):
            return jax.random.wrap_key_data(jnp.asarray(key))
        elif jnp.issubdtype(key.dtype, jnp.integer) and key.shape == ():
            return jax.random.key(key)  # a 0-d integer array (or a traced int) as a seed
        else:
            problem = f"an array of dtype {key.dtype} and shape {tuple(key.shape)}"
    else:
        problem = f"{type(key).__name__} {key!r}"[:120]
    raise ConfigError(f"{where}: {arg} must be {KEY_FORMS}; got {problem}")


def as_optional_key(key, where: str, arg: str = "key"):
    """:func:`as_key`, with ``None`` passed through (functions where the key is optional)."""
    return None if key is None else as_key(key, where, arg)

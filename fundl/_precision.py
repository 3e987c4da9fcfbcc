"""Mixed precision: one policy for a whole model, applied by the train step.

Parameters stay in ``param_dtype`` (float32: the optimizer updates full-precision
weights); inside the step they and the floating inputs are cast to
``compute_dtype`` (bfloat16 or float16) so every layer computes in it; the
model's output is cast to ``output_dtype`` (float32) before the loss. Batch-norm
statistics are always accumulated in float32 (see ``fundl/_norm.py``) and its
running statistics stay float32. Gradients come back in ``param_dtype`` through
the casts.

float16 has a narrow exponent range, so small gradients underflow: multiply the
loss by ``loss_scale`` before differentiating and divide the gradients after; a
step whose gradients are not finite is skipped (parameters, state and optimizer
state unchanged) and reported as ``metrics['grads_finite'] = 0``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._errors import ConfigError

_FLOATS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class Policy(NamedTuple):
    """A mixed-precision policy.

    Attributes:
      param_dtype: dtype the parameters are kept and updated in (``float32``).
      compute_dtype: dtype layers compute in (``float32``, ``bfloat16``, ``float16``).
      output_dtype: dtype of the model output given to the loss (``float32``).
      loss_scale: the loss is multiplied by this before differentiation and
        the gradients divided by it (``1.0``: no scaling; use e.g. ``2.0 ** 12`` for float16).
    """

    param_dtype: object = jnp.float32
    compute_dtype: object = jnp.float32
    output_dtype: object = jnp.float32
    loss_scale: float = 1.0


def policy(spec) -> Policy:
    """A :class:`Policy` from a name or a policy.

    Args:
      spec: ``None`` or ``'float32'`` (everything float32); ``'bfloat16'``
        (float32 params and output, bfloat16 compute); ``'float16'`` (the same
        with float16 compute and a loss scale of ``2 ** 12``); or a :class:`Policy`.

    Returns:
      The :class:`Policy`.

    Example:
      >>> policy("bfloat16").compute_dtype
      <class 'jax.numpy.bfloat16'>
    """
    if spec is None or spec == "float32":
        return Policy()
    if isinstance(spec, Policy):
        for field in ("param_dtype", "compute_dtype", "output_dtype"):
            value = getattr(spec, field)
            try:
                dtype = jnp.dtype(value)
            except TypeError:
                raise ConfigError(f"precision: {field} must be a floating dtype (jnp.float32, "
                                  f"jnp.bfloat16, jnp.float16 or their names); got {value!r}, "
                                  "not a dtype") from None
            if not jnp.issubdtype(dtype, jnp.floating):
                raise ConfigError(f"precision: {field} must be a floating dtype; got {value!r}")
        if not spec.loss_scale > 0:
            raise ConfigError(f"precision: loss_scale must be > 0; got {spec.loss_scale!r}")
        return spec
    if spec == "bfloat16":
        return Policy(compute_dtype=jnp.bfloat16)
    if spec == "float16":
        return Policy(compute_dtype=jnp.float16, loss_scale=2.0 ** 12)
    raise ConfigError(f"precision must be None, 'float32', 'bfloat16', 'float16' or a "
                      f"fundl.train.Policy; got precision={spec!r}")


def cast_floating(tree, dtype):
    """Cast the floating-point leaves of ``tree`` to ``dtype`` (integer leaves, e.g. labels, untouched)."""
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def all_finite(tree):
    """A scalar bool: every element of every leaf is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(tree)]))

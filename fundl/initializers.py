"""Parameter initialisers with PyTorch's defaults, for ``w_init`` / ``b_init`` and your own layers.

An initialiser is a callable ``(key, shape, dtype) -> array``, the convention of
``jax.nn.initializers`` (whose initialisers work as well). fundl's layers
default to PyTorch's: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weights and
biases, ``fan_in`` computed from PyTorch's layout of the same weight (see
``fan_in_dense``, ``fan_in_conv``, ``fan_in_conv_transpose``), so a user
layer gets PyTorch's initialisation with ``torch_default(fan_in)``.

Example:
  >>> import jax, fundl.initializers as I
  >>> w = I.torch_default(I.fan_in_dense((256, 10)))(jax.random.key(0), (256, 10))
  >>> bool(abs(w).max() <= 1 / 16)
  True
"""
from ._init import (fan_in_conv, fan_in_conv_transpose, fan_in_dense, ones, torch_conv_init,
                    torch_conv_transpose_init, torch_default, torch_dense_init, uniform, zeros)

__all__ = ["torch_default", "uniform", "zeros", "ones", "torch_dense_init", "torch_conv_init",
           "torch_conv_transpose_init", "fan_in_dense", "fan_in_conv", "fan_in_conv_transpose"]

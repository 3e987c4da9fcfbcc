"""Pooling layers: MaxPool, AvgPool, AdaptiveAvgPool, GlobalAvgPool (no parameters).

Data layout: channels last, ``x: [N, *spatial, C]`` (NHWC in 2-d), pooling
over 1 to 3 spatial dims per channel; output sizes, padding and ``ceil_mode``
follow ``torch.nn.MaxPool*d`` / ``AvgPool*d`` / ``AdaptiveAvgPool*d``. The
spatial rank is fixed by a tuple-valued hyper-parameter, else taken from the
input. Hyper-parameters are validated at construction (ConfigError), shapes
at ``init`` and ``apply`` (ShapeError naming the layer's path); the ops
themselves live in :mod:`fundl._pool`.
"""
from __future__ import annotations

from dataclasses import KW_ONLY

import jax  # noqa: F401  (the doctest examples use jax.random)
import jax.numpy as jnp

from ._argcheck import check_float_input
from ._checks import check_spatial, implied_rank, input_rank, min_rank
from ._errors import ConfigError, ShapeError
from ._layer import Layer
from ._pool import adaptive_avg_pool, avg_pool, global_avg_pool, max_pool, pool_output_size
from ._util import check_bool, check_int, is_int, is_seq, ntuple

__all__ = ["AdaptiveAvgPool", "AvgPool", "GlobalAvgPool", "MaxPool"]


class _WindowPool(Layer):
    """What MaxPool and AvgPool share: validated windows and PyTorch's output size."""

    kernel_size: int | tuple
    stride: int | tuple | None = None
    padding: int | tuple = 0

    averages = False  # True: integer inputs are refused (they would go through unscaled)

    def _dilation(self):
        return 1

    def __post_init__(self):
        super().__post_init__()
        where = self.where()
        rank = implied_rank(where, kernel_size=self.kernel_size, stride=self.stride,
                            padding=self.padding, dilation=self._dilation())
        fields = {"kernel_size": check_spatial(self.kernel_size, "kernel_size", where, 1, rank),
                  "padding": check_spatial(self.padding, "padding", where, 0, rank),
                  "ceil_mode": check_bool(self.ceil_mode, "ceil_mode", where)}
        if self.stride is not None:
            fields["stride"] = check_spatial(self.stride, "stride", where, 1, rank)
        self._set(**fields)
        object.__setattr__(self, "rank", rank)
        self._geometry(where, None, rank or 1)  # fail early on the padding rule

    def _geometry(self, lab, shape, n):
        k = ntuple(self.kernel_size, n, "kernel_size", lab)
        s = k if self.stride is None else ntuple(self.stride, n, "stride", lab)
        p = ntuple(self.padding, n, "padding", lab)
        d = ntuple(self._dilation(), n, "dilation", lab)
        # PyTorch's rule (padding <= kernel_size // 2): more would make
        # windows that see only padding.
        if any(pi > ki // 2 for pi, ki in zip(p, k)):
            raise ConfigError(f"{lab}: padding must be at most kernel_size // 2 (as in PyTorch); "
                              f"got padding={self.padding!r} with kernel_size={self.kernel_size!r}")
        if shape is None:
            return k, s, p, d, None
        try:
            out = pool_output_size(tuple(shape[1:-1]), k, s, p, d, self.ceil_mode)
        except ShapeError as e:
            raise ShapeError(f"{lab}: input shape {tuple(shape)} with padding={self.padding!r} "
                             f"is too small: {e}") from None
        return k, s, p, d, out

    def _rank(self, lab, shape):
        return input_rank(lab, shape, self.rank, f"kernel_size={self.kernel_size!r}")

    def build(self, key, input_shape):
        lab = self.label()
        *_, out = self._geometry(lab, input_shape, self._rank(lab, input_shape))
        return (input_shape[0], *out, input_shape[-1]), {}

    def forward(self, params, x, *, key, train):
        lab, shape = self.label(), jnp.shape(x)
        if self.averages:
            check_float_input(x, lab)
        k, s, p, d, _ = self._geometry(lab, shape, self._rank(lab, shape))
        return self.pool(x, k, s, p, d)


class MaxPool(_WindowPool):
    """Max pooling over 1 to 3 spatial dims (``torch.nn.MaxPool1d/2d/3d``).

    Shapes: ``[N, *spatial, C] -> [N, *out_spatial, C]`` with PyTorch's
    output size (``ceil_mode`` rounds up). Padding is ``-inf``.

    Args:
      kernel_size: int or one int per spatial dim (a tuple fixes the rank).
      stride: int or per-dim ints; default ``kernel_size``.
      padding: int or per-dim ints (symmetric, ``-inf``); at most
        ``kernel_size // 2`` (as PyTorch requires).
      dilation: int or per-dim ints, ``>= 1``.
      ceil_mode: round the output size up instead of down.
      name: parameter key (default ``'max_pool'``).

    Example:
      >>> MaxPool(2).init(jax.random.key(0), (8, 28, 28, 16))[0]
      (8, 14, 14, 16)
    """

    dilation: int | tuple = 1
    ceil_mode: bool = False

    def _dilation(self):
        return self.dilation

    def __post_init__(self):
        super().__post_init__()
        self._set(dilation=check_spatial(self.dilation, "dilation", self.where(), 1, self.rank))

    def pool(self, x, k, s, p, d):
        return max_pool(x, k, s, p, d, self.ceil_mode)


class AvgPool(_WindowPool):
    """Average pooling over 1 to 3 spatial dims (``torch.nn.AvgPool1d/2d/3d``).

    Shapes: ``[N, *spatial, C] -> [N, *out_spatial, C]`` with PyTorch's
    output size.

    Args:
      kernel_size: int or one int per spatial dim (a tuple fixes the rank).
      stride: int or per-dim ints; default ``kernel_size``.
      padding: int or per-dim ints (symmetric zeros); at most
        ``kernel_size // 2``.
      ceil_mode: round the output size up instead of down.
      count_include_pad: whether padded zeros count in the divisor.
      name: parameter key (default ``'avg_pool'``).

    Example:
      >>> AvgPool(3, stride=2, padding=1).init(jax.random.key(0), (8, 28, 28, 16))[0]
      (8, 14, 14, 16)
    """

    ceil_mode: bool = False
    count_include_pad: bool = True

    def __post_init__(self):
        super().__post_init__()
        self._set(count_include_pad=check_bool(self.count_include_pad, "count_include_pad",
                                               self.where()))

    averages = True

    def pool(self, x, k, s, p, d):
        return avg_pool(x, k, s, p, self.ceil_mode, self.count_include_pad)


class AdaptiveAvgPool(Layer):
    """Average pooling to a fixed output size (``torch.nn.AdaptiveAvgPool1d/2d/3d``).

    Shapes: ``[N, *spatial, C] -> [N, *output_size, C]``; window ``i`` of a
    dim of size ``L`` covers ``[floor(i*L/out), ceil((i+1)*L/out))``.

    Args:
      output_size: int (every spatial dim) or one entry per spatial dim (a
        tuple fixes the rank); a ``None`` entry keeps that dim's size.
      name: parameter key (default ``'adaptive_avg_pool'``).

    Example:
      >>> AdaptiveAvgPool((7, 7)).init(jax.random.key(0), (8, 13, 13, 512))[0]
      (8, 7, 7, 512)
    """

    output_size: int | tuple

    def __post_init__(self):
        super().__post_init__()
        where, output_size = self.where(), self.output_size
        if is_seq(output_size):
            if not 1 <= len(output_size) <= 3 or not all(
                    o is None or (is_int(o) and o >= 1) for o in output_size):
                raise ConfigError(f"{where}: output_size must be an int >= 1 or a tuple of 1 to "
                                  f"3 such ints (or None); got output_size={output_size!r}")
            self._set(output_size=tuple(None if o is None else int(o) for o in output_size))
            object.__setattr__(self, "rank", len(output_size))
        else:
            self._set(output_size=check_int(output_size, "output_size", where, 1))
            object.__setattr__(self, "rank", None)

    def _out(self, shape):
        n = input_rank(self.label(), shape, self.rank, f"output_size={self.output_size!r}")
        if self.rank is None:
            return (self.output_size,) * n
        return tuple(L if o is None else o for L, o in zip(shape[1:-1], self.output_size))

    def build(self, key, input_shape):
        return (input_shape[0], *self._out(input_shape), input_shape[-1]), {}

    def forward(self, params, x, *, key, train):
        check_float_input(x, self.label())
        return adaptive_avg_pool(x, self._out(jnp.shape(x)))


class GlobalAvgPool(Layer):
    """Mean over all spatial dims.

    Shapes: ``[N, *spatial, C] -> [N, C]`` (``[N, 1, ..., 1, C]`` with
    ``keepdims``).

    Args:
      keepdims: keep the spatial dims with size 1.
      name: parameter key (default ``'global_avg_pool'``).

    Example:
      >>> GlobalAvgPool().init(jax.random.key(0), (8, 7, 7, 512))[0]
      (8, 512)
    """

    _: KW_ONLY
    keepdims: bool = False

    _LAYOUT = "[N, *spatial, C] with at least one spatial dim"

    def __post_init__(self):
        super().__post_init__()
        self._set(keepdims=check_bool(self.keepdims, "keepdims", self.where()))

    def build(self, key, input_shape):
        min_rank(self.label(), input_shape, 3, self._LAYOUT)
        n = len(input_shape) - 2
        return ((input_shape[0], *(1,) * n, input_shape[-1]) if self.keepdims
                else (input_shape[0], input_shape[-1])), {}

    def forward(self, params, x, *, key, train):
        min_rank(self.label(), jnp.shape(x), 3, self._LAYOUT)
        check_float_input(x, self.label())
        return global_avg_pool(x, keepdims=self.keepdims)

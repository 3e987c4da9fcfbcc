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

import jax  # noqa: F401  (the doctest examples use jax.random)
import jax.numpy as jnp

from ._checks import check_spatial, implied_rank, input_rank, min_rank
from ._errors import ConfigError, ShapeError
from ._layer import Layer, label, layer
from ._pool import adaptive_avg_pool, avg_pool, global_avg_pool, max_pool, pool_output_size
from ._util import check_bool, check_int, check_name, is_int, is_seq, ntuple

__all__ = ["AdaptiveAvgPool", "AvgPool", "GlobalAvgPool", "MaxPool"]


def _pool_layer(kind, name, kernel_size, stride, padding, dilation, ceil_mode, fn, extra):
    """Shared body of MaxPool / AvgPool; ``fn(x, k, s, p, d)`` runs the op."""
    where = f"{kind} '{name}'"
    rank = implied_rank(where, kernel_size=kernel_size, stride=stride, padding=padding,
                         dilation=dilation)
    kernel_size = check_spatial(kernel_size, "kernel_size", where, 1, rank)
    if stride is not None:
        stride = check_spatial(stride, "stride", where, 1, rank)
    padding = check_spatial(padding, "padding", where, 0, rank)
    dilation = check_spatial(dilation, "dilation", where, 1, rank)
    ceil_mode = check_bool(ceil_mode, "ceil_mode", where)

    def geometry(lab, shape, n):
        k = ntuple(kernel_size, n, "kernel_size", lab)
        s = k if stride is None else ntuple(stride, n, "stride", lab)
        p = ntuple(padding, n, "padding", lab)
        d = ntuple(dilation, n, "dilation", lab)
        # PyTorch's rule (padding <= kernel_size // 2): more would make
        # windows that see only padding.
        if any(pi > ki // 2 for pi, ki in zip(p, k)):
            raise ConfigError(f"{lab}: padding must be at most kernel_size // 2 (as in PyTorch); "
                              f"got padding={padding!r} with kernel_size={kernel_size!r}")
        if shape is None:
            return k, s, p, d, None
        try:
            out = pool_output_size(tuple(shape[1:-1]), k, s, p, d, ceil_mode)
        except ShapeError as e:
            raise ShapeError(f"{lab}: input shape {tuple(shape)} with padding={padding!r} is "
                             f"too small: {e}") from None
        return k, s, p, d, out

    geometry(where, None, rank or 1)  # fail early on the padding rule

    def init(key, input_shape):
        lab = label(kind)
        n = input_rank(lab, input_shape, rank, f"kernel_size={kernel_size!r}")
        *_, out = geometry(lab, input_shape, n)
        return (input_shape[0], *out, input_shape[-1]), {}

    def apply(params, x, *, key, train):
        lab, shape = label(kind), jnp.shape(x)
        k, s, p, d, _ = geometry(lab, shape, input_rank(lab, shape, rank,
                                                         f"kernel_size={kernel_size!r}"))
        return fn(x, k, s, p, d)

    config = dict(kernel_size=kernel_size, stride=stride, padding=padding)
    config.update(extra)
    config["ceil_mode"] = ceil_mode
    return layer(kind, name, init, apply, config=config)


def MaxPool(kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False, *,
            name: str | None = None) -> Layer:
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
    kind = "MaxPool"
    name = check_name(kind, name, "max_pool")

    def fn(x, k, s, p, d):
        return max_pool(x, k, s, p, d, ceil_mode)

    return _pool_layer(kind, name, kernel_size, stride, padding, dilation, ceil_mode, fn,
                       {"dilation": dilation})


def AvgPool(kernel_size, stride=None, padding=0, ceil_mode: bool = False,
            count_include_pad: bool = True, *, name: str | None = None) -> Layer:
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
    kind = "AvgPool"
    name = check_name(kind, name, "avg_pool")
    count_include_pad = check_bool(count_include_pad, "count_include_pad", f"{kind} '{name}'")

    def fn(x, k, s, p, d):
        return avg_pool(x, k, s, p, ceil_mode, count_include_pad)

    return _pool_layer(kind, name, kernel_size, stride, padding, 1, ceil_mode, fn,
                       {"count_include_pad": count_include_pad})


def AdaptiveAvgPool(output_size, *, name: str | None = None) -> Layer:
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
    kind = "AdaptiveAvgPool"
    name = check_name(kind, name, "adaptive_avg_pool")
    where = f"{kind} '{name}'"
    if is_seq(output_size):
        if not 1 <= len(output_size) <= 3 or not all(
                o is None or (is_int(o) and o >= 1) for o in output_size):
            raise ConfigError(f"{where}: output_size must be an int >= 1 or a tuple of 1 to 3 "
                              f"such ints (or None); got output_size={output_size!r}")
        output_size = tuple(None if o is None else int(o) for o in output_size)
        rank = len(output_size)
    else:
        output_size, rank = check_int(output_size, "output_size", where, 1), None

    def out(lab, shape):
        n = input_rank(lab, shape, rank, f"output_size={output_size!r}")
        if rank is None:
            return (output_size,) * n
        return tuple(L if o is None else o for L, o in zip(shape[1:-1], output_size))

    def init(key, input_shape):
        return (input_shape[0], *out(label(kind), input_shape), input_shape[-1]), {}

    def apply(params, x, *, key, train):
        return adaptive_avg_pool(x, out(label(kind), jnp.shape(x)))

    return layer(kind, name, init, apply, config={"output_size": output_size})


def GlobalAvgPool(*, keepdims: bool = False, name: str | None = None) -> Layer:
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
    kind = "GlobalAvgPool"
    name = check_name(kind, name, "global_avg_pool")
    keepdims = check_bool(keepdims, "keepdims", f"{kind} '{name}'")
    layout = "[N, *spatial, C] with at least one spatial dim"

    def init(key, input_shape):
        min_rank(label(kind), input_shape, 3, layout)
        n = len(input_shape) - 2
        return ((input_shape[0], *(1,) * n, input_shape[-1]) if keepdims
                else (input_shape[0], input_shape[-1])), {}

    def apply(params, x, *, key, train):
        min_rank(label(kind), jnp.shape(x), 3, layout)
        return global_avg_pool(x, keepdims=keepdims)

    return layer(kind, name, init, apply, config={"keepdims": keepdims} if keepdims else {})

"""Pooling ops with exact ``torch.nn.functional`` semantics, channels-last.

Layout is NHWC generalised to any spatial rank: ``x`` is ``[N, *spatial, C]``
(``[N, L, C]``, ``[N, H, W, C]``, ``[N, D, H, W, C]``), and one implementation
serves 1-d, 2-d and 3-d. The spatial rank is ``x.ndim - 2``; a tuple
``kernel_size`` states it explicitly and must agree with ``x``.

``max_pool`` and ``avg_pool`` are lowered to ``lax.reduce_window`` or, for
non-overlapping windows (the default on CPU), to a reshape and a reduction;
see :func:`fundl.functional.set_lowering`.

All hyper-parameters are static Python ints, so every function here is
``jax.jit``-compatible with shapes known at trace time. Arguments are checked
before anything is traced and bad ones raise :class:`~fundl._errors.ShapeError`
or :class:`~fundl.ConfigError` naming the function, the argument, the
received value and what was expected.
"""
from __future__ import annotations

import functools
import itertools
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._errors import ConfigError, ShapeError
from ._lowering import choose_pool, max_pool_reshape, sum_pool_reshape
from ._util import ntuple

__all__ = ["max_pool", "avg_pool", "adaptive_avg_pool", "global_avg_pool", "pool_output_size"]

_LAYOUT = {1: "[N, L, C]", 2: "[N, H, W, C]", 3: "[N, D, H, W, C]"}


# --------------------------------------------------------------------------- #
# size arithmetic and validation
# --------------------------------------------------------------------------- #
def _pool_out_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's ``pooling_output_shape`` for one dim (may return < 1)."""
    eff = d * (k - 1) + 1
    # Python's // floors, which is torch's div_rtn (matters when negative).
    out = (size + 2 * p - eff + (s - 1 if ceil_mode else 0)) // s + 1
    # torch: in ceil mode the last window must start inside the input or the
    # left padding; a window starting in the right padding is dropped.
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _layout(n: int) -> str:
    return _LAYOUT.get(n, "[N, *spatial, C]")


def _spatial_rank(x_shape: tuple, kernel_size, fn: str) -> int:
    """Spatial rank from ``x`` (and a tuple ``kernel_size``, which must agree)."""
    if isinstance(kernel_size, (tuple, list)):
        n = len(kernel_size)
        if n == 0:
            raise ConfigError(f"{fn}: kernel_size must be an int or a non-empty sequence; got {kernel_size!r}")
        if len(x_shape) != n + 2:
            raise ShapeError(
                f"{fn}: x must be {_layout(n)} (rank {n + 2}) for a {n}-d kernel_size; "
                f"got x.shape={x_shape}")
        return n
    if len(x_shape) < 3:
        raise ShapeError(
            f"{fn}: x must be [N, *spatial, C] with at least one spatial dim (rank >= 3); "
            f"got x.shape={x_shape}")
    return len(x_shape) - 2


def _check_flag(value, arg: str, fn: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{fn}: {arg} must be a bool; got {value!r}")
    return bool(value)


def _resolve(fn, spatial, kernel_size, stride, padding, dilation, ceil_mode, where_x=""):
    """Normalise and validate pool hyper-parameters; return them with output sizes.

    ``where_x`` is appended to shape-error messages (e.g. ``"; got x.shape=..."``).
    """
    n = len(spatial)
    if any(size < 1 for size in spatial):
        raise ShapeError(f"{fn}: every spatial size must be >= 1{where_x}")
    k = ntuple(kernel_size, n, "kernel_size", fn, minimum=1)
    s = k if stride is None else ntuple(stride, n, "stride", fn, minimum=1)
    p = ntuple(padding, n, "padding", fn, minimum=0)
    d = ntuple(dilation, n, "dilation", fn, minimum=1)
    ceil_mode = _check_flag(ceil_mode, "ceil_mode", fn)
    # torch's rule compares with kernel_size // 2 regardless of dilation.
    if any(pi > ki // 2 for pi, ki in zip(p, k)):
        raise ConfigError(
            f"{fn}: padding must be <= kernel_size // 2 in every dim (as in torch); "
            f"got padding={padding!r} for kernel_size={kernel_size!r}")
    out = []
    for i in range(n):
        o = _pool_out_size(spatial[i], k[i], s[i], p[i], d[i], ceil_mode)
        if o < 1:
            eff = d[i] * (k[i] - 1) + 1
            raise ShapeError(
                f"{fn}: the kernel does not fit the padded input in spatial dim {i}: "
                f"spatial size {spatial[i]} + 2 * padding {p[i]} = {spatial[i] + 2 * p[i]} "
                f"< effective kernel {eff} (kernel_size {k[i]}, dilation {d[i]}), "
                f"giving output size {o}; expected output size >= 1{where_x}")
        out.append(o)
    # Right padding = left padding plus whatever ceil_mode's last window overhangs.
    pads = tuple(
        (p[i], p[i] + max(0, (out[i] - 1) * s[i] + d[i] * (k[i] - 1) + 1 - (spatial[i] + 2 * p[i])))
        for i in range(n))
    return k, s, p, d, ceil_mode, tuple(out), pads


def pool_output_size(input_size, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Output spatial size of a torch-style pool.

    Per dim: ``floor((L + 2*padding - dilation*(kernel_size-1) - 1 [+ stride-1 if
    ceil_mode]) / stride) + 1``, minus one in ceil mode when the last window
    would start in the right padding (torch's rule).

    Args:
      input_size: an int (one spatial dim) or a tuple of spatial sizes.
      kernel_size, stride, padding, dilation: ints or per-dim tuples; ``stride``
        defaults to ``kernel_size``.
      ceil_mode: round up instead of down.

    Returns:
      An int if ``input_size`` is an int, else a tuple of ints.

    Raises:
      ShapeError: if an output size would be < 1.
      ConfigError: for non-positive kernel/stride/dilation, negative padding or
        padding > kernel_size // 2.

    Example:
      >>> pool_output_size((32, 32), 3, stride=2, padding=1)
      (16, 16)
      >>> pool_output_size(5, 2, ceil_mode=True)
      3
    """
    fn = "pool_output_size"
    scalar = not isinstance(input_size, (tuple, list))
    sizes = (input_size,) if scalar else tuple(input_size)
    if not sizes:
        raise ShapeError(f"{fn}: input_size must be an int or a non-empty tuple; got {input_size!r}")
    sizes = ntuple(sizes, len(sizes), "input_size", fn)
    out = _resolve(fn, sizes, kernel_size, stride, padding, dilation, ceil_mode,
                   f"; got input_size={input_size!r}")[5]
    return out[0] if scalar else out


# --------------------------------------------------------------------------- #
# max pooling
# --------------------------------------------------------------------------- #
def _lowest(dtype):
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating):
        return np.array(-np.inf, dtype)
    if jnp.issubdtype(dtype, jnp.integer):
        return np.array(np.iinfo(dtype).min, dtype)
    if dtype == np.bool_:
        return np.array(False)
    raise ConfigError(f"max_pool: x must have a real numeric dtype; got dtype={dtype}")


def _max_reduce(x, cfg):
    k, s, d, pads = cfg
    return lax.reduce_window(
        x, _lowest(x.dtype), lax.max,
        window_dimensions=(1, *k, 1), window_strides=(1, *s, 1),
        padding=((0, 0), *pads, (0, 0)), window_dilation=(1, *d, 1))


def _windows(x, cfg, fill):
    """Stack every window offset: ``[N, *out, C, prod(k)]`` (kernel offsets row-major)."""
    k, s, d, pads = cfg
    n = len(k)
    xp = lax.pad(x, jnp.asarray(fill, x.dtype), ((0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)))
    out = [(xp.shape[i + 1] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(n)]
    views = []
    for j in itertools.product(*(range(ki) for ki in k)):
        start = (0, *(j[i] * d[i] for i in range(n)), 0)
        limit = (xp.shape[0], *(j[i] * d[i] + (out[i] - 1) * s[i] + 1 for i in range(n)), xp.shape[-1])
        views.append(lax.slice(xp, start, limit, (1, *s, 1)))
    return jnp.stack(views, axis=-1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _dilated_max(x, cfg):
    return _max_reduce(x, cfg)


@_dilated_max.defjvp
def _dilated_max_jvp(cfg, primals, tangents):
    # XLA's select_and_scatter (reduce_window max's VJP) has no window
    # dilation, so JAX cannot transpose a dilated max pool. Route the tangent
    # through an explicit argmax gather instead: it is linear in the tangent
    # (so transposable, any order) and picks the first maximum in window order,
    # like torch. The primal goes through _dilated_max again so that
    # differentiating this rule (higher order) uses this rule too.
    (x,), (t,) = primals, tangents
    idx = jnp.argmax(_windows(x, cfg, _lowest(x.dtype)), axis=-1, keepdims=True)
    t_out = jnp.take_along_axis(_windows(t, cfg, 0), idx, axis=-1)[..., 0]
    return _dilated_max(x, cfg), t_out


def max_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max pooling over the spatial dims of a channels-last array.

    Exactly ``torch.nn.functional.max_pool{1,2,3}d`` transposed to
    channels-last: padding is implicit ``-inf`` (it never wins), and with
    ``ceil_mode`` the last window may overhang the input as long as it starts
    inside the input or the left padding.

    Args:
      x: ``[N, *spatial, C]`` -- ``[N, L, C]``, ``[N, H, W, C]`` or
        ``[N, D, H, W, C]``.
      kernel_size: int or per-dim tuple (a tuple fixes the spatial rank).
      stride: int or tuple; ``None`` means ``kernel_size``.
      padding: int or tuple of symmetric padding, at most ``kernel_size // 2``.
      dilation: int or tuple, spacing between window elements.
      ceil_mode: use ceil instead of floor for the output size.

    Returns:
      ``[N, *out, C]`` with ``out`` given by :func:`pool_output_size`.

    Example:
      >>> x = jnp.arange(16.).reshape(1, 4, 4, 1)
      >>> max_pool(x, 2)[0, ..., 0]
      Array([[ 5.,  7.],
             [13., 15.]], dtype=float32)
    """
    fn = "max_pool"
    shape = tuple(jnp.shape(x))
    _spatial_rank(shape, kernel_size, fn)
    k, s, _, d, _, out, pads = _resolve(fn, shape[1:-1], kernel_size, stride, padding, dilation,
                                        ceil_mode, f"; got x.shape={shape}")
    x = jnp.asarray(x)
    fill = _lowest(x.dtype).item()  # also the dtype check, before tracing
    # The lowering is chosen here and is part of the static config, so the
    # jit cache below never reuses a trace made under another setting.
    if choose_pool(k, s, d) == "reshape":
        return _max_pool_impl(x, ("reshape", (k, s, pads, out, fill)))
    return _max_pool_impl(x, ("reduce_window", (k, s, d, pads)))


# One jitted executable per static config: eager calls then compile and
# dispatch once instead of per primitive (inlined when the caller is jitted).
@functools.partial(jax.jit, static_argnums=1)
def _max_pool_impl(x, how_cfg):
    how, cfg = how_cfg
    if how == "reshape":
        return max_pool_reshape(x, cfg)
    if any(di > 1 for di in cfg[2]):
        return _dilated_max(x, cfg)
    return _max_reduce(x, cfg)


# --------------------------------------------------------------------------- #
# average pooling
# --------------------------------------------------------------------------- #
def _float_input(x, fn):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise ConfigError(f"{fn}: x must be real; got dtype={x.dtype}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))  # torch refuses ints; we promote like jnp.mean
    return x


def avg_pool(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
             divisor_override=None):
    """Average pooling over the spatial dims of a channels-last array.

    Exactly ``torch.nn.functional.avg_pool{1,2,3}d`` transposed to
    channels-last. Padding is zeros. The divisor of each window is:

    * ``divisor_override`` if given;
    * with ``count_include_pad=True``: the window size clipped to the *padded*
      input, i.e. zero padding counts but the extra ``ceil_mode`` overhang
      beyond ``L + padding`` does not (torch: ``min(start + k, L + pad) - start``);
    * with ``count_include_pad=False``: the number of real input elements.

    Args:
      x: ``[N, *spatial, C]``; integer inputs are promoted to float.
      kernel_size: int or per-dim tuple (a tuple fixes the spatial rank).
      stride: int or tuple; ``None`` means ``kernel_size``.
      padding: int or tuple of symmetric zero padding, at most ``kernel_size // 2``.
      ceil_mode: use ceil instead of floor for the output size.
      count_include_pad: whether zero padding counts in the divisor.
      divisor_override: a non-zero int used as every window's divisor.

    Returns:
      ``[N, *out, C]`` with ``out`` given by :func:`pool_output_size`.

    Example:
      >>> x = jnp.ones((1, 3, 1))
      >>> avg_pool(x, 3, stride=1, padding=1)[0, :, 0]
      Array([0.6666667, 1.       , 0.6666667], dtype=float32)
      >>> avg_pool(x, 3, stride=1, padding=1, count_include_pad=False)[0, :, 0]
      Array([1., 1., 1.], dtype=float32)
    """
    fn = "avg_pool"
    shape = tuple(jnp.shape(x))
    n = _spatial_rank(shape, kernel_size, fn)
    spatial = shape[1:-1]
    k, s, p, _, _, out, pads = _resolve(fn, spatial, kernel_size, stride, padding, 1, ceil_mode,
                                        f"; got x.shape={shape}")
    count_include_pad = _check_flag(count_include_pad, "count_include_pad", fn)
    if divisor_override is not None and (
            isinstance(divisor_override, bool) or not isinstance(divisor_override, numbers.Integral)
            or divisor_override == 0):
        raise ConfigError(f"{fn}: divisor_override must be None or a non-zero int; got {divisor_override!r}")
    how = choose_pool(k, s, (1,) * n)
    return _avg_pool_impl(_float_input(x, fn),
                          (k, s, p, out, pads, count_include_pad, divisor_override, how))


@functools.partial(jax.jit, static_argnums=1)
def _avg_pool_impl(x, cfg):
    k, s, p, out, pads, count_include_pad, divisor_override, how = cfg
    n, spatial = len(k), x.shape[1:-1]
    # Sum in at least float32 so bf16/fp16 windows don't lose precision.
    acc = jnp.promote_types(x.dtype, jnp.float32)
    if how == "reshape":
        total = sum_pool_reshape(x.astype(acc), k, s, pads, out)
    else:
        total = lax.reduce_window(
            x.astype(acc), np.array(0, acc), lax.add, window_dimensions=(1, *k, 1),
            window_strides=(1, *s, 1), padding=((0, 0), *pads, (0, 0)))

    if divisor_override is not None:
        divisor = np.array(divisor_override, acc)
    else:
        # The divisor is separable: a product of per-dim counts, computed in
        # closed form with NumPy from static shapes (a constant, no tracing).
        divisor = np.ones((1,) * (n + 2), acc)
        for i in range(n):
            start = np.arange(out[i]) * s[i] - p[i]
            if count_include_pad:
                cnt = np.minimum(start + k[i], spatial[i] + p[i]) - start
            else:
                cnt = np.minimum(start + k[i], spatial[i]) - np.maximum(start, 0)
            divisor = divisor * cnt.astype(acc).reshape((1,) * (i + 1) + (-1,) + (1,) * (n - i))
    return (total / divisor).astype(x.dtype)


def adaptive_avg_pool(x, output_size):
    """Adaptive average pooling to a fixed output size (torch semantics).

    Output index ``i`` of a dim of size ``L`` averages input indices
    ``floor(i * L / out)`` to ``ceil((i + 1) * L / out)`` (exclusive), as in
    ``torch.nn.functional.adaptive_avg_pool{1,2,3}d``; windows may overlap and
    ``out`` may exceed ``L``.

    Args:
      x: ``[N, *spatial, C]``; integer inputs are promoted to float.
      output_size: int (same for every spatial dim) or a tuple with one entry
        per spatial dim; a ``None`` entry keeps that dim's size.

    Returns:
      ``[N, *output_size, C]``.

    Example:
      >>> x = jnp.arange(5.).reshape(1, 5, 1)
      >>> adaptive_avg_pool(x, 3)[0, :, 0]     # windows [0,2), [1,4), [3,5)
      Array([0.5, 2. , 3.5], dtype=float32)
    """
    fn = "adaptive_avg_pool"
    shape = tuple(jnp.shape(x))
    if isinstance(output_size, (tuple, list)):
        n = len(output_size)
        if n == 0:
            raise ConfigError(f"{fn}: output_size must be an int or a non-empty sequence; got {output_size!r}")
        if len(shape) != n + 2:
            raise ShapeError(
                f"{fn}: x must be {_layout(n)} (rank {n + 2}) for a {n}-d output_size; got x.shape={shape}")
        spatial = shape[1:-1]
        filled = tuple(spatial[i] if o is None else o for i, o in enumerate(output_size))
    else:
        if len(shape) < 3:
            raise ShapeError(
                f"{fn}: x must be [N, *spatial, C] with at least one spatial dim (rank >= 3); "
                f"got x.shape={shape}")
        n = len(shape) - 2
        spatial = shape[1:-1]
        filled = output_size
    out = ntuple(filled, n, "output_size", fn, minimum=1)
    if any(size < 1 for size in spatial):
        raise ShapeError(f"{fn}: every spatial size of x must be >= 1; got x.shape={shape}")
    return _adaptive_avg_pool_impl(_float_input(x, fn), out)


@functools.partial(jax.jit, static_argnums=1)
def _adaptive_avg_pool_impl(x, out):
    for i in range(len(out)):
        L, o, axis = x.shape[i + 1], out[i], i + 1
        if L == o:
            continue
        if L % o == 0:
            # Uniform, non-overlapping windows: a reshape and a mean.
            x = x.reshape(x.shape[:axis] + (o, L // o) + x.shape[axis + 1:]).mean(axis=axis + 1)
            continue
        # General case: average with a static [o, L] weight matrix (averaging
        # over a box is separable, so one dim at a time is exact).
        idx = np.arange(o)
        lo, hi = (idx * L) // o, -((-(idx + 1) * L) // o)
        cols = np.arange(L)
        w = ((cols >= lo[:, None]) & (cols < hi[:, None])) / (hi - lo)[:, None]
        acc = jnp.promote_types(x.dtype, jnp.float32)
        y = jnp.tensordot(x.astype(acc), jnp.asarray(w, acc), axes=[[axis], [1]],
                          precision=lax.Precision.HIGHEST)  # no bf16 matmul passes on TPU/GPU
        x = jnp.moveaxis(y, -1, axis).astype(x.dtype)
    return x


def global_avg_pool(x, keepdims=False):
    """Mean over every spatial dim.

    Args:
      x: ``[N, *spatial, C]``.
      keepdims: keep the spatial dims as size 1.

    Returns:
      ``[N, C]``, or ``[N, 1, ..., 1, C]`` with ``keepdims=True``.

    Example:
      >>> global_avg_pool(jnp.ones((2, 7, 7, 64))).shape
      (2, 64)
    """
    fn = "global_avg_pool"
    shape = tuple(jnp.shape(x))
    if len(shape) < 3:
        raise ShapeError(
            f"{fn}: x must be [N, *spatial, C] with at least one spatial dim (rank >= 3); got x.shape={shape}")
    keepdims = _check_flag(keepdims, "keepdims", fn)
    x = _float_input(x, fn)
    return jnp.mean(x, axis=tuple(range(1, len(shape) - 1)), keepdims=keepdims)

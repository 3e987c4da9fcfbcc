"""Alternative lowerings of convolution and pooling, and the switch that picks them.

JAX's default lowerings are slow on CPU for small convnets: XLA's CPU
convolution (above all its gradients) and the gradient of a ``reduce_window``
max pool (``select_and_scatter``). Three mathematically identical formulations
are much faster there:

* **im2col convolution**: one gather collects, for every output position, the
  ``K = prod(kernel)`` input rows it sees (after padding; any stride and
  dilation) into patches ``[N * prod(out), K * C_in]``, then one 2-d matrix
  product with the kernel reshaped to ``[K * C_in, C_out]``. Grouped
  convolutions use a matrix product batched over the groups. Plain JAX ops,
  so every autodiff mode (reverse, forward, higher order) and ``vmap`` work:
  the weight gradient is ``patches^T @ g`` and the input gradient a single
  scatter-add of ``g @ W^T`` (the gather's transpose). With one input channel
  the patches are ``K`` stacked slices ``[K, M]`` instead (one contiguous
  block per kernel offset). Results differ from XLA's convolution only by
  summation order (~1e-7 relative in float32, 1e-12 in float64).
* **Winograd weight gradient** for 3x3 stride-1 convolutions: XLA's
  convolution for the values and the input gradient, and the weight
  gradient as Winograd F(2x2, 3x3) matrix products (:mod:`fundl._winograd`;
  XLA CPU's own weight gradient was about half of a ResNet-18 train step).
  Differs from XLA's weight gradient by float rounding (<= 1e-5 relative in
  float32, tested).
* **reshape-and-reduce pooling** for windows that do not overlap
  (``stride >= kernel_size``, no dilation): pad (or crop) each spatial dim to
  ``out * stride``, reshape it to ``[out, stride]``, keep the first
  ``kernel_size`` and reduce. Max values are bit-identical to
  ``reduce_window``; average pools differ only by summation order.

The reshape max pool's derivative is a custom JVP that routes each window's
tangent from the *first* maximal element in row-major window order: the same
element ``reduce_window``'s gradient (``select_and_scatter`` with ``>=``) and
PyTorch pick, so gradients are bit-identical, ties included (a tie does not
split the gradient). It is linear in the tangent (a one-hot mask times the
tangent, summed over the window), so reverse mode transposes it to a masked
broadcast, and forward and higher-order modes work. Edge case: a window whose
maximum is ``-inf`` and that overlaps the padding may pick the padding, and
that window's gradient is then dropped instead of sent to an input element.

Selection happens when an op is traced (under ``jax.jit``: once, at compile
time), from the process-wide setting of :func:`set_lowering` (or the
:func:`lowering` context manager) and, for ``'auto'``,
``jax.default_backend()``:

========================  ====================================================
setting                   effect
========================  ====================================================
``conv='auto'``           on CPU, im2col for ungrouped convolutions without
                          input dilation that are 1x1, or have one input
                          channel, or have >= 8 input channels and at most
                          16 MiB of patches (see :func:`choose_conv`); XLA's
                          convolution otherwise, with the Winograd weight
                          gradient for 3x3 stride-1 float convolutions
                          (below); XLA's convolution on GPU/TPU (not
                          measured here).
``conv='xla'``            always ``lax.conv_general_dilated``.
``conv='winograd'``       XLA's convolution, with the weight gradient as
                          Winograd F(2x2, 3x3) wherever that applies (2-d
                          3x3, stride 1, no dilation, ungrouped, float32 or
                          float64; any padding): see :mod:`fundl._winograd`.
``conv='im2col'``         always im2col (any stride, padding, dilation,
                          groups; ``conv_transpose`` too, as a convolution of
                          the zero-interleaved input, which multiplies zeros).
``pool='auto'``           reshape-and-reduce on CPU for non-overlapping
                          windows; ``reduce_window`` otherwise.
``pool='reshape'``        reshape-and-reduce wherever windows do not overlap
                          (any backend); overlapping or dilated windows always
                          use ``reduce_window``.
``pool='reduce_window'``  always ``lax.reduce_window``.
========================  ====================================================

Already compiled functions keep the lowering they were traced with: change the
setting before the first call of a jitted function (or re-``jit`` it).
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _context, _winograd
from ._errors import ConfigError

__all__ = ["Lowering", "get_lowering", "set_lowering", "lowering"]

_CONV_CHOICES = ("auto", "xla", "im2col", "winograd")
_POOL_CHOICES = ("auto", "reduce_window", "reshape")
# Beyond this the patch matrix costs more memory traffic than it saves
# (measured on a 2-core CPU: ResNet-18's 32x32x64 3x3 layers, 75 MB of patches
# at batch 32, are faster with XLA's convolution; 5-10 MB ones with im2col).
_IM2COL_MAX_BYTES = 16 << 20
_IM2COL_MAX_TAPS = 49  # up to 7x7 (2-d) kernels; the measured wins are 1x1 to 5x5


# The setting itself lives with the rest of fundl's hidden context.
from ._context import Lowering, get_lowering  # noqa: E402  (re-exported)


def _check(value, arg, choices, fn):
    if value is None:
        return None
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{fn}: {arg} must be one of {', '.join(map(repr, choices))} "
                          f"(or None to keep the current setting); got {arg}={value!r}")
    return value


def set_lowering(conv: str | None = None, pool: str | None = None) -> Lowering:
    """Choose how :func:`~fundl.functional.conv` and the pools are lowered.

    Process-wide (not thread-local). Read when an op is traced, so set it before
    the first call of a jitted function. See the module docstring of
    :mod:`fundl.functional` for what each value does.

    Args:
      conv: ``'auto'`` (default), ``'xla'`` or ``'im2col'``; ``None`` keeps
        the current value. Applies to ``conv`` and ``conv_transpose``.
      pool: ``'auto'`` (default), ``'reduce_window'`` or ``'reshape'``;
        ``None`` keeps the current value. Applies to ``max_pool`` and
        ``avg_pool``.

    Returns:
      The previous setting, a :class:`Lowering` (so ``set_lowering(*old)``
      restores it).

    Raises:
      ConfigError: for any other value.

    Example:
      >>> old = set_lowering(conv='xla')
      >>> get_lowering().conv
      'xla'
      >>> _ = set_lowering(*old)
    """
    fn = "set_lowering"
    conv, pool = _check(conv, "conv", _CONV_CHOICES, fn), _check(pool, "pool", _POOL_CHOICES, fn)
    old = get_lowering()
    return _context.put_lowering(Lowering(conv or old.conv, pool or old.pool))


@contextlib.contextmanager
def lowering(conv: str | None = None, pool: str | None = None):
    """Context manager form of :func:`set_lowering`; restores the setting on exit.

    Only ops *traced* inside the block are affected.

    Args:
      conv: as in :func:`set_lowering`.
      pool: as in :func:`set_lowering`.

    Yields:
      The setting in force inside the block, a :class:`Lowering`.

    Example:
      >>> import jax.numpy as jnp, fundl.functional as F
      >>> with F.lowering(conv='xla', pool='reduce_window'):
      ...     y = F.max_pool(jnp.ones((1, 4, 4, 1)), 2)
      >>> y.shape
      (1, 2, 2, 1)
    """
    old = set_lowering(conv, pool)
    try:
        yield get_lowering()
    finally:
        set_lowering(*old)


# --------------------------------------------------------------------------- #
# selection
# --------------------------------------------------------------------------- #
def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def choose_conv(x_shape, w_shape, strides, padding, lhs_dilation, rhs_dilation, groups,
                dtype) -> str:
    """``'xla'``, ``'im2col'`` or ``'winograd'`` for a convolution, from the setting and backend.

    ``'auto'`` on CPU (choices measured on a 2-core x86, ``benchmarks/``):

    * im2col for ungrouped convolutions without input dilation (so not a
      strided ``conv_transpose``) that are 1x1 (a plain matrix product), or
      have one input channel or at least 8, with a patch matrix of at most
      ``_IM2COL_MAX_BYTES`` and at most ``_IM2COL_MAX_TAPS`` kernel positions.
      Larger patch matrices cost more memory traffic than XLA's own
      convolution; 2-7 input channels gather rows too short to be efficient.
    * otherwise XLA's convolution, with the Winograd weight gradient
      (:mod:`fundl._winograd`) where that applies: 2-d 3x3, stride 1, no
      dilation, ungrouped, float32/float64.

    ``'winograd'`` forces the latter wherever it applies (XLA elsewhere). Off
    CPU, ``'auto'`` is XLA's convolution.
    """
    mode = get_lowering().conv
    wino = _winograd.eligible(x_shape, w_shape, strides, lhs_dilation, rhs_dilation, groups, dtype)
    if mode == "winograd":
        return "winograd" if wino else "xla"
    if mode != "auto":
        return mode
    if not _on_cpu():
        return "xla"
    if _im2col_wins(x_shape, w_shape, strides, padding, lhs_dilation, rhs_dilation, groups,
                    np.dtype(dtype).itemsize):
        return "im2col"
    return "winograd" if wino else "xla"


def _im2col_wins(x_shape, w_shape, strides, padding, lhs_dilation, rhs_dilation, groups,
                 itemsize) -> bool:
    """The CPU im2col rule of :func:`choose_conv`."""
    if groups != 1 or any(ld != 1 for ld in lhs_dilation):
        return False
    n = len(strides)
    kernel, c_in = w_shape[:n], w_shape[-2]
    taps = math.prod(kernel)
    if taps == 1:
        return True
    out = _out_size([L + lo + hi for L, (lo, hi) in zip(x_shape[1:-1], padding)], kernel,
                    strides, rhs_dilation)
    # a symbolic batch (a batch-polymorphic export) decides as the size it stands for
    nbytes = _context.concrete(x_shape[0]) * math.prod(out) * taps * c_in * itemsize
    # Huge kernels (e.g. a dense layer turned into a 28x28 convolution) would gather
    # hundreds of views: slow to compile, and no faster.
    if nbytes > _IM2COL_MAX_BYTES or taps > _IM2COL_MAX_TAPS:
        return False
    return c_in == 1 or c_in >= 8


def pool_reshape_ok(k, s, d) -> bool:
    """Whether reshape-and-reduce applies: windows do not overlap, no dilation."""
    return all(di == 1 and si >= ki for ki, si, di in zip(k, s, d))


def choose_pool(k, s, d) -> str:
    """``'reduce_window'`` or ``'reshape'`` for a pool, from the setting and backend."""
    mode = get_lowering().pool
    if not pool_reshape_ok(k, s, d) or mode == "reduce_window":
        return "reduce_window"
    if mode == "reshape" or _on_cpu():
        return "reshape"
    return "reduce_window"


# --------------------------------------------------------------------------- #
# convolution
# --------------------------------------------------------------------------- #
def _dimension_numbers(n: int) -> lax.ConvDimensionNumbers:
    # lax wants, per operand, the axis index of (batch|out, feature|in, *spatial).
    spatial = tuple(range(1, n + 1))
    lhs = (0, n + 1) + spatial
    rhs = (n + 1, n) + tuple(range(n))
    return lax.ConvDimensionNumbers(lhs, rhs, lhs)


def conv_general(x, w, *, strides, padding, lhs_dilation, rhs_dilation, groups, precision):
    """``lax.conv_general_dilated`` in fundl's layout, lowered per the setting.

    Args:
      x: ``[N, *spatial, C_in]``.
      w: ``[*kernel, C_in // groups, C_out]``.
      strides, lhs_dilation, rhs_dilation: one int per spatial dim.
      padding: one ``(lo, hi)`` pair per spatial dim (may be negative: cropping).
      groups: feature groups.
      precision: ``lax.Precision`` or ``None``.

    Returns:
      ``[N, *out, C_out]``, exactly as ``lax.conv_general_dilated`` would.
    """
    n = w.ndim - 2
    how = choose_conv(x.shape, w.shape, strides, padding, lhs_dilation, rhs_dilation, groups,
                      x.dtype)
    if how == "winograd":
        return _winograd.conv3x3(x, w, padding, precision)
    if how == "xla":
        return lax.conv_general_dilated(
            x, w, window_strides=strides, padding=padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=_dimension_numbers(n),
            feature_group_count=groups, precision=precision)
    return conv_im2col(x, w, strides, padding, lhs_dilation, rhs_dilation, groups, precision)


def conv_im2col(x, w, strides, padding, lhs_dilation, rhs_dilation, groups, precision=None):
    """Convolution as patches x matrix (see the module docstring).

    Plain JAX ops (pad, gather or slices, dot), so every autodiff mode
    (reverse, forward, higher order) and ``vmap`` work unchanged.

    Args:
      x: ``[N, *spatial, C_in]``.
      w: ``[*kernel, C_in // groups, C_out]``.
      strides, lhs_dilation, rhs_dilation: one int per spatial dim.
      padding: one ``(lo, hi)`` pair per spatial dim (negative crops).
      groups: feature groups.
      precision: passed to the matrix product.

    Returns:
      ``[N, *out, C_out]``.
    """
    n = w.ndim - 2
    kernel, c_in_g, c_out = w.shape[:n], w.shape[-2], w.shape[-1]
    # One pad does zero padding, cropping and the input dilation of a
    # transposed convolution (interior padding); autodiff transposes it to a slice.
    if any(lo or hi for lo, hi in padding) or any(ld > 1 for ld in lhs_dilation):
        x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), *(
            (lo, hi, ld - 1) for (lo, hi), ld in zip(padding, lhs_dilation)), (0, 0, 0)))
    out = _out_size(x.shape[1:-1], kernel, strides, rhs_dilation)
    m, k = x.shape[0] * math.prod(out), math.prod(kernel)
    if x.shape[-1] == 1:
        # One input channel (a first layer on grey images): patches [K, M],
        # one contiguous block per kernel offset; the weight gradient
        # patches @ g is then a plain matrix product.
        pt = jnp.stack(_slices(x, kernel, strides, rhs_dilation, out)).reshape(k, m)
        y = lax.dot_general(pt, w.reshape(k, c_out), (((0,), (0,)), ((), ())),
                            precision=precision)
        return y.reshape((x.shape[0], *out, c_out))
    patches = _patches(x, kernel, strides, rhs_dilation, out).reshape(m, k * c_in_g * groups)
    if groups == 1:
        # A 2-d product: contracting N and the spatial dims at once makes XLA
        # CPU transpose operands of the gradient products.
        y = lax.dot(patches, w.reshape(k * c_in_g, c_out), precision=precision)
    else:
        # Grouped: [M, K, G, C_in/G] against [K, C_in/G, G, C_out/G], batched over G.
        y = jnp.einsum("mkgc,kcgo->mgo", patches.reshape((m, k, groups, c_in_g)),
                       w.reshape((k, c_in_g, groups, c_out // groups)), precision=precision)
    return y.reshape((x.shape[0], *out, c_out))


def _out_size(spatial, kernel, strides, dil):
    return tuple((L - d * (k - 1) - 1) // s + 1
                 for L, k, s, d in zip(spatial, kernel, strides, dil))


def _slices(x, kernel, strides, dil, out):
    """The ``prod(kernel)`` strided views ``[N, *out, C]``, kernel offsets row-major."""
    views = []
    for j in itertools.product(*map(range, kernel)):
        start = (0, *(ji * di for ji, di in zip(j, dil)), 0)
        limit = (x.shape[0], *(ji * di + (o - 1) * s + 1
                               for ji, di, o, s in zip(j, dil, out, strides)), x.shape[-1])
        views.append(lax.slice(x, start, limit, (1, *strides, 1)))
    return views


@functools.lru_cache(maxsize=256)
def _patch_index(spatial, kernel, strides, dil, out):
    """Flat input position of every (output position, kernel offset): ``[prod(out) * K]``."""
    grids = np.meshgrid(*(np.arange(o) for o in out), *(np.arange(k) for k in kernel),
                        indexing="ij")
    n = len(kernel)
    flat = np.zeros(grids[0].shape, np.int64)
    for i in range(n):  # row-major position of o * s + j * d
        flat = flat * spatial[i] + grids[i] * strides[i] + grids[n + i] * dil[i]
    return flat.reshape(-1).astype(np.int32)


def _patches(x, kernel, strides, dil, out):
    """``[N, *spatial, C] -> [N, *out, K * C]`` (K = prod(kernel), offset-major).

    One gather of rows of ``C`` contiguous values with a static index per
    sample. Its transpose (the input gradient) is one scatter-add: on CPU
    this beats both slicing (whose transpose adds ``K`` zero-padded copies of
    ``x``, which XLA then fuses into, and may recompute in, the consumer)
    and concatenating ``K`` slices in the forward pass.
    """
    if math.prod(kernel) == 1 and set(strides) == {1}:
        return x  # 1x1 kernel, stride 1: the input is the patch matrix
    n_batch, spatial, c = x.shape[0], x.shape[1:-1], x.shape[-1]
    per_sample = _patch_index(tuple(spatial), tuple(kernel), tuple(strides), tuple(dil), tuple(out))
    # Rows of the flattened batch: the gather's output (and the scatter's
    # updates) are then already in patch order, with no transposes around
    # them. The batch offsets are added at run time to keep the constant small.
    idx = (lax.broadcasted_iota(jnp.int32, (n_batch, 1), 0) * math.prod(spatial)
           + jnp.asarray(per_sample)[None, :]).reshape(-1)
    # Indices are in bounds by construction; "clip" skips fill masks.
    p = jnp.take(x.reshape(-1, c), idx, axis=0, mode="clip")
    return p.reshape((n_batch, *out, math.prod(kernel) * c))


# --------------------------------------------------------------------------- #
# pooling (non-overlapping windows)
# --------------------------------------------------------------------------- #
def _blocks(x, k, s, pads, out, fill):
    """``[N, *spatial, C] -> [N, o1, k1, ..., on, kn, C]``, the windows of each dim.

    Pads with ``fill`` (``pads`` as in the pool, high side adjusted, possibly
    negative, so every dim is exactly ``out * stride``), reshapes each dim to
    ``[out, stride]`` and keeps the first ``kernel_size`` of each stride.
    """
    cfg = tuple((lo, o * si - L - lo, 0)
                for (lo, _), o, si, L in zip(pads, out, s, x.shape[1:-1]))
    if any(lo or hi for lo, hi, _ in cfg):
        x = lax.pad(x, jnp.asarray(fill, x.dtype), ((0, 0, 0), *cfg, (0, 0, 0)))
    shape = [x.shape[0]]
    for o, si in zip(out, s):
        shape += [o, si]
    x = x.reshape((*shape, x.shape[-1]))
    if any(si > ki for ki, si in zip(k, s)):
        x = x[(slice(None), *itertools.chain.from_iterable(
            (slice(None), slice(0, ki)) for ki in k), slice(None))]
    return x


def _window_axes(n):
    return tuple(range(2, 2 * n + 1, 2))


def _first_max_mask(xb, y, k):
    """Boolean ``[N, o1, k1, ..., C]``: the first maximum of each window, row-major."""
    n = len(k)
    taken = [None]

    def build(prefix):
        d = len(prefix)
        if d == n:
            idx = (slice(None), *itertools.chain.from_iterable(
                (slice(None), a) for a in prefix), slice(None))
            eq = xb[idx] == y
            hit = eq if taken[0] is None else eq & ~taken[0]
            taken[0] = eq if taken[0] is None else taken[0] | eq
            return hit
        # Children are [N, o_0..o_d, (o_i, k_i) for i > d, C]: put k_d after o_d.
        return jnp.stack([build(prefix + (a,)) for a in range(k[d])], axis=d + 2)

    return build(())


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def max_pool_reshape(x, cfg):
    """Max pool of non-overlapping windows by reshape-and-reduce.

    Args:
      x: ``[N, *spatial, C]``.
      cfg: ``(kernel, stride, pads, out, fill)`` with ``stride >= kernel`` per
        dim, ``pads`` the pool's ``(lo, hi)`` pairs, ``out`` the output sizes
        and ``fill`` the padding value (the dtype's lowest).

    Returns:
      ``[N, *out, C]``, bit-identical to the ``reduce_window`` max pool.
    """
    k, s, pads, out, fill = cfg
    return jnp.max(_blocks(x, k, s, pads, out, fill), axis=_window_axes(len(k)))


@max_pool_reshape.defjvp
def _max_pool_reshape_jvp(cfg, primals, tangents):
    # tangent_out = sum over the window of (first-max one-hot mask) * tangent:
    # linear in the tangent, so reverse mode becomes one masked broadcast
    # (instead of select_and_scatter), and the primal call below makes
    # higher-order derivatives use this rule again.
    (x,), (t,) = primals, tangents
    k, s, pads, out, fill = cfg
    y = max_pool_reshape(x, cfg)
    mask = _first_max_mask(_blocks(x, k, s, pads, out, fill), y, k)
    tb = _blocks(t, k, s, pads, out, 0)
    return y, jnp.sum(jnp.where(mask, tb, jnp.zeros((), tb.dtype)), axis=_window_axes(len(k)))


def sum_pool_reshape(x, k, s, pads, out):
    """Window sums of non-overlapping windows, zero padding.

    Args:
      x: ``[N, *spatial, C]``.
      k, s, pads, out: kernel, stride (``>= kernel``), ``(lo, hi)`` pads and
        output sizes per spatial dim.

    Returns:
      ``[N, *out, C]`` window sums (the ``reduce_window`` add, up to summation order).
    """
    return jnp.sum(_blocks(x, k, s, pads, out, 0), axis=_window_axes(len(k)))

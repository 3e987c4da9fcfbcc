"""N-d convolution and transposed convolution, channels-last (NHWC).

Both ops reproduce ``torch.nn.functional.conv{1,2,3}d`` and
``conv_transpose{1,2,3}d`` exactly, with the layout moved to channels-last:

* ``conv``:           x ``[N, *spatial, C_in]``, w ``[*kernel, C_in // groups, C_out]``
* ``conv_transpose``: x ``[N, *spatial, C_in]``, w ``[*kernel, C_in, C_out // groups]``

Porting PyTorch weights: ``conv`` takes ``w_torch.permute(2, 3, 1, 0)`` (2-d;
kernel dims first, then in, then out) and ``conv_transpose`` takes
``w_torch.permute(2, 3, 0, 1)``.

How the op is lowered (XLA's convolution, or im2col patches x matrix,
the default on CPU) is chosen at trace time by :mod:`fundl._lowering`; see
:func:`fundl.functional.set_lowering`.

Every user mistake (rank, channels, groups, bias, hyper-parameters, input too
small) is reported as a :class:`~fundl._errors.ShapeError` or
:class:`~fundl.ConfigError` before any XLA call.
"""
from __future__ import annotations

import jax.numpy as jnp

from ._argcheck import check_float_input
from ._errors import ConfigError, ShapeError
from ._lowering import conv_general
from ._shapes import _pairs, resolve_padding
from ._util import ntuple

__all__ = ["conv", "conv_transpose"]

_LAYOUTS = {1: "[N, L, C]", 2: "[N, H, W, C]", 3: "[N, D, H, W, C]"}


def _layout(n: int) -> str:
    return _LAYOUTS.get(n, f"[N, <{n} spatial dims>, C]")


def _check_groups(groups, fn):
    if isinstance(groups, bool) or not hasattr(groups, "__index__") or int(groups) < 1:
        raise ConfigError(f"{fn}: groups must be an int >= 1; got groups={groups!r}")
    return int(groups)


def _check_ranks(x, w, fn, w_layout):
    check_float_input(x, fn, "x")
    check_float_input(w, fn, "w")
    if w.ndim < 3:
        raise ShapeError(f"{fn}: w must have rank >= 3 ({w_layout}); got w.shape={w.shape}")
    n = w.ndim - 2
    if x.ndim != w.ndim:
        raise ShapeError(
            f"{fn}: x must have rank w.ndim = {w.ndim} ({_layout(n)}) for a {n}-d kernel; "
            f"got x.shape={x.shape}")
    if any(k < 1 for k in w.shape[:n]):
        raise ShapeError(f"{fn}: kernel sizes w.shape[:{n}] must be >= 1; got w.shape={w.shape}")
    return n


def _check_bias(b, c_out, fn):
    if b is None:
        return None
    b = jnp.asarray(b)
    if b.shape != (c_out,):
        raise ShapeError(f"{fn}: b must have shape (C_out,) = ({c_out},); got b.shape={b.shape}")
    return b


def _add_bias(out, b):
    # Explicit reshape: rank promotion is disabled in strict mode.
    if b is None:
        return out
    return out + b.reshape((1,) * (out.ndim - 1) + b.shape).astype(out.dtype)


def _promote(x, w, b):
    dtype = jnp.result_type(x, w) if b is None else jnp.result_type(x, w, b)
    return x.astype(dtype), w.astype(dtype)


def conv(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1, precision=None):
    """N-d convolution (cross-correlation), channels-last.

    Same semantics as ``torch.nn.functional.conv{1,2,3}d`` with the channel
    axis last: ``conv(x, w)`` equals
    ``torch.conv2d(x.permute(0, 3, 1, 2), w.permute(3, 2, 0, 1)).permute(0, 2, 3, 1)``.
    The spatial rank is ``w.ndim - 2`` (1, 2, 3, ...).

    Args:
      x: input ``[N, *spatial, C_in]``.
      w: kernel ``[*kernel, C_in // groups, C_out]``.
      b: optional bias ``[C_out]``.
      stride: int or one int per spatial dim, ``>= 1``.
      padding: int, one int per dim, one ``(lo, hi)`` pair per dim, or
        ``'SAME'`` (output ``ceil(L / stride)``, odd pixel on the high side)
        / ``'VALID'``.
      dilation: int or one int per spatial dim, ``>= 1``.
      groups: ``C_in`` and ``C_out`` must both be divisible by it; output
        channels ``[g * C_out/groups, (g+1) * C_out/groups)`` see only input
        channels ``[g * C_in/groups, (g+1) * C_in/groups)``.
      precision: passed to ``lax.conv_general_dilated`` or the im2col
        matrix product (e.g. ``lax.Precision.HIGHEST`` to avoid TF32 on GPUs).

    Returns:
      ``[N, *out_spatial, C_out]`` with
      ``out = floor((L + lo + hi - dilation*(k-1) - 1) / stride) + 1``.

    Raises:
      ShapeError: rank/channel/bias mismatch or input smaller than the
        (dilated) kernel after padding.
      ConfigError: invalid stride, dilation, padding or groups.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([1., 2., 3., 4.]).reshape(1, 4, 1)   # [N, L, C]
      >>> w = jnp.array([1., 0., -1.]).reshape(3, 1, 1)      # [K, C_in, C_out]
      >>> conv(x, w)[0, :, 0]
      Array([-2., -2.], dtype=float32)
    """
    fn = "conv"
    x, w = jnp.asarray(x), jnp.asarray(w)
    n = _check_ranks(x, w, fn, "[*kernel, C_in // groups, C_out]")
    groups = _check_groups(groups, fn)
    c_in, c_in_g, c_out = x.shape[-1], w.shape[-2], w.shape[-1]
    if c_in % groups:
        raise ShapeError(f"{fn}: x channels C_in = x.shape[-1] = {c_in} must be divisible by "
                         f"groups={groups}; got x.shape={x.shape}")
    if c_out % groups:
        raise ShapeError(f"{fn}: C_out = w.shape[-1] = {c_out} must be divisible by "
                         f"groups={groups}; got w.shape={w.shape}")
    if c_in != c_in_g * groups:
        raise ShapeError(
            f"{fn}: x has C_in = x.shape[-1] = {c_in} channels but w expects "
            f"w.shape[-2] * groups = {c_in_g} * {groups} = {c_in_g * groups} "
            f"(x.shape={x.shape}, w.shape={w.shape})")
    b = _check_bias(b, c_out, fn)
    kernel = w.shape[:n]
    strides = ntuple(stride, n, "stride", fn, minimum=1)
    dil = ntuple(dilation, n, "dilation", fn, minimum=1)
    spatial = x.shape[1:-1]
    pads = resolve_padding(padding, kernel, strides, dil, spatial, fn)
    eff = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dil))
    if any(L + lo + hi < e for L, (lo, hi), e in zip(spatial, pads, eff)):
        raise ShapeError(
            f"{fn}: input spatial size {spatial} with padding {pads} is smaller than the "
            f"effective kernel size dilation*(k-1)+1 = {eff} (kernel {kernel}, dilation {dil}); "
            f"got x.shape={x.shape}")
    x, w = _promote(x, w, b)
    # XLA's convolution or im2col, per fundl.functional.set_lowering.
    out = conv_general(x, w, strides=strides, padding=pads, lhs_dilation=(1,) * n,
                       rhs_dilation=dil, groups=groups, precision=precision)
    return _add_bias(out, b)


def _transpose_pads(padding, spatial, kernel, strides, dil, fn):
    """(lo, hi) amounts cropped from the full transposed output, per dim.

    'SAME' makes the op the adjoint of a 'SAME' conv on an input of size
    ``L * stride`` (output ``L * stride``, as in TF); hi may then be negative,
    i.e. the output is zero-extended.  'VALID' crops nothing.
    """
    n = len(spatial)
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0),) * n
        if mode != "SAME":
            raise ConfigError(f"{fn}: padding string must be 'SAME' or 'VALID'; got {padding!r}")
        pads = []
        for k, s, d in zip(kernel, strides, dil):
            e = d * (k - 1) + 1
            lo = max(e - s, 0) // 2
            pads.append((lo, e - s - lo))
        return tuple(pads)
    return _pairs(padding, n, fn)


def conv_transpose(x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1,
                   groups=1, precision=None):
    """N-d transposed convolution (gradient of :func:`conv`), channels-last.

    Same semantics as ``torch.nn.functional.conv_transpose{1,2,3}d`` with the
    channel axis last: each input pixel ``i`` scatters ``x[i] @ w[k]`` to
    output position ``i * stride - padding + k * dilation``.  The weight is
    PyTorch's ``(C_in, C_out // groups, *kernel)`` with the kernel dims moved
    first, so porting is ``w_torch.permute(2, 3, 0, 1)`` (2-d).

    Args:
      x: input ``[N, *spatial, C_in]``.
      w: kernel ``[*kernel, C_in, C_out // groups]``.
      b: optional bias ``[C_out]``.
      stride: int or one int per spatial dim, ``>= 1``.
      padding: int or one int per dim (cropped from both ends of the full
        output, as in PyTorch), one ``(lo, hi)`` pair per dim, ``'VALID'``
        (no cropping) or ``'SAME'`` (output ``L * stride``; the adjoint of a
        ``'SAME'`` :func:`conv`).
      output_padding: int or per-dim ints added to the high end of the
        output; each must be ``< stride`` or ``< dilation`` (PyTorch's rule).
      dilation: int or one int per spatial dim, ``>= 1``.
      groups: ``C_in`` must be divisible by it; ``C_out = w.shape[-1] * groups``.
      precision: passed to ``lax.conv_general_dilated``.

    Returns:
      ``[N, *out_spatial, C_out]`` with
      ``out = (L - 1) * stride - lo - hi + dilation*(k-1) + output_padding + 1``.

    Raises:
      ShapeError: rank/channel/bias mismatch or an output size < 1.
      ConfigError: invalid stride, dilation, padding, output_padding or groups.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([1., 2.]).reshape(1, 2, 1)      # [N, L, C_in]
      >>> w = jnp.ones((3, 1, 1))                        # [K, C_in, C_out]
      >>> conv_transpose(x, w, stride=2)[0, :, 0]
      Array([1., 1., 3., 2., 2.], dtype=float32)
    """
    fn = "conv_transpose"
    x, w = jnp.asarray(x), jnp.asarray(w)
    n = _check_ranks(x, w, fn, "[*kernel, C_in, C_out // groups]")
    groups = _check_groups(groups, fn)
    c_in, c_out_g = x.shape[-1], w.shape[-1]
    if c_in % groups:
        raise ShapeError(f"{fn}: x channels C_in = x.shape[-1] = {c_in} must be divisible by "
                         f"groups={groups}; got x.shape={x.shape}")
    if w.shape[-2] != c_in:
        raise ShapeError(
            f"{fn}: x has C_in = x.shape[-1] = {c_in} channels but w expects w.shape[-2] = "
            f"{w.shape[-2]} (layout [*kernel, C_in, C_out // groups]; x.shape={x.shape}, "
            f"w.shape={w.shape})")
    c_out = c_out_g * groups
    b = _check_bias(b, c_out, fn)
    kernel = w.shape[:n]
    strides = ntuple(stride, n, "stride", fn, minimum=1)
    dil = ntuple(dilation, n, "dilation", fn, minimum=1)
    op = ntuple(output_padding, n, "output_padding", fn, minimum=0)
    if any(o >= max(s, d) for o, s, d in zip(op, strides, dil)):
        raise ConfigError(
            f"{fn}: output_padding must be smaller than either stride or dilation; got "
            f"output_padding={output_padding!r} with stride={strides}, dilation={dil}")
    spatial = x.shape[1:-1]
    pads = _transpose_pads(padding, spatial, kernel, strides, dil, fn)
    eff = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dil))
    out_size = tuple((L - 1) * s - lo - hi + e + o
                     for L, s, (lo, hi), e, o in zip(spatial, strides, pads, eff, op))
    if any(L < 1 for L in spatial) or any(o < 1 for o in out_size):
        raise ShapeError(
            f"{fn}: output spatial size would be {out_size} (< 1) for input spatial size "
            f"{spatial}, padding {pads}, effective kernel size dilation*(k-1)+1 = {eff}, "
            f"stride {strides}; got x.shape={x.shape}")
    x, w = _promote(x, w, b)
    # Transposed conv == stride-1 conv over the stride-dilated input with the
    # spatially flipped kernel, padded by (eff - 1) minus the cropping.
    w = jnp.flip(w, axis=tuple(range(n)))
    # [*k, C_in, C_out/G] -> [*k, C_in/G, C_out]: group g's slice of C_in
    # becomes the input axis, its C_out/G outputs land in block g.
    w = w.reshape(kernel + (groups, c_in // groups, c_out_g))
    w = jnp.moveaxis(w, n, n + 1).reshape(kernel + (c_in // groups, c_out))
    lax_pads = tuple((e - 1 - lo, e - 1 - hi + o) for e, (lo, hi), o in zip(eff, pads, op))
    out = conv_general(x, w, strides=(1,) * n, padding=lax_pads, lhs_dilation=strides,
                       rhs_dilation=dil, groups=groups, precision=precision)
    return _add_bias(out, b)

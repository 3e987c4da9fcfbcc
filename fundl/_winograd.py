"""3x3 convolutions whose weight gradient runs as Winograd F(2x2, 3x3).

On CPU, XLA computes the weight gradient of a 3x3 convolution as a
convolution with an output-sized kernel, plus layout transposes of both
operands: in a ResNet-18 train step (CIFAR stem, batch 32) that was about
half of the step's time, 3-5x the forward convolution of the same layer
(``benchmarks/profile_step.py``). Winograd's minimal filtering algorithm
F(2x2, 3x3) (Lavin & Gray, 2016) turns it into 16 matrix products over 4x4
input tiles, with 2.25x fewer multiplications, which XLA runs at its
matrix-product speed.

:func:`conv3x3` is ``lax.conv_general_dilated`` (same primal values, bit for
bit) with a custom JVP: the tangent in the input is XLA's convolution again
(so the input gradient is XLA's), the tangent in the kernel is the Winograd
form :func:`winograd_conv`. Reverse mode transposes that form, which gives
the weight gradient as ``V^T @ M`` per tile position (``V``: the transformed
input tiles, ``M``: the transformed output-gradient tiles), then
``G^T dU G``. Every autodiff mode, higher orders and ``vmap`` work (plain JAX
ops); the transformed tiles are kept from the forward pass, four times the
layer's (padded) input in memory.

Error bound: the transforms use only 0, +-1/2 and +-1, so the weight gradient
differs from XLA's by float rounding. Measured over the tested shapes
(``tests/test_winograd.py``), ``max|dw - dw_xla| <= 1e-5 * max|dw_xla|`` in
float32 (typically 1-2e-6), 1e-12 in float64.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

# F(2x2, 3x3): y = A^T [(G w G^T) * (B^T d B)] A per 4x4 input tile d.
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def eligible(x_shape, w_shape, strides, lhs_dilation, rhs_dilation, groups, dtype) -> bool:
    """Whether :func:`conv3x3` applies: 2-d, 3x3 kernel, stride 1, no dilation,
    ungrouped, float32/float64 (any padding)."""
    return (len(w_shape) == 4 and tuple(w_shape[:2]) == (3, 3) and tuple(strides) == (1, 1)
            and set(lhs_dilation) == {1} and set(rhs_dilation) == {1} and groups == 1
            and np.dtype(dtype) in DTYPES)


def _xla(x, w, padding, precision):
    dn = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn,
                                    precision=precision)


def _bt(d0, d1, d2, d3):
    """B^T along one axis: 4 tile rows -> 4 transformed rows."""
    return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]


def _at(m0, m1, m2, m3):
    """A^T along one axis: 4 transformed rows -> 2 output rows."""
    return [m0 + m1 + m2, m1 - m2 - m3]


def _input_tiles(x, padding):
    """``[N, H, W, C]`` -> the 16 transformed tiles, each ``[N * th * tw, C]``.

    The input is padded as the convolution pads it, plus one zero row/column
    on the high side where the output size is odd; ``th, tw`` are the output
    size halved, rounded up.
    """
    n, c = x.shape[0], x.shape[-1]
    out = [s + lo + hi - 2 for s, (lo, hi) in zip(x.shape[1:3], padding)]
    th, tw = (out[0] + 1) // 2, (out[1] + 1) // 2
    cfg = ((0, 0, 0), (padding[0][0], padding[0][1] + 2 * th - out[0], 0),
           (padding[1][0], padding[1][1] + 2 * tw - out[1], 0), (0, 0, 0))
    xr = lax.pad(x, jnp.zeros((), x.dtype), cfg).reshape(n, th + 1, 2, tw + 1, 2, c)
    tiles = []
    for row in _bt(*(xr[:, a // 2:a // 2 + th, a % 2] for a in range(4))):
        tiles += [t.reshape(-1, c) for t in _bt(*(row[:, :, b // 2:b // 2 + tw, b % 2]
                                                  for b in range(4)))]
    return tiles, (n, th, tw), out


def winograd_conv(x, w, padding, precision=None):
    """The 3x3 stride-1 convolution by Winograd F(2x2, 3x3).

    Args:
      x: ``[N, H, W, C_in]``.
      w: ``[3, 3, C_in, C_out]``.
      padding: ``((lo, hi), (lo, hi))``.
      precision: passed to the 16 matrix products.

    Returns:
      ``[N, H + lo + hi - 2, W + lo + hi - 2, C_out]``; equal to XLA's
      convolution up to float rounding (module docstring).
    """
    tiles, (n, th, tw), out = _input_tiles(x, padding)
    g = jnp.asarray(_G, w.dtype)
    u = jnp.einsum("ai,ijck,bj->abck", g, w, g).reshape(16, *w.shape[2:])
    m = [jnp.dot(t, u[i], precision=precision).reshape(n, th, tw, -1)
         for i, t in enumerate(tiles)]
    rows = [_at(*m[4 * a:4 * a + 4]) for a in range(4)]      # rows[a][j]: column j of row a
    cols = [_at(*(rows[a][j] for a in range(4))) for j in range(2)]   # cols[j][i]: output (i, j)
    y = jnp.stack([jnp.stack([cols[0][i], cols[1][i]], 3) for i in range(2)], 2)
    return y.reshape(n, 2 * th, 2 * tw, -1)[:, :out[0], :out[1]]


# Traced once per (shapes, padding, precision) and reused: a ResNet's stages repeat the
# same 3x3 layer, and the Winograd form is ~200 operations to trace (and transpose) each time.
_winograd_jit = jax.jit(winograd_conv, static_argnums=(2, 3))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv3x3(x, w, padding, precision):
    return _xla(x, w, padding, precision)


def _conv3x3_jvp(padding, precision, primals, tangents):
    # Symbolic zeros: a tangent that is known to be zero (the data's, or the
    # frozen kernel's) adds no convolution at all.
    (x, w), (tx, tw) = primals, tangents
    y = _conv3x3(x, w, padding, precision)
    parts = []
    if not isinstance(tx, SymbolicZero):
        parts.append(_xla(tx, w, padding, precision))
    if not isinstance(tw, SymbolicZero):
        parts.append(_winograd_jit(x, tw, padding, precision))
    if not parts:
        return y, SymbolicZero(jax.typeof(y).to_tangent_aval())
    return y, parts[0] if len(parts) == 1 else parts[0] + parts[1]


_conv3x3.defjvp(_conv3x3_jvp, symbolic_zeros=True)


def conv3x3(x, w, padding, precision=None):
    """XLA's 3x3 stride-1 convolution with the Winograd weight gradient.

    Args:
      x: ``[N, H, W, C_in]``, float32 or float64.
      w: ``[3, 3, C_in, C_out]``.
      padding: ``((lo, hi), (lo, hi))`` (any, negative crops).
      precision: ``lax.Precision`` or ``None``.

    Returns:
      ``[N, H + lo + hi - 2, W + lo + hi - 2, C_out]``: exactly
      ``lax.conv_general_dilated``'s values; derivatives in ``x`` are XLA's,
      derivatives in ``w`` the Winograd form's (module docstring).
    """
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _conv3x3(x, w, padding, precision)

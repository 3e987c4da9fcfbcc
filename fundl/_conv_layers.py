"""Layers with weights: Dense and the N-d convolutions Conv and ConvTranspose.

Data layout: channels last, ``x: [N, *spatial, C]`` (NHWC in 2-d); weights
are ``w: [in, out]`` (Dense), ``[*kernel, C_in // groups, C_out]`` (Conv) and
``[*kernel, C_in, C_out // groups]`` (ConvTranspose), with an optional bias
``b: [out]``. Each is a :class:`~fundl.layers.Layer` type whose fields are
its hyper-parameters (``init(key, input_shape) -> (out_shape, params)``,
``apply(params, x, *, key=None, train=False) -> y``). Hyper-parameters are
validated when the layer is constructed (ConfigError naming the layer, the
argument and the value); shapes at ``init`` and again at ``apply``
(ShapeError naming the layer's path, e.g. ``Conv 'features/conv1'``), so no
raw XLA error reaches the user. Default initialisation follows PyTorch (see
:mod:`fundl.initializers`); override it per layer with ``w_init`` / ``b_init``,
callables ``(key, shape, dtype) -> array`` such as
``jax.nn.initializers.he_normal()``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY

import jax
import jax.numpy as jnp

from ._argcheck import check_float_input
from . import _activations as _act
from ._checks import check_spatial, implied_rank, input_rank
from ._conv import _transpose_pads, conv, conv_transpose
from ._errors import ConfigError, ShapeError
from ._init import (check_initializer, fan_in_conv, fan_in_conv_transpose, fan_in_dense,
                    run_initializer, torch_default)
from ._layer import Layer
from ._shapes import conv_output_size, resolve_padding
from ._util import check_bool, check_int, ntuple

__all__ = ["Conv", "ConvTranspose", "Dense"]

_PARAM_DTYPE = jnp.float32


# -- helpers -----------------------------------------------------------------

def _check_padding(padding, where: str, rank: int | None, strings: bool = True):
    """Padding: an int, per-dim ints, per-dim (lo, hi) pairs, or 'SAME'/'VALID' if ``strings``."""
    if isinstance(padding, str):
        if not strings:
            raise ConfigError(f"{where}: padding must be an int, per-dim ints or per-dim "
                              f"(lo, hi) pairs; got padding={padding!r}")
        if padding.upper() not in ("SAME", "VALID"):
            raise ConfigError(f"{where}: padding string must be 'SAME' or 'VALID'; "
                              f"got padding={padding!r}")
        return padding
    error = None
    # Unknown rank: accept a spec valid for some rank; init checks the real one.
    for n in (rank,) if rank is not None else (1, 2, 3):
        try:
            resolve_padding(padding, (1,) * n, 1, 1, (1,) * n, where)
            return padding
        except ConfigError as e:
            error = error or e
    raise error


def _param(params, key: str, lab: str):
    if not isinstance(params, Mapping) or key not in params:
        got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise ShapeError(f"{lab}: params must be a dict with key {key!r} (as returned by init); "
                         f"got {got}")
    return params[key]


def _split(key, lab: str):
    if key is None:
        raise ConfigError(f"{lab}: init needs a jax.random key; got key=None")
    return jax.random.split(key)


def _make_params(key, lab, w_shape, w_init, b_shape, b_init, fan_in):
    kw, kb = _split(key, lab)
    params = {"w": run_initializer(w_init or torch_default(fan_in), kw, w_shape, _PARAM_DTYPE,
                                   "w_init", lab)}
    if b_shape is not None:
        params["b"] = run_initializer(b_init or torch_default(fan_in), kb, b_shape, _PARAM_DTYPE,
                                      "b_init", lab)
    return params


def _conv_out(lab, shape, kernel, stride, padding, dilation):
    """Resolved (lo, hi) pads and the output spatial size, or a ShapeError naming the layer."""
    spatial = tuple(shape[1:-1])
    pads = resolve_padding(padding, kernel, stride, dilation, spatial, lab)
    try:
        out = conv_output_size(spatial, kernel, stride, pads, dilation)
    except ShapeError as e:
        raise ShapeError(f"{lab}: input shape {tuple(shape)} with padding={padding!r} is too "
                         f"small: {e}") from None
    return pads, out


def _check_channels(lab, shape, expected: int, w_shape, groups: int):
    if shape[-1] != expected:
        extra = f", groups={groups}" if groups != 1 else ""
        raise ShapeError(f"{lab}: input has {shape[-1]} channels (last axis) but the parameters "
                         f"were initialised for {expected} (params['w'] has shape "
                         f"{tuple(w_shape)}{extra}); got input shape {tuple(shape)}")


# -- Dense -------------------------------------------------------------------

class Dense(Layer):
    """Fully connected layer ``y = x @ w + b`` over the last axis (``torch.nn.Linear``).

    Shapes: ``[..., in] -> [..., features]`` for any input of rank >= 2
    (``[N, in]``, a sequence ``[N, T, in]``, ...). A conv feature map fed to
    a classifier without :class:`Flatten` is caught by the loss, which names
    both shapes.

    Args:
      features: number of outputs.
      bias: whether to add a bias ``b``.
      w_init: initialiser ``(key, shape, dtype)`` for ``w: [in, features]``;
        default PyTorch's ``U(-1/sqrt(in), 1/sqrt(in))``.
      b_init: initialiser for ``b: [features]``; default as PyTorch (same bound).
      name: parameter key (default ``'dense'``).

    Params: ``{'w': [in, features], 'b': [features]}``.

    Example:
      >>> layer = Dense(3)
      >>> out_shape, params = layer.init(jax.random.key(0), (8, 4))
      >>> out_shape, params['w'].shape, params['b'].shape
      ((8, 3), (4, 3), (3,))
      >>> layer.apply(params, jnp.ones((8, 5, 4))).shape   # per token
      (8, 5, 3)
    """

    features: int
    _: KW_ONLY
    bias: bool = True
    w_init: Callable | None = None
    b_init: Callable | None = None

    def __post_init__(self):
        super().__post_init__()
        where = self.where()
        self._set(features=check_int(self.features, "features", where, 1),
                  bias=check_bool(self.bias, "bias", where))
        check_initializer(self.w_init, "w_init", where)
        check_initializer(self.b_init, "b_init", where)

    def _check_rank(self, shape):
        if len(shape) < 2:
            raise ShapeError(f"{self.label()}: input must be [N, ..., features] (rank >= 2); got "
                             f"input shape {tuple(shape)} (rank {len(shape)}). Add a batch axis, "
                             "e.g. x[None].")

    def build(self, key, input_shape):
        self._check_rank(input_shape)
        w_shape = (input_shape[-1], self.features)
        params = _make_params(key, self.label(), w_shape, self.w_init,
                              (self.features,) if self.bias else None, self.b_init,
                              fan_in_dense(w_shape))
        return (*input_shape[:-1], self.features), params

    def forward(self, params, x, *, key, train):
        lab = self.label()
        w = _param(params, "w", lab)
        shape = jnp.shape(x)
        self._check_rank(shape)
        check_float_input(x, lab)
        if shape[-1] != w.shape[0]:
            raise ShapeError(f"{lab}: input has {shape[-1]} features (last axis) but the "
                             f"parameters were initialised for {w.shape[0]} (params['w'] has "
                             f"shape {tuple(w.shape)}); got input shape {tuple(shape)}")
        return _act.linear(x, w, params.get("b"))

    def macs(self, input_shape, output_shape, params) -> int:
        return math.prod(input_shape) * output_shape[-1]


# -- convolutions ------------------------------------------------------------

class _ConvBase(Layer):
    """What Conv and ConvTranspose share: validated hyper-parameters and the steps of
    ``init`` / ``apply``.

    ``transpose`` selects the weight layout: ``[*kernel, C_in // groups, C_out]``
    (Conv) or ``[*kernel, C_in, C_out // groups]`` (ConvTranspose). Per-dim
    hyper-parameters are kept as given (int or tuple); a tuple fixes the
    spatial rank (``self.rank``; None: taken from the input).
    """

    out_channels: int
    kernel_size: int | tuple
    _: KW_ONLY
    stride: int | tuple = 1
    padding: object = 0
    dilation: int | tuple = 1
    groups: int = 1
    bias: bool = True
    w_init: Callable | None = None
    b_init: Callable | None = None

    transpose = False

    def _per_dim(self) -> dict:
        return {"kernel_size": self.kernel_size, "stride": self.stride, "dilation": self.dilation}

    def __post_init__(self):
        super().__post_init__()
        where = self.where()
        out_channels = check_int(self.out_channels, "out_channels", where, 1)
        groups = check_int(self.groups, "groups", where, 1)
        per_dim = self._per_dim()
        rank = implied_rank(where, **per_dim)
        per_dim = {arg: check_spatial(v, arg, where, 0 if arg == "output_padding" else 1, rank)
                   for arg, v in per_dim.items()}
        padding = _check_padding(self.padding, where, rank)
        if out_channels % groups:
            raise ConfigError(f"{where}: groups={groups} must divide out_channels; got "
                              f"out_channels={out_channels}")
        check_initializer(self.w_init, "w_init", where)
        check_initializer(self.b_init, "b_init", where)
        self._set(out_channels=out_channels, groups=groups, padding=padding,
                  bias=check_bool(self.bias, "bias", where), **per_dim)
        object.__setattr__(self, "rank", rank)

    def geometry(self, lab: str, n: int):
        """Per-dim ``(kernel_size, stride, dilation)`` for ``n`` spatial dims."""
        return (ntuple(self.kernel_size, n, "kernel_size", lab),
                ntuple(self.stride, n, "stride", lab),
                ntuple(self.dilation, n, "dilation", lab))

    def input_rank(self, lab: str, shape) -> int:
        """Spatial rank of an ``init`` input (checked against ``kernel_size``'s rank)."""
        what = (f"kernel_size={self.kernel_size!r}" if isinstance(self.kernel_size, tuple)
                else "its tuple-valued hyper-parameters")
        return input_rank(lab, shape, self.rank, what)

    def in_channels(self, lab: str, shape) -> int:
        """Input channels of an ``init`` input; ``groups`` must divide them."""
        c_in = shape[-1]
        if c_in % self.groups:
            raise ConfigError(f"{lab}: groups={self.groups} must divide the input channels; got "
                              f"{c_in} input channels (input shape {tuple(shape)})")
        return c_in

    def init_params(self, key, lab: str, kernel, c_in: int):
        """``{'w', 'b'?}`` for per-dim ``kernel`` and ``c_in`` input channels."""
        g, c_out = self.groups, self.out_channels
        if self.transpose:
            w_shape, fan_in = (*kernel, c_in, c_out // g), fan_in_conv_transpose
        else:
            w_shape, fan_in = (*kernel, c_in // g, c_out), fan_in_conv
        return _make_params(key, lab, w_shape, self.w_init, (c_out,) if self.bias else None,
                            self.b_init, fan_in(w_shape))

    def weight(self, lab: str, params, x):
        """``(w, shape, n)``: ``params['w']``, the shape of the ``apply`` input ``x`` and its
        spatial rank, checked against each other."""
        w = _param(params, "w", lab)
        shape = jnp.shape(x)
        check_float_input(x, lab)
        n = input_rank(lab, shape, w.ndim - 2, f"params['w'] of shape {tuple(w.shape)}")
        expected = w.shape[-2] if self.transpose else w.shape[-2] * self.groups
        _check_channels(lab, shape, expected, w.shape, self.groups)
        return w, shape, n


class Conv(_ConvBase):
    """N-d convolution, channels last (``torch.nn.Conv1d/2d/3d``).

    The spatial rank is ``len(kernel_size)`` if it is a tuple, else the
    input's rank minus 2: ``Conv(16, 3)`` is a 2-d conv on ``[N, H, W, C]``
    and a 1-d conv on ``[N, L, C]``; ``Conv(16, (3, 3))`` refuses a rank-3 input.

    Shapes: ``[N, *spatial, C_in] -> [N, *out_spatial, out_channels]`` with
    ``out = floor((L + lo + hi - dilation*(k-1) - 1) / stride) + 1``
    (``'SAME'``: ``ceil(L / stride)``).

    Args:
      out_channels: number of output channels (divisible by ``groups``).
      kernel_size: int or one int per spatial dim.
      stride: int or one int per spatial dim, ``>= 1``.
      padding: int, one int per dim, one ``(lo, hi)`` pair per dim, ``'SAME'``
        or ``'VALID'``.
      dilation: int or one int per spatial dim, ``>= 1``.
      groups: split channels into this many independent groups; must divide
        ``C_in`` and ``out_channels``.
      bias: whether to add a bias.
      w_init: initialiser for ``w: [*kernel, C_in // groups, out_channels]``;
        default PyTorch's ``U(±1/sqrt(fan_in))``, ``fan_in = C_in/groups * prod(kernel)``.
      b_init: initialiser for ``b: [out_channels]``; default as PyTorch.
      name: parameter key (default ``'conv'``).

    Params: ``{'w': [*kernel, C_in // groups, out_channels], 'b': [out_channels]}``.

    Example:
      >>> layer = Conv(32, 5, padding=2)
      >>> out_shape, params = layer.init(jax.random.key(0), (8, 28, 28, 1))
      >>> out_shape, params['w'].shape
      ((8, 28, 28, 32), (5, 5, 1, 32))
    """

    def build(self, key, input_shape):
        lab = self.label()
        k, s, d = self.geometry(lab, self.input_rank(lab, input_shape))
        c_in = self.in_channels(lab, input_shape)
        _, out = _conv_out(lab, input_shape, k, s, self.padding, d)
        params = self.init_params(key, lab, k, c_in)
        return (input_shape[0], *out, self.out_channels), params

    def forward(self, params, x, *, key, train):
        lab = self.label()
        w, shape, n = self.weight(lab, params, x)
        _, s, d = self.geometry(lab, n)
        pads, _ = _conv_out(lab, shape, w.shape[:n], s, self.padding, d)
        return conv(x, w, params.get("b"), stride=s, padding=pads, dilation=d, groups=self.groups)

    def macs(self, input_shape, output_shape, params) -> int:
        w = params["w"].shape
        return (input_shape[0] * output_shape[-1] * math.prod(output_shape[1:-1])
                * math.prod(w[:-1]))


class ConvTranspose(_ConvBase):
    """N-d transposed convolution, channels last (``torch.nn.ConvTranspose1d/2d/3d``).

    The spatial rank is ``len(kernel_size)`` if it is a tuple, else the
    input's rank minus 2.

    Shapes: ``[N, *spatial, C_in] -> [N, *out_spatial, out_channels]`` with
    ``out = (L - 1) * stride - lo - hi + dilation*(k-1) + output_padding + 1``
    (``'SAME'``: ``L * stride + output_padding``).

    Args:
      out_channels: number of output channels (divisible by ``groups``).
      kernel_size: int or one int per spatial dim.
      stride: int or one int per spatial dim, ``>= 1``.
      padding: int or per-dim ints (cropped from both ends of the output, as
        in PyTorch), per-dim ``(lo, hi)`` pairs, ``'SAME'`` or ``'VALID'``.
      output_padding: int or per-dim ints added at the high end; each must be
        smaller than the stride or the dilation.
      dilation: int or one int per spatial dim, ``>= 1``.
      groups: must divide ``C_in`` and ``out_channels``.
      bias: whether to add a bias.
      w_init: initialiser for ``w: [*kernel, C_in, out_channels // groups]``;
        default PyTorch's ``U(±1/sqrt(fan_in))`` with PyTorch's
        ``fan_in = out_channels/groups * prod(kernel)``.
      b_init: initialiser for ``b: [out_channels]``; default as PyTorch.
      name: parameter key (default ``'conv_transpose'``).

    Params: ``{'w': [*kernel, C_in, out_channels // groups], 'b': [out_channels]}``.

    Example:
      >>> layer = ConvTranspose(3, 4, stride=2, padding=1)
      >>> out_shape, params = layer.init(jax.random.key(0), (8, 16, 16, 8))
      >>> out_shape, params['w'].shape
      ((8, 32, 32, 3), (4, 4, 8, 3))
    """

    _: KW_ONLY
    output_padding: int | tuple = 0

    transpose = True

    def _per_dim(self) -> dict:
        return {**super()._per_dim(), "output_padding": self.output_padding}

    def __post_init__(self):
        super().__post_init__()
        self._geometry(self.where(), self.rank or 1)  # fail early on the output_padding rule

    def _geometry(self, lab, n):
        k, s, d = self.geometry(lab, n)
        op = ntuple(self.output_padding, n, "output_padding", lab)
        if any(o >= max(si, di) for o, si, di in zip(op, s, d)):
            raise ConfigError(f"{lab}: output_padding must be smaller than either stride or "
                              f"dilation; got output_padding={self.output_padding!r} with "
                              f"stride={self.stride!r}, dilation={self.dilation!r}")
        return k, s, d, op

    def _out_size(self, lab, shape, k, s, d, op):
        pads = _transpose_pads(self.padding, shape[1:-1], k, s, d, lab)
        out = tuple((L - 1) * si - lo - hi + di * (ki - 1) + oi + 1
                    for L, ki, si, di, oi, (lo, hi) in zip(shape[1:-1], k, s, d, op, pads))
        if any(o < 1 for o in out):
            raise ShapeError(f"{lab}: output spatial size would be {out} (< 1) for input shape "
                             f"{tuple(shape)} with padding={self.padding!r}, kernel_size={k}, "
                             f"stride={s}, dilation={d}")
        return out

    def build(self, key, input_shape):
        lab = self.label()
        k, s, d, op = self._geometry(lab, self.input_rank(lab, input_shape))
        c_in = self.in_channels(lab, input_shape)
        out = self._out_size(lab, input_shape, k, s, d, op)
        params = self.init_params(key, lab, k, c_in)
        return (input_shape[0], *out, self.out_channels), params

    def forward(self, params, x, *, key, train):
        lab = self.label()
        w, shape, n = self.weight(lab, params, x)
        _, s, d, op = self._geometry(lab, n)
        self._out_size(lab, shape, w.shape[:n], s, d, op)
        return conv_transpose(x, w, params.get("b"), stride=s, padding=self.padding,
                              output_padding=op, dilation=d, groups=self.groups)

    def macs(self, input_shape, output_shape, params) -> int:
        w = params["w"].shape
        return input_shape[0] * math.prod(input_shape[1:]) * w[-1] * math.prod(w[:-2])

"""Layers with weights: Dense and the N-d convolutions Conv and ConvTranspose.

Data layout: channels last, ``x: [N, *spatial, C]`` (NHWC in 2-d); weights
are ``w: [in, out]`` (Dense), ``[*kernel, C_in // groups, C_out]`` (Conv) and
``[*kernel, C_in, C_out // groups]`` (ConvTranspose), with an optional bias
``b: [out]``. Every constructor returns a :class:`~fundl._layer.Layer` (see
``fundl/_layer.py``: ``init(key, input_shape) -> (out_shape, params)``,
``apply(params, x, *, key=None, train=False) -> y``). Hyper-parameters are
validated when the layer is constructed (ConfigError naming the layer, the
argument and the value); shapes at ``init`` and again at ``apply``
(ShapeError naming the layer's path, e.g. ``Conv 'features/conv1'``), so no
raw XLA error reaches the user. Default initialisation follows PyTorch (see
:mod:`fundl._init`); override it per layer with ``w_init`` / ``b_init``,
callables ``(key, shape, dtype) -> array`` such as
``jax.nn.initializers.he_normal()``.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from . import _activations as _act
from ._checks import check_spatial, implied_rank, input_rank
from ._conv import _transpose_pads, conv, conv_transpose
from ._errors import ConfigError, ShapeError
from ._init import (check_initializer, fan_in_conv, fan_in_conv_transpose, fan_in_dense,
                    run_initializer, torch_default)
from ._layer import Layer, label, layer
from ._shapes import conv_output_size, resolve_padding
from ._util import check_bool, check_int, check_name, ntuple

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


def _config(**kw):
    """Hyper-parameters for ``repr``; initialisers only when overridden."""
    return {k: v for k, v in kw.items() if not (k in ("w_init", "b_init") and v is None)}


# -- Dense -------------------------------------------------------------------

def Dense(features: int, *, bias: bool = True, w_init=None, b_init=None,
          name: str | None = None) -> Layer:
    """Fully connected layer ``y = x @ w + b`` (``torch.nn.Linear``).

    Shapes: ``[N, in] -> [N, features]``. A rank > 2 input (e.g. after a
    convolution) is an error: insert :func:`Flatten` first.

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
      >>> layer.apply(params, jnp.ones((8, 4))).shape
      (8, 3)
    """
    kind = "Dense"
    name = check_name(kind, name, "dense")
    where = f"{kind} '{name}'"
    features = check_int(features, "features", where, 1)
    bias = check_bool(bias, "bias", where)
    check_initializer(w_init, "w_init", where)
    check_initializer(b_init, "b_init", where)

    def check_rank(lab, shape):
        if len(shape) != 2:
            hint = (" Insert Flatten() before Dense." if len(shape) > 2
                    else " Add a batch axis, e.g. x[None].")
            raise ShapeError(f"{lab}: input must be [N, features] (rank 2); got input shape "
                             f"{tuple(shape)} (rank {len(shape)}).{hint}")

    def init(key, input_shape):
        lab = label(kind)
        check_rank(lab, input_shape)
        w_shape = (input_shape[-1], features)
        params = _make_params(key, lab, w_shape, w_init, (features,) if bias else None, b_init,
                              fan_in_dense(w_shape))
        return (input_shape[0], features), params

    def apply(params, x, *, key, train):
        lab = label(kind)
        w = _param(params, "w", lab)
        shape = jnp.shape(x)
        check_rank(lab, shape)
        if shape[-1] != w.shape[0]:
            raise ShapeError(f"{lab}: input has {shape[-1]} features but the parameters were "
                             f"initialised for {w.shape[0]} (params['w'] has shape "
                             f"{tuple(w.shape)}); got input shape {tuple(shape)}")
        return _act.linear(x, w, params.get("b"))

    def macs(in_shape, out_shape, params):
        return in_shape[0] * in_shape[1] * out_shape[1]

    return layer(kind, name, init, apply, macs=macs,
                 config=_config(features=features, bias=bias, w_init=w_init, b_init=b_init))


# -- convolutions ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _ConvSpec:
    """The validated hyper-parameters of a Conv or ConvTranspose, and the steps of
    ``init`` / ``apply`` the two share.

    ``transpose`` selects the weight layout: ``[*kernel, C_in // groups, C_out]``
    (Conv) or ``[*kernel, C_in, C_out // groups]`` (ConvTranspose, which also
    has ``output_padding``; None for Conv). Per-dim hyper-parameters are kept
    as given (int or tuple); ``rank`` is the spatial rank a tuple fixed, or None.
    """
    kind: str
    name: str
    transpose: bool
    out_channels: int
    kernel_size: int | tuple
    stride: int | tuple
    padding: object
    dilation: int | tuple
    groups: int
    bias: bool
    w_init: Callable | None
    b_init: Callable | None
    rank: int | None
    output_padding: int | tuple | None = None

    @property
    def where(self) -> str:
        return f"{self.kind} '{self.name}'"

    def geometry(self, lab: str, n: int):
        """Per-dim ``(kernel_size, stride, dilation)`` for ``n`` spatial dims."""
        return (ntuple(self.kernel_size, n, "kernel_size", lab),
                ntuple(self.stride, n, "stride", lab),
                ntuple(self.dilation, n, "dilation", lab))

    def input_rank(self, lab: str, shape) -> int:
        """Spatial rank of an ``init`` input (checked against ``kernel_size``'s rank)."""
        return input_rank(lab, shape, self.rank, f"kernel_size={self.kernel_size!r}")

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
        n = input_rank(lab, shape, w.ndim - 2, f"params['w'] of shape {tuple(w.shape)}")
        expected = w.shape[-2] if self.transpose else w.shape[-2] * self.groups
        _check_channels(lab, shape, expected, w.shape, self.groups)
        return w, shape, n

    def config(self):
        """Hyper-parameters for ``repr``, in the constructor's order."""
        extra = {"output_padding": self.output_padding} if self.transpose else {}
        return _config(out_channels=self.out_channels, kernel_size=self.kernel_size,
                       stride=self.stride, padding=self.padding, **extra,
                       dilation=self.dilation, groups=self.groups, bias=self.bias,
                       w_init=self.w_init, b_init=self.b_init)


def _conv_spec(kind, name, default, *, transpose, out_channels, kernel_size, stride, padding,
               dilation, groups, bias, w_init, b_init, output_padding=None) -> _ConvSpec:
    """Construction-time validation shared by Conv and ConvTranspose (ConfigError naming the layer)."""
    name = check_name(kind, name, default)
    where = f"{kind} '{name}'"
    out_channels = check_int(out_channels, "out_channels", where, 1)
    groups = check_int(groups, "groups", where, 1)
    per_dim = {"kernel_size": kernel_size, "stride": stride, "dilation": dilation}
    if transpose:
        per_dim["output_padding"] = output_padding
    rank = implied_rank(where, **per_dim)
    per_dim = {arg: check_spatial(v, arg, where, 0 if arg == "output_padding" else 1, rank)
               for arg, v in per_dim.items()}
    padding = _check_padding(padding, where, rank)
    bias = check_bool(bias, "bias", where)
    check_initializer(w_init, "w_init", where)
    check_initializer(b_init, "b_init", where)
    if out_channels % groups:
        raise ConfigError(f"{where}: groups={groups} must divide out_channels; got "
                          f"out_channels={out_channels}")
    return _ConvSpec(kind, name, transpose, out_channels, padding=padding, groups=groups,
                     bias=bias, w_init=w_init, b_init=b_init, rank=rank, **per_dim)


def Conv(out_channels: int, kernel_size, *, stride=1, padding=0, dilation=1, groups: int = 1,
         bias: bool = True, w_init=None, b_init=None, name: str | None = None) -> Layer:
    """N-d convolution, channels last (``torch.nn.Conv1d/2d/3d``).

    The spatial rank is ``len(kernel_size)`` if it is a tuple, else the
    input's rank minus 2: ``Conv(16, 3)`` is a 2-d conv on ``[N, H, W, C]``
    and a 1-d conv on ``[N, L, C]``.

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
    spec = _conv_spec("Conv", name, "conv", transpose=False, out_channels=out_channels,
                      kernel_size=kernel_size, stride=stride, padding=padding,
                      dilation=dilation, groups=groups, bias=bias, w_init=w_init, b_init=b_init)

    def init(key, input_shape):
        lab = label(spec.kind)
        k, s, d = spec.geometry(lab, spec.input_rank(lab, input_shape))
        c_in = spec.in_channels(lab, input_shape)
        _, out = _conv_out(lab, input_shape, k, s, spec.padding, d)
        params = spec.init_params(key, lab, k, c_in)
        return (input_shape[0], *out, spec.out_channels), params

    def apply(params, x, *, key, train):
        lab = label(spec.kind)
        w, shape, n = spec.weight(lab, params, x)
        _, s, d = spec.geometry(lab, n)
        pads, _ = _conv_out(lab, shape, w.shape[:n], s, spec.padding, d)
        return conv(x, w, params.get("b"), stride=s, padding=pads, dilation=d, groups=spec.groups)

    def macs(in_shape, out_shape, params):
        w = params["w"].shape
        return in_shape[0] * out_shape[-1] * math.prod(out_shape[1:-1]) * math.prod(w[:-1])

    return layer(spec.kind, spec.name, init, apply, macs=macs, config=spec.config())


def ConvTranspose(out_channels: int, kernel_size, *, stride=1, padding=0, output_padding=0,
                  dilation=1, groups: int = 1, bias: bool = True, w_init=None, b_init=None,
                  name: str | None = None) -> Layer:
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
    spec = _conv_spec("ConvTranspose", name, "conv_transpose", transpose=True,
                      out_channels=out_channels, kernel_size=kernel_size, stride=stride,
                      padding=padding, dilation=dilation, groups=groups, bias=bias,
                      w_init=w_init, b_init=b_init, output_padding=output_padding)

    def geometry(lab, n):
        k, s, d = spec.geometry(lab, n)
        op = ntuple(spec.output_padding, n, "output_padding", lab)
        if any(o >= max(si, di) for o, si, di in zip(op, s, d)):
            raise ConfigError(f"{lab}: output_padding must be smaller than either stride or "
                              f"dilation; got output_padding={spec.output_padding!r} with "
                              f"stride={spec.stride!r}, dilation={spec.dilation!r}")
        return k, s, d, op

    def out_size(lab, shape, k, s, d, op):
        pads = _transpose_pads(spec.padding, shape[1:-1], k, s, d, lab)
        out = tuple((L - 1) * si - lo - hi + di * (ki - 1) + oi + 1
                    for L, ki, si, di, oi, (lo, hi) in zip(shape[1:-1], k, s, d, op, pads))
        if any(o < 1 for o in out):
            raise ShapeError(f"{lab}: output spatial size would be {out} (< 1) for input shape "
                             f"{tuple(shape)} with padding={spec.padding!r}, kernel_size={k}, "
                             f"stride={s}, dilation={d}")
        return out

    geometry(spec.where, spec.rank or 1)  # fail early on the output_padding rule

    def init(key, input_shape):
        lab = label(spec.kind)
        k, s, d, op = geometry(lab, spec.input_rank(lab, input_shape))
        c_in = spec.in_channels(lab, input_shape)
        out = out_size(lab, input_shape, k, s, d, op)
        params = spec.init_params(key, lab, k, c_in)
        return (input_shape[0], *out, spec.out_channels), params

    def apply(params, x, *, key, train):
        lab = label(spec.kind)
        w, shape, n = spec.weight(lab, params, x)
        _, s, d, op = geometry(lab, n)
        out_size(lab, shape, w.shape[:n], s, d, op)
        return conv_transpose(x, w, params.get("b"), stride=s, padding=spec.padding,
                              output_padding=op, dilation=d, groups=spec.groups)

    def macs(in_shape, out_shape, params):
        w = params["w"].shape
        return in_shape[0] * math.prod(in_shape[1:]) * w[-1] * math.prod(w[:-2])

    return layer(spec.kind, spec.name, init, apply, macs=macs, config=spec.config())

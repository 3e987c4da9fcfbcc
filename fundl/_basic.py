"""Stateless leaf layers: Dense, convolutions, pooling, reshaping, dropout, activations.

Data layout: channels last, ``x: [N, *spatial, C]`` (NHWC in 2-d). Every
constructor returns a :class:`~fundl._layer.Layer`; see ``fundl/_layer.py``
for the protocol (``init(key, input_shape) -> (out_shape, params)``,
``apply(params, x, *, key=None, train=False) -> y``).

Hyper-parameters are validated when the layer is constructed (ConfigError
naming the layer, the argument and the value); shapes are validated at
``init`` and again at ``apply`` (ShapeError naming the layer's path, e.g.
``Conv 'features/conv1'``), so no raw XLA error reaches the user.

Default initialisation follows PyTorch (see :mod:`fundl._init`); override it
per layer with ``w_init`` / ``b_init``, callables ``(key, shape, dtype) ->
array`` such as ``jax.nn.initializers.he_normal()``.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from . import _activations as _act
from ._conv import _transpose_pads, conv, conv_transpose
from ._errors import ConfigError, ShapeError
from ._init import (check_initializer, fan_in_conv, fan_in_conv_transpose, fan_in_dense,
                    run_initializer, torch_default)
from ._layer import Layer, label, layer
from ._pool import adaptive_avg_pool, avg_pool, global_avg_pool, max_pool, pool_output_size
from ._shapes import conv_output_size, resolve_padding
from ._util import ntuple

__all__ = [
    "AdaptiveAvgPool", "AvgPool", "Conv", "ConvTranspose", "Dense", "Dropout", "ELU", "Flatten",
    "GELU", "GlobalAvgPool", "Identity", "LeakyReLU", "LogSoftmax", "MaxPool", "ReLU", "Sigmoid",
    "Softmax", "Softplus", "Tanh",
]

_PARAM_DTYPE = jnp.float32
_LAYOUTS = {1: "[N, L, C]", 2: "[N, H, W, C]", 3: "[N, D, H, W, C]"}


# -- construction-time validation -------------------------------------------

def _name(kind: str, name, default: str) -> str:
    if name is None:
        return default
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"{kind}: name must be a non-empty string without '/'; got {name!r}")
    return name


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _int(value, arg: str, where: str, minimum: int) -> int:
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"{where}: {arg} must be an int >= {minimum}; got {arg}={value!r}")
    return int(value)


def _number(value, arg: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"{where}: {arg} must be a finite number; got {arg}={value!r}")
    return float(value)


def _bool(value, arg: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {arg} must be True or False; got {arg}={value!r}")
    return value


def _is_seq(v) -> bool:
    return isinstance(v, Sequence) and not isinstance(v, str)


def _implied_rank(where: str, **args) -> int | None:
    """Spatial rank fixed by tuple-valued hyper-parameters (None: taken from the input)."""
    rank, first = None, None
    for arg, v in args.items():
        if not _is_seq(v):
            continue
        if not 1 <= len(v) <= 3:
            raise ConfigError(f"{where}: {arg} must be an int or a tuple of 1 to 3 ints "
                              f"(one per spatial dim); got {arg}={v!r}")
        if rank is None:
            rank, first = len(v), arg
        elif len(v) != rank:
            raise ConfigError(f"{where}: {first} and {arg} give different numbers of spatial "
                              f"dims; got {first}={args[first]!r}, {arg}={v!r}")
    return rank


def _spatial(value, arg: str, where: str, minimum: int, rank: int | None):
    """Validate an int-or-per-dim hyper-parameter; kept as given (int or tuple)."""
    n = rank if rank is not None else (len(value) if _is_seq(value) else 1)
    ntuple(value, n, arg, where, minimum=minimum)
    return tuple(int(v) for v in value) if _is_seq(value) else int(value)


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


# -- init/apply helpers -----------------------------------------------------

def _input_rank(lab: str, shape, rank: int | None, what: str) -> int:
    """Spatial rank of an ``[N, *spatial, C]`` input, checked against ``rank``."""
    nd = len(shape)
    hint = ""
    if rank is not None and nd == rank + 1:
        hint = " Add a channel axis, e.g. x[..., None]."
    elif rank is None and nd == 2:
        hint = " Add a channel axis, e.g. x[..., None], for a 1-d signal."
    if rank is None:
        if not 3 <= nd <= 5:
            raise ShapeError(f"{lab}: input must be [N, *spatial, C] with 1 to 3 spatial dims "
                             f"(rank 3 to 5); got input shape {tuple(shape)} (rank {nd}).{hint}")
        return nd - 2
    if nd != rank + 2:
        raise ShapeError(f"{lab}: {what} means {rank} spatial dim(s), so the input must be "
                         f"{_LAYOUTS[rank]} (rank {rank + 2}); got input shape {tuple(shape)} "
                         f"(rank {nd}).{hint}")
    return rank


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
    name = _name(kind, name, "dense")
    where = f"{kind} '{name}'"
    features = _int(features, "features", where, 1)
    bias = _bool(bias, "bias", where)
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
    kind = "Conv"
    name = _name(kind, name, "conv")
    where = f"{kind} '{name}'"
    out_channels = _int(out_channels, "out_channels", where, 1)
    groups = _int(groups, "groups", where, 1)
    rank = _implied_rank(where, kernel_size=kernel_size, stride=stride, dilation=dilation)
    kernel_size = _spatial(kernel_size, "kernel_size", where, 1, rank)
    stride = _spatial(stride, "stride", where, 1, rank)
    dilation = _spatial(dilation, "dilation", where, 1, rank)
    padding = _check_padding(padding, where, rank)
    bias = _bool(bias, "bias", where)
    check_initializer(w_init, "w_init", where)
    check_initializer(b_init, "b_init", where)
    if out_channels % groups:
        raise ConfigError(f"{where}: groups={groups} must divide out_channels; got "
                          f"out_channels={out_channels}")

    def geometry(lab, shape, n):
        k = ntuple(kernel_size, n, "kernel_size", lab)
        s = ntuple(stride, n, "stride", lab)
        d = ntuple(dilation, n, "dilation", lab)
        return k, s, d

    def init(key, input_shape):
        lab = label(kind)
        n = _input_rank(lab, input_shape, rank, f"kernel_size={kernel_size!r}")
        k, s, d = geometry(lab, input_shape, n)
        c_in = input_shape[-1]
        if c_in % groups:
            raise ConfigError(f"{lab}: groups={groups} must divide the input channels; got "
                              f"{c_in} input channels (input shape {tuple(input_shape)})")
        _, out = _conv_out(lab, input_shape, k, s, padding, d)
        w_shape = (*k, c_in // groups, out_channels)
        params = _make_params(key, lab, w_shape, w_init, (out_channels,) if bias else None,
                              b_init, fan_in_conv(w_shape))
        return (input_shape[0], *out, out_channels), params

    def apply(params, x, *, key, train):
        lab = label(kind)
        w = _param(params, "w", lab)
        shape = jnp.shape(x)
        n = _input_rank(lab, shape, w.ndim - 2, f"params['w'] of shape {tuple(w.shape)}")
        _check_channels(lab, shape, w.shape[-2] * groups, w.shape, groups)
        _, s, d = geometry(lab, shape, n)
        pads, _ = _conv_out(lab, shape, w.shape[:n], s, padding, d)
        return conv(x, w, params.get("b"), stride=s, padding=pads, dilation=d, groups=groups)

    def macs(in_shape, out_shape, params):
        w = params["w"].shape
        return in_shape[0] * out_shape[-1] * math.prod(out_shape[1:-1]) * math.prod(w[:-1])

    return layer(kind, name, init, apply, macs=macs, config=_config(
        out_channels=out_channels, kernel_size=kernel_size, stride=stride, padding=padding,
        dilation=dilation, groups=groups, bias=bias, w_init=w_init, b_init=b_init))


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
    kind = "ConvTranspose"
    name = _name(kind, name, "conv_transpose")
    where = f"{kind} '{name}'"
    out_channels = _int(out_channels, "out_channels", where, 1)
    groups = _int(groups, "groups", where, 1)
    rank = _implied_rank(where, kernel_size=kernel_size, stride=stride, dilation=dilation,
                         output_padding=output_padding)
    kernel_size = _spatial(kernel_size, "kernel_size", where, 1, rank)
    stride = _spatial(stride, "stride", where, 1, rank)
    dilation = _spatial(dilation, "dilation", where, 1, rank)
    output_padding = _spatial(output_padding, "output_padding", where, 0, rank)
    padding = _check_padding(padding, where, rank)
    bias = _bool(bias, "bias", where)
    check_initializer(w_init, "w_init", where)
    check_initializer(b_init, "b_init", where)
    if out_channels % groups:
        raise ConfigError(f"{where}: groups={groups} must divide out_channels; got "
                          f"out_channels={out_channels}")

    def geometry(lab, n):
        k = ntuple(kernel_size, n, "kernel_size", lab)
        s = ntuple(stride, n, "stride", lab)
        d = ntuple(dilation, n, "dilation", lab)
        op = ntuple(output_padding, n, "output_padding", lab)
        if any(o >= max(si, di) for o, si, di in zip(op, s, d)):
            raise ConfigError(f"{lab}: output_padding must be smaller than either stride or "
                              f"dilation; got output_padding={output_padding!r} with "
                              f"stride={stride!r}, dilation={dilation!r}")
        return k, s, d, op

    def out_size(lab, shape, k, s, d, op):
        pads = _transpose_pads(padding, shape[1:-1], k, s, d, lab)
        out = tuple((L - 1) * si - lo - hi + di * (ki - 1) + oi + 1
                    for L, ki, si, di, oi, (lo, hi) in zip(shape[1:-1], k, s, d, op, pads))
        if any(o < 1 for o in out):
            raise ShapeError(f"{lab}: output spatial size would be {out} (< 1) for input shape "
                             f"{tuple(shape)} with padding={padding!r}, kernel_size={k}, "
                             f"stride={s}, dilation={d}")
        return out

    geometry(where, rank or 1)  # fail early on the output_padding rule

    def init(key, input_shape):
        lab = label(kind)
        n = _input_rank(lab, input_shape, rank, f"kernel_size={kernel_size!r}")
        k, s, d, op = geometry(lab, n)
        c_in = input_shape[-1]
        if c_in % groups:
            raise ConfigError(f"{lab}: groups={groups} must divide the input channels; got "
                              f"{c_in} input channels (input shape {tuple(input_shape)})")
        out = out_size(lab, input_shape, k, s, d, op)
        w_shape = (*k, c_in, out_channels // groups)
        params = _make_params(key, lab, w_shape, w_init, (out_channels,) if bias else None,
                              b_init, fan_in_conv_transpose(w_shape))
        return (input_shape[0], *out, out_channels), params

    def apply(params, x, *, key, train):
        lab = label(kind)
        w = _param(params, "w", lab)
        shape = jnp.shape(x)
        n = _input_rank(lab, shape, w.ndim - 2, f"params['w'] of shape {tuple(w.shape)}")
        _check_channels(lab, shape, w.shape[-2], w.shape, groups)
        _, s, d, op = geometry(lab, n)
        out_size(lab, shape, w.shape[:n], s, d, op)
        return conv_transpose(x, w, params.get("b"), stride=s, padding=padding,
                              output_padding=op, dilation=d, groups=groups)

    def macs(in_shape, out_shape, params):
        w = params["w"].shape
        return in_shape[0] * math.prod(in_shape[1:]) * w[-1] * math.prod(w[:-2])

    return layer(kind, name, init, apply, macs=macs, config=_config(
        out_channels=out_channels, kernel_size=kernel_size, stride=stride, padding=padding,
        output_padding=output_padding, dilation=dilation, groups=groups, bias=bias,
        w_init=w_init, b_init=b_init))


# -- pooling -----------------------------------------------------------------

def _pool_layer(kind, name, kernel_size, stride, padding, dilation, ceil_mode, fn, extra):
    """Shared body of MaxPool / AvgPool; ``fn(x, k, s, p, d)`` runs the op."""
    where = f"{kind} '{name}'"
    rank = _implied_rank(where, kernel_size=kernel_size, stride=stride, padding=padding,
                         dilation=dilation)
    kernel_size = _spatial(kernel_size, "kernel_size", where, 1, rank)
    if stride is not None:
        stride = _spatial(stride, "stride", where, 1, rank)
    padding = _spatial(padding, "padding", where, 0, rank)
    dilation = _spatial(dilation, "dilation", where, 1, rank)
    ceil_mode = _bool(ceil_mode, "ceil_mode", where)

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
        n = _input_rank(lab, input_shape, rank, f"kernel_size={kernel_size!r}")
        *_, out = geometry(lab, input_shape, n)
        return (input_shape[0], *out, input_shape[-1]), {}

    def apply(params, x, *, key, train):
        lab, shape = label(kind), jnp.shape(x)
        k, s, p, d, _ = geometry(lab, shape, _input_rank(lab, shape, rank,
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
    name = _name(kind, name, "max_pool")

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
    name = _name(kind, name, "avg_pool")
    count_include_pad = _bool(count_include_pad, "count_include_pad", f"{kind} '{name}'")

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
    name = _name(kind, name, "adaptive_avg_pool")
    where = f"{kind} '{name}'"
    if _is_seq(output_size):
        if not 1 <= len(output_size) <= 3 or not all(
                o is None or (_is_int(o) and o >= 1) for o in output_size):
            raise ConfigError(f"{where}: output_size must be an int >= 1 or a tuple of 1 to 3 "
                              f"such ints (or None); got output_size={output_size!r}")
        output_size = tuple(None if o is None else int(o) for o in output_size)
        rank = len(output_size)
    else:
        output_size, rank = _int(output_size, "output_size", where, 1), None

    def out(lab, shape):
        n = _input_rank(lab, shape, rank, f"output_size={output_size!r}")
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
    name = _name(kind, name, "global_avg_pool")
    keepdims = _bool(keepdims, "keepdims", f"{kind} '{name}'")

    def check(lab, shape):
        if len(shape) < 3:
            raise ShapeError(f"{lab}: input must be [N, *spatial, C] with at least one spatial "
                             f"dim; got input shape {tuple(shape)} (rank {len(shape)})")

    def init(key, input_shape):
        check(label(kind), input_shape)
        n = len(input_shape) - 2
        return ((input_shape[0], *(1,) * n, input_shape[-1]) if keepdims
                else (input_shape[0], input_shape[-1])), {}

    def apply(params, x, *, key, train):
        check(label(kind), jnp.shape(x))
        return global_avg_pool(x, keepdims=keepdims)

    return layer(kind, name, init, apply, config={"keepdims": keepdims} if keepdims else {})


# -- reshaping, identity, dropout ------------------------------------------

def Flatten(*, name: str | None = None) -> Layer:
    """Flatten all axes after the batch: ``[N, d1, ..., dk] -> [N, d1 * ... * dk]``.

    Order is row-major over the channels-last layout, i.e. ``x.reshape(N, -1)``
    (for NHWC the channel index varies fastest). Note this differs from
    PyTorch's NCHW flatten order, which matters when porting Dense weights.

    Args:
      name: parameter key (default ``'flatten'``).

    Example:
      >>> Flatten().init(jax.random.key(0), (8, 4, 4, 64))[0]
      (8, 1024)
    """
    kind = "Flatten"
    name = _name(kind, name, "flatten")

    def check(lab, shape):
        if len(shape) < 2:
            raise ShapeError(f"{lab}: input must be [N, ...] with at least 2 axes; got input "
                             f"shape {tuple(shape)} (rank {len(shape)})")

    def init(key, input_shape):
        check(label(kind), input_shape)
        return (input_shape[0], math.prod(input_shape[1:])), {}

    def apply(params, x, *, key, train):
        shape = jnp.shape(x)
        check(label(kind), shape)
        return jnp.reshape(x, (shape[0], math.prod(shape[1:])))

    return layer(kind, name, init, apply)


def Identity(*, name: str | None = None) -> Layer:
    """Return the input unchanged (any shape).

    Args:
      name: parameter key (default ``'identity'``).

    Example:
      >>> Identity().init(jax.random.key(0), (8, 3))[0]
      (8, 3)
    """
    return layer("Identity", _name("Identity", name, "identity"),
                 lambda key, shape: (shape, {}),
                 lambda params, x, *, key, train: x)


def Dropout(rate: float, *, name: str | None = None) -> Layer:
    """Randomly zero elements with probability ``rate``, scaling the rest by ``1/(1-rate)``.

    Active only when ``apply(..., train=True, key=key)``; with ``train=False``
    it is the identity. The key is passed at call time (combinators split the
    key they are given among their children).

    Shapes: any -> same.

    Args:
      rate: probability of dropping an element, ``0 <= rate < 1``
        (``torch.nn.Dropout(p=rate)``).
      name: parameter key (default ``'dropout'``).

    Example:
      >>> layer = Dropout(0.5)
      >>> _, params = layer.init(jax.random.key(0), (4, 8))
      >>> y = layer.apply(params, jnp.ones((4, 8)), key=jax.random.key(1), train=True)
      >>> sorted(set(y.ravel().tolist())) in ([0.0, 2.0], [2.0], [0.0])
      True
    """
    kind = "Dropout"
    name = _name(kind, name, "dropout")
    where = f"{kind} '{name}'"
    if (isinstance(rate, bool) or not isinstance(rate, numbers.Real)
            or not 0.0 <= rate < 1.0):
        raise ConfigError(f"{where}: rate (probability of dropping) must be a number in "
                          f"[0, 1); got rate={rate!r}")
    rate = float(rate)

    def apply(params, x, *, key, train):
        if not train or rate == 0.0:
            return x
        if key is None:
            raise ConfigError(f"{label(kind)}: train=True needs a random key; pass "
                              "key=jax.random.key(...) to apply (or train=False to evaluate)")
        return _act.dropout(x, rate, key=key, train=True)

    return layer(kind, name, lambda key, shape: (shape, {}), apply, config={"rate": rate})


# -- activations ---------------------------------------------------------------

def _activation(kind, name, fn, config=None, check=None):
    """Elementwise (shape-preserving) layer ``y = fn(x)``; ``name`` already validated."""

    def init(key, input_shape):
        if check is not None:
            check(label(kind), input_shape)
        return input_shape, {}

    def apply(params, x, *, key, train):
        if check is not None:
            check(label(kind), jnp.shape(x))
        return fn(x)

    return layer(kind, name, init, apply, config=config)


def ReLU(*, name: str | None = None) -> Layer:
    """``max(x, 0)`` (``torch.nn.ReLU``). Shapes: any -> same.

    Example:
      >>> ReLU().apply({}, jnp.array([-1.0, 2.0]))
      Array([0., 2.], dtype=float32)
    """
    return _activation("ReLU", _name("ReLU", name, "relu"), _act.relu)


def LeakyReLU(negative_slope: float = 0.01, *, name: str | None = None) -> Layer:
    """``x if x >= 0 else negative_slope * x`` (``torch.nn.LeakyReLU``). Shapes: any -> same.

    Example:
      >>> LeakyReLU(0.1).apply({}, jnp.array([-1.0, 2.0]))
      Array([-0.1,  2. ], dtype=float32)
    """
    kind = "LeakyReLU"
    name = _name(kind, name, "leaky_relu")
    slope = _number(negative_slope, "negative_slope", f"{kind} '{name}'")
    return _activation(kind, name, lambda x: _act.leaky_relu(x, negative_slope=slope),
                       {"negative_slope": slope})


def ELU(alpha: float = 1.0, *, name: str | None = None) -> Layer:
    """``x if x > 0 else alpha * (exp(x) - 1)`` (``torch.nn.ELU``). Shapes: any -> same.

    Example:
      >>> ELU().init(jax.random.key(0), (2, 3))[0]
      (2, 3)
    """
    kind = "ELU"
    name = _name(kind, name, "elu")
    alpha = _number(alpha, "alpha", f"{kind} '{name}'")
    return _activation(kind, name, lambda x: _act.elu(x, alpha=alpha), {"alpha": alpha})


def GELU(approximate: str = "none", *, name: str | None = None) -> Layer:
    """Gaussian error linear unit (``torch.nn.GELU``); ``approximate='tanh'`` for the tanh form.

    Shapes: any -> same.

    Example:
      >>> GELU(approximate='tanh').init(jax.random.key(0), (2, 3))[0]
      (2, 3)
    """
    kind = "GELU"
    name = _name(kind, name, "gelu")
    if approximate not in ("none", "tanh"):
        raise ConfigError(f"{kind} '{name}': approximate must be 'none' or 'tanh'; "
                          f"got approximate={approximate!r}")
    return _activation(kind, name, lambda x: _act.gelu(x, approximate=approximate),
                       {"approximate": approximate})


def Sigmoid(*, name: str | None = None) -> Layer:
    """``1 / (1 + exp(-x))`` (``torch.nn.Sigmoid``). Shapes: any -> same.

    Example:
      >>> Sigmoid().apply({}, jnp.zeros(2))
      Array([0.5, 0.5], dtype=float32)
    """
    return _activation("Sigmoid", _name("Sigmoid", name, "sigmoid"), _act.sigmoid)


def Tanh(*, name: str | None = None) -> Layer:
    """Hyperbolic tangent (``torch.nn.Tanh``). Shapes: any -> same.

    Example:
      >>> Tanh().apply({}, jnp.zeros(2))
      Array([0., 0.], dtype=float32)
    """
    return _activation("Tanh", _name("Tanh", name, "tanh"), _act.tanh)


def Softplus(beta: float = 1, threshold: float = 20, *, name: str | None = None) -> Layer:
    """``log(1 + exp(beta * x)) / beta`` (``torch.nn.Softplus``).

    Linear (``y = x``) where ``beta * x > threshold``, for numerical stability.

    Shapes: any -> same.

    Example:
      >>> Softplus(beta=2).init(jax.random.key(0), (2, 3))[0]
      (2, 3)
    """
    kind = "Softplus"
    name = _name(kind, name, "softplus")
    where = f"{kind} '{name}'"
    beta = _number(beta, "beta", where)
    threshold = _number(threshold, "threshold", where)
    if beta <= 0:
        raise ConfigError(f"{where}: beta must be > 0; got beta={beta!r}")
    return _activation(kind, name, lambda x: _act.softplus(x, beta=beta, threshold=threshold),
                       {"beta": beta, "threshold": threshold})


def _axis_layer(kind, name, default, axis, fn):
    name = _name(kind, name, default)
    if not _is_int(axis):
        raise ConfigError(f"{kind} '{name}': axis must be an int; got axis={axis!r}")
    axis = int(axis)

    def check(lab, shape):
        if not -len(shape) <= axis < len(shape):
            raise ShapeError(f"{lab}: axis={axis} is out of range for input shape "
                             f"{tuple(shape)} (rank {len(shape)})")

    return _activation(kind, name, lambda x: fn(x, axis=axis), {"axis": axis}, check)


def Softmax(axis: int = -1, *, name: str | None = None) -> Layer:
    """``exp(x) / sum(exp(x), axis)`` (``torch.nn.Softmax(dim=axis)``). Shapes: any -> same.

    Example:
      >>> Softmax().apply({}, jnp.zeros((1, 4)))
      Array([[0.25, 0.25, 0.25, 0.25]], dtype=float32)
    """
    return _axis_layer("Softmax", name, "softmax", axis, _act.softmax)


def LogSoftmax(axis: int = -1, *, name: str | None = None) -> Layer:
    """``log(softmax(x, axis))``, computed stably (``torch.nn.LogSoftmax(dim=axis)``).

    Shapes: any -> same.

    Example:
      >>> LogSoftmax().init(jax.random.key(0), (8, 10))[0]
      (8, 10)
    """
    return _axis_layer("LogSoftmax", name, "log_softmax", axis, _act.log_softmax)

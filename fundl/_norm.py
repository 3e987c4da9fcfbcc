"""Normalisation layers: BatchNorm (with running statistics) and LayerNorm.

Data layout: channels last, ``x: [N, *spatial, C]``; both layers act per
channel ``C`` (the last axis), matching ``torch.nn.BatchNorm1d/2d/3d`` and
``torch.nn.LayerNorm(C)``.

BatchNorm is stateful (see ``fundl/_layer.py``): ``init`` returns
``(out_shape, params, state)`` and ``apply(params, x, state=state,
train=...)`` returns ``(y, new_state)``.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._checks import channels
from ._errors import ConfigError, ShapeError
from ._layer import Layer, label, layer, stateful_layer
from ._util import check_bool, check_name, check_real

__all__ = ["BatchNorm", "LayerNorm"]


def _bcast(v, ndim: int):
    """``[C] -> [1, ..., 1, C]``: explicit, since strict mode forbids rank promotion."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


class _Mode(NamedTuple):
    axis_name: object
    sync: bool
    groups: int


_MODE: contextvars.ContextVar[_Mode | None] = contextvars.ContextVar("fundl_bn_mode", default=None)


@contextlib.contextmanager
def batch_stats_mode(*, axis_name=None, sync: bool = True, groups: int = 1):
    """While tracing a data-parallel step: how BatchNorm layers without ``axis_name`` behave.

    Used by :func:`fundl.train.make_train_step`; BatchNorm layers built with
    their own ``axis_name`` keep it.

    Args:
      axis_name: the mapped device axis (``pmap``/``shard_map``), or ``None``.
      sync: with ``axis_name``: ``True`` normalises with statistics averaged over
        the axis (cross-replica); ``False`` with each device's own statistics,
        the running statistics being updated with their average over devices.
      groups: in a global-view (``jit``) step, split the batch into ``groups``
        equal contiguous groups (one per device) and normalise each with its own
        statistics ("ghost" batch norm); the running statistics are updated with
        the average of the groups' statistics (mean, and unbiased variance).
    """
    if not isinstance(groups, int) or groups < 1:
        raise ConfigError(f"batch_stats_mode: groups must be an int >= 1; got groups={groups!r}")
    token = _MODE.set(_Mode(axis_name, bool(sync), groups))
    try:
        yield
    finally:
        _MODE.reset(token)


def _compute_dtype(dtype):
    # Statistics of bf16/fp16 activations are accumulated in float32.
    return jnp.promote_types(dtype, jnp.float32)


def _affine_params(affine: bool, c: int):
    if not affine:
        return {}
    return {"scale": jnp.ones((c,), jnp.float32), "bias": jnp.zeros((c,), jnp.float32)}


def _check_params(lab: str, params, affine: bool, c: int):
    if not affine:
        return
    for k in ("scale", "bias"):
        if not isinstance(params, Mapping) or k not in params:
            got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
            raise ShapeError(f"{lab}: params must be a dict with keys 'scale' and 'bias' (as "
                             f"returned by init); got {got}")
        if params[k].shape != (c,):
            raise ShapeError(f"{lab}: input has {c} channels (last axis) but params[{k!r}] has "
                             f"shape {tuple(params[k].shape)}")


def BatchNorm(*, momentum: float = 0.1, eps: float = 1e-5, affine: bool = True,
              axis_name=None, name: str | None = None) -> Layer:
    """Batch normalisation per channel (``torch.nn.BatchNorm1d/2d/3d``), channels last.

    Normalises over every axis except the last, so it works on ``[N, C]``,
    ``[N, L, C]``, ``[N, H, W, C]`` and ``[N, D, H, W, C]``:
    ``y = (x - mean) / sqrt(var + eps) * scale + bias``.

    * ``train=True``: batch statistics (biased variance) normalise ``x`` and
      update the running statistics with PyTorch's rule
      ``running = (1 - momentum) * running + momentum * batch``, using the
      unbiased batch variance (``n / (n - 1)``) for ``running var``.
    * ``train=False``: the running statistics normalise ``x``; the state is
      returned unchanged.

    Note ``momentum`` is PyTorch's (weight of the NEW batch, default 0.1), the
    complement of Flax/Keras's ``momentum=0.9``.

    Args:
      momentum: weight of the current batch in the running averages, in ``[0, 1]``.
      eps: added to the variance, ``> 0``.
      affine: learn a per-channel ``scale`` and ``bias``.
      axis_name: name of a mapped axis (``jax.vmap``/``pmap``/``shard_map``)
        to average the batch statistics over (cross-replica / synchronised
        BN); every shard must hold the same number of elements. Not needed
        with ``make_train_step(..., parallel=...)``, which chooses synchronised
        or per-device statistics with its ``sync_batch_stats`` argument.
      name: parameter key (default ``'batch_norm'``).

    Params: ``{'scale': [C] ones, 'bias': [C] zeros}`` (``{}`` if not affine).
    State: ``{'mean': [C] zeros, 'var': [C] ones}``.

    Example:
      >>> bn = BatchNorm()
      >>> out_shape, params, state = bn.init(jax.random.key(0), (8, 4, 4, 16))
      >>> x = jax.random.normal(jax.random.key(1), (8, 4, 4, 16))
      >>> y, state = bn.apply(params, x, state=state, train=True)
      >>> y.shape, state['mean'].shape
      ((8, 4, 4, 16), (16,))
    """
    kind = "BatchNorm"
    name = check_name(kind, name, "batch_norm")
    where = f"{kind} '{name}'"
    momentum = check_real(momentum, "momentum", where, 0.0, 1.0, lo_open=False)
    eps = check_real(eps, "eps", where, 0.0, None, lo_open=True)
    affine = check_bool(affine, "affine", where)
    if axis_name is not None and not isinstance(axis_name, (str, tuple)):
        raise ConfigError(f"{where}: axis_name must be None, a str or a tuple of str; got "
                          f"axis_name={axis_name!r}")

    def init_fn(key, input_shape):
        c = channels(label(kind), input_shape, "[N, ..., C]")
        state = {"mean": jnp.zeros((c,), jnp.float32), "var": jnp.ones((c,), jnp.float32)}
        return input_shape, _affine_params(affine, c), state

    def apply_fn(params, state, x, *, key, train):
        lab = label(kind)
        x = jnp.asarray(x)
        shape = x.shape
        c = channels(lab, shape, "[N, ..., C]")
        if not isinstance(state, Mapping) or not {"mean", "var"} <= set(state):
            raise ConfigError(f"{lab}: state must be the dict {{'mean', 'var'}} returned by "
                              f"init; got {state!r}")
        if state["mean"].shape != (c,):
            raise ShapeError(f"{lab}: input has {c} channels (last axis) but the state was "
                             f"initialised for {state['mean'].shape[0]}; got input shape "
                             f"{tuple(shape)}")
        _check_params(lab, params, affine, c)
        nd = len(shape)
        xf = x.astype(_compute_dtype(x.dtype))
        # Work on [G, N/G, ..., C]: G = 1 but for per-device ("ghost") statistics in a
        # global-view data-parallel step (see batch_stats_mode); statistics are [G, 1, ..., C].
        ax, sync, groups = axis_name, True, 1
        mode = _MODE.get()
        if ax is None and mode is not None:
            ax, sync, groups = mode.axis_name, mode.sync, mode.groups
        if train and groups > 1 and shape[0] % groups:
            raise ShapeError(f"{lab}: per-device batch statistics over {groups} devices need a "
                             f"batch divisible by {groups}; got input shape {tuple(shape)}")
        g = groups if train else 1
        xg = jnp.reshape(xf, (g, shape[0] // g, *shape[1:]))
        axes = tuple(range(1, nd))
        if train:
            n = 1
            for d in xg.shape[1:-1]:
                n *= d
            if ax is not None and sync:
                n = n * jax.lax.axis_size(ax)
            if isinstance(n, int) and n < 2:
                raise ShapeError(f"{lab}: training needs more than 1 value per channel to "
                                 f"estimate a variance; got input shape {tuple(shape)}"
                                 + (f" split in {g} per-device groups" if g > 1 else ""))
            mean = jnp.mean(xg, axis=axes, keepdims=True)
            if ax is not None and sync:
                mean = jax.lax.pmean(mean, ax)
            # Two passes (mean, then centred squares): no cancellation, unlike E[x^2]-E[x]^2.
            var = jnp.mean(jnp.square(xg - mean), axis=axes, keepdims=True)
            if ax is not None and sync:
                var = jax.lax.pmean(var, ax)
            # Running stats are not differentiated (as in PyTorch). With per-device
            # statistics the running update uses their average over devices (groups),
            # so the state stays identical on every device.
            bm = jnp.mean(jax.lax.stop_gradient(mean), axis=tuple(range(nd)))
            bv = jnp.mean(jax.lax.stop_gradient(var) * (n / (n - 1)), axis=tuple(range(nd)))
            if ax is not None and not sync:
                bm, bv = jax.lax.pmean(bm, ax), jax.lax.pmean(bv, ax)
            new_state = {
                "mean": (1 - momentum) * state["mean"] + momentum * bm,
                "var": (1 - momentum) * state["var"] + momentum * bv,
            }
            new_state = {k: v.astype(state[k].dtype) for k, v in new_state.items()}
        else:
            mean, var, new_state = state["mean"], state["var"], state
        inv = jax.lax.rsqrt(var.astype(xf.dtype) + eps)
        if affine:
            inv = inv * _bcast(params["scale"].astype(xf.dtype), inv.ndim)
        y = (xg - _bcast(mean.astype(xf.dtype), nd + 1)) * _bcast(inv, nd + 1)
        if affine:
            y = y + _bcast(params["bias"].astype(xf.dtype), nd + 1)
        y = jnp.reshape(y, shape)
        return y.astype(x.dtype), new_state

    return stateful_layer(kind, name, init_fn, apply_fn, config={
        "momentum": momentum, "eps": eps, "affine": affine,
        **({"axis_name": axis_name} if axis_name is not None else {})})


def LayerNorm(*, eps: float = 1e-5, elementwise_affine: bool = True,
              name: str | None = None) -> Layer:
    """Layer normalisation over the last axis (``torch.nn.LayerNorm(C)``).

    ``y = (x - mean) / sqrt(var + eps) * scale + bias`` with the (biased)
    mean and variance taken over the channels of each position.

    Shapes: ``[..., C] -> [..., C]``.

    Args:
      eps: added to the variance, ``> 0``.
      elementwise_affine: learn a per-channel ``scale`` and ``bias``.
      name: parameter key (default ``'layer_norm'``).

    Params: ``{'scale': [C] ones, 'bias': [C] zeros}`` (``{}`` without affine).

    Example:
      >>> ln = LayerNorm()
      >>> out_shape, params = ln.init(jax.random.key(0), (8, 10, 32))
      >>> ln.apply(params, jnp.ones((8, 10, 32))).shape
      (8, 10, 32)
    """
    kind = "LayerNorm"
    name = check_name(kind, name, "layer_norm")
    where = f"{kind} '{name}'"
    eps = check_real(eps, "eps", where, 0.0, None, lo_open=True)
    affine = check_bool(elementwise_affine, "elementwise_affine", where)

    def check(lab, shape):
        if len(shape) < 1:
            raise ShapeError(f"{lab}: input must have a channel axis (rank >= 1); got input "
                             f"shape {tuple(shape)}")
        return shape[-1]

    def init(key, input_shape):
        return input_shape, _affine_params(affine, check(label(kind), input_shape))

    def apply(params, x, *, key, train):
        lab = label(kind)
        x = jnp.asarray(x)
        shape = x.shape
        c = check(lab, shape)
        _check_params(lab, params, affine, c)
        xf = x.astype(_compute_dtype(x.dtype))
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        centred = xf - mean
        var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
        y = centred * jax.lax.rsqrt(var + eps)
        if affine:
            y = (y * _bcast(params["scale"].astype(xf.dtype), len(shape))
                 + _bcast(params["bias"].astype(xf.dtype), len(shape)))
        return y.astype(x.dtype)

    return layer(kind, name, init, apply,
                 config={"eps": eps, "elementwise_affine": affine})

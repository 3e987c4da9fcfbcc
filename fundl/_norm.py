"""Normalisation layers: BatchNorm (with running statistics) and LayerNorm.

Data layout: channels last, ``x: [N, *spatial, C]``; both layers act per
channel ``C`` (the last axis), matching ``torch.nn.BatchNorm1d/2d/3d`` and
``torch.nn.LayerNorm(C)``.

BatchNorm is stateful: ``init`` returns
``(out_shape, params, state)`` and ``apply(params, x, state=state,
train=...)`` returns ``(y, new_state)``.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import KW_ONLY

import jax
import jax.numpy as jnp

from ._argcheck import check_float_input
from . import _context
from ._checks import channels
from ._errors import ConfigError, ShapeError
from ._layer import Layer
from ._util import check_bool, check_real

__all__ = ["BatchNorm", "LayerNorm"]

STEP_AXIS = "data"  # the device axis of make_train_step's data-parallel forms (_parallel.DATA_AXIS)


def _bcast(v, ndim: int):
    """``[C] -> [1, ..., 1, C]``: explicit, since strict mode forbids rank promotion."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


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
    with _context.using(batch_stats=_context.BatchStats(axis_name, bool(sync), groups)):
        yield


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


class BatchNorm(Layer):
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
        or per-device statistics with its ``sync_batch_stats`` argument; there,
        ``axis_name='data'`` (the step's device axis) means synchronised
        statistics over all the step's devices in every form, whatever
        ``sync_batch_stats`` says, and any other name is a ConfigError when the
        step is traced (so is, in training mode, an axis name that no
        ``vmap``/``pmap``/``shard_map`` around the call binds).
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

    _: KW_ONLY
    momentum: float = 0.1
    eps: float = 1e-5
    affine: bool = True
    axis_name: object = None

    stateful = True

    def __post_init__(self):
        super().__post_init__()
        where = self.where()
        self._set(momentum=check_real(self.momentum, "momentum", where, 0.0, 1.0, lo_open=False),
                  eps=check_real(self.eps, "eps", where, 0.0, None, lo_open=True),
                  affine=check_bool(self.affine, "affine", where))
        if self.axis_name is not None and not isinstance(self.axis_name, (str, tuple)):
            raise ConfigError(f"{where}: axis_name must be None, a str or a tuple of str; got "
                              f"axis_name={self.axis_name!r}")

    def build(self, key, input_shape):
        c = channels(self.label(), input_shape, "[N, ..., C]")
        state = {"mean": jnp.zeros((c,), jnp.float32), "var": jnp.ones((c,), jnp.float32)}
        return input_shape, _affine_params(self.affine, c), state

    def _check_apply(self, lab, params, state, shape) -> int:
        c = channels(lab, shape, "[N, ..., C]")
        if not isinstance(state, Mapping) or not {"mean", "var"} <= set(state):
            raise ConfigError(f"{lab}: state must be the dict {{'mean', 'var'}} returned by "
                              f"init; got {state!r}")
        if state["mean"].shape != (c,):
            raise ShapeError(f"{lab}: input has {c} channels (last axis) but the state was "
                             f"initialised for {state['mean'].shape[0]}; got input shape "
                             f"{tuple(shape)}")
        _check_params(lab, params, self.affine, c)
        return c

    def _mode(self):
        """``(axis_name, sync, groups)``: own axis, else the data-parallel step's setting.

        Inside a data-parallel step, an own ``axis_name`` equal to the step's device axis
        (``'data'``) asks for synchronised statistics over the step's devices; in the
        global-view forms (``'sharded'``, ``'fsdp'``) that axis is not a mapped one, so it
        means the whole global batch's statistics (what ``sync_batch_stats=True`` gives).
        """
        mode = _context.current().batch_stats
        if self.axis_name is None and mode is not None:
            return mode.axis_name, mode.sync, mode.groups
        if mode is not None and mode.axis_name is None and self.axis_name == STEP_AXIS:
            return None, True, 1
        return self.axis_name, True, 1

    def _check_axis_bound(self, lab, ax):
        """A ``ConfigError`` (not JAX's unbound-axis ``NameError`` deep in a trace) when an own
        ``axis_name`` is not a mapped axis where the layer is traced in training mode."""
        for name in (ax if isinstance(ax, tuple) else (ax,)):
            try:
                jax.lax.axis_size(name)
            except NameError:
                in_step = _context.current().batch_stats is not None
                raise ConfigError(
                    f"{lab}: axis_name={name!r} is not a mapped axis here (training mode needs "
                    "it to average the batch statistics). "
                    + ("Inside make_train_step(..., parallel=...) build BatchNorm without "
                       "axis_name (the step's sync_batch_stats chooses synchronised or "
                       f"per-device statistics), or with axis_name={STEP_AXIS!r}, the step's "
                       "device axis" if in_step else
                       "Call the model under jax.vmap/jax.pmap/jax.shard_map with "
                       f"axis_name={name!r}, or build BatchNorm without axis_name (for data "
                       "parallel training use make_train_step(..., parallel='sharded'))")
                    + "; eval mode (train=False) needs no axis") from None

    def forward(self, params, x, *, state, key, train):
        lab = self.label()
        x = jnp.asarray(x)
        shape = x.shape
        check_float_input(x, lab)
        self._check_apply(lab, params, state, shape)
        xf = x.astype(_compute_dtype(x.dtype))
        # Work on [G, N/G, ..., C]: G = 1 but for per-device ("ghost") statistics in a
        # global-view data-parallel step (see batch_stats_mode); statistics are [G, 1, ..., C].
        ax, sync, groups = self._mode()
        if train and ax is not None:
            self._check_axis_bound(lab, ax)
        if train and groups > 1 and shape[0] % groups:
            raise ShapeError(f"{lab}: per-device batch statistics over {groups} devices need a "
                             f"batch divisible by {groups}; got input shape {tuple(shape)}")
        g = groups if train else 1
        xg = jnp.reshape(xf, (g, shape[0] // g, *shape[1:]))
        if train:
            mean, var, new_state = self._batch_stats(lab, xg, state, ax, sync, shape)
        else:
            mean, var, new_state = state["mean"], state["var"], state
        y = self._normalise(params, xg, mean, var, len(shape))
        return jnp.reshape(y, shape).astype(x.dtype), new_state

    def _batch_stats(self, lab, xg, state, ax, sync, shape):
        """Batch mean and (biased) variance ``[G, 1, ..., C]``, and the updated running state."""
        nd = len(shape)
        axes = tuple(range(1, nd))
        n = math.prod(xg.shape[1:-1])
        if ax is not None and sync:
            n = n * jax.lax.axis_size(ax)
        if isinstance(n, int) and n < 2:
            g = xg.shape[0]
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
        m = self.momentum
        new_state = {"mean": (1 - m) * state["mean"] + m * bm,
                     "var": (1 - m) * state["var"] + m * bv}
        return mean, var, {k: v.astype(state[k].dtype) for k, v in new_state.items()}

    def _normalise(self, params, xg, mean, var, nd):
        inv = jax.lax.rsqrt(var.astype(xg.dtype) + self.eps)
        if self.affine:
            inv = inv * _bcast(params["scale"].astype(xg.dtype), inv.ndim)
        y = (xg - _bcast(mean.astype(xg.dtype), nd + 1)) * _bcast(inv, nd + 1)
        if self.affine:
            y = y + _bcast(params["bias"].astype(xg.dtype), nd + 1)
        return y


class LayerNorm(Layer):
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

    _: KW_ONLY
    eps: float = 1e-5
    elementwise_affine: bool = True

    def __post_init__(self):
        super().__post_init__()
        where = self.where()
        self._set(eps=check_real(self.eps, "eps", where, 0.0, None, lo_open=True),
                  elementwise_affine=check_bool(self.elementwise_affine, "elementwise_affine",
                                                where))

    def _channels(self, shape) -> int:
        if len(shape) < 1:
            raise ShapeError(f"{self.label()}: input must have a channel axis (rank >= 1); got "
                             f"input shape {tuple(shape)}")
        return shape[-1]

    def build(self, key, input_shape):
        return input_shape, _affine_params(self.elementwise_affine, self._channels(input_shape))

    def forward(self, params, x, *, key, train):
        x = jnp.asarray(x)
        shape = x.shape
        check_float_input(x, self.label())
        _check_params(self.label(), params, self.elementwise_affine, self._channels(shape))
        xf = x.astype(_compute_dtype(x.dtype))
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        centred = xf - mean
        var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
        y = centred * jax.lax.rsqrt(var + self.eps)
        if self.elementwise_affine:
            y = (y * _bcast(params["scale"].astype(xf.dtype), len(shape))
                 + _bcast(params["bias"].astype(xf.dtype), len(shape)))
        return y.astype(x.dtype)

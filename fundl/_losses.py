"""Loss functions with ``torch.nn.functional`` semantics, channels-last.

Classification inputs put classes on the LAST axis: logits ``[N, ..., C]``
with integer targets ``[N, ...]`` (torch: ``[N, C, ...]`` and ``[N, ...]``).
Every loss takes ``reduction='mean' | 'sum' | 'none'`` with torch's meaning;
in particular a class-weighted ``'mean'`` over integer targets divides by the
summed weights of the non-ignored targets, not by their count.

All log-probabilities come from ``log_softmax`` / ``logaddexp`` (never
``log(softmax)``), so values and gradients stay finite for logits of +-1e4.
"""
from __future__ import annotations

import numbers
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import ConfigError, DataError, ShapeError

__all__ = [
    "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss",
    "binary_cross_entropy_with_logits", "multi_margin_loss",
]

_REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------- helpers

def _check_reduction(name, reduction):
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ConfigError(
            f"{name}: reduction must be one of 'mean', 'sum', 'none'; got {reduction!r}")


# The jitted ``_*_core`` functions below compute UNREDUCED losses: one compile
# serves every reduction, and an eager call is a couple of dispatches instead
# of ~20 op-by-op ones. Validation stays outside them, in plain Python.

def _reduce(loss, reduction):
    if reduction == "mean":
        return jnp.mean(loss)
    if reduction == "sum":
        return jnp.sum(loss)
    return loss


def _reduce_weighted(loss, w_t, reduction):
    """torch's nll reduction: a weighted 'mean' divides by the summed target weights."""
    if reduction == "mean":
        # 0/0 = NaN when every target is ignored, as in torch.
        return jnp.sum(loss) / jnp.sum(w_t)
    return _reduce(loss, reduction)


def _is_int(a):
    return jnp.issubdtype(a.dtype, jnp.integer)


def _check_float(name, arg, a):
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise ConfigError(f"{name}: {arg} must be a floating-point array; got dtype {a.dtype}")


def _check_same_shape(name, a, b, arg_a="input", arg_b="target"):
    if a.shape != b.shape:
        raise ShapeError(
            f"{name}: {arg_b} shape must equal {arg_a} shape {a.shape}; got {b.shape}")


def _check_class_weight(name, weight, num_classes):
    if weight is None:
        return None
    weight = jnp.asarray(weight)
    if weight.shape != (num_classes,):
        raise ShapeError(
            f"{name}: weight must have shape (C,) = ({num_classes},), one entry per class; "
            f"got {weight.shape}")
    return weight


def _check_index_target(name, scores, target, arg, ignore_index=None):
    """Integer targets: shape ``scores.shape[:-1]``, values in ``[0, C)`` (or ignored)."""
    if not _is_int(target):
        raise ConfigError(
            f"{name}: target must be integer class indices; got dtype {target.dtype}")
    if target.shape != scores.shape[:-1]:
        hint = ""
        if scores.ndim > 2 and target.shape == scores.shape[:1]:
            hint = (f". The {arg} look like a feature map [N, *spatial, C] reaching the loss: "
                    "insert Flatten() (or GlobalAvgPool()) before the classifier's Dense layers")
        raise ShapeError(
            f"{name}: target (integer class indices) must have shape {arg}.shape[:-1] = "
            f"{scores.shape[:-1]}; got {target.shape} ({arg} has shape {scores.shape}, "
            f"classes on the last axis){hint}")
    # Range check only on concrete values (eager calls); under jit an
    # out-of-range index gathers NaN (y >= C) or wraps (y < 0) instead (see _gather_last).
    if not isinstance(target, jax.core.Tracer) and target.size:
        t = np.asarray(target)
        c = scores.shape[-1]
        bad = (t < 0) | (t >= c)
        if ignore_index is not None:
            bad &= t != ignore_index
        if bad.any():
            i = np.unravel_index(int(np.argmax(bad)), t.shape)
            extra = f" (or equal ignore_index={ignore_index})" if ignore_index is not None else ""
            raise DataError(
                f"{name}: target class index {t[i]} at index {tuple(int(k) for k in i)} is "
                f"outside [0, {c}){extra} for {arg} with {c} classes; {int(bad.sum())} of "
                f"{t.size} targets are out of range. Class indices must be 0..{c - 1}: relabel "
                "with np.unique(y, return_inverse=True)[1], or drop unlabelled (-1) rows")


def _gather_last(a, idx):
    """``a[..., idx]`` per position; indices ``>= C`` give NaN, not a clamped class; negative
    ones count from the end (``-1`` is class ``C - 1``), as JAX indexing does."""
    out = jnp.take_along_axis(a, idx[..., None], axis=-1, mode="fill", fill_value=jnp.nan)
    return out[..., 0]


def _check_scores(name, arg, scores):
    if scores.ndim < 1:
        raise ShapeError(
            f"{name}: {arg} must have shape [N, ..., C] (classes last); got a scalar")
    _check_float(name, arg, scores)


@partial(jax.jit, static_argnames=("label_smoothing",))
def _nll_core(logp, target, weight, ignore_index, label_smoothing=0.0):
    """Per-position (loss, target weight) of integer targets, label-smoothed as in torch."""
    c = logp.shape[-1]
    valid = target != ignore_index
    safe_t = jnp.where(valid, target, 0)
    # Per-sample weight of the target class; 0 for ignored positions.
    w_t = jnp.ones(target.shape, logp.dtype) if weight is None else _gather_last(
        jnp.broadcast_to(weight.astype(logp.dtype), logp.shape), safe_t)
    w_t = jnp.where(valid, w_t, 0)
    # where(), not just w_t = 0: an ignored row may hold log(0) = -inf.
    loss = jnp.where(valid, -w_t * _gather_last(logp, safe_t), 0)
    if label_smoothing:
        # torch: (1 - eps) * nll + eps / C * (-sum_c w_c * logp_c), same normaliser.
        wlogp = logp if weight is None else logp * weight.astype(logp.dtype).reshape(
            (1,) * (logp.ndim - 1) + (c,))
        smooth = jnp.where(valid, -jnp.sum(wlogp, axis=-1), 0)
        loss = (1.0 - label_smoothing) * loss + (label_smoothing / c) * smooth
    return loss, w_t


# ----------------------------------------------------------------- classification

def cross_entropy(logits, target, *, weight=None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0):
    """Softmax cross-entropy, ``torch.nn.functional.cross_entropy`` in channels-last.

    Args:
      logits: unnormalised scores, shape ``[N, C]`` or ``[N, ..., C]`` (``[C]`` unbatched).
      target: either integer class indices of shape ``logits.shape[:-1]``, or
        floating class probabilities of shape ``logits.shape``.
      weight: optional per-class rescaling, shape ``[C]``.
      ignore_index: integer targets equal to it contribute nothing, not even
        to the ``'mean'`` denominator. Probability targets accept only a negative
        (i.e. the default, unused) value, as in torch.
      reduction: ``'mean'`` | ``'sum'`` | ``'none'`` (``'none'`` gives shape
        ``logits.shape[:-1]``). For integer targets with ``weight``, ``'mean'``
        divides by the summed target weights; for probability targets it divides
        by the number of positions ``logits.size // C``.
      label_smoothing: in ``[0, 1]``; mixes the target with the uniform
        distribution: ``(1 - eps) * target + eps / C``.

    Out-of-range class indices: an eager call (concrete ``target``) raises
    :class:`~fundl.DataError` naming the first bad index and its position. Under
    ``jax.jit`` (a traced ``target``) nothing can be checked for free and the
    loss is silently wrong: an index ``>= C`` gives a NaN loss and ``-1`` (or any
    index ``-k`` down to ``-C``) wraps to class ``C - k``. Check on the host first
    (:func:`fundl.train.fit`, :func:`fundl.train.evaluate` and
    :func:`fundl.experiment.run` do), or use
    ``make_train_step(..., checks=True)``, which raises from the compiled step.
    Float class indices are refused (as in PyTorch).

    Returns:
      The loss (scalar unless ``reduction='none'``).

    Raises:
      ShapeError: wrong target/weight shape.
      DataError: (eager only) a class index outside ``[0, C)``.
      ConfigError: bad ``reduction``, ``label_smoothing`` or target dtype.

    Example:
      >>> cross_entropy(jnp.zeros((1, 2)), jnp.array([0]))  # log 2
      Array(0.6931472, dtype=float32)
    """
    name = "cross_entropy"
    _check_reduction(name, reduction)
    if (isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real)
            or not 0.0 <= label_smoothing <= 1.0):
        raise ConfigError(f"{name}: label_smoothing must be a number in [0, 1]; "
                          f"got {label_smoothing!r}")
    logits, target = jnp.asarray(logits), jnp.asarray(target)
    _check_scores(name, "logits", logits)
    c = logits.shape[-1]
    weight = _check_class_weight(name, weight, c)

    if _is_int(target):
        _check_index_target(name, logits, target, "logits", ignore_index)
        loss, w_t = _ce_int_core(logits, target, weight, ignore_index, float(label_smoothing))
        return _reduce_weighted(loss, w_t, reduction)

    if not jnp.issubdtype(target.dtype, jnp.floating):
        raise ConfigError(
            f"{name}: target must be integer class indices or floating class probabilities; "
            f"got dtype {target.dtype}")
    if target.shape != logits.shape:
        raise ShapeError(
            f"{name}: target (float class probabilities) must have the same shape as logits "
            f"{logits.shape}; got {target.shape} (for class indices pass an integer array of "
            f"shape {logits.shape[:-1]})")
    if ignore_index >= 0:
        raise ConfigError(f"{name}: ignore_index (got {ignore_index}) is not supported for "
                          "probability targets; leave it at its default -100")
    # 'mean' averages over positions (N * spatial), never over weights (torch).
    return _reduce(_ce_prob_core(logits, target, weight, float(label_smoothing)), reduction)


@partial(jax.jit, static_argnames=("label_smoothing",))
def _ce_int_core(logits, target, weight, ignore_index, label_smoothing):
    return _nll_core(jax.nn.log_softmax(logits, axis=-1), target, weight, ignore_index,
                     label_smoothing)


@partial(jax.jit, static_argnames=("label_smoothing",))
def _ce_prob_core(logits, target, weight, label_smoothing):
    c = logits.shape[-1]
    logp = jax.nn.log_softmax(logits, axis=-1)
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / c
    prod = logp * target
    if weight is not None:
        prod = prod * weight.astype(logp.dtype).reshape((1,) * (logp.ndim - 1) + (c,))
    return -jnp.sum(prod, axis=-1)


def nll_loss(log_probs, target, *, weight=None, ignore_index: int = -100,
             reduction: str = "mean"):
    """Negative log-likelihood of integer targets, ``torch.nn.functional.nll_loss``.

    Args:
      log_probs: log-probabilities (e.g. from ``log_softmax``), shape ``[N, ..., C]``.
      target: integer class indices, shape ``log_probs.shape[:-1]``.
      weight: optional per-class rescaling, shape ``[C]``.
      ignore_index: targets equal to it contribute nothing (nor to the mean's denominator).
      reduction: ``'mean'`` (weighted: divides by summed target weights) | ``'sum'`` | ``'none'``.

    Out-of-range class indices: an eager call (concrete ``target``) raises
    :class:`~fundl.DataError` naming the first bad index and its position. Under
    ``jax.jit`` (a traced ``target``) nothing can be checked for free and the
    loss is silently wrong: an index ``>= C`` gives a NaN loss and ``-1`` (or any
    index ``-k`` down to ``-C``) wraps to class ``C - k``. Check on the host first
    (:func:`fundl.train.fit`, :func:`fundl.train.evaluate` and
    :func:`fundl.experiment.run` do), or use
    ``make_train_step(..., checks=True)``, which raises from the compiled step.
    Float class indices are refused (as in PyTorch).

    Returns:
      ``-weight[t] * log_probs[..., t]`` reduced.

    Example:
      >>> nll_loss(jnp.log(jnp.array([[0.25, 0.75]])), jnp.array([1]))
      Array(0.2876821, dtype=float32)
    """
    name = "nll_loss"
    _check_reduction(name, reduction)
    log_probs, target = jnp.asarray(log_probs), jnp.asarray(target)
    _check_scores(name, "log_probs", log_probs)
    weight = _check_class_weight(name, weight, log_probs.shape[-1])
    _check_index_target(name, log_probs, target, "log_probs", ignore_index)
    loss, w_t = _nll_core(log_probs, target, weight, ignore_index)
    return _reduce_weighted(loss, w_t, reduction)


def multi_margin_loss(input, target, *, p: int = 1, margin: float = 1.0, weight=None,
                      reduction: str = "mean"):
    """Multi-class hinge loss, ``torch.nn.functional.multi_margin_loss``.

    Per sample with target ``y``:
    ``sum_{i != y} weight[y] * max(0, margin - x[y] + x[i]) ** p / C``.

    Args:
      input: class scores, shape ``[N, C]`` (or ``[C]``; extra middle axes allowed).
      target: integer class indices, shape ``input.shape[:-1]``.
      p: 1 or 2.
      margin: the margin.
      weight: optional per-class weight ``[C]``, applied by the TARGET class.
      reduction: ``'mean'`` (plain mean over samples, even with ``weight``) | ``'sum'``
        | ``'none'``.

    Out-of-range class indices: an eager call (concrete ``target``) raises
    :class:`~fundl.DataError` naming the first bad index and its position. Under
    ``jax.jit`` (a traced ``target``) nothing can be checked for free and the
    loss is silently wrong: an index ``>= C`` gives a NaN loss and ``-1`` (or any
    index ``-k`` down to ``-C``) wraps to class ``C - k``. Check on the host first
    (:func:`fundl.train.fit`, :func:`fundl.train.evaluate` and
    :func:`fundl.experiment.run` do), or use
    ``make_train_step(..., checks=True)``, which raises from the compiled step.
    Float class indices are refused (as in PyTorch).

    Example:
      >>> multi_margin_loss(jnp.array([[0.1, 0.2, 0.4]]), jnp.array([2]))
      Array(0.5, dtype=float32)
    """
    name = "multi_margin_loss"
    _check_reduction(name, reduction)
    if isinstance(p, bool) or p not in (1, 2):
        raise ConfigError(f"{name}: p must be 1 or 2; got {p!r}")
    input, target = jnp.asarray(input), jnp.asarray(target)
    _check_scores(name, "input", input)
    c = input.shape[-1]
    weight = _check_class_weight(name, weight, c)
    _check_index_target(name, input, target, "input")
    # Plain mean over samples even with weight (torch).
    return _reduce(_multi_margin_core(input, target, weight, margin, p), reduction)


@partial(jax.jit, static_argnames=("p",))
def _multi_margin_core(input, target, weight, margin, p):
    c = input.shape[-1]
    x_y = _gather_last(input, target)[..., None]
    z = margin - x_y + input
    # where(z > 0) rather than maximum: zero gradient at the kink, like torch.
    h = jnp.where(z > 0, z, 0)
    if p == 2:
        h = h * h
    not_target = jnp.arange(c).reshape((1,) * target.ndim + (c,)) != target[..., None]
    loss = jnp.sum(jnp.where(not_target, h, 0), axis=-1) / c
    if weight is not None:
        loss = loss * _gather_last(jnp.broadcast_to(weight.astype(input.dtype), input.shape),
                                   target)
    return loss


# ----------------------------------------------------------------- element-wise

def _elementwise_inputs(name, input, target):
    input, target = jnp.asarray(input), jnp.asarray(target)
    _check_float(name, "input", input)
    _check_same_shape(name, input, target)
    return input, target


def mse_loss(input, target, *, reduction: str = "mean"):
    """Squared error ``(input - target) ** 2``, ``torch.nn.functional.mse_loss``.

    Args:
      input: predictions, any shape ``[...]`` (floating).
      target: same shape as ``input`` (no broadcasting: a mismatch is a ShapeError).
      reduction: ``'mean'`` | ``'sum'`` | ``'none'`` (``'none'`` keeps ``input.shape``).

    Example:
      >>> mse_loss(jnp.array([1.0, 3.0]), jnp.array([0.0, 0.0]))
      Array(5., dtype=float32)
    """
    _check_reduction("mse_loss", reduction)
    input, target = _elementwise_inputs("mse_loss", input, target)
    return _reduce(_mse_core(input, target), reduction)


@jax.jit
def _mse_core(input, target):
    d = input - target
    return d * d


def l1_loss(input, target, *, reduction: str = "mean"):
    """Absolute error ``|input - target|``, ``torch.nn.functional.l1_loss``.

    Args:
      input: predictions, any shape ``[...]`` (floating).
      target: same shape as ``input`` (no broadcasting).
      reduction: ``'mean'`` | ``'sum'`` | ``'none'``.

    Example:
      >>> l1_loss(jnp.array([1.0, -3.0]), jnp.array([0.0, 0.0]))
      Array(2., dtype=float32)
    """
    _check_reduction("l1_loss", reduction)
    input, target = _elementwise_inputs("l1_loss", input, target)
    return _reduce(_l1_core(input, target), reduction)


@jax.jit
def _l1_core(input, target):
    return jnp.abs(input - target)


def smooth_l1_loss(input, target, *, beta: float = 1.0, reduction: str = "mean"):
    """Huber-like loss: ``0.5 d**2 / beta`` if ``|d| < beta`` else ``|d| - 0.5 beta``.

    Args:
      input: predictions, any shape ``[...]`` (floating).
      target: same shape as ``input`` (no broadcasting).
      beta: the quadratic/linear switch point, ``>= 0``; ``beta = 0`` is exactly
        ``l1_loss`` (torch). Default 1.0.
      reduction: ``'mean'`` | ``'sum'`` | ``'none'``.

    Example:
      >>> smooth_l1_loss(jnp.array([0.5, 3.0]), jnp.zeros(2), reduction='none')
      Array([0.125, 2.5  ], dtype=float32)
    """
    name = "smooth_l1_loss"
    _check_reduction(name, reduction)
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not beta >= 0:
        raise ConfigError(f"{name}: beta must be a number >= 0; got {beta!r}")
    input, target = _elementwise_inputs(name, input, target)
    if beta == 0:
        return _reduce(_l1_core(input, target), reduction)
    return _reduce(_smooth_l1_core(input, target, beta), reduction)


@jax.jit
def _smooth_l1_core(input, target, beta):
    ad = jnp.abs(input - target)
    # Both branches finite (beta > 0), so where() leaks no NaN gradients.
    return jnp.where(ad < beta, 0.5 * ad * ad / beta, ad - 0.5 * beta)


def _check_broadcast_weight(name, arg, w, shape):
    if w is None:
        return None
    w = jnp.asarray(w)
    try:
        ok = np.broadcast_shapes(w.shape, shape) == tuple(shape)
    except ValueError:
        ok = False
    if not ok:
        raise ShapeError(
            f"{name}: {arg} of shape {w.shape} must broadcast to logits shape {tuple(shape)}")
    return w


def binary_cross_entropy_with_logits(logits, target, *, weight=None, pos_weight=None,
                                     reduction: str = "mean"):
    """Sigmoid + binary cross-entropy in one stable step.

    ``loss = -weight * (pos_weight * t * log sigmoid(x) + (1 - t) * log(1 - sigmoid(x)))``,
    computed as ``(1 - t) * x + (1 + (pos_weight - 1) * t) * softplus(-x)``.

    Args:
      logits: any shape ``[...]``; channels last, e.g. ``[N, C]`` multi-label.
      target: probabilities in ``[0, 1]``, same shape as ``logits``.
      weight: optional per-element rescaling, broadcastable to ``logits.shape``.
      pos_weight: optional weight of positive examples, broadcastable to
        ``logits.shape`` (typically ``[C]``, one per class on the last axis).
      reduction: ``'mean'`` | ``'sum'`` | ``'none'``.

    Example:
      >>> binary_cross_entropy_with_logits(jnp.zeros(2), jnp.array([0.0, 1.0]))  # log 2
      Array(0.6931472, dtype=float32)
    """
    name = "binary_cross_entropy_with_logits"
    _check_reduction(name, reduction)
    logits, target = jnp.asarray(logits), jnp.asarray(target)
    _check_float(name, "logits", logits)
    if target.shape != logits.shape:
        raise ShapeError(f"{name}: target shape must equal logits shape {logits.shape}; "
                         f"got {target.shape}")
    weight = _check_broadcast_weight(name, "weight", weight, logits.shape)
    pos_weight = _check_broadcast_weight(name, "pos_weight", pos_weight, logits.shape)
    return _reduce(_bce_core(logits, target, weight, pos_weight), reduction)


@jax.jit
def _bce_core(x, t, weight, pos_weight):
    t = t.astype(x.dtype)
    # softplus(-x) = -log sigmoid(x), overflow-free via logaddexp.
    sp = jnp.logaddexp(-x, 0.0)
    if pos_weight is None:
        loss = (1.0 - t) * x + sp
    else:
        # Explicit broadcast (numpy rules, trailing-aligned): rank promotion may be disabled.
        pw = jnp.broadcast_to(pos_weight.astype(x.dtype), x.shape)
        loss = (1.0 - t) * x + (1.0 + (pw - 1.0) * t) * sp
    if weight is not None:
        loss = loss * jnp.broadcast_to(weight.astype(x.dtype), x.shape)
    return loss

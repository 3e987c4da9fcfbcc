"""Host-side checks of training data, run once before training (free: NumPy on host arrays).

* :func:`check_labels`: integer class labels ``y`` must lie in ``[0, C)``, ``C`` the
  model's number of outputs (the last axis of its logits, from :func:`num_classes`:
  one abstract trace, no compilation); float labels where class indices are implied
  (a classification loss) are refused, as PyTorch refuses float class indices.
* :func:`check_finite`: float arrays must hold no NaN/Inf unless the caller opts in.

Every failure is a :class:`~fundl.DataError` naming the function, the argument, the
first offending value and its index, how many are bad, and how to fix it.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import DataError

_INDEX_LOSSES = ("cross_entropy", "nll_loss", "multi_margin_loss")


def _base(loss_fn):
    """``(function, keywords)`` of ``loss_fn`` seen through ``functools.partial``."""
    kw = {}
    while isinstance(loss_fn, functools.partial):
        kw = {**loss_fn.keywords, **kw}
        loss_fn = loss_fn.func
    return loss_fn, kw


def index_loss(loss_fn) -> tuple[bool, int | None]:
    """``(is a fundl class-index loss, its ignore_index or None)`` for ``loss_fn``."""
    from . import _losses

    fn, kw = _base(loss_fn)
    if not any(fn is getattr(_losses, n) for n in _INDEX_LOSSES):
        return False, None
    ignore = kw.get("ignore_index", -100) if fn is not _losses.multi_margin_loss else None
    return True, ignore


def num_classes(model, x_shape, x_dtype, params=None, state=None) -> int | None:
    """The model's number of outputs ``C`` (logits ``[N, C]``) for inputs ``[N, ...]``.

    One abstract evaluation (``jax.eval_shape``: tracing only, nothing compiled or run).
    Returns ``None`` when the output is not ``[N, C]`` or the model cannot be traced on
    this input (training then reports that error itself).
    """
    x = jax.ShapeDtypeStruct(tuple(x_shape), x_dtype)

    def logits(key, x, params, state):
        if params is None:
            _, params, state = model.init_with_state(key, x.shape)
        return model.apply_with_state(params, state or {}, x, key=None, train=False)[0]

    try:
        out = jax.eval_shape(logits, jax.random.key(0), x, params, state)
    except Exception:  # noqa: BLE001 - the real step raises the model's own error
        return None
    shape = getattr(out, "shape", None)
    return shape[-1] if shape is not None and len(shape) == 2 else None


def check_labels(y, c: int | None, where: str, arg: str, *, loss_fn=None) -> None:
    """Refuse labels ``y`` outside ``[0, c)`` (DataError); ``c=None`` skips the range check.

    Integer ``y`` of shape ``[N]``: every value must be in ``[0, c)``, except the loss's
    ``ignore_index`` (``-100`` for :func:`fundl.functional.cross_entropy`), which is skipped
    as in PyTorch. Float ``y`` of shape ``[N]`` with a class-index loss (``loss_fn`` the
    default cross-entropy, nll or multi-margin loss) is refused: class indices are integers.
    """
    y = np.asarray(y)
    is_index, ignore = index_loss(loss_fn) if loss_fn is not None else (False, None)
    if y.ndim == 1 and is_index and not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{where}: {arg} labels y must be integer class indices for this classification "
            f"loss; got dtype {y.dtype} (PyTorch refuses float class indices too). Convert "
            "with y.astype(np.int32) if they are whole numbers; for probability targets pass "
            "y of shape [N, C]")
    if c is None or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or y.size == 0:
        return
    bad = (y < 0) | (y >= c)
    if ignore is not None:
        bad &= y != ignore
    if not bad.any():
        return
    i = int(np.argmax(bad))
    v = int(y[i])
    hint = ("A -1 often marks 'unlabelled' examples: drop those rows (keep = y >= 0)"
            if v < 0 else
            f"Labels must be 0..{c - 1}; relabel with np.unique(y, return_inverse=True)[1], "
            f"or give the model {int(y.max()) + 1} outputs")
    ign = f" (or the loss's ignore_index {ignore})" if ignore is not None else ""
    raise DataError(
        f"{where}: {arg} has label {v} at index {i}, outside the valid range [0, {c}){ign} "
        f"for a model with {c} outputs; {int(bad.sum())} of {y.size} labels are out of range. "
        f"{hint}")


def check_finite(a, where: str, arg: str, *, allow: bool = False) -> None:
    """Refuse a floating array ``a`` holding NaN or Inf (DataError) unless ``allow``."""
    if allow:
        return
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.complexfloating):
        return
    finite = np.isfinite(a)
    if finite.all():
        return
    flat = int(np.argmin(finite.ravel()))
    idx = np.unravel_index(flat, a.shape)
    n_bad = int(finite.size - np.count_nonzero(finite))
    rows = int((~finite.reshape(len(a), -1)).any(axis=1).sum()) if a.ndim else 1
    raise DataError(
        f"{where}: {arg} holds {a.ravel()[flat]} at index {tuple(int(i) for i in idx)}; "
        f"{n_bad} non-finite values (NaN/Inf) in {rows} example(s). One NaN input makes "
        "every parameter NaN after one step. Fix or drop those rows (e.g. keep = "
        "np.isfinite(x).reshape(len(x), -1).all(axis=1)), or pass allow_nonfinite=True if "
        "the model handles them")


def all_finite(tree):
    """A scalar bool array: every floating leaf of ``tree`` is finite (``True`` for no leaf)."""
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.asarray(a).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)

"""Higher-order and per-example derivatives on fundl's named parameter pytrees.

Implementation of :mod:`fundl.autodiff` (finite-difference checks live in
``_gradcheck.py``). Conventions shared by every function here:

* ``params`` is a layer's parameter pytree (nested dicts such as
  ``{'fc1': {'w': [in, out], 'b': [out]}}``); results that are "like params"
  have the same tree structure.
* A loss is a Python function ``loss(params, *args) -> scalar``; extra
  positional ``args`` (the batch, a batch-norm ``state``, ...) are passed
  through unchanged and are not differentiated. With ``has_aux=True`` the loss
  returns ``(scalar, aux)`` (e.g. ``(loss, new_state)`` from
  ``apply_with_state``); ``aux`` is ignored, so derivatives are taken at the
  fixed ``state`` passed in ``args``.
* Data layout: channels last, a batch ``x: [N, ...]``.
* Every function is pure and can be called inside ``jax.jit`` (close over the
  loss, or pass it with ``static_argnums``).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ._errors import ConfigError, ShapeError
from ._keys import as_key, as_optional_key
from ._layer import Layer

Params = Any


# -- helpers --------------------------------------------------------------------------

def _path(kp) -> str:
    return jax.tree_util.keystr(kp, simple=True, separator="/")


def _check_callable(fn, arg: str, where: str) -> None:
    if isinstance(fn, Layer):  # callable (its __call__ refuses), but not a function of arrays
        raise ConfigError(f"{where}: {arg} must be a function; got the layer {fn.label()}: wrap "
                          f"it, e.g. lambda params, x: layer.apply(params, x)")
    if not callable(fn):
        raise ConfigError(f"{where}: {arg} must be a function; got {type(fn).__name__} {fn!r}")


def _check_like(where: str, arg: str, tree, params) -> None:
    """``tree`` must have the structure and leaf shapes of ``params``."""
    t_def, p_def = jax.tree_util.tree_structure(tree), jax.tree_util.tree_structure(params)
    if t_def != p_def:
        raise ShapeError(f"{where}: {arg} must have the structure of params; got {t_def}, "
                         f"expected {p_def}")
    for (kp, a), b in zip(jax.tree_util.tree_flatten_with_path(tree)[0],
                          jax.tree_util.tree_leaves(params)):
        if jnp.shape(a) != jnp.shape(b):
            raise ShapeError(f"{where}: {arg}['{_path(kp)}'] must have shape {jnp.shape(b)} like "
                             f"params; got {jnp.shape(a)}")


def _value_fn(loss, has_aux, where: str):
    """``loss`` without its aux output, its output checked when traced (free): a scalar, or
    ``(scalar, aux)`` with ``has_aux``."""
    return lambda *a: _scalar_of(where, loss(*a), has_aux)


def _scalar_of(where: str, out, has_aux):
    """The scalar loss in ``out`` (an array or a ``jax.eval_shape`` result), or a ShapeError."""
    if has_aux:
        if not isinstance(out, tuple) or len(out) != 2:
            raise ShapeError(f"{where}: with has_aux=True, loss must return (scalar, aux); "
                             f"got {out}")
        out = out[0]
    if not hasattr(out, "shape") or out.shape != ():
        hint = " (pass has_aux=True if it returns (loss, aux))" if isinstance(out, tuple) else ""
        raise ShapeError(f"{where}: loss must return a scalar; got "
                         f"{getattr(out, 'shape', type(out).__name__)}{hint}")
    return out


def _check_scalar(where: str, loss, params, args, has_aux) -> None:
    _scalar_of(where, jax.eval_shape(loss, params, *args), has_aux)


def _check_positive(where: str, arg: str, value, allow_zero: bool = False) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value >= 0 if allow_zero else value > 0
    elif isinstance(value, jax.Array) and value.shape == ():
        return  # a traced or concrete scalar array (e.g. a swept hyper-parameter): trusted
    if not ok:
        rel = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{where}: {arg} must be a finite number {rel}; got {arg}={value!r}")


# -- Jacobians of a layer ---------------------------------------------------------------

class Jacobians(NamedTuple):
    """What :func:`jacobians` returns.

    Attributes:
      output: the layer's output ``y`` (``[N, *out]``).
      wrt_input: ``dy/dx``, shape ``[N, *out, N, *in]`` (``[N, *out, *in]`` with
        ``per_example=True``); a tuple for multi-input layers.
      wrt_params: ``dy/dparams``, a tree like ``params`` whose leaf for a
        parameter ``p`` has shape ``[N, *out, *p.shape]`` (the same with
        ``per_example=True``, where entry ``i`` is example ``i``'s Jacobian).
    """

    output: Any
    wrt_input: Any
    wrt_params: Params


def jacobians(layer: Layer, params, x, *, state=None, train: bool = False, key=None,
              per_example: bool = False, mode: str = "auto") -> Jacobians:
    r"""Jacobians of a layer's output w.r.t. its input and each named parameter.

    The course's :math:`J_\phi|_x = \partial y / \partial x` and
    :math:`J_\phi|_w = \partial y / \partial w` for ``y = layer(x; w)``. Meant for
    small layers: the full Jacobian has ``y.size * x.size`` entries.

    Args:
      layer: a fundl :class:`~fundl.layers.Layer`.
      params: its parameters.
      x: its input, ``[N, *in]`` (a tuple for multi-input layers).
      state: the layer's state (batch-norm statistics); required iff
        ``layer.stateful``. The Jacobian is that of ``y`` at this fixed state
        (the updated state is not differentiated). In ``train=True`` mode batch
        norm uses batch statistics, so the output of one example depends on
        the others: the full Jacobian shows it (off-diagonal blocks).
      train: training mode (batch statistics, dropout).
      key: a ``jax.random`` key (or an int seed) for dropout when ``train=True``.
      per_example: return each example's own Jacobian (``[N, *out, *in]``): the
        diagonal blocks, computed with each example run as a batch of one.
        Not allowed for a stateful layer with ``train=True`` (batch statistics
        of one example are not those of the batch).
      mode: ``'rev'`` (``jax.jacrev``, cheaper for few outputs), ``'fwd'``
        (``jax.jacfwd``, cheaper for few inputs) or ``'auto'`` (by sizes).

    Returns:
      :class:`Jacobians` ``(output, wrt_input, wrt_params)``.

    Example:
      >>> import jax, jax.numpy as jnp, fundl.layers as L
      >>> fc = L.Dense(3)
      >>> _, p = fc.init(jax.random.key(0), (2, 4))
      >>> J = jacobians(fc, p, jnp.ones((2, 4)))
      >>> J.wrt_input.shape, J.wrt_params['w'].shape
      ((2, 3, 2, 4), (2, 3, 4, 3))
      >>> bool(jnp.allclose(J.wrt_input[0, :, 0, :], p['w'].T))   # dy/dx = W^T
      True
    """
    where = "jacobians"
    if not isinstance(layer, Layer):
        raise ConfigError(f"{where}: layer must be a fundl Layer; got {type(layer).__name__}")
    if mode not in ("auto", "fwd", "rev"):
        raise ConfigError(f"{where}: mode must be 'auto', 'fwd' or 'rev'; got {mode!r}")
    if layer.stateful and state is None:
        raise ConfigError(f"{where}: {layer.label()} holds batch-norm statistics; pass "
                          "state=... (the state returned by init); the Jacobian is taken at it")
    if not layer.stateful and state not in (None, {}):
        raise ConfigError(f"{where}: state was given but {layer.label()} is stateless")
    if per_example and layer.stateful and train:
        raise ConfigError(f"{where}: per_example=True with train=True on stateful "
                          f"{layer.label()}: batch statistics couple the examples; use train=False "
                          "or the full Jacobian (per_example=False)")
    st = {} if state is None else state
    key = as_optional_key(key, where)

    def f(xx, p, k):
        return layer.apply_with_state(p, st, xx, key=k, train=train)[0]

    def pick(n_in, n_out):
        if mode != "auto":
            return mode
        return "fwd" if n_in <= n_out else "rev"

    def size(tree):
        return sum(math.prod(jnp.shape(a)) for a in jax.tree_util.tree_leaves(tree))

    if not per_example:
        y = f(x, params, key)
        jac = jax.jacfwd if pick(size(x) + size(params), size(y)) == "fwd" else jax.jacrev
        jx, jp = jac(f, argnums=(0, 1))(x, params, key)
        return Jacobians(y, jx, jp)

    leaves = jax.tree_util.tree_leaves(x)
    n = leaves[0].shape[0] if leaves and jnp.ndim(leaves[0]) else None
    if n is None or any(jnp.ndim(a) == 0 or a.shape[0] != n for a in leaves):
        raise ShapeError(f"{where}: per_example=True needs inputs with a common batch axis [N, ...]; "
                         f"got shapes {[jnp.shape(a) for a in leaves]}")

    def f1(xi, p, k):  # one example as a batch of one
        return f(jax.tree_util.tree_map(lambda a: a[None], xi), p, k)[0]

    y1 = jax.eval_shape(f1, jax.tree_util.tree_map(lambda a: a[0], x), params, key)
    jac = jax.jacfwd if pick(size(x) // n + size(params), size(y1)) == "fwd" else jax.jacrev
    keys = None if key is None else jax.random.split(key, n)
    one = lambda xi, k: (f1(xi, params, k),) + tuple(jac(f1, argnums=(0, 1))(xi, params, k))
    y, jx, jp = jax.vmap(one, in_axes=(0, None if keys is None else 0))(x, keys)
    return Jacobians(y, jx, jp)


# -- Hessians ---------------------------------------------------------------------------

def hvp(loss: Callable, params, v, *args, has_aux: bool = False):
    r"""Hessian-vector product :math:`H v`, forward-over-reverse (``jvp`` of ``grad``).

    Costs about one gradient evaluation (plus its forward-mode derivative);
    the Hessian :math:`H = \nabla^2_{params}\, loss(params, *args)` is never formed.

    Args:
      loss: ``loss(params, *args) -> scalar`` (``(scalar, aux)`` with ``has_aux``).
      params: the point at which the Hessian is taken.
      v: a tree like ``params`` (same structure and shapes).
      *args: further arguments of ``loss`` (batch, state), not differentiated.
      has_aux: ``loss`` returns ``(scalar, aux)``; ``aux`` is ignored.

    Returns:
      ``H v``, a tree like ``params``.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda p: jnp.sum(p['w'] ** 3)               # H = diag(6 w)
      >>> hvp(loss, {'w': jnp.array([1., 2.])}, {'w': jnp.array([1., 1.])})
      {'w': Array([ 6., 12.], dtype=float32)}
    """
    _check_callable(loss, "loss", "hvp")
    _check_like("hvp", "v", v, params)
    g = lambda p: jax.grad(_value_fn(loss, has_aux, "hvp"))(p, *args)
    return jax.jvp(g, (params,), (v,))[1]


class LayoutEntry(NamedTuple):
    """One parameter's place in a flattened (sub)tree: ``flat[start:stop].reshape(shape)``."""

    path: str
    shape: tuple
    start: int
    stop: int


def _selector(wrt, where: str):
    """``wrt`` as a predicate on ``'fc1/w'``-style paths."""
    if wrt is None:
        return lambda s: True
    if callable(wrt):
        return wrt
    pats = (wrt,) if isinstance(wrt, str) else tuple(wrt) if isinstance(wrt, Sequence) else None
    if not pats or not all(isinstance(p, str) and p for p in pats):
        raise ConfigError(f"{where}: wrt must be None (all parameters), a path such as 'fc1' or "
                          f"'fc1/w', a sequence of paths, or a function path -> bool; got {wrt!r}")
    pats = tuple(p.strip("/") for p in pats)
    return lambda s: any(s == p or s.startswith(p + "/") for p in pats)


def _split(params, wrt, where):
    """Selected leaves, a function rebuilding params from them, and the layout."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    sel = _selector(wrt, where)
    paths = [_path(kp) for kp, _ in flat]
    mask = [bool(sel(s)) for s in paths]
    if not any(mask):
        raise ConfigError(f"{where}: wrt={wrt!r} selects no parameter; the parameter paths are "
                          f"{paths}")
    chosen = [leaf for (_, leaf), m in zip(flat, mask) if m]
    layout, start = [], 0
    for s, (_, leaf), m in zip(paths, flat, mask):
        if m:
            size = math.prod(jnp.shape(leaf))
            layout.append(LayoutEntry(s, tuple(jnp.shape(leaf)), start, start + size))
            start += size

    def rebuild(new):
        it = iter(new)
        leaves = [next(it) if m else leaf for (_, leaf), m in zip(flat, mask)]
        return jax.tree_util.tree_unflatten(treedef, leaves)

    return chosen, rebuild, tuple(layout)


def param_layout(params, wrt=None) -> tuple[LayoutEntry, ...]:
    """Where each selected parameter sits in the flat vector :func:`hessian` uses.

    Layout: the selected leaves in ``jax.tree_util`` order (dict keys sorted,
    so ``'fc1/b'`` comes before ``'fc1/w'``), each flattened in row-major (C)
    order, concatenated. This is ``jax.flatten_util.ravel_pytree`` of the
    selected leaves.

    Args:
      params: a parameter pytree.
      wrt: which parameters: ``None`` (all), a path or path prefix made of whole
        components (``'fc1'`` selects ``'fc1/w'`` and ``'fc1/b'``, not
        ``'fc10/w'``), a sequence of such paths, or a function ``path -> bool``.

    Returns:
      A tuple of :class:`LayoutEntry` ``(path, shape, start, stop)``.

    Example:
      >>> import jax.numpy as jnp
      >>> p = {'fc1': {'w': jnp.ones((2, 3)), 'b': jnp.ones(3)}, 'fc2': {'w': jnp.ones((3, 1))}}
      >>> [(e.path, e.start, e.stop) for e in param_layout(p, 'fc1')]
      [('fc1/b', 0, 3), ('fc1/w', 3, 9)]
    """
    return _split(params, wrt, "param_layout")[2]


def _flat_loss(loss, params, args, wrt, has_aux, where):
    chosen, rebuild, layout = _split(params, wrt, where)
    z, unravel = ravel_pytree(chosen)
    value = _value_fn(loss, has_aux, where)
    return (lambda zz: value(rebuild(unravel(zz)), *args)), z, unravel, rebuild, layout


def hessian(loss: Callable, params, *args, wrt=None, has_aux: bool = False) -> jax.Array:
    """The Hessian of ``loss`` w.r.t. a parameter subtree, as a ``[P, P]`` matrix.

    ``P`` is the number of selected scalars. Rows and columns follow
    :func:`param_layout` (selected leaves in tree order, dict keys sorted, each
    leaf row-major), so entry ``[i, j]`` is ``d^2 loss / d z_i d z_j`` with ``z``
    the flattened subtree. The other parameters are held fixed. Computed with
    ``jax.hessian`` (``P`` forward-over-reverse passes): for small subtrees.

    Args:
      loss: ``loss(params, *args) -> scalar`` (``(scalar, aux)`` with ``has_aux``).
      params: the point at which the Hessian is taken.
      *args: further arguments of ``loss`` (batch, state), not differentiated.
      wrt: the parameters to differentiate: ``None`` (all), a path prefix such
        as ``'fc1'`` or ``'fc1/w'``, a sequence of them, or a function
        ``path -> bool``.
      has_aux: ``loss`` returns ``(scalar, aux)``; ``aux`` is ignored.

    Returns:
      ``[P, P]`` symmetric matrix (up to rounding).

    Example:
      >>> import jax.numpy as jnp
      >>> p = {'a': {'w': jnp.array([1., 2.])}, 'b': {'w': jnp.array(3.)}}
      >>> loss = lambda p: jnp.sum(p['a']['w'] ** 2) * p['b']['w']
      >>> hessian(loss, p, wrt='a')                          # 2 * b * I
      Array([[6., 0.],
             [0., 6.]], dtype=float32)
    """
    _check_callable(loss, "loss", "hessian")
    _check_scalar("hessian", loss, params, args, has_aux)
    f, z, *_ = _flat_loss(loss, params, args, wrt, has_aux, "hessian")
    return jax.hessian(f)(z)


def newton_step(loss: Callable, params, *args, damping: float = 1e-3, lr: float = 1.0,
                wrt=None, has_aux: bool = False):
    r"""One damped Newton step on a parameter subtree (the full Hessian is formed).

    ``z <- z - lr * (H + damping * I)^{-1} g`` for the flattened subtree ``z``
    (:func:`param_layout`), ``g`` and ``H`` the gradient and Hessian of ``loss``.
    For a non-convex loss ``H`` may have negative eigenvalues: ``damping`` must
    exceed ``-lambda_min(H)`` for the step to point downhill (Levenberg-
    Marquardt: raise it when a step increases the loss, lower it otherwise).

    Args:
      loss: ``loss(params, *args) -> scalar`` (``(scalar, aux)`` with ``has_aux``).
      params: the current parameters.
      *args: further arguments of ``loss`` (batch, state), not differentiated.
      damping: ``lambda >= 0`` added to the Hessian's diagonal.
      lr: step length multiplier, a finite number > 0 (1: the full Newton step).
      wrt: which parameters to update (see :func:`hessian`); others stay fixed.
      has_aux: ``loss`` returns ``(scalar, aux)``; ``aux`` is ignored.

    Returns:
      The updated parameters (same tree as ``params``).

    Example (a quadratic is minimised in one step):
      >>> import jax.numpy as jnp
      >>> loss = lambda p: jnp.sum((p['w'] - 3.0) ** 2)
      >>> newton_step(loss, {'w': jnp.zeros(2)}, damping=0.0)
      {'w': Array([3., 3.], dtype=float32)}
    """
    _check_callable(loss, "loss", "newton_step")
    _check_positive("newton_step", "damping", damping, allow_zero=True)
    _check_positive("newton_step", "lr", lr)
    _check_scalar("newton_step", loss, params, args, has_aux)
    f, z, unravel, rebuild, _ = _flat_loss(loss, params, args, wrt, has_aux, "newton_step")
    g = jax.grad(f)(z)
    h = jax.hessian(f)(z)
    d = jnp.linalg.solve(h + damping * jnp.eye(z.shape[0], dtype=h.dtype), g)
    return rebuild(unravel(z - lr * d))


class CGResult(NamedTuple):
    """What :func:`cg_solve` returns.

    Attributes:
      x: the approximate solution, a tree like ``b``.
      iterations: conjugate-gradient iterations done (int32 scalar).
      residual_norm: ``||b - (A + damping I) x||`` estimated by the recursion.
      negative_curvature: True if a direction ``p`` with ``p^T (A + damping I) p <= 0``
        was met (the matrix is not positive definite there); ``x`` is the
        iterate reached before it.
    """

    x: Any
    iterations: jax.Array
    residual_norm: jax.Array
    negative_curvature: jax.Array


def _vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _axpy(alpha, x, y):
    """``alpha * x + y`` on trees."""
    return jax.tree_util.tree_map(lambda a, b: alpha * a + b, x, y)


def cg_solve(matvec: Callable, b, *, x0=None, damping: float = 0.0, maxiter: int = 50,
             tol: float = 1e-6) -> CGResult:
    r"""Solve ``(A + damping * I) x = b`` by conjugate gradients, on pytrees.

    ``A`` is given only through ``matvec(v) = A v`` (e.g. a Hessian-vector
    product, :func:`hvp`), so ``A`` is never formed: Hessian-free
    optimisation. ``A + damping I`` should be symmetric positive definite; the
    solver stops at the first direction of non-positive curvature and reports it.
    Runs in a ``jax.lax.while_loop`` (jit-friendly; ``maxiter`` is static).

    Args:
      matvec: ``v -> A v`` on trees like ``b``.
      b: the right-hand side, a pytree (e.g. the gradient).
      x0: initial guess (default zeros).
      damping: ``lambda >= 0`` added to ``A``'s diagonal (Tikhonov damping).
      maxiter: at most this many iterations.
      tol: stop when ``||r|| <= tol * ||b||``.

    Returns:
      :class:`CGResult` ``(x, iterations, residual_norm, negative_curvature)``.

    Example:
      >>> import jax.numpy as jnp
      >>> A = jnp.array([[4., 1.], [1., 3.]])
      >>> r = cg_solve(lambda v: A @ v, jnp.array([1., 2.]))
      >>> bool(jnp.allclose(A @ r.x, jnp.array([1., 2.]), atol=1e-5)), int(r.iterations)
      (True, 2)
    """
    where = "cg_solve"
    _check_callable(matvec, "matvec", where)
    _check_positive(where, "damping", damping, allow_zero=True)
    if not isinstance(maxiter, int) or isinstance(maxiter, bool) or maxiter < 1:
        raise ConfigError(f"{where}: maxiter must be a positive int; got maxiter={maxiter!r}")
    _check_positive(where, "tol", tol, allow_zero=True)
    if x0 is None:
        x0 = jax.tree_util.tree_map(jnp.zeros_like, b)
    else:
        _check_like(where, "x0", x0, b)

    def op(v):
        return _axpy(damping, v, matvec(v))

    r0 = jax.tree_util.tree_map(jnp.subtract, b, op(x0))
    rr0 = _vdot(r0, r0)
    bound = (tol ** 2) * _vdot(b, b)

    def cond(c):
        _, _, _, rr, i, neg = c
        return (i < maxiter) & (rr > bound) & ~neg

    def body(c):
        x, r, p, rr, i, neg = c
        ap = op(p)
        pap = _vdot(p, ap)
        bad = pap <= 0
        alpha = jnp.where(bad, 0.0, rr / jnp.where(bad, 1.0, pap))
        x = _axpy(alpha, p, x)
        r = _axpy(-alpha, ap, r)
        rr_new = _vdot(r, r)
        beta = rr_new / jnp.where(rr > 0, rr, 1.0)
        p = _axpy(beta, p, r)
        return x, r, p, jnp.where(bad, rr, rr_new), i + jnp.where(bad, 0, 1), bad

    x, _, _, rr, i, neg = jax.lax.while_loop(
        cond, body, (x0, r0, r0, rr0, jnp.zeros((), jnp.int32), jnp.zeros((), bool)))
    return CGResult(x, i, jnp.sqrt(rr), neg)


def hessian_free_step(loss: Callable, params, *args, damping: float = 1e-3, lr: float = 1.0,
                      maxiter: int = 20, tol: float = 1e-4, has_aux: bool = False):
    r"""One Hessian-free (truncated Newton) step: ``params - lr * d``, ``(H + lambda I) d = g``.

    ``d`` is found by :func:`cg_solve` with Hessian-vector products (the loss
    is linearised once, so each CG iteration costs one forward-over-reverse
    product); the Hessian is never formed, so this scales to any network.
    ``d`` starts at zero, so a truncated solve still points downhill while the
    curvature met is positive; at negative curvature CG stops early (see
    ``CGResult.negative_curvature``): raise ``damping``.

    Args:
      loss: ``loss(params, *args) -> scalar`` (``(scalar, aux)`` with ``has_aux``).
      params: the current parameters.
      *args: further arguments of ``loss`` (batch, state), not differentiated.
      damping: ``lambda >= 0`` added to the Hessian's diagonal.
      lr: step length multiplier.
      maxiter: at most this many CG iterations (Hessian-vector products).
      tol: CG's relative residual tolerance.
      has_aux: ``loss`` returns ``(scalar, aux)``; ``aux`` is ignored.

    Returns:
      ``(new_params, CGResult)``; ``CGResult.x`` is ``d``.

    Example (a quadratic in two CG iterations):
      >>> import jax.numpy as jnp
      >>> loss = lambda p: jnp.sum(jnp.array([1., 10.]) * (p['w'] - 1.0) ** 2)
      >>> p, info = hessian_free_step(loss, {'w': jnp.zeros(2)}, damping=0.0)
      >>> p['w'], int(info.iterations)
      (Array([1., 1.], dtype=float32), 2)
    """
    _check_callable(loss, "loss", "hessian_free_step")
    _check_positive("hessian_free_step", "damping", damping, allow_zero=True)
    _check_scalar("hessian_free_step", loss, params, args, has_aux)
    grad_fn = lambda p: jax.grad(_value_fn(loss, has_aux, "hessian_free_step"))(p, *args)
    g, matvec = jax.linearize(grad_fn, params)
    res = cg_solve(matvec, g, damping=damping, maxiter=maxiter, tol=tol)
    return _axpy(-lr, res.x, params), res


# -- per-example gradients and DP-SGD ----------------------------------------------------

def _batch_size(where: str, batch) -> int:
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves:
        raise ShapeError(f"{where}: batch holds no arrays")
    shapes = [jnp.shape(a) for a in leaves]
    if any(len(s) == 0 for s in shapes) or len({s[0] for s in shapes}) != 1:
        raise ShapeError(f"{where}: every array of batch must have the same leading (batch) axis "
                         f"[N, ...]; got shapes {shapes}")
    return shapes[0][0]


def per_example_grads(loss: Callable, params, batch, *args, has_aux: bool = False):
    """Gradient of the loss of each example separately (``jax.vmap`` of ``jax.grad``).

    ``loss`` is written for a batch; each example is given to it as a batch of
    one (its leading axis kept, size 1), so the same loss function serves both.
    Cost: about one batched backward pass.

    Args:
      loss: ``loss(params, batch, *args) -> scalar`` on a batch (e.g. a mean of
        per-example losses). ``(scalar, aux)`` with ``has_aux``.
      params: the parameters.
      batch: a pytree of arrays sharing the leading axis ``N`` (e.g. ``(x, y)``
        with ``x: [N, ...]``, ``y: [N]``).
      *args: further arguments, the same for every example (e.g. a batch-norm
        ``state`` used in eval mode; train-mode batch statistics of a batch of
        one are meaningless).
      has_aux: ``loss`` returns ``(scalar, aux)``; ``aux`` is ignored.

    Returns:
      A tree like ``params`` whose leaves have a leading axis ``N``: leaf
      ``[i]`` is the gradient of example ``i``'s loss.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda p, b: jnp.mean((b[0] @ p['w'] - b[1]) ** 2)
      >>> x, y = jnp.array([[1.], [2.]]), jnp.array([1., 0.])
      >>> per_example_grads(loss, {'w': jnp.zeros((1,))}, (x, y))['w']   # 2 (x w - y) x
      Array([[-2.],
             [ 0.]], dtype=float32)
    """
    _check_callable(loss, "loss", "per_example_grads")
    _batch_size("per_example_grads", batch)
    value = _value_fn(loss, has_aux, "per_example_grads (called on a batch of one example)")

    def one(example):
        b1 = jax.tree_util.tree_map(lambda a: a[None], example)
        return jax.grad(value)(params, b1, *args)

    return jax.vmap(one)(batch)


def _leading(where: str, grads) -> int:
    leaves = jax.tree_util.tree_leaves(grads)
    if not leaves or any(jnp.ndim(a) == 0 for a in leaves) or len({a.shape[0] for a in leaves}) != 1:
        raise ShapeError(f"{where}: grads must be per-example gradients, every leaf [N, ...] with "
                         f"the same N (from per_example_grads); got shapes "
                         f"{[jnp.shape(a) for a in leaves]}")
    return leaves[0].shape[0]


def per_example_norms(grads) -> jax.Array:
    """Global L2 norm of each example's gradient, over all leaves: ``[N]``.

    Args:
      grads: per-example gradients, a tree whose leaves are ``[N, ...]``.
    """
    _leading("per_example_norms", grads)
    sq = sum(jnp.sum(jnp.reshape(a, (a.shape[0], -1)) ** 2, axis=1)
             for a in jax.tree_util.tree_leaves(grads))
    return jnp.sqrt(sq)


def _clip_factor(norms, max_norm):
    """``min(1, C / ||g_i||)`` (1 for a zero gradient)."""
    return jnp.minimum(1.0, max_norm / jnp.maximum(norms, jnp.finfo(norms.dtype).tiny))


def clip_per_example(grads, max_norm: float):
    r"""Scale each example's gradient to global L2 norm at most ``max_norm`` (DP-SGD clipping).

    ``g_i <- g_i * min(1, C / ||g_i||)``, the norm over all leaves of example ``i``.

    Args:
      grads: per-example gradients, leaves ``[N, ...]`` (:func:`per_example_grads`).
      max_norm: the clipping bound ``C > 0``.

    Returns:
      ``(clipped, norms)``: the clipped tree (same shapes) and the norms before
      clipping, ``[N]``.

    Example:
      >>> import jax.numpy as jnp
      >>> g = {'w': jnp.array([[3., 4.], [0.3, 0.4]])}       # norms 5 and 0.5
      >>> clipped, norms = clip_per_example(g, 1.0)
      >>> clipped['w']
      Array([[0.6, 0.8],
             [0.3, 0.4]], dtype=float32)
    """
    _check_positive("clip_per_example", "max_norm", max_norm)
    norms = per_example_norms(grads)
    factor = _clip_factor(norms, max_norm)

    def scale(a):
        return a * factor.astype(a.dtype).reshape((-1,) + (1,) * (a.ndim - 1))

    return jax.tree_util.tree_map(scale, grads), norms


def add_noise(grads_sum, *, key, noise_multiplier: float, max_norm: float, batch_size: int):
    r"""The DP-SGD noisy mean: ``(sum_i clip(g_i) + N(0, (sigma C)^2 I)) / B``.

    Args:
      grads_sum: the sum over the batch of the clipped per-example gradients, a
        tree like ``params``.
      key: a ``jax.random`` key or an int seed (independent noise for every leaf).
      noise_multiplier: ``sigma >= 0``; the noise standard deviation is ``sigma * C``.
      max_norm: the clipping bound ``C`` used on each example.
      batch_size: ``B``, the (expected) number of examples summed.

    Returns:
      The privatised mean gradient, a tree like ``grads_sum``.
    """
    where = "add_noise"
    _check_positive(where, "noise_multiplier", noise_multiplier, allow_zero=True)
    _check_positive(where, "max_norm", max_norm)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"{where}: batch_size must be a positive int; got batch_size={batch_size!r}")
    key = as_key(key, where)
    leaves, treedef = jax.tree_util.tree_flatten(grads_sum)
    if isinstance(noise_multiplier, numbers.Real) and noise_multiplier == 0:
        return jax.tree_util.tree_map(lambda g: g / batch_size, grads_sum)  # no RNG to compile
    keys = jax.random.split(key, len(leaves))
    std = noise_multiplier * max_norm
    noisy = [(g + std * jax.random.normal(k, jnp.shape(g), jnp.result_type(g))) / batch_size
             for g, k in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(treedef, noisy)


class DPGrads(NamedTuple):
    """What :func:`dp_sgd_grads` returns.

    Attributes:
      grads: the privatised mean gradient, a tree like ``params``.
      norms: each example's gradient norm before clipping, ``[N]``.
    """

    grads: Any
    norms: jax.Array


def dp_sgd_grads(loss: Callable, params, batch, *args, key, max_norm: float,
                 noise_multiplier: float, has_aux: bool = False) -> DPGrads:
    r"""DP-SGD gradient (Abadi et al., 2016): per-example clip, sum, Gaussian noise, mean.

    ``g = (sum_i g_i min(1, C/||g_i||) + N(0, sigma^2 C^2 I)) / N``. Each example
    changes the clipped sum by at most ``C`` (its sensitivity), which the noise
    masks. Privacy accounting (the epsilon spent) is not done here. Memory and
    time: the per-example gradients are materialised (``N`` times the
    parameter count), so keep models and batches modest.

    Args:
      loss: ``loss(params, batch, *args) -> scalar`` on a batch (see
        :func:`per_example_grads`).
      params: the parameters.
      batch: arrays with a leading axis ``N``, e.g. ``(x, y)``.
      *args: further arguments of ``loss`` shared by every example.
      key: a ``jax.random`` key or an int seed for the noise.
      max_norm: clipping bound ``C > 0``.
      noise_multiplier: ``sigma >= 0`` (0 gives clipped, noiseless SGD).
      has_aux: ``loss`` returns ``(scalar, aux)``; ``aux`` is ignored.

    Returns:
      :class:`DPGrads` ``(grads, norms)``.
    """
    n = _batch_size("dp_sgd_grads", batch)
    key = as_key(key, "dp_sgd_grads")
    _check_positive("dp_sgd_grads", "max_norm", max_norm)
    per = per_example_grads(loss, params, batch, *args, has_aux=has_aux)
    norms = per_example_norms(per)
    factor = _clip_factor(norms, max_norm)
    # sum_i factor_i g_i as one contraction: the clipped per-example tree is never stored.
    summed = jax.tree_util.tree_map(lambda a: jnp.tensordot(factor.astype(a.dtype), a, axes=1), per)
    return DPGrads(add_noise(summed, key=key, noise_multiplier=noise_multiplier,
                             max_norm=max_norm, batch_size=n), norms)


# -- input gradients -----------------------------------------------------------------

def gradient_penalty(f: Callable, x) -> jax.Array:
    r"""Per-example norm of the input gradient, :math:`\|\nabla_{x_i} f(x)_i\|_2`, differentiable again.

    For WGAN-GP (penalise ``(norm - 1)^2`` at points between real and fake
    samples) and input-gradient regularisation / double backpropagation
    (penalise ``norm^2`` of the loss's input gradient). The result is built from
    ``jax.grad`` inside the traced function, so ``jax.grad`` of a loss using it
    differentiates through the gradient (second order). One backward pass
    serves the whole batch: ``f``'s outputs must not mix examples (no
    train-mode batch norm).

    The norm is exact and its own gradient is defined at zero (0, not NaN).

    Args:
      f: ``f(x) -> [N]`` or ``[N, 1]``: one scalar per example (a critic's score,
        a per-example loss ``F.cross_entropy(model(x), y, reduction='none')``,
        the logit of the true class, ...).
      x: the input, ``[N, ...]``.

    Returns:
      ``[N]`` gradient norms.

    Example:
      >>> import jax.numpy as jnp
      >>> f = lambda x: jnp.sum(x ** 2, axis=1)                # grad 2x
      >>> gradient_penalty(f, jnp.array([[3., 4.], [0., 0.]]))
      Array([10.,  0.], dtype=float32)
    """
    where = "gradient_penalty"
    _check_callable(f, "f", where)
    if not hasattr(x, "shape") or len(x.shape) < 1:
        raise ShapeError(f"{where}: x must be an array [N, ...]; got {type(x).__name__}")
    n = x.shape[0]
    out = jax.eval_shape(f, x)
    if not hasattr(out, "shape") or out.shape not in ((n,), (n, 1)):
        raise ShapeError(
            f"{where}: f(x) must return one scalar per example, shape ({n},) or ({n}, 1); got "
            f"{getattr(out, 'shape', type(out).__name__)}. Reduce to a scalar per example first, "
            "e.g. lambda x: F.cross_entropy(model(x), y, reduction='none')")
    g = jax.grad(lambda xx: jnp.sum(f(xx)))(x)
    sq = jnp.sum(jnp.reshape(g, (n, -1)) ** 2, axis=1)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)

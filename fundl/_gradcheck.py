"""Finite-difference checks of first and second derivatives, in float64.

Implementation of :func:`fundl.autodiff.check_grads`. Every derivative is
checked along random directions (directional derivatives), so the cost does
not grow with the number of inputs: a forward-mode check compares
``jvp(f, x, v)`` with the central difference ``(f(x + eps v) - f(x - eps v)) /
(2 eps)``; a reverse-mode check compares ``<vjp(f, x)(u), v>`` with
``<u, central difference>``. Second order repeats both checks on the functions
``x -> jvp(f, x, v)`` and ``x -> vjp(f, x)(u)``.

Everything runs under ``jax.enable_x64(True)`` with the floating inputs cast to
float64, so the finite differences are accurate to about 1e-10 (float32 would
give only ~1e-3 and hide real mistakes). Note ``jax.experimental.enable_x64``
does not exist in current jax; ``jax.enable_x64`` is the context manager.
"""
from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import ConfigError, FundlError


class GradientCheckError(FundlError):
    """A derivative disagrees with finite differences; ``.report`` holds the details."""

    def __init__(self, message: str, report: "GradCheckReport"):
        super().__init__(message)
        self.report = report


@dataclasses.dataclass(frozen=True)
class GradCheck:
    """One directional check.

    Attributes:
      order: derivative order checked (1 or 2).
      check: what was checked: ``'jvp'``, ``'vjp'`` (order 1), ``'jvp of jvp'``,
        ``'vjp of jvp'``, ``'jvp of vjp'``, ``'vjp of vjp'`` (order 2: the outer
        derivative, taken by autodiff, of the inner derivative's function).
      direction: index of the random direction.
      autodiff: the autodiff value (for a ``jvp`` check, at the worst element).
      finite_diff: the central finite difference of the same quantity.
      abs_err: ``|autodiff - finite_diff|`` (worst element for ``jvp``).
      tol: the tolerance ``atol + rtol * scale`` it was compared with.
      where: which output element (``jvp`` checks) or ``'<u, J v>'``.
      skipped: why the check could not run (e.g. forward mode on a
        ``custom_vjp`` function), else ``None``.
    """

    order: int
    check: str
    direction: int
    autodiff: float
    finite_diff: float
    abs_err: float
    tol: float
    where: str
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return self.skipped is not None or bool(self.abs_err <= self.tol)

    @property
    def ratio(self) -> float:
        """``abs_err / tol`` (inf for NaN errors); above 1 is a failure."""
        if self.skipped is not None:
            return 0.0
        if not math.isfinite(self.abs_err):
            return math.inf
        return self.abs_err / self.tol if self.tol > 0 else math.inf


@dataclasses.dataclass(frozen=True)
class GradCheckReport:
    """All checks done by :func:`check_grads`; ``str(report)`` is a readable table.

    Attributes:
      checks: the :class:`GradCheck` s, in the order they were run.
      eps, rtol, atol: the settings used.
    """

    checks: tuple
    eps: float
    rtol: float
    atol: float

    @property
    def ok(self) -> bool:
        """True when every check passed (skipped checks count as passed)."""
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> tuple:
        return tuple(c for c in self.checks if not c.ok)

    @property
    def worst(self) -> GradCheck:
        """The check with the largest ``abs_err / tol``."""
        return max(self.checks, key=lambda c: c.ratio)

    def summary(self) -> str:
        w = self.worst
        n_fail = len(self.failures)
        head = (f"check_grads: {n_fail} of {len(self.checks)} checks failed" if n_fail else
                f"check_grads: all {len(self.checks)} checks passed")
        return (f"{head} (float64, eps={self.eps:g}, rtol={self.rtol:g}, atol={self.atol:g}); "
                f"worst: order {w.order} {w.check!r} direction {w.direction} at {w.where}: "
                f"autodiff {w.autodiff:.8g} vs finite difference {w.finite_diff:.8g} "
                f"(abs err {w.abs_err:.3g}, tol {w.tol:.3g})")

    def __str__(self) -> str:
        rows = [f"{'order':>5}  {'check':<11} {'dir':>3}  {'autodiff':>14}  {'finite diff':>14}  "
                f"{'abs err':>9}  {'tol':>9}  result"]
        for c in self.checks:
            if c.skipped:
                rows.append(f"{c.order:>5}  {c.check:<11} {c.direction:>3}  skipped: {c.skipped}")
                continue
            rows.append(f"{c.order:>5}  {c.check:<11} {c.direction:>3}  {c.autodiff:>14.8g}  "
                        f"{c.finite_diff:>14.8g}  {c.abs_err:>9.2e}  {c.tol:>9.2e}  "
                        f"{'ok' if c.ok else 'FAIL'}  {c.where}")
        return self.summary() + "\n" + "\n".join(rows)

    __repr__ = __str__


def _is_float(a) -> bool:
    if isinstance(a, bool):
        return False
    if isinstance(a, numbers.Real) and not isinstance(a, numbers.Integral):
        return True
    dt = getattr(a, "dtype", None)
    return dt is not None and jnp.issubdtype(dt, jnp.floating)


def _direction(rng, like):
    """Random normal tree like ``like`` (float64), scaled to unit global norm."""
    v = [rng.standard_normal(np.shape(a)) for a in like]
    norm = math.sqrt(sum(float(np.sum(a * a)) for a in v)) or 1.0
    return [jnp.asarray(a / norm, jnp.float64) for a in v]


def _cotangent(rng, out):
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype), out)


def _vdot(a, b) -> float:
    return float(sum(np.vdot(np.asarray(x, np.float64), np.asarray(y, np.float64))
                     for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))))


def _absdot(a, b) -> float:
    return float(sum(np.sum(np.abs(np.asarray(x, np.float64) * np.asarray(y, np.float64)))
                     for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))))


def _forward_unsupported(err: Exception) -> str | None:
    msg = str(err)
    if "custom_vjp" in msg and ("jvp" in msg or "forward" in msg):
        return "forward mode is not defined for a custom_vjp function"
    return None


def check_grads(f, args, order: int = 2, *, modes=("fwd", "rev"), eps: float = 1e-5,
                rtol: float = 1e-5, atol: float = 1e-8, num_directions: int = 1, seed: int = 0,
                raise_on_failure: bool = True) -> GradCheckReport:
    """Check ``f``'s first (and second) derivatives against finite differences, in float64.

    Every floating leaf of ``args`` is perturbed jointly along a random unit
    direction; integer leaves (labels, keys) are held fixed. Checks (for each
    of ``num_directions`` random directions):

    * order 1: ``'jvp'`` (forward mode, every output element compared with the
      central difference) and ``'vjp'`` (reverse mode, ``<vjp(u), v>`` against
      ``<u, central difference>`` for a random cotangent ``u``);
    * order 2: the same two checks applied to ``x -> jvp(f, x, v)`` and to
      ``x -> vjp(f, x)(u)``: ``'jvp of jvp'``, ``'vjp of jvp'``,
      ``'jvp of vjp'``, ``'vjp of vjp'`` (a Hessian-vector product is
      ``'jvp of vjp'``).

    A check passes when ``|autodiff - fd| <= atol + rtol * scale`` (``scale``:
    the largest magnitude involved). Forward-mode checks of a ``custom_vjp``
    function are reported as skipped (jax defines no ``jvp`` for it). Points
    where ``f`` has a kink (ReLU at 0, max ties) fail legitimately: move them.

    Args:
      f: the function, ``f(*args) -> array or pytree of float arrays``.
      args: a tuple of arguments (pytrees allowed, e.g. ``(params, x)``).
      order: 1 or 2.
      modes: a subset of ``('fwd', 'rev')``.
      eps: finite-difference step along the unit direction.
      rtol, atol: tolerances (float64 central differences are good to ~1e-9).
      num_directions: random directions per check.
      seed: seed of the directions and cotangents.
      raise_on_failure: raise :class:`GradientCheckError` (message: the summary
        line and the table; ``.report``) if a check fails; otherwise return the
        report and let the caller look at ``report.ok``.

    Returns:
      A :class:`GradCheckReport` (``.ok``, ``.worst``, ``.failures``, ``str()``).

    Example:
      >>> import jax.numpy as jnp
      >>> report = check_grads(lambda x: jnp.sin(x) * x, (jnp.array([0.3, 1.2]),))
      >>> report.ok, len(report.checks)
      (True, 6)
    """
    where = "check_grads"
    if not callable(f):
        raise ConfigError(f"{where}: f must be a function; got {type(f).__name__}")
    if not isinstance(args, tuple):
        raise ConfigError(f"{where}: args must be a tuple of f's arguments, e.g. (params, x); "
                          f"got {type(args).__name__}")
    if order not in (1, 2):
        raise ConfigError(f"{where}: order must be 1 or 2; got order={order!r}")
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    if not modes or any(m not in ("fwd", "rev") for m in modes):
        raise ConfigError(f"{where}: modes must be a non-empty subset of ('fwd', 'rev'); got {modes!r}")
    for arg, v in (("eps", eps), ("rtol", rtol), ("atol", atol)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v >= 0 or \
                (arg == "eps" and v == 0):
            raise ConfigError(f"{where}: {arg} must be a number {'> 0' if arg == 'eps' else '>= 0'}; "
                              f"got {arg}={v!r}")
    if not isinstance(num_directions, int) or num_directions < 1:
        raise ConfigError(f"{where}: num_directions must be a positive int; got {num_directions!r}")

    rng = np.random.default_rng(seed)
    checks: list[GradCheck] = []
    with jax.enable_x64(True):
        leaves, treedef = jax.tree_util.tree_flatten(args)
        diff = [i for i, a in enumerate(leaves) if _is_float(a)]
        if not diff:
            raise ConfigError(f"{where}: args hold no floating-point arrays to differentiate")
        xs = [jnp.asarray(leaves[i], jnp.float64) for i in diff]

        def f0(ys):
            full = list(leaves)
            for i, y in zip(diff, ys):
                full[i] = y
            return f(*jax.tree_util.tree_unflatten(treedef, full))

        out = jax.eval_shape(f0, xs)
        bad = [o for o in jax.tree_util.tree_leaves(out) if not jnp.issubdtype(o.dtype, jnp.floating)]
        if bad:
            raise ConfigError(f"{where}: f must return floating-point arrays; got an output of "
                              f"dtype {bad[0].dtype}")
        names = []
        for kp, a in jax.tree_util.tree_flatten_with_path(args)[0]:
            if _is_float(a):
                s = jax.tree_util.keystr(kp[1:], simple=True, separator="/")
                names.append(f"args[{kp[0].idx}]" + (f"/{s}" if s else ""))
        _run(f0, xs, 1, order, "", modes, eps, rtol, atol, num_directions, rng, checks, None, names)

    report = GradCheckReport(tuple(checks), float(eps), float(rtol), float(atol))
    if raise_on_failure and not report.ok:
        raise GradientCheckError(str(report), report)
    return report


def _run(fn, xs, level, order, suffix, modes, eps, rtol, atol, ndir, rng, checks, out_names,
         arg_names):
    """Order-``level`` checks of ``fn``; recurse on its derivative functions.

    ``out_names`` names ``fn``'s outputs when they are a list like the inputs (the
    function ``x -> vjp(f, x)(u)``), so reports say ``args[0]/fc1/w[2, 3]``.
    """
    out_shape = jax.eval_shape(fn, xs)
    rev = "rev" in modes

    def make(fwd):
        # One compiled function per level: the central difference, the jvp and the vjp
        # (eager dispatch, or one compilation each, would be several times slower).
        def probe(ys, v, u):
            plus = fn([y + eps * t for y, t in zip(ys, v)])
            minus = fn([y - eps * t for y, t in zip(ys, v)])
            fd = jax.tree_util.tree_map(lambda a, b: (a - b) / (2 * eps), plus, minus)
            tangent = jax.jvp(fn, (ys,), (v,))[1] if fwd else None
            ct = jax.vjp(fn, ys)[1](u)[0] if rev else None
            return fd, tangent, ct
        return jax.jit(probe)

    fwd, why = "fwd" in modes, None
    directions = [(_direction(rng, xs), _cotangent(rng, out_shape)) for _ in range(ndir)]
    probe = make(fwd)
    try:
        results = [probe(xs, v, u) for v, u in directions]
    except TypeError as e:
        why = _forward_unsupported(e)
        if why is None or not fwd:
            raise
        fwd, probe = False, make(False)
        results = [probe(xs, v, u) for v, u in directions]
    for d, ((v, u), (fd, tangent, ct)) in enumerate(zip(directions, results)):
        if "fwd" in modes:
            if why is not None:
                checks.append(GradCheck(level, "jvp" + suffix, d, math.nan, math.nan, math.nan,
                                        0.0, "", why))
            else:
                checks.append(_compare_fwd(level, "jvp" + suffix, d, tangent, fd, rtol, atol,
                                           out_names))
        if rev:
            ad, fdv = _vdot(ct, v), _vdot(u, fd)
            scale = max(abs(ad), abs(fdv), _absdot(u, fd))
            checks.append(GradCheck(level, "vjp" + suffix, d, ad, fdv, abs(ad - fdv),
                                    atol + rtol * scale, "<u, J v>"))
    if level >= order:
        return
    v0, u0 = directions[0]
    if "fwd" in modes:
        if fwd:
            jvp_fn = lambda ys: jax.jvp(fn, (ys,), (v0,))[1]
            _run(jvp_fn, xs, level + 1, order, " of jvp" + suffix, modes, eps, rtol, atol, ndir,
                 rng, checks, out_names, arg_names)
        else:
            for m in modes:
                checks.append(GradCheck(level + 1, ("jvp" if m == "fwd" else "vjp") + " of jvp" + suffix,
                                        0, math.nan, math.nan, math.nan, 0.0, "", why))
    if rev:
        vjp_of = lambda ys: jax.vjp(fn, ys)[1](u0)[0]
        _run(vjp_of, xs, level + 1, order, " of vjp" + suffix, modes, eps, rtol, atol, ndir,
             rng, checks, arg_names, arg_names)


def _compare_fwd(level, name, d, tangent, fd, rtol, atol, out_names=None) -> GradCheck:
    worst = None  # (err, ad, fdv, where)
    scale = 0.0
    for k, ((kp, t), f) in enumerate(zip(jax.tree_util.tree_flatten_with_path(tangent)[0],
                                         jax.tree_util.tree_leaves(fd))):
        t, f = np.asarray(t, np.float64), np.asarray(f, np.float64)
        if t.size == 0:
            continue
        scale = max(scale, float(np.max(np.abs(t))), float(np.max(np.abs(f))))
        err = np.abs(t - f)
        err = np.where(np.isnan(err), np.inf, err)
        i = np.unravel_index(int(np.argmax(err)), err.shape) if err.ndim else ()
        e = float(err[i])
        if worst is None or e > worst[0]:
            idx = "[" + ", ".join(str(int(k)) for k in i) + "]" if i else ""
            label = out_names[k] if out_names else f"output{jax.tree_util.keystr(kp)}"
            worst = (e, float(t[i]), float(f[i]), f"{label}{idx}")
    if worst is None:
        return GradCheck(level, name, d, 0.0, 0.0, 0.0, atol, "(empty output)")
    return GradCheck(level, name, d, worst[1], worst[2], worst[0], atol + rtol * scale, worst[3])

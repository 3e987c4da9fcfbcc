"""Pooling ops (fundl.functional): hand-computed cases, a NumPy loop reference,
torch parity, gradients and argument validation.

Layout is channels-last ([N, *spatial, C]); the torch comparisons transpose to
channels-first.
"""
import functools
import itertools
import math
import random

import jax
import jax.experimental
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fundl import ConfigError, ShapeError
from fundl.functional import (adaptive_avg_pool, avg_pool, global_avg_pool, max_pool,
                              pool_output_size)

ATOL = RTOL = 1e-5


def _x64():
    """float64 context (jax.experimental.enable_x64 was removed in newer jax)."""
    legacy = getattr(jax.experimental, "enable_x64", None)
    return legacy() if legacy is not None else jax.enable_x64(True)


# --------------------------------------------------------------------------- #
# independent NumPy reference, written from torch's index formulas
# --------------------------------------------------------------------------- #
def _tup(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def ref_out_size(L, k, s, p, d, ceil):
    num = L + 2 * p - d * (k - 1) - 1
    out = (-(-num // s) if ceil else num // s) + 1
    if ceil and (out - 1) * s >= L + p:  # last window must start inside input/left pad
        out -= 1
    return out


def _ref_cfg(x, k, s, p, d, ceil):
    n = x.ndim - 2
    k, p, d = _tup(k, n), _tup(p, n), _tup(d, n)
    s = k if s is None else _tup(s, n)
    out = tuple(ref_out_size(x.shape[1 + i], k[i], s[i], p[i], d[i], ceil) for i in range(n))
    return n, k, s, p, d, out


def ref_max_pool(x, k, s=None, p=0, d=1, ceil=False):
    n, k, s, p, d, out = _ref_cfg(x, k, s, p, d, ceil)
    L = x.shape[1:-1]
    y = np.empty((x.shape[0], *out, x.shape[-1]))
    for o in np.ndindex(*out):
        best = np.full((x.shape[0], x.shape[-1]), -np.inf)  # padding is -inf
        for j in np.ndindex(*k):
            pos = tuple(o[i] * s[i] - p[i] + j[i] * d[i] for i in range(n))
            if all(0 <= pos[i] < L[i] for i in range(n)):
                best = np.maximum(best, x[(slice(None), *pos, slice(None))])
        y[(slice(None), *o, slice(None))] = best
    return y


def ref_avg_pool(x, k, s=None, p=0, ceil=False, cip=True, div=None):
    n, k, s, p, _, out = _ref_cfg(x, k, s, p, 1, ceil)
    L = x.shape[1:-1]
    y = np.empty((x.shape[0], *out, x.shape[-1]))
    for o in np.ndindex(*out):
        total, real = np.zeros((x.shape[0], x.shape[-1])), 0
        for j in np.ndindex(*k):
            pos = tuple(o[i] * s[i] - p[i] + j[i] for i in range(n))
            if all(0 <= pos[i] < L[i] for i in range(n)):
                total = total + x[(slice(None), *pos, slice(None))]
                real += 1
        # torch: pool size is clipped to the padded input (min(start+k, L+pad) - start),
        # so the ceil-mode overhang past the padding is never counted.
        padded = math.prod(min(o[i] * s[i] - p[i] + k[i], L[i] + p[i]) - (o[i] * s[i] - p[i])
                           for i in range(n))
        y[(slice(None), *o, slice(None))] = total / (div if div is not None else padded if cip else real)
    return y


def ref_adaptive_avg_pool(x, out):
    n = x.ndim - 2
    L = x.shape[1:-1]
    out = tuple(L[i] if o is None else o for i, o in enumerate(_tup(out, n)))
    y = np.empty((x.shape[0], *out, x.shape[-1]))
    for o in np.ndindex(*out):
        sl = tuple(slice(math.floor(o[i] * L[i] / out[i]), math.ceil((o[i] + 1) * L[i] / out[i]))
                   for i in range(n))
        y[(slice(None), *o, slice(None))] = x[(slice(None), *sl, slice(None))].mean(axis=tuple(range(1, n + 1)))
    return y


# --------------------------------------------------------------------------- #
# the sweep: every 1-d combination, seeded random per-dim mixes for 2-d / 3-d
# --------------------------------------------------------------------------- #
def _fits(shape, k, s, p, d, ceil):
    n = len(shape)
    k, p, d = _tup(k, n), _tup(p, n), _tup(d, n)
    s = k if s is None else _tup(s, n)
    return all(ref_out_size(shape[i], k[i], s[i], p[i], d[i], ceil) >= 1 for i in range(n))


def _max_cases():
    cases = []
    for k, s, d, ceil in itertools.product((1, 2, 3), (None, 1, 2), (1, 2), (False, True)):
        for p in range(k // 2 + 1):
            L = 5 + len(cases) % 3  # vary the size so ceil-mode rounding differs
            if _fits((L,), k, s, p, d, ceil):
                cases.append(((L,), k, s, p, d, ceil))
    rnd = random.Random(0)
    for n, count, sizes in ((2, 20, (4, 5, 6, 7)), (3, 6, (3, 4, 5))):
        while count:
            shape = tuple(rnd.choice(sizes) for _ in range(n))
            k = tuple(rnd.randint(1, 4) for _ in range(n))
            p = tuple(rnd.randint(0, ki // 2) for ki in k)
            s = None if rnd.random() < 0.2 else tuple(rnd.randint(1, 3) for _ in range(n))
            d = tuple(rnd.choice((1, 1, 2)) for _ in range(n))
            ceil = rnd.random() < 0.5
            if _fits(shape, k, s, p, d, ceil):
                cases.append((shape, k, s, p, d, ceil))
                count -= 1
    # Edge cases: ceil-mode window dropped because it would start in the right
    # padding; kernel larger than the input but allowed by ceil mode; a dilated
    # window that lands entirely in padding (-inf); int arguments on 2-d.
    cases += [((5,), 2, 2, 1, 1, True), ((2,), 3, 2, 0, 1, True), ((4,), 2, 1, 1, 5, False),
              ((6, 5), 3, 2, 1, 1, True), ((7, 6), 3, 2, 1, 2, True)]
    return cases


def _avg_cases():
    cases = []
    for k, s, ceil in itertools.product((1, 2, 3, 4), (None, 1, 2), (False, True)):
        for p in range(k // 2 + 1):
            L = 5 + len(cases) % 3
            if _fits((L,), k, s, p, 1, ceil):
                cases.append(((L,), k, s, p, ceil, None))
    rnd = random.Random(1)
    for n, count, sizes in ((2, 20, (4, 5, 6, 7)), (3, 6, (3, 4, 5))):
        while count:
            shape = tuple(rnd.choice(sizes) for _ in range(n))
            k = tuple(rnd.randint(1, 4) for _ in range(n))
            p = tuple(rnd.randint(0, ki // 2) for ki in k)
            s = None if rnd.random() < 0.2 else tuple(rnd.randint(1, 3) for _ in range(n))
            ceil = rnd.random() < 0.5
            div = rnd.choice((None, None, None, 3))
            if _fits(shape, k, s, p, 1, ceil):
                cases.append((shape, k, s, p, ceil, div))
                count -= 1
    cases += [((4,), 3, 2, 1, True, None), ((2,), 3, 2, 0, True, None), ((6, 5), 3, 2, 1, True, None),
              ((5, 5), 4, 3, 2, True, None), ((5, 4, 3), 2, 2, 1, True, None)]
    return cases


MAX_CASES = _max_cases()
AVG_CASES = _avg_cases()
ADAPTIVE_CASES = [((L,), o) for L in (1, 5, 7) for o in (1, 3, 4, 6)] + [
    ((5, 7), (3, 4)), ((6, 6), 4), ((6, 4), (None, 3)), ((7, 5), (2, None)), ((3, 5), (5, 3)),
    ((4, 5, 6), (2, 3, 4)), ((3, 4, 5), 2)]


def _input(rng, shape, n=2, c=3):
    return rng.standard_normal((n, *shape, c)).astype(np.float32)


def _case_input(i, shape):
    return _input(np.random.default_rng(1000 + i), shape)


def _ids(cases):
    return ["-".join(str(v).replace(" ", "") for v in case) for case in cases]


# Each distinct pool config is its own XLA executable (~40 ms to compile on
# CPU), so the sweep's outputs are computed by one jitted function per op and
# cached; the per-case tests below then only compare.
@functools.cache
def _max_results():
    xs = [_case_input(i, c[0]) for i, c in enumerate(MAX_CASES)]
    return jax.jit(lambda xs: [max_pool(x, *c[1:]) for x, c in zip(xs, MAX_CASES)])(xs)


@functools.cache
def _avg_results():
    xs = [_case_input(i, c[0]) for i, c in enumerate(AVG_CASES)]
    return jax.jit(lambda xs: [[avg_pool(x, *c[1:5], cip, c[5]) for cip in (True, False)]
                               for x, c in zip(xs, AVG_CASES)])(xs)


@functools.cache
def _adaptive_results():
    xs = [_case_input(i, c[0]) for i, c in enumerate(ADAPTIVE_CASES)]
    return jax.jit(lambda xs: [adaptive_avg_pool(x, c[1]) for x, c in zip(xs, ADAPTIVE_CASES)])(xs)


def test_sweep_covers_the_tricky_cases():
    def dropped(L, k, s, p, d):  # ceil mode dropped a window starting in the right padding
        s = k if s is None else s
        return (-(-(L + 2 * p - d * (k - 1) - 1) // s)) * s >= L + p

    one_d = [c for c in MAX_CASES if len(c[0]) == 1]
    assert any(c[5] and dropped(c[0][0], c[1], c[2], c[3], c[4]) for c in one_d)
    assert any(c[0][0] + 2 * c[3] < c[4] * (c[1] - 1) + 1 for c in one_d)  # kernel > padded input
    assert {len(c[0]) for c in MAX_CASES} == {len(c[0]) for c in AVG_CASES} == {1, 2, 3}
    assert len(set(MAX_CASES)) == len(MAX_CASES) > 75 and len(set(AVG_CASES)) == len(AVG_CASES) > 75


@pytest.mark.parametrize("case", MAX_CASES, ids=_ids(MAX_CASES))
def test_max_pool_matches_reference(case):
    i, (shape, k, s, p, d, ceil) = MAX_CASES.index(case), case
    got = np.asarray(_max_results()[i])
    want = ref_max_pool(_case_input(i, shape).astype(np.float64), k, s, p, d, ceil)
    assert got.shape == want.shape == (2, *pool_output_size(shape, k, s, p, d, ceil), 3)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("case", AVG_CASES, ids=_ids(AVG_CASES))
def test_avg_pool_matches_reference(case):
    i, (shape, k, s, p, ceil, div) = AVG_CASES.index(case), case
    x = _case_input(i, shape).astype(np.float64)
    for got, cip in zip(_avg_results()[i], (True, False)):
        want = ref_avg_pool(x, k, s, p, ceil, cip, div)
        assert got.shape == want.shape == (2, *pool_output_size(shape, k, s, p, 1, ceil), 3)
        np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=ATOL, err_msg=f"cip={cip}")


@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=_ids(ADAPTIVE_CASES))
def test_adaptive_avg_pool_matches_reference(case):
    i, (shape, out) = ADAPTIVE_CASES.index(case), case
    want = ref_adaptive_avg_pool(_case_input(i, shape).astype(np.float64), out)
    got = np.asarray(_adaptive_results()[i])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def _to_torch(x):
    torch = pytest.importorskip("torch")
    return torch.from_numpy(np.moveaxis(x, -1, 1).copy())


def _from_torch(t):
    return np.moveaxis(t.detach().numpy(), 1, -1)


@pytest.mark.parametrize("case", MAX_CASES, ids=_ids(MAX_CASES))
def test_max_pool_matches_torch(case):
    torch = pytest.importorskip("torch")
    i, (shape, k, s, p, d, ceil) = MAX_CASES.index(case), case
    fn = getattr(torch.nn.functional, f"max_pool{len(shape)}d")
    want = _from_torch(fn(_to_torch(_case_input(i, shape)), k, s, p, d, ceil_mode=ceil))
    got = np.asarray(_max_results()[i])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", AVG_CASES, ids=_ids(AVG_CASES))
def test_avg_pool_matches_torch(case):
    torch = pytest.importorskip("torch")
    i, (shape, k, s, p, ceil, div) = AVG_CASES.index(case), case
    xt = _to_torch(_case_input(i, shape))
    fn = getattr(torch.nn.functional, f"avg_pool{len(shape)}d")
    if len(shape) == 1 and div is not None:
        pytest.skip("torch's avg_pool1d has no divisor_override")
    extra = {} if len(shape) == 1 else {"divisor_override": div}
    for got, cip in zip(_avg_results()[i], (True, False)):
        if len(shape) == 3 and any(L < ki for L, ki in zip(shape, _tup(k, 3))):
            # torch quirk: avg_pool3d alone rejects a kernel larger than the
            # *unpadded* input (1d/2d and max_pool3d accept it); we follow the
            # general rule, checked against the NumPy reference.
            with pytest.raises(RuntimeError, match="smaller than kernel size"):
                fn(xt, k, s, p, ceil, cip, **extra)
            continue
        want = _from_torch(fn(xt, k, s, p, ceil, cip, **extra))
        assert got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=ATOL, err_msg=f"cip={cip}")


@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=_ids(ADAPTIVE_CASES))
def test_adaptive_avg_pool_matches_torch(case):
    torch = pytest.importorskip("torch")
    i, (shape, out) = ADAPTIVE_CASES.index(case), case
    fn = getattr(torch.nn.functional, f"adaptive_avg_pool{len(shape)}d")
    want = _from_torch(fn(_to_torch(_case_input(i, shape)), out))
    got = np.asarray(_adaptive_results()[i])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- #
# hand-computed cases
# --------------------------------------------------------------------------- #
def _1d(values):
    return jnp.asarray(values, jnp.float32).reshape(1, -1, 1)


def _vals(y):
    return np.asarray(y)[0, ..., 0]


def test_max_pool_4x4_by_hand():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(_vals(max_pool(x, 2)), [[5, 7], [13, 15]])
    np.testing.assert_array_equal(_vals(max_pool(x, 3, stride=1)), [[10, 11], [14, 15]])
    np.testing.assert_array_equal(_vals(max_pool(x, 2, stride=1, padding=1))[0], [0, 1, 2, 3, 3])
    np.testing.assert_array_equal(_vals(max_pool(x, (1, 4))), [[3], [7], [11], [15]])


def test_max_pool_1d_by_hand():
    np.testing.assert_array_equal(_vals(max_pool(_1d([1, 2, 3, 4, 5]), 2, ceil_mode=True)), [2, 4, 5])
    np.testing.assert_array_equal(_vals(max_pool(_1d([1, 2, 3, 4, 5]), 2)), [2, 4])
    # Dilation 3, padding 1: taps at i-1, i+2, i+5.
    np.testing.assert_array_equal(_vals(max_pool(_1d(range(10)), 3, 1, 1, dilation=3)), [5, 6, 7, 8, 9, 7])
    # ceil mode lets a kernel of 3 cover an input of 2 (the window starts inside it).
    np.testing.assert_array_equal(_vals(max_pool(_1d([1, 2]), 3, 2, ceil_mode=True)), [2])
    # A dilated window whose taps (-1 and 4) both land in padding gives -inf, like torch.
    np.testing.assert_array_equal(_vals(max_pool(_1d([1, 2, 3, 4]), 2, 1, 1, dilation=5)), [-np.inf])


def test_avg_pool_by_hand():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_allclose(_vals(avg_pool(x, 2)), [[2.5, 4.5], [10.5, 12.5]])
    v = _1d([1, 2, 3, 4])
    np.testing.assert_allclose(_vals(avg_pool(v, 3, 1, 1)), [1, 2, 3, 7 / 3], rtol=1e-6)
    np.testing.assert_allclose(_vals(avg_pool(v, 3, 1, 1, count_include_pad=False)), [1.5, 2, 3, 3.5])
    np.testing.assert_allclose(_vals(avg_pool(v, 3, 1, 1, divisor_override=2)), [1.5, 3, 4.5, 3.5])
    # ceil mode on [0, 1, 2, 3], k=3, s=2, p=1: windows start at -1, 1, 3. The last
    # one spans [3, 6) but its divisor stops at L + pad = 5: 3 / 2, not 3 / 3.
    w = _1d([0, 1, 2, 3])
    np.testing.assert_allclose(_vals(avg_pool(w, 3, 2, 1, ceil_mode=True)), [1 / 3, 2, 1.5], rtol=1e-6)
    np.testing.assert_allclose(_vals(avg_pool(w, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
                               [0.5, 2, 3])
    np.testing.assert_allclose(_vals(avg_pool(_1d([1, 2]), 3, 2, ceil_mode=True)), [1.5])


def test_adaptive_and_global_by_hand():
    np.testing.assert_allclose(_vals(adaptive_avg_pool(_1d(range(5)), 3)), [0.5, 2, 3.5])
    np.testing.assert_allclose(_vals(adaptive_avg_pool(_1d([1, 3]), 3)), [1, 2, 3])
    x = jnp.arange(24.0).reshape(2, 3, 2, 2)
    np.testing.assert_allclose(np.asarray(global_avg_pool(x)), [[5, 6], [17, 18]])
    assert global_avg_pool(x, keepdims=True).shape == (2, 1, 1, 2)
    assert adaptive_avg_pool(x, 1).shape == (2, 1, 1, 2)
    np.testing.assert_allclose(np.asarray(adaptive_avg_pool(x, 1))[:, 0, 0], np.asarray(global_avg_pool(x)))


def test_pool_output_size():
    assert pool_output_size(5, 2) == 2
    assert pool_output_size(5, 2, ceil_mode=True) == 3
    assert pool_output_size(5, 2, 2, 1, ceil_mode=True) == 3  # 4th window would start in the right pad
    assert pool_output_size((32, 32), 3, 2, 1) == (16, 16)
    assert pool_output_size((7, 9, 4), (3, 2, 1), (1, 2, 3), (1, 0, 0), (2, 1, 1)) == (5, 4, 2)
    assert pool_output_size(2, 3, 2, ceil_mode=True) == 1


def test_dtypes_jit_and_vmap(rng):
    x = jnp.asarray(_input(rng, (6, 5)))
    assert max_pool(x.astype(jnp.bfloat16), 2).dtype == jnp.bfloat16
    assert avg_pool(x.astype(jnp.bfloat16), 3, 1, 1).dtype == jnp.bfloat16
    xi = jnp.arange(16, dtype=jnp.int32).reshape(1, 4, 4, 1)
    assert max_pool(xi, 2, padding=1).dtype == jnp.int32
    np.testing.assert_array_equal(_vals(max_pool(xi, 2, padding=1)), [[0, 2, 3], [8, 10, 11], [12, 14, 15]])
    assert jnp.issubdtype(avg_pool(xi, 2).dtype, jnp.floating)
    f = jax.jit(lambda x: max_pool(x, 3, 2, 1, dilation=2, ceil_mode=True) + 0 * avg_pool(x, 3, 2, 1, True)[:, :3, :2])
    np.testing.assert_allclose(np.asarray(f(x)), np.asarray(max_pool(x, 3, 2, 1, 2, True)), rtol=RTOL)
    vm = jax.vmap(lambda x: max_pool(x, 2, 1, 1, 2), in_axes=1, out_axes=1)(x[:, None])
    np.testing.assert_allclose(np.asarray(vm[:, 0]), np.asarray(max_pool(x, 2, 1, 1, 2)))


def test_max_pool_propagates_nan_like_torch():
    y = _vals(max_pool(_1d([1, np.nan, 2, 3]), 2, 1))
    assert np.isnan(y[0]) and np.isnan(y[1]) and y[2] == 3


# --------------------------------------------------------------------------- #
# gradients
# --------------------------------------------------------------------------- #
def _distinct(rng, shape):
    """Distinct values 0.1 apart, so each argmax is unique at finite-difference scale."""
    return (rng.permutation(math.prod(shape)).reshape(shape) * 0.1 - 1.0).astype(np.float64)


GRAD_MAX = [((6,), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
            ((5, 4), dict(kernel_size=2, stride=1)),  # overlapping windows accumulate
            # dilation takes fundl's own JVP rule (XLA can't transpose a dilated max)
            ((5, 6), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1), dilation=(1, 2), ceil_mode=True)),
            ((7,), dict(kernel_size=3, stride=1, padding=1, dilation=2)),
            ((3, 4, 3), dict(kernel_size=2, stride=1, padding=1))]


def _all_max_pools(*xs):
    return tuple(max_pool(x, **kw) for x, (_, kw) in zip(xs, GRAD_MAX))


# Every second-order check costs several compilations, so each test checks all
# configs at once through one function of several inputs (tuple output).
@pytest.mark.slow
def test_max_pool_grads(rng):
    with _x64():  # arrays must be created inside, or they are float32
        xs = tuple(jnp.asarray(_distinct(rng, (1, *shape, 2))) for shape, _ in GRAD_MAX)
        assert all(x.dtype == jnp.float64 for x in xs)
        check_grads(jax.jit(_all_max_pools), xs, order=2, modes=["rev"])


@pytest.mark.slow
def test_max_pool_grad_matches_torch(rng):
    torch = pytest.importorskip("torch")
    xs = [_distinct(rng, (2, *shape, 2)) for shape, _ in GRAD_MAX]
    with _x64():
        ys, vjp = jax.vjp(jax.jit(_all_max_pools), *map(jnp.asarray, xs))
        gs = [rng.standard_normal(y.shape) for y in ys]
        grads = vjp(tuple(map(jnp.asarray, gs)))
    for x, g, got, (shape, kw) in zip(xs, gs, grads, GRAD_MAX):
        xt = _to_torch(x).requires_grad_(True)
        fn = getattr(torch.nn.functional, f"max_pool{len(shape)}d")
        yt = fn(xt, kw["kernel_size"], kw.get("stride"), kw.get("padding", 0), kw.get("dilation", 1),
                ceil_mode=kw.get("ceil_mode", False))
        yt.backward(_to_torch(g))
        # Exact: both route each cotangent to the window's argmax and sum.
        np.testing.assert_allclose(np.asarray(got), _from_torch(xt.grad), rtol=1e-12, atol=1e-12,
                                   err_msg=str(kw))


@pytest.mark.slow
def test_linear_pool_grads(rng):
    def pools(x):
        return (avg_pool(x, 3, 2, 1, ceil_mode=True),
                avg_pool(x, (2, 3), 1, (1, 1), count_include_pad=False),
                avg_pool(x, 2, divisor_override=3),
                adaptive_avg_pool(x, (3, 2)), adaptive_avg_pool(x, (2, None)),
                global_avg_pool(x))

    with _x64():
        check_grads(jax.jit(pools), (jnp.asarray(rng.standard_normal((1, 4, 5, 2))),), order=2, modes=["rev"])


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #
X4 = np.zeros((2, 5, 5, 3), np.float32)
ERRORS = [
    (lambda: max_pool(np.zeros((2, 5, 3)), (2, 2)), ShapeError,
     ["max_pool: x must be [N, H, W, C] (rank 4) for a 2-d kernel_size", "x.shape=(2, 5, 3)"]),
    (lambda: avg_pool(np.zeros((5, 3)), 2), ShapeError, ["avg_pool", "rank >= 3", "x.shape=(5, 3)"]),
    (lambda: max_pool(X4, 0), ConfigError, ["max_pool", "kernel_size", ">= 1", "got 0"]),
    (lambda: max_pool(X4, (2, -1)), ConfigError, ["max_pool", "kernel_size", "(2, -1)"]),
    (lambda: max_pool(X4, (2, 2, 2)), ShapeError, ["max_pool", "rank 5", "3-d kernel_size"]),
    (lambda: max_pool(X4, 2, stride=0), ConfigError, ["max_pool", "stride", "got 0"]),
    (lambda: avg_pool(X4, 2, stride=(1, 2, 3)), ConfigError, ["avg_pool", "stride", "(1, 2, 3)"]),
    (lambda: max_pool(X4, 2, dilation=0), ConfigError, ["max_pool", "dilation", "got 0"]),
    (lambda: max_pool(X4, 2, padding=-1), ConfigError, ["max_pool", "padding", "got -1"]),
    (lambda: max_pool(X4, 3, padding=2), ConfigError, ["max_pool", "padding", "kernel_size // 2", "padding=2"]),
    (lambda: avg_pool(X4, (4, 2), padding=(2, 2)), ConfigError, ["avg_pool", "padding=(2, 2)", "(4, 2)"]),
    (lambda: max_pool(X4, 6), ShapeError,
     ["max_pool", "spatial size 5", "padding 0", "effective kernel 6", "dilation 1", "x.shape=(2, 5, 5, 3)"]),
    (lambda: max_pool(X4, 3, padding=1, dilation=4), ShapeError,
     ["max_pool", "spatial size 5", "2 * padding 1", "effective kernel 9", "dilation 4"]),
    (lambda: avg_pool(np.zeros((1, 3, 2)), 4), ShapeError, ["avg_pool", "spatial size 3", "effective kernel 4"]),
    (lambda: max_pool(X4, 2, ceil_mode="yes"), ConfigError, ["max_pool", "ceil_mode", "'yes'"]),
    (lambda: avg_pool(X4, 2, count_include_pad=None), ConfigError, ["avg_pool", "count_include_pad", "None"]),
    (lambda: avg_pool(X4, 2, divisor_override=0), ConfigError, ["avg_pool", "divisor_override", "got 0"]),
    (lambda: avg_pool(X4, 2, divisor_override=1.5), ConfigError, ["avg_pool", "divisor_override", "1.5"]),
    (lambda: adaptive_avg_pool(X4, (2, 2, 2)), ShapeError, ["adaptive_avg_pool", "rank 5", "x.shape=(2, 5, 5, 3)"]),
    (lambda: adaptive_avg_pool(X4, 0), ConfigError, ["adaptive_avg_pool", "output_size", "got 0"]),
    (lambda: adaptive_avg_pool(X4, (3, -2)), ConfigError, ["adaptive_avg_pool", "output_size", "(3, -2)"]),
    (lambda: adaptive_avg_pool(np.zeros((2, 3)), 1), ShapeError, ["adaptive_avg_pool", "x.shape=(2, 3)"]),
    (lambda: global_avg_pool(np.zeros((2, 3))), ShapeError, ["global_avg_pool", "x.shape=(2, 3)"]),
    (lambda: pool_output_size(4, 6), ShapeError, ["pool_output_size", "spatial size 4", "input_size=4"]),
    (lambda: pool_output_size((4, 4), (2, 2, 2)), ConfigError, ["pool_output_size", "kernel_size", "(2, 2, 2)"]),
]


@pytest.mark.parametrize("call,exc,parts", ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_errors(call, exc, parts):
    with pytest.raises(exc) as info:
        call()
    assert isinstance(info.value, ValueError)
    for part in parts:
        assert part in str(info.value), (part, str(info.value))

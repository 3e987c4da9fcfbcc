"""conv / conv_transpose: hand cases, NumPy-loop and PyTorch parity, grads, errors."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fundl import ConfigError, ShapeError
from fundl.functional import conv, conv_output_size, conv_transpose

RTOL = ATOL = 1e-5


# --------------------------------------------------------------------------- references
# Written from the index formulas, independent of fundl's padding resolution.

def _tup(v, n):
    return (v,) * n if isinstance(v, int) else tuple(v)


def ref_pads(padding, n, kernel, stride, dilation, spatial, transpose=False):
    """(lo, hi) per dim for every padding spelling the ops accept."""
    stride, dilation = _tup(stride, n), _tup(dilation, n)
    eff = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return [(0, 0)] * n
        if transpose:   # crop so the output is L * s (adjoint of a SAME conv on L * s)
            return [((max(e - s, 0) // 2), e - s - max(e - s, 0) // 2) for e, s in zip(eff, stride)]
        out = [math.ceil(L / s) for L, s in zip(spatial, stride)]
        tot = [max((o - 1) * s + e - L, 0) for o, s, e, L in zip(out, stride, eff, spatial)]
        return [(t // 2, t - t // 2) for t in tot]
    if isinstance(padding, int):
        return [(padding, padding)] * n
    if n == 1 and len(padding) == 2 and all(isinstance(p, int) for p in padding):
        return [tuple(padding)]
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def ref_conv(x, w, b, stride, pads, dilation, groups):
    """out[n, o, co] = sum_{k, ci} xpad[n, o*s + k*d, g*cin_g + ci] * w[k, ci, co] + b."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n = w.ndim - 2
    s, d = _tup(stride, n), _tup(dilation, n)
    kernel, cin_g, cout = w.shape[:n], w.shape[-2], w.shape[-1]
    cout_g = cout // groups
    xp = np.pad(x, [(0, 0)] + [tuple(p) for p in pads] + [(0, 0)])
    osz = [(xp.shape[1 + i] - d[i] * (kernel[i] - 1) - 1) // s[i] + 1 for i in range(n)]
    out = np.zeros((x.shape[0], *osz, cout))
    for g in range(groups):
        ci, co = slice(g * cin_g, (g + 1) * cin_g), slice(g * cout_g, (g + 1) * cout_g)
        for k in itertools.product(*map(range, kernel)):
            win = tuple(slice(k[i] * d[i], k[i] * d[i] + (osz[i] - 1) * s[i] + 1, s[i])
                        for i in range(n))
            out[..., co] += xp[(slice(None),) + win + (ci,)] @ w[k][:, co]
    return out if b is None else out + np.asarray(b, np.float64)


def ref_conv_transpose(x, w, b, stride, pads, output_padding, dilation, groups):
    """Scatter: out[i*s - lo + k*d, g*cout_g + co] += x[i, g*cin_g + ci] * w[k, g*cin_g + ci, co]."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n = w.ndim - 2
    s, d, op = _tup(stride, n), _tup(dilation, n), _tup(output_padding, n)
    kernel, cin, cout_g = w.shape[:n], w.shape[-2], w.shape[-1]
    cin_g = cin // groups
    L = x.shape[1:-1]
    full = [(L[i] - 1) * s[i] + d[i] * (kernel[i] - 1) + 1 for i in range(n)]
    osz = [full[i] - pads[i][0] - pads[i][1] + op[i] for i in range(n)]
    buf = np.zeros((x.shape[0], *[max(full[i], pads[i][0] + osz[i]) for i in range(n)],
                    cout_g * groups))
    for g in range(groups):
        ci, co = slice(g * cin_g, (g + 1) * cin_g), slice(g * cout_g, (g + 1) * cout_g)
        for k in itertools.product(*map(range, kernel)):
            dst = tuple(slice(k[i] * d[i], k[i] * d[i] + (L[i] - 1) * s[i] + 1, s[i])
                        for i in range(n))
            buf[(slice(None),) + dst + (co,)] += x[..., ci] @ w[k][ci, :]
    out = buf[(slice(None),) + tuple(slice(p[0], p[0] + o) for p, o in zip(pads, osz))]
    return out if b is None else out + np.asarray(b, np.float64)


# --------------------------------------------------------------------------- sweeps

def _conv_cases():
    cases = []
    # 1-d: every (stride, padding spelling) pair, each with two of the four
    # (dilation, groups) combos, alternating so all combos meet every stride
    # (the full product costs twice the compile time for little extra).
    dg = [((1, 1), (2, 2)), ((1, 2), (2, 1))]
    for i, (s, p) in enumerate(itertools.product(
            (1, 2, 3), (0, 2, (1,), ((0, 2),), (2, 1), "SAME", "valid"))):
        for d, g in dg[i % 2]:
            cases.append(((2, 9, 4), (3, 4 // g, 6), s, p, d, g))
    # 2-d: curated mix, incl. depthwise.
    x2 = (2, 9, 8, 4)
    for s, p, d, g, cout in [
            (1, 0, 1, 1, 6), (2, 1, 1, 1, 6), ((2, 1), (1, 2), (1, 2), 2, 6),
            (1, "SAME", 2, 1, 6), (2, "SAME", 1, 2, 6), (3, "same", (2, 1), 1, 6),
            (2, "VALID", 1, 4, 8), (1, ((0, 1), (2, 0)), 1, 1, 6),
            ((1, 3), ((1, 1), (0, 2)), (2, 1), 2, 6), (2, (0, 1), 1, 4, 4), (3, 2, 2, 1, 6)]:
        cases.append((x2, (3, 2, 4 // g, cout), s, p, d, g))
    # 3-d: small.
    x3 = (1, 5, 6, 4, 2)
    for s, p, d, g in [(1, 0, 1, 1), (2, 1, 1, 2), ((1, 2, 1), "SAME", (2, 1, 1), 1),
                       (1, ((0, 1), (1, 0), (1, 1)), 1, 2), (2, "VALID", 1, 1)]:
        cases.append((x3, (2, 3, 2, 2 // g, 4), s, p, d, g))
    return cases


def _conv_transpose_cases():
    cases = []
    # 1-d: every (stride, padding) pair with three (output_padding, dilation,
    # groups) combos, rotating through all valid ones.
    combos = itertools.cycle([(0, 1, 1), (1, 2, 2), (0, 2, 1), (1, 1, 2), (0, 1, 2),
                              (1, 2, 1), (0, 2, 2), (1, 1, 1)])
    for s, p in itertools.product((1, 2, 3), (0, 1, (2,), ((0, 2),), "SAME", "VALID")):
        picked = 0
        while picked < 3:
            op, d, g = next(combos)
            if op < max(s, d):
                cases.append(((2, 5, 4), (3, 4, 3), s, p, op, d, g))
                picked += 1
    x2 = (2, 4, 5, 4)
    for s, p, op, d, g in [
            (1, 0, 0, 1, 1), (2, 1, 1, 1, 1), ((2, 3), (1, 2), (1, 0), (1, 2), 2),
            (2, "SAME", 0, 1, 2), (3, "SAME", (2, 1), (1, 2), 1), (2, "VALID", 0, 2, 4),
            (2, ((0, 1), (2, 0)), 0, 1, 1), ((1, 2), ((1, 1), (0, 2)), (0, 1), (2, 1), 2),
            (3, 2, 1, 1, 4), (3, "SAME", 0, 1, 1)]:             # last: SAME zero-extends dim 1
        cases.append((x2, (3, 2, 4, 6 // g if g != 4 else 2), s, p, op, d, g))
    x3 = (1, 3, 4, 3, 2)
    for s, p, op, d, g in [(1, 0, 0, 1, 1), (2, 1, 1, 1, 2), ((1, 2, 2), "SAME", 0, (2, 1, 1), 1),
                           (2, ((0, 1), (1, 0), (1, 1)), (1, 0, 1), 1, 2)]:
        cases.append((x3, (2, 3, 2, 2, 3), s, p, op, d, g))
    return cases


CONV_CASES = _conv_cases()
CONVT_CASES = _conv_transpose_cases()


def _ids(cases):
    return [f"{len(c[1]) - 2}d-" + "-".join(map(str, c[2:])).replace(" ", "") for c in cases]


def _arrays(rng, xshape, wshape, cout):
    x = rng.standard_normal(xshape).astype(np.float32)
    w = rng.standard_normal(wshape).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    return x, w, b


@pytest.mark.parametrize("xs, ws, s, p, d, g", CONV_CASES, ids=_ids(CONV_CASES))
def test_conv_matches_numpy_reference(rng, xs, ws, s, p, d, g):
    x, w, b = _arrays(rng, xs, ws, ws[-1])
    n = len(ws) - 2
    out = conv(x, w, b, stride=s, padding=p, dilation=d, groups=g)
    pads = ref_pads(p, n, ws[:n], s, d, xs[1:-1])
    ref = ref_conv(x, w, b, s, pads, d, g)
    assert out.shape == ref.shape
    assert out.shape[1:-1] == conv_output_size(xs[1:-1], ws[:n], s, p, d)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("xs, ws, s, p, op, d, g", CONVT_CASES, ids=_ids(CONVT_CASES))
def test_conv_transpose_matches_numpy_reference(rng, xs, ws, s, p, op, d, g):
    x, w, b = _arrays(rng, xs, ws, ws[-1] * g)
    n = len(ws) - 2
    out = conv_transpose(x, w, b, stride=s, padding=p, output_padding=op, dilation=d, groups=g)
    pads = ref_pads(p, n, ws[:n], s, d, xs[1:-1], transpose=True)
    ref = ref_conv_transpose(x, w, b, s, pads, op, d, g)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- torch parity

def _to_torch(a, torch):
    """NHWC -> NCHW."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.permute(0, t.ndim - 1, *range(1, t.ndim - 1))


def _from_torch(t):
    return t.permute(0, *range(2, t.ndim), 1).numpy()


def _flat_pad(pads):
    # F.pad lists the last dim first.
    return [v for lo_hi in reversed(pads) for v in lo_hi]


@pytest.mark.parametrize("xs, ws, s, p, d, g", CONV_CASES, ids=_ids(CONV_CASES))
def test_conv_matches_torch(rng, xs, ws, s, p, d, g):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, w, b = _arrays(rng, xs, ws, ws[-1])
    n = len(ws) - 2
    tconv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    tx = _to_torch(x, torch)
    tw = torch.from_numpy(w).permute(n + 1, n, *range(n))     # [*k, I, O] -> [O, I, *k]
    pads = ref_pads(p, n, ws[:n], s, d, xs[1:-1])
    if isinstance(p, str) and p.upper() == "SAME" and s == 1:
        tpad = "same"                                          # torch's own 'same'
    elif all(lo == hi for lo, hi in pads):
        tpad = tuple(lo for lo, _ in pads)
    else:
        tx, tpad = F.pad(tx, _flat_pad(pads)), 0
    ref = _from_torch(tconv(tx, tw, torch.from_numpy(b), stride=s, padding=tpad, dilation=d,
                            groups=g))
    out = conv(x, w, b, stride=s, padding=p, dilation=d, groups=g)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("xs, ws, s, p, op, d, g", CONVT_CASES, ids=_ids(CONVT_CASES))
def test_conv_transpose_matches_torch(rng, xs, ws, s, p, op, d, g):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, w, b = _arrays(rng, xs, ws, ws[-1] * g)
    n = len(ws) - 2
    tconvt = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
    tx = _to_torch(x, torch)
    tw = torch.from_numpy(w).permute(n, n + 1, *range(n))     # [*k, I, O/g] -> [I, O/g, *k]
    tb = torch.from_numpy(b)
    out = conv_transpose(x, w, b, stride=s, padding=p, output_padding=op, dilation=d, groups=g)
    pads = ref_pads(p, n, ws[:n], s, d, xs[1:-1], transpose=True)
    if all(lo == hi >= 0 for lo, hi in pads):
        ref = _from_torch(tconvt(tx, tw, tb, stride=s, padding=tuple(lo for lo, _ in pads),
                                 output_padding=op, dilation=d, groups=g))
    else:
        # torch has no asymmetric padding: crop its uncropped output ourselves
        # (zero-extending where SAME asks for more than the full output).
        full = _from_torch(tconvt(tx, tw, None, stride=s, dilation=d, groups=g))
        osz = out.shape[1:-1]
        ext = [(0, max(0, lo + o - f)) for (lo, _), o, f in zip(pads, osz, full.shape[1:-1])]
        full = np.pad(full, [(0, 0)] + ext + [(0, 0)])
        ref = full[(slice(None),) + tuple(slice(lo, lo + o) for (lo, _), o in zip(pads, osz))] + b
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- hand-computed cases

def _1d(v):
    return jnp.asarray(v, jnp.float32).reshape(1, -1, 1)


@pytest.mark.parametrize("x, kwargs, expected", [
    ([1, 2, 3, 4], {}, [-2, -2]),
    ([1, 2, 3, 4], dict(padding=1), [-2, -2, -2, 3]),
    ([1, 2, 3, 4], dict(padding=1, stride=2), [-2, -2]),
    ([1, 2, 3, 4], dict(padding=(0, 2)), [-2, -2, 3, 4]),
    ([1, 2, 3, 4], dict(padding="SAME"), [-2, -2, -2, 3]),
    ([1, 2, 3, 4, 5], dict(dilation=2), [-4]),
])
def test_conv_hand_computed(x, kwargs, expected):
    out = conv(_1d(x), _1d([1, 0, -1]).reshape(3, 1, 1), **kwargs)
    np.testing.assert_array_equal(out[0, :, 0], expected)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(), [1, 3, 3, 2]),
    (dict(stride=2), [1, 1, 3, 2, 2]),
    (dict(stride=2, padding=1), [1, 3, 2]),
    (dict(stride=2, padding=1, output_padding=1), [1, 3, 2, 2]),
    (dict(stride=2, padding="SAME"), [1, 1, 3, 2]),      # forward SAME pads (0, 1) on L=4
    (dict(dilation=2), [1, 2, 1, 2, 1, 2]),
])
def test_conv_transpose_hand_computed(kwargs, expected):
    out = conv_transpose(_1d([1, 2]), jnp.ones((3, 1, 1)), **kwargs)
    np.testing.assert_array_equal(out[0, :, 0], expected)


def test_conv_groups_and_bias_hand_computed():
    # Two groups, 1x1 kernel: out channel 0 = 2 * x0, channel 1 = 3 * x1, plus bias.
    x = jnp.asarray([[[1.0, 10.0], [2.0, 20.0]]])          # [1, 2, 2]
    w = jnp.asarray([[[2.0, 3.0]]])                        # [1, C_in/g=1, C_out=2]
    out = conv(x, w, jnp.asarray([0.5, -1.0]), groups=2)
    np.testing.assert_array_equal(out, [[[2.5, 29.0], [4.5, 59.0]]])


def test_conv_torch_porting_recipe():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    wt = torch.from_numpy(rng.standard_normal((6, 2, 3, 3)).astype(np.float32))  # [O, I/g, kh, kw]
    xt = torch.from_numpy(rng.standard_normal((1, 4, 7, 7)).astype(np.float32))
    ref = torch.conv2d(xt, wt, groups=2, padding=1).permute(0, 2, 3, 1).numpy()
    out = conv(xt.permute(0, 2, 3, 1).numpy(), wt.permute(2, 3, 1, 0).numpy(), groups=2, padding=1)
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)
    wt = torch.from_numpy(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))  # [I, O/g, kh, kw]
    ref = torch.conv_transpose2d(xt, wt, groups=2, stride=2).permute(0, 2, 3, 1).numpy()
    out = conv_transpose(xt.permute(0, 2, 3, 1).numpy(), wt.permute(2, 3, 0, 1).numpy(),
                         groups=2, stride=2)
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- adjoint / jit / vmap

@pytest.mark.parametrize("L, k, s, p, d, g", [
    (8, 3, 2, 1, 1, 1), (9, 3, 2, "SAME", 1, 2), (12, 4, 3, "SAME", 1, 1),
    (6, 2, 3, "SAME", 1, 1), (10, 3, 2, "SAME", 2, 2), (7, 3, 1, "VALID", 2, 1)])
def test_conv_transpose_is_adjoint_of_conv(rng, L, k, s, p, d, g):
    # The VJP of conv w.r.t. x is conv_transpose with the same hyper-parameters,
    # the weight's in/out axes swapped and output_padding recovering L.
    x = rng.standard_normal((2, L, 4)).astype(np.float32)
    w = rng.standard_normal((k, 4 // g, 6)).astype(np.float32)
    y, vjp = jax.vjp(lambda x: conv(x, w, stride=s, padding=p, dilation=d, groups=g), x)
    ct = rng.standard_normal(y.shape).astype(np.float32)
    (gx,) = vjp(ct)
    # w_t[k, g*cout_g + co, ci] = w[k, ci, g*cout_g + co]: layout [*k, C_in', C_out'/g].
    w_t = np.transpose(w.reshape(k, 4 // g, g, 6 // g), (0, 2, 3, 1)).reshape(k, 6, 4 // g)
    if p == "SAME" and L % s == 0:
        out = conv_transpose(ct, w_t, stride=s, padding="SAME", dilation=d, groups=g)
    else:
        pads = ref_pads(p, 1, (k,), s, d, (L,))
        full = (y.shape[1] - 1) * s + d * (k - 1) + 1 - pads[0][0] - pads[0][1]
        out = conv_transpose(ct, w_t, stride=s, padding=pads, output_padding=L - full,
                             dilation=d, groups=g)
    assert out.shape == gx.shape
    np.testing.assert_allclose(out, gx, rtol=RTOL, atol=ATOL)


def test_jit_and_vmap():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2, 6, 6, 4)).astype(np.float32)
    w = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)
    f = jax.jit(lambda x, w: conv(x, w, stride=2, padding="SAME", groups=2))
    batched = jax.vmap(f, in_axes=(0, None))(x, w)
    ref = np.stack([ref_conv(xi, w, None, 2, [(0, 1), (0, 1)], 1, 2) for xi in x])
    np.testing.assert_allclose(batched, ref, rtol=RTOL, atol=ATOL)
    wt = rng.standard_normal((3, 3, 4, 2)).astype(np.float32)
    g = jax.jit(lambda x, w: conv_transpose(x, w, stride=2, padding=1, output_padding=1))
    assert g(x[0], wt).shape == (2, 12, 12, 2)


def test_mixed_dtypes_promote():
    x = jnp.ones((1, 4, 1), jnp.bfloat16)
    w = jnp.ones((2, 1, 1), jnp.float32)
    assert conv(x, w).dtype == jnp.float32
    assert conv(x, w.astype(jnp.bfloat16)).dtype == jnp.bfloat16


# --------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(stride=(2, 1), padding="SAME", dilation=(1, 2), groups=2),
])
def test_conv_grads(kwargs):
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal((1, 5, 4, 2)))
        w = jnp.asarray(rng.standard_normal((2, 2, 2 // kwargs.get("groups", 1), 2)))
        b = jnp.asarray(rng.standard_normal(2))
        # jit: one trace per derivative level instead of an eager compile per op.
        f = jax.jit(lambda x, w, b: conv(x, w, b, **kwargs))
        check_grads(f, (x, w, b), order=2, modes=["rev"])


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(stride=(2, 1), padding=((1, 0), 1), output_padding=(1, 0), dilation=(1, 2), groups=2),
])
def test_conv_transpose_grads(kwargs):
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal((1, 3, 3, 2)))
        w = jnp.asarray(rng.standard_normal((2, 2, 2, 1)))
        b = jnp.asarray(rng.standard_normal(kwargs.get("groups", 1)))
        f = jax.jit(lambda x, w, b: conv_transpose(x, w, b, **kwargs))
        check_grads(f, (x, w, b), order=2, modes=["rev"])


# --------------------------------------------------------------------------- errors

X2 = np.zeros((2, 6, 6, 4), np.float32)
W2 = np.zeros((3, 3, 4, 8), np.float32)
WT2 = np.zeros((3, 3, 4, 2), np.float32)

CONV_ERRORS = [
    # (x, w, kwargs, error, fragments)
    (np.zeros((2, 6, 4)), W2, {}, ShapeError, ["conv:", "rank w.ndim = 4", "[N, H, W, C]",
                                                "2-d kernel", "x.shape=(2, 6, 4)"]),
    (np.zeros((2, 6, 6, 6, 4)), W2, {}, ShapeError, ["x.shape=(2, 6, 6, 6, 4)"]),
    (X2, np.zeros((3, 4)), {}, ShapeError, ["conv:", "w.shape=(3, 4)", "rank >= 3"]),
    (X2, np.zeros((3, 3, 3, 8)), {}, ShapeError, ["conv:", "x.shape[-1] = 4", "w.shape[-2]", "3"]),
    (X2, np.zeros((3, 3, 1, 3)), dict(groups=3), ShapeError, ["x.shape[-1] = 4", "groups=3"]),
    (X2, np.zeros((3, 3, 2, 3)), dict(groups=2), ShapeError, ["w.shape[-1] = 3", "groups=2"]),
    (X2, W2, dict(b=np.zeros(5)), ShapeError, ["b must have shape", "(8,)", "b.shape=(5,)"]),
    (X2, W2, dict(b=np.zeros((1, 8))), ShapeError, ["b.shape=(1, 8)"]),
    (X2, W2, dict(stride=0), ConfigError, ["conv:", "stride", "0"]),
    (X2, W2, dict(stride=(1, 2, 1)), ConfigError, ["stride", "(1, 2, 1)"]),
    (X2, W2, dict(dilation=(1, 0)), ConfigError, ["dilation", "(1, 0)"]),
    (X2, W2, dict(groups=0), ConfigError, ["groups", "0"]),
    (X2, W2, dict(groups=1.0), ConfigError, ["groups", "1.0"]),
    (X2, W2, dict(padding=-1), ConfigError, ["conv:", "padding", "-1"]),
    (X2, W2, dict(padding="full"), ConfigError, ["padding", "'full'"]),
    (X2, W2, dict(padding=(1, 2, 3)), ConfigError, ["padding", "(1, 2, 3)"]),
    (np.zeros((1, 2, 2, 4)), W2, {}, ShapeError, ["conv:", "(2, 2)", "(3, 3)", "padding"]),
    (X2, W2, dict(dilation=3), ShapeError, ["(6, 6)", "(7, 7)", "dilation"]),
    (np.zeros((1, 4, 4)), np.zeros((5, 4, 1)), dict(padding=(0, 0)), ShapeError, ["(4,)", "(5,)"]),
]


@pytest.mark.parametrize("x, w, kwargs, err, fragments", CONV_ERRORS)
def test_conv_errors(x, w, kwargs, err, fragments):
    kwargs = dict(kwargs)
    b = kwargs.pop("b", None)
    with pytest.raises(err) as e:
        conv(x, w, b, **kwargs)
    assert type(e.value) is err
    for f in fragments:
        assert f in str(e.value), (f, str(e.value))


CONVT_ERRORS = [
    (np.zeros((2, 6, 4)), WT2, {}, ShapeError, ["conv_transpose:", "rank w.ndim = 4",
                                                 "x.shape=(2, 6, 4)"]),
    (X2, np.zeros((3, 3)), {}, ShapeError, ["conv_transpose:", "w.shape=(3, 3)"]),
    (X2, np.zeros((3, 3, 2, 2)), {}, ShapeError, ["x.shape[-1] = 4", "w.shape[-2] = 2"]),
    (X2, WT2, dict(groups=3), ShapeError, ["x.shape[-1] = 4", "groups=3"]),
    (X2, WT2, dict(groups=2, b=np.zeros(2)), ShapeError, ["(4,)", "b.shape=(2,)"]),
    (X2, WT2, dict(stride=0), ConfigError, ["conv_transpose:", "stride", "0"]),
    (X2, WT2, dict(dilation=-1), ConfigError, ["dilation", "-1"]),
    (X2, WT2, dict(stride=2, output_padding=2), ConfigError,
     ["output_padding", "2", "stride", "dilation"]),
    (X2, WT2, dict(output_padding=(0, 1)), ConfigError, ["output_padding", "(0, 1)"]),
    (X2, WT2, dict(output_padding=-1), ConfigError, ["output_padding", "-1"]),
    (X2, WT2, dict(padding=-2), ConfigError, ["padding", "-2"]),
    (X2, WT2, dict(padding="full"), ConfigError, ["'full'"]),
    (np.zeros((1, 1, 4)), np.zeros((1, 4, 1)), dict(padding=1), ShapeError,
     ["conv_transpose:", "output spatial size", "(-1,)", "(1,)", "padding"]),
]


@pytest.mark.parametrize("x, w, kwargs, err, fragments", CONVT_ERRORS)
def test_conv_transpose_errors(x, w, kwargs, err, fragments):
    kwargs = dict(kwargs)
    b = kwargs.pop("b", None)
    with pytest.raises(err) as e:
        conv_transpose(x, w, b, **kwargs)
    assert type(e.value) is err
    for f in fragments:
        assert f in str(e.value), (f, str(e.value))


def test_errors_raised_under_jit_before_xla():
    with pytest.raises(ShapeError, match="x.shape"):
        jax.jit(conv)(np.zeros((2, 6, 4)), W2)
    with pytest.raises(ShapeError, match="w.shape"):
        jax.jit(conv_transpose)(X2, np.zeros((3, 3, 2, 2)))

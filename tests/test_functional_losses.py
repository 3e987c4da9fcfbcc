"""Losses: hand values, NumPy/torch parity, stability at +-1e4, gradients, errors."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fundl import ConfigError, DataError, ShapeError
from fundl.functional import (binary_cross_entropy_with_logits, cross_entropy, l1_loss, mse_loss,
                              multi_margin_loss, nll_loss, smooth_l1_loss)

LN2 = math.log(2)
REDUCTIONS = ["mean", "sum", "none"]


# ----------------------------------------------------------------- NumPy references
# Straight from the (torch-documented) formulas, with explicit loops where that
# is clearer; deliberately not sharing code with the implementation.

def np_reduce(loss, reduction):
    return {"mean": np.mean, "sum": np.sum, "none": lambda a: a}[reduction](loss)


def np_log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_cross_entropy_int(x, t, weight=None, ignore_index=-100, reduction="mean", ls=0.0):
    c = x.shape[-1]
    logp = np_log_softmax(x).reshape(-1, c)
    t = t.reshape(-1)
    w = np.ones(c) if weight is None else weight
    losses, denom = np.zeros(len(t)), 0.0
    for i, ti in enumerate(t):
        if ti == ignore_index:
            continue
        q = np.full(c, ls / c)
        q[ti] += 1 - ls
        # smoothing term weighted per class, nll term by the target class
        losses[i] = -(1 - ls) * w[ti] * logp[i, ti] - (ls / c) * (w * logp[i]).sum()
        denom += w[ti]
    if reduction == "none":
        return losses.reshape(x.shape[:-1])
    return losses.sum() / denom if reduction == "mean" else losses.sum()


def np_cross_entropy_prob(x, p, weight=None, reduction="mean", ls=0.0):
    c = x.shape[-1]
    q = p * (1 - ls) + ls / c
    w = np.ones(c) if weight is None else weight
    return np_reduce(-(np_log_softmax(x) * q * w).sum(-1), reduction)


def np_bce_with_logits(x, t, weight=None, pos_weight=None, reduction="mean"):
    s = 1 / (1 + np.exp(-x))
    pw = 1.0 if pos_weight is None else pos_weight
    w = 1.0 if weight is None else weight
    return np_reduce(-w * (pw * t * np.log(s) + (1 - t) * np.log(1 - s)), reduction)


def np_multi_margin(x, y, p=1, margin=1.0, weight=None, reduction="mean"):
    n, c = x.shape
    out = np.zeros(n)
    for k in range(n):
        for i in range(c):
            if i != y[k]:
                h = max(0.0, margin - x[k, y[k]] + x[k, i]) ** p
                out[k] += h * (1.0 if weight is None else weight[y[k]])
        out[k] /= c
    return np_reduce(out, reduction)


def np_smooth_l1(a, b, beta=1.0, reduction="mean"):
    d = np.abs(a - b)
    loss = d if beta == 0 else np.where(d < beta, 0.5 * d ** 2 / beta, d - 0.5 * beta)
    return np_reduce(loss, reduction)


def close(got, want, tol=1e-5):
    np.testing.assert_allclose(np.asarray(got), want, rtol=tol, atol=tol)


# ----------------------------------------------------------------- hand values

def test_cross_entropy_hand_values():
    close(cross_entropy(jnp.zeros((1, 2)), jnp.array([0])), LN2)
    close(cross_entropy(jnp.zeros(3), jnp.array(1)), math.log(3))          # unbatched [C]
    x = jnp.array([[0.0, math.log(3)], [0.0, 0.0]])                        # p0 = [.25, .75]
    t = jnp.array([0, 1])
    close(cross_entropy(x, t, reduction="none"), [math.log(4), LN2])
    close(cross_entropy(x, t), (math.log(4) + LN2) / 2)
    # weighted mean divides by the target weights: (1 * ln4 + 3 * ln2) / (1 + 3)
    close(cross_entropy(x, t, weight=jnp.array([1.0, 3.0])), 5 / 4 * LN2)
    close(cross_entropy(x, t, weight=jnp.array([1.0, 3.0]), reduction="sum"), 5 * LN2)
    # ignored rows drop out of the denominator too
    close(cross_entropy(x, jnp.array([0, -100])), math.log(4))
    close(cross_entropy(x, jnp.array([7, 1]), ignore_index=7), LN2)
    # label smoothing eps=0.1, C=2: 0.9 * nll + 0.05 * (-(ln .25 + ln .75))
    want = 0.9 * -math.log(0.75) + 0.05 * -(math.log(0.25) + math.log(0.75))
    close(cross_entropy(x[:1], jnp.array([1]), label_smoothing=0.1), want)
    # probability targets: -(sum_c q_c log p_c)
    q = jnp.array([[0.5, 0.5]])
    close(cross_entropy(x[:1], q), -(0.5 * math.log(0.25) + 0.5 * math.log(0.75)))


def test_cross_entropy_all_ignored_is_nan_like_torch():
    out = cross_entropy(jnp.zeros((2, 3)), jnp.array([-100, -100]))
    assert np.isnan(out)
    close(cross_entropy(jnp.zeros((2, 3)), jnp.array([-100, -100]), reduction="sum"), 0.0)


def test_nll_hand_values():
    lp = jnp.log(jnp.array([[0.25, 0.75], [0.5, 0.5]]))
    close(nll_loss(lp, jnp.array([1, 0])), (-math.log(0.75) + LN2) / 2)
    close(nll_loss(lp, jnp.array([1, 0]), weight=jnp.array([2.0, 1.0])),
          (-math.log(0.75) + 2 * LN2) / 3)
    close(nll_loss(jnp.array([[-1.0, -2.0]]), jnp.array([1]), reduction="none"), [2.0])
    # an ignored row holding log(0) = -inf must not leak NaN (0 * inf)
    lp0 = jnp.array([[-jnp.inf, 0.0], [-LN2, -LN2]])
    close(nll_loss(lp0, jnp.array([-100, 0])), LN2)


def test_multi_margin_hand_3_classes():
    x = jnp.array([[0.1, 0.2, 0.4]])
    # y = 2: terms (1 - .4 + .1, 1 - .4 + .2) = (.7, .8), divided by C = 3
    close(multi_margin_loss(x, jnp.array([2])), (0.7 + 0.8) / 3)
    close(multi_margin_loss(x, jnp.array([2]), p=2), (0.49 + 0.64) / 3)
    # y = 0: (1 - .1 + .2, 1 - .1 + .4) = (1.1, 1.3); weight scales by the TARGET class
    close(multi_margin_loss(x, jnp.array([0]), weight=jnp.array([2.0, 5.0, 7.0])),
          2.0 * (1.1 + 1.3) / 3)
    # margin 0.1, y = 2: both hinge terms negative -> 0
    close(multi_margin_loss(x, jnp.array([2]), margin=0.1), 0.0)
    # torch docs example: [[.1, .2, .4, .8]], y = 3 -> 0.325
    close(multi_margin_loss(jnp.array([[0.1, 0.2, 0.4, 0.8]]), jnp.array([3])), 0.325)
    # weighted 'mean' is a plain mean over samples (not over weights)
    x2 = jnp.array([[0.1, 0.2, 0.4], [0.1, 0.2, 0.4]])
    close(multi_margin_loss(x2, jnp.array([2, 0]), weight=jnp.array([2.0, 5.0, 7.0])),
          (7.0 * 1.5 / 3 + 2.0 * 2.4 / 3) / 2)


def test_regression_hand_values():
    a, b = jnp.array([0.5, 3.0, -1.0]), jnp.zeros(3)
    close(mse_loss(a, b), (0.25 + 9 + 1) / 3)
    close(mse_loss(a, b, reduction="sum"), 10.25)
    close(l1_loss(a, b, reduction="none"), [0.5, 3.0, 1.0])
    close(smooth_l1_loss(a, b, reduction="none"), [0.125, 2.5, 0.5])
    close(smooth_l1_loss(a, b, beta=2.0, reduction="none"), [0.0625, 2.0, 0.25])
    close(smooth_l1_loss(a, b, beta=0.0, reduction="none"), [0.5, 3.0, 1.0])   # = l1


def test_bce_hand_values():
    close(binary_cross_entropy_with_logits(jnp.zeros(2), jnp.array([0.0, 1.0])), LN2)
    # pos_weight multiplies only the positive term: [3 ln2 (t=1), ln2 (t=0)]
    close(binary_cross_entropy_with_logits(jnp.zeros(2), jnp.array([1.0, 0.0]),
                                           pos_weight=jnp.array(3.0), reduction="none"),
          [3 * LN2, LN2])
    close(binary_cross_entropy_with_logits(jnp.zeros(2), jnp.array([1.0, 0.0]),
                                           weight=jnp.array([2.0, 0.5]), reduction="sum"),
          2.5 * LN2)


# ----------------------------------------------------------------- NumPy parity

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ls", [0.0, 0.25])
def test_cross_entropy_numpy_parity(rng, reduction, weighted, ls):
    # shapes/settings as in the torch tests below, so compiled programs are shared
    x = rng.normal(scale=2.0, size=(6, 5))
    t = rng.integers(0, 5, size=(6,))
    t[:2] = -100
    w = rng.uniform(0.2, 2.0, size=5) if weighted else None
    got = cross_entropy(jnp.asarray(x, jnp.float32), jnp.asarray(t),
                        weight=None if w is None else jnp.asarray(w, jnp.float32),
                        reduction=reduction, label_smoothing=ls)
    close(got, np_cross_entropy_int(x, t, w, reduction=reduction, ls=ls))
    p = rng.dirichlet(np.ones(5), size=(6,))
    got = cross_entropy(jnp.asarray(x, jnp.float32), jnp.asarray(p, jnp.float32),
                        weight=None if w is None else jnp.asarray(w, jnp.float32),
                        reduction=reduction, label_smoothing=ls)
    close(got, np_cross_entropy_prob(x, p, w, reduction=reduction, ls=ls))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_other_losses_numpy_parity(rng, reduction):
    a = rng.normal(size=(4, 6))
    b = rng.normal(size=(4, 6))
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    close(mse_loss(f32(a), f32(b), reduction=reduction), np_reduce((a - b) ** 2, reduction))
    close(l1_loss(f32(a), f32(b), reduction=reduction), np_reduce(np.abs(a - b), reduction))
    for beta in (0.0, 0.5, 1.0, 2.0):
        close(smooth_l1_loss(f32(a), f32(b), beta=beta, reduction=reduction),
              np_smooth_l1(a, b, beta, reduction))
    t = rng.uniform(size=(4, 6))
    w = rng.uniform(0.5, 2.0, size=(4, 1))
    pw = rng.uniform(0.5, 3.0, size=(6,))
    close(binary_cross_entropy_with_logits(f32(a), f32(t), weight=f32(w), pos_weight=f32(pw),
                                           reduction=reduction),
          np_bce_with_logits(a, t, w, pw, reduction))
    y = rng.integers(0, 6, size=4)
    cw = rng.uniform(0.5, 2.0, size=6)
    for p in (1, 2):
        close(multi_margin_loss(f32(a), jnp.asarray(y), p=p, margin=0.8, weight=f32(cw),
                                reduction=reduction),
              np_multi_margin(a, y, p, 0.8, cw, reduction))
    lp = np_log_softmax(a)
    close(nll_loss(f32(lp), jnp.asarray(y), weight=f32(cw), reduction=reduction),
          np_cross_entropy_int(a, y, cw, reduction=reduction))


# ----------------------------------------------------------------- torch parity

def _t(v):
    torch = pytest.importorskip("torch")
    return None if v is None else torch.tensor(np.asarray(v))


def _to_torch_cf(x):
    """[N, ..., C] -> torch's [N, C, ...]."""
    return _t(np.moveaxis(np.asarray(x), -1, 1))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("variant", ["plain", "smooth", "weight", "weight_smooth_ignore",
                                     "spatial", "prob", "prob_weight_smooth"])
def test_cross_entropy_torch_parity(rng, reduction, variant):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    shape = (2, 3, 4, 5) if variant == "spatial" else (6, 5)   # [N, H, W, C] or [N, C]
    x = rng.normal(scale=3.0, size=shape).astype(np.float32)
    ls = 0.25 if "smooth" in variant else 0.0
    w = rng.uniform(0.2, 2.0, size=5).astype(np.float32) if "weight" in variant else None
    if variant.startswith("prob"):
        t = rng.dirichlet(np.ones(5), size=shape[:-1]).astype(np.float32)
        want = F.cross_entropy(_to_torch_cf(x), _to_torch_cf(t), weight=_t(w),
                               reduction=reduction, label_smoothing=ls)
    else:
        t = rng.integers(0, 5, size=shape[:-1])
        if "ignore" in variant:
            t.reshape(-1)[:2] = 3
        want = F.cross_entropy(_to_torch_cf(x), _t(t), weight=_t(w), reduction=reduction,
                               label_smoothing=ls, ignore_index=3 if "ignore" in variant else -100)
    got = cross_entropy(x, t, weight=w, reduction=reduction, label_smoothing=ls,
                        ignore_index=3 if "ignore" in variant else -100)
    close(got, want.numpy())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_torch_parity(rng, reduction):
    torch = pytest.importorskip("torch")
    lp = np_log_softmax(rng.normal(size=(2, 3, 4))).astype(np.float32)   # [N, L, C]
    t = rng.integers(0, 4, size=(2, 3))
    t[1, 0] = -100
    w = rng.uniform(0.2, 2.0, size=4).astype(np.float32)
    for wt in (None, w):
        want = torch.nn.functional.nll_loss(_to_torch_cf(lp), _t(t), weight=_t(wt),
                                            reduction=reduction)
        close(nll_loss(lp, t, weight=wt, reduction=reduction), want.numpy())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_regression_torch_parity(rng, reduction):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    a = rng.normal(size=(3, 4, 2)).astype(np.float32)
    b = rng.normal(size=(3, 4, 2)).astype(np.float32)
    close(mse_loss(a, b, reduction=reduction), F.mse_loss(_t(a), _t(b), reduction=reduction))
    close(l1_loss(a, b, reduction=reduction), F.l1_loss(_t(a), _t(b), reduction=reduction))
    for beta in (0.0, 0.3, 1.0, 2.5):
        close(smooth_l1_loss(a, b, beta=beta, reduction=reduction),
              F.smooth_l1_loss(_t(a), _t(b), beta=beta, reduction=reduction))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_torch_parity(rng, reduction):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = rng.normal(scale=4.0, size=(5, 3)).astype(np.float32)
    t = rng.uniform(size=(5, 3)).astype(np.float32)
    t[:2] = np.round(t[:2])
    w = rng.uniform(0.2, 2.0, size=(5, 1)).astype(np.float32)
    pw = rng.uniform(0.5, 4.0, size=(3,)).astype(np.float32)
    for kw in ({}, {"weight": w}, {"pos_weight": pw}, {"weight": w, "pos_weight": pw}):
        want = F.binary_cross_entropy_with_logits(
            _t(x), _t(t), reduction=reduction, **{k: _t(v) for k, v in kw.items()})
        close(binary_cross_entropy_with_logits(x, t, reduction=reduction, **kw), want.numpy())


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("p", [1, 2])
def test_multi_margin_torch_parity(rng, reduction, p):
    torch = pytest.importorskip("torch")
    x = rng.normal(size=(7, 4)).astype(np.float32)
    y = rng.integers(0, 4, size=7)
    w = rng.uniform(0.2, 2.0, size=4).astype(np.float32)
    for wt, margin in ((None, 1.0), (w, 0.6)):
        want = torch.nn.functional.multi_margin_loss(_t(x), _t(y), p=p, margin=margin,
                                                     weight=_t(wt), reduction=reduction)
        close(multi_margin_loss(x, y, p=p, margin=margin, weight=wt, reduction=reduction),
              want.numpy())


# ----------------------------------------------------------------- stability at +-1e4

BIG = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, -1e4], [1e4, 1e4, -1e4]], np.float32)

STABILITY_CASES = {
    "ce_int": lambda x: cross_entropy(x, jnp.array([1, 0, 2])),
    "ce_int_weight_smooth": lambda x: cross_entropy(
        x, jnp.array([1, 0, 2]), weight=jnp.array([1.0, 2.0, 0.5]), label_smoothing=0.2),
    "ce_prob": lambda x: cross_entropy(x, jnp.array([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5],
                                                     [0.2, 0.2, 0.6]]), label_smoothing=0.1),
    "nll_of_log_softmax": lambda x: nll_loss(jax.nn.log_softmax(x), jnp.array([1, 0, 2])),
    "bce": lambda x: binary_cross_entropy_with_logits(
        x, jnp.array([[0.0, 1.0, 0.5]] * 3), pos_weight=jnp.array([2.0, 3.0, 1.0])),
    "multi_margin_p2": lambda x: multi_margin_loss(x, jnp.array([1, 0, 2]), p=2),
}


@pytest.mark.parametrize("name", sorted(STABILITY_CASES))
def test_stable_at_large_logits(name):
    fn = STABILITY_CASES[name]
    x = jnp.asarray(BIG)
    val, grad = jax.jit(jax.value_and_grad(fn))(x)
    assert np.isfinite(val), val
    assert np.isfinite(np.asarray(grad)).all(), grad
    assert float(val) > 1e3          # confidently wrong -> loss of order 1e4, not clipped


def test_cross_entropy_large_logits_exact():
    close(cross_entropy(jnp.array([[1e4, -1e4]]), jnp.array([1])), 2e4)
    close(cross_entropy(jnp.array([[1e4, -1e4]]), jnp.array([0])), 0.0)
    close(binary_cross_entropy_with_logits(jnp.array([-1e4, 1e4]), jnp.array([1.0, 0.0]),
                                           reduction="none"), [1e4, 1e4])


# ----------------------------------------------------------------- gradient checks (float64)

def _grad_cases():
    x = np.array([[0.3, -1.1, 0.8, 0.05], [1.4, 0.2, -0.6, -0.9], [-0.4, 0.7, 0.1, 1.2]])
    t = np.array([2, 0, 3])
    y = np.array([[0.9, -0.2, 0.4, 1.6], [0.2, 0.9, -1.5, 0.1], [-1.9, 0.0, 0.5, 0.4]])
    w = np.array([0.5, 1.5, 1.0, 2.0])
    prob = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
    # margin terms z = m - x[y] + x[i]: x[y] chosen so no |z| < 0.05 (away from the hinge)
    mx = np.array([[0.3, -1.1, 0.6, 0.05], [0.3, 0.2, -0.6, -0.9], [-0.4, 0.75, 0.1, 1.2]])
    return {
        "ce_int": (lambda x: cross_entropy(x, jnp.asarray(t), weight=jnp.asarray(w),
                                           label_smoothing=0.1, ignore_index=0), x),
        "ce_prob": (lambda x: cross_entropy(x, jnp.asarray(prob), weight=jnp.asarray(w),
                                            reduction="sum"), x),
        "nll": (lambda x: nll_loss(jax.nn.log_softmax(x), jnp.asarray(t)), x),
        "mse": (lambda x: mse_loss(x, jnp.asarray(y)), x),
        "l1": (lambda x: l1_loss(x, jnp.asarray(y), reduction="sum"), x),         # |d| >= .1
        "smooth_l1": (lambda x: smooth_l1_loss(x, jnp.asarray(y), beta=0.5), x),  # |d| != .5
        "bce": (lambda x: binary_cross_entropy_with_logits(
            x, jnp.asarray(prob), weight=jnp.asarray(w), pos_weight=jnp.asarray(w)), x),
        "margin_p1": (lambda x: multi_margin_loss(x, jnp.asarray(t), margin=0.5), mx),
        "margin_p2": (lambda x: multi_margin_loss(x, jnp.asarray(t), p=2, margin=0.5,
                                                  weight=jnp.asarray(w)), mx),
    }


# Op-by-op (disable_jit): check_grads' many transformed evaluations then share
# small compiled primitives across cases, keeping the suite fast; the jitted
# path is covered by the value tests.
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_grad_cases()))
def test_grads_second_order(name):
    with jax.enable_x64(True), jax.disable_jit():
        fn, x = _grad_cases()[name]
        check_grads(fn, (jnp.asarray(x, jnp.float64),), order=2, modes=["rev"])


def test_bce_grad_wrt_target():
    with jax.enable_x64(True), jax.disable_jit():
        x = jnp.array([0.3, -2.0, 1.5])
        check_grads(lambda t: binary_cross_entropy_with_logits(x, t), (jnp.array([0.2, 0.9, 0.5]),),
                    order=2, modes=["rev"])


# ----------------------------------------------------------------- jit

def test_losses_jit_with_traced_targets():
    x = jnp.array([[0.0, math.log(3)], [0.0, 0.0]])
    f = jax.jit(lambda x, t: cross_entropy(x, t, weight=jnp.array([1.0, 3.0])))
    close(f(x, jnp.array([0, 1])), 5 / 4 * LN2)
    # out-of-range class index under jit: NaN (never a silently clamped class)
    assert np.isnan(jax.jit(lambda x, t: cross_entropy(x, t))(x, jnp.array([0, 5])))
    g = jax.jit(lambda x, t: multi_margin_loss(x, t))
    close(g(jnp.array([[0.1, 0.2, 0.4]]), jnp.array([2])), 0.5)


# ----------------------------------------------------------------- errors

def test_cross_entropy_target_shape_errors():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ShapeError, match=r"cross_entropy: target \(integer class indices\) must "
                                         r"have shape logits.shape\[:-1\] = \(4,\); got \(4, 1\)"):
        cross_entropy(x, np.zeros((4, 1), np.int32))
    with pytest.raises(ShapeError, match=r"cross_entropy: target \(float class probabilities\) "
                                         r"must have the same shape as logits \(4, 3\); "
                                         r"got \(4,\)"):
        cross_entropy(x, np.zeros((4,), np.float32))
    with pytest.raises(ShapeError, match=r"weight must have shape \(C,\) = \(3,\)"):
        cross_entropy(x, np.zeros(4, np.int32), weight=np.ones(4, np.float32))
    with pytest.raises(DataError, match=r"target class index 3 at index \(2,\) is outside \[0, 3\)"):
        cross_entropy(x, np.array([0, 1, 3, -100], np.int32))
    with pytest.raises(ConfigError, match="ignore_index .* not supported for probability"):
        cross_entropy(x, np.full((4, 3), 1 / 3, np.float32), ignore_index=0)
    with pytest.raises(ConfigError, match="integer class indices or floating"):
        cross_entropy(x, np.zeros(4, bool))
    with pytest.raises(ShapeError, match="cross_entropy: logits must have shape"):
        cross_entropy(np.zeros((), np.float32), np.zeros((), np.int32))


@pytest.mark.parametrize("fn,args", [
    (cross_entropy, (np.zeros((2, 3), np.float32), np.zeros(2, np.int32))),
    (nll_loss, (np.zeros((2, 3), np.float32), np.zeros(2, np.int32))),
    (mse_loss, (np.zeros(2, np.float32), np.zeros(2, np.float32))),
    (l1_loss, (np.zeros(2, np.float32), np.zeros(2, np.float32))),
    (smooth_l1_loss, (np.zeros(2, np.float32), np.zeros(2, np.float32))),
    (binary_cross_entropy_with_logits, (np.zeros(2, np.float32), np.zeros(2, np.float32))),
    (multi_margin_loss, (np.zeros((2, 3), np.float32), np.zeros(2, np.int32))),
], ids=lambda v: getattr(v, "__name__", ""))
def test_bad_reduction(fn, args):
    with pytest.raises(ConfigError, match=rf"{fn.__name__}: reduction must be one of 'mean', "
                                          r"'sum', 'none'; got 'avg'"):
        fn(*args, reduction="avg")


def test_other_config_and_shape_errors():
    with pytest.raises(ConfigError, match="label_smoothing must be a number in"):
        cross_entropy(np.zeros((2, 3), np.float32), np.zeros(2, np.int32), label_smoothing=1.5)
    with pytest.raises(ConfigError, match="multi_margin_loss: p must be 1 or 2; got 3"):
        multi_margin_loss(np.zeros((2, 3), np.float32), np.zeros(2, np.int32), p=3)
    with pytest.raises(ShapeError, match=r"multi_margin_loss: target .* got \(2, 3\)"):
        multi_margin_loss(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int32))
    with pytest.raises(ConfigError, match="multi_margin_loss: target must be integer"):
        multi_margin_loss(np.zeros((2, 3), np.float32), np.zeros(2, np.float32))
    with pytest.raises(ConfigError, match="nll_loss: target must be integer"):
        nll_loss(np.zeros((2, 3), np.float32), np.zeros(2, np.float32))
    with pytest.raises(ConfigError, match="smooth_l1_loss: beta must be a number >= 0"):
        smooth_l1_loss(np.zeros(2, np.float32), np.zeros(2, np.float32), beta=-1.0)
    with pytest.raises(ShapeError, match=r"mse_loss: target shape must equal input shape "
                                         r"\(2, 3\); got \(3,\)"):
        mse_loss(np.zeros((2, 3), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ShapeError, match=r"pos_weight of shape \(2,\) must broadcast to logits "
                                         r"shape \(4, 3\)"):
        binary_cross_entropy_with_logits(np.zeros((4, 3), np.float32),
                                         np.zeros((4, 3), np.float32),
                                         pos_weight=np.ones(2, np.float32))
    with pytest.raises(ShapeError, match=r"binary_cross_entropy_with_logits: target shape"):
        binary_cross_entropy_with_logits(np.zeros((4, 3), np.float32), np.zeros((4,), np.float32))
    with pytest.raises(TypeError):
        mse_loss(np.zeros(2, np.float32), np.zeros(2, np.float32), "sum")  # keyword-only

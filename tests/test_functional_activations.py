"""linear, activations and dropout: hand values, NumPy/torch parity, gradients, errors."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fundl import ConfigError, ShapeError
from fundl.functional import (dropout, elu, gelu, leaky_relu, linear, log_softmax, relu, sigmoid,
                              softmax, softplus, tanh)

# ----------------------------------------------------------------- NumPy references
# Written from the textbook formulas, independent of the implementation.

_erf = np.vectorize(math.erf)


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


NP_REF = {
    "relu": (relu, {}, lambda x: np.maximum(x, 0)),
    "leaky_relu": (leaky_relu, {}, lambda x: np.where(x > 0, x, 0.01 * x)),
    "leaky_relu_0.2": (leaky_relu, {"negative_slope": 0.2}, lambda x: np.where(x > 0, x, 0.2 * x)),
    "elu": (elu, {}, lambda x: np.where(x > 0, x, np.exp(x) - 1)),
    "elu_0.5": (elu, {"alpha": 0.5}, lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1))),
    "gelu": (gelu, {}, lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2)))),
    "gelu_tanh": (gelu, {"approximate": "tanh"}, lambda x: 0.5 * x * (
        1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))),
    "sigmoid": (sigmoid, {}, lambda x: 1 / (1 + np.exp(-x))),
    "tanh": (tanh, {}, np.tanh),
    "softplus": (softplus, {}, lambda x: np.where(x > 20, x, np.log1p(np.exp(x)))),
    "softplus_b2_t3": (softplus, {"beta": 2.0, "threshold": 3.0},
                       lambda x: np.where(2 * x > 3, x, np.log1p(np.exp(2 * x)) / 2)),
    "softmax": (softmax, {}, np_softmax),
    "log_softmax": (log_softmax, {}, lambda x: np.log(np_softmax(x))),
}


@pytest.mark.parametrize("name", sorted(NP_REF))
def test_numpy_parity(name, rng):
    fn, kw, ref = NP_REF[name]
    x = rng.normal(scale=3.0, size=(3, 4, 5))   # same shape as the torch tests: shared compiles
    got = np.asarray(fn(jnp.asarray(x, jnp.float32), **kw))
    np.testing.assert_allclose(got, ref(x), rtol=2e-5, atol=2e-6)
    assert got.shape == x.shape


# ----------------------------------------------------------------- hand values

def test_hand_values():
    x = jnp.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(relu(x), [0, 0, 3])
    np.testing.assert_allclose(leaky_relu(x), [-0.02, 0, 3], rtol=1e-6)
    np.testing.assert_allclose(elu(x, alpha=2.0), [2 * (math.exp(-2) - 1), 0, 3], rtol=1e-6)
    # exact GELU(1) = Phi(1); tanh form differs in the 4th decimal
    np.testing.assert_allclose(gelu(jnp.array([1.0])), [0.8413447], rtol=1e-6)
    np.testing.assert_allclose(gelu(jnp.array([1.0]), approximate="tanh"), [0.8411920], rtol=1e-6)
    np.testing.assert_allclose(sigmoid(jnp.array([0.0])), [0.5])
    np.testing.assert_allclose(tanh(jnp.array([0.0])), [0.0])
    np.testing.assert_allclose(softplus(jnp.array([0.0])), [math.log(2)], rtol=1e-6)
    np.testing.assert_allclose(softmax(jnp.array([0.0, math.log(3)])), [0.25, 0.75], rtol=1e-6)
    np.testing.assert_allclose(log_softmax(jnp.array([0.0, 0.0])), [-math.log(2)] * 2, rtol=1e-6)


def test_softplus_threshold_regime():
    # beta * x > threshold -> exactly x (torch), although log1p(exp(2 * 0.6)) / 2 = 0.6316
    out = softplus(jnp.array([0.6, 0.4]), beta=2.0, threshold=1.0)
    np.testing.assert_allclose(out, [0.6, math.log1p(math.exp(0.8)) / 2], rtol=1e-6)
    assert float(softplus(jnp.array(30.0))) == 30.0
    # the linear regime has gradient exactly 1 and no overflow far above it
    assert float(jax.grad(softplus)(jnp.array(1e4))) == 1.0
    assert float(softplus(jnp.array(-1e4))) == 0.0


def test_gradients_at_kinks_match_torch_convention():
    assert float(jax.grad(relu)(0.0)) == 0.0
    assert float(jax.grad(leaky_relu)(0.0, 0.1)) == pytest.approx(0.1)
    assert float(jax.grad(elu)(0.0, 2.0)) == pytest.approx(2.0)   # alpha * exp(0), the left side


def test_elu_gradient_finite_for_large_inputs():
    # the unused exp branch must not overflow into a NaN gradient
    g = jax.grad(lambda x: elu(x).sum())(jnp.array([100.0, 1e4, -1e4]))
    np.testing.assert_allclose(g, [1.0, 1.0, 0.0])


def test_softmax_axis_and_stability():
    x = jnp.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]])
    ls = log_softmax(x)
    np.testing.assert_allclose(ls[0], [0.0, -2e4, -1e4])
    np.testing.assert_allclose(softmax(x).sum(-1), [1.0, 1.0], rtol=1e-6)
    g = jax.jit(jax.grad(lambda x: log_softmax(x)[:, 1].sum() + softmax(x)[:, 0].sum()))(x)
    assert np.isfinite(g).all()
    y = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(softmax(y, axis=0).sum(0), np.ones(3), rtol=1e-6)
    want = np.log(np_softmax(np.arange(6.0).reshape(2, 3), 0))
    np.testing.assert_allclose(log_softmax(y, axis=0), want, rtol=1e-5)


# ----------------------------------------------------------------- linear

def test_linear_values_and_batching(rng):
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    w = rng.normal(size=(4, 5)).astype(np.float32)
    b = rng.normal(size=(5,)).astype(np.float32)
    np.testing.assert_allclose(linear(x, w, b), x @ w + b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(linear(x, w), x @ w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(linear(x[0, 0], w, b), x[0, 0] @ w + b, rtol=1e-5, atol=1e-6)


def test_linear_errors():
    with pytest.raises(ShapeError, match=r"linear: x.shape\[-1\] \(got 256\) must equal "
                                         r"w.shape\[0\] \(120\)"):
        linear(np.zeros((2, 256), np.float32), np.zeros((120, 84), np.float32))
    with pytest.raises(ShapeError, match=r"b must have shape \(out,\) = \(84,\); got \(120,\)"):
        linear(np.zeros((2, 120), np.float32), np.zeros((120, 84), np.float32),
               np.zeros(120, np.float32))
    with pytest.raises(ShapeError, match="w must be 2-d"):
        linear(np.zeros((2, 3), np.float32), np.zeros((3,), np.float32))
    with pytest.raises(ShapeError, match="at least 1 dim"):
        linear(np.zeros((), np.float32), np.zeros((1, 2), np.float32))


def test_linear_torch_parity(rng):
    torch = pytest.importorskip("torch")
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    w = rng.normal(size=(4, 5)).astype(np.float32)
    b = rng.normal(size=(5,)).astype(np.float32)
    want = torch.nn.functional.linear(torch.tensor(x), torch.tensor(w.T), torch.tensor(b))
    np.testing.assert_allclose(linear(x, w, b), want.numpy(), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------- torch parity

TORCH_CASES = [
    ("relu", relu, {}, lambda F, t: F.relu(t)),
    ("leaky_relu", leaky_relu, {}, lambda F, t: F.leaky_relu(t)),
    ("leaky_relu_0.3", leaky_relu, {"negative_slope": 0.3},
     lambda F, t: F.leaky_relu(t, negative_slope=0.3)),
    ("elu", elu, {}, lambda F, t: F.elu(t)),
    ("elu_1.7", elu, {"alpha": 1.7}, lambda F, t: F.elu(t, alpha=1.7)),
    ("gelu", gelu, {}, lambda F, t: F.gelu(t)),
    ("gelu_tanh", gelu, {"approximate": "tanh"}, lambda F, t: F.gelu(t, approximate="tanh")),
    ("sigmoid", sigmoid, {}, lambda F, t: F.sigmoid(t)),
    ("tanh", tanh, {}, lambda F, t: F.tanh(t)),
    ("softplus", softplus, {}, lambda F, t: F.softplus(t)),
    ("softplus_b3_t2", softplus, {"beta": 3.0, "threshold": 2.0},
     lambda F, t: F.softplus(t, beta=3.0, threshold=2.0)),
    ("softmax", softmax, {}, lambda F, t: F.softmax(t, dim=-1)),
    ("softmax_ax1", softmax, {"axis": 1}, lambda F, t: F.softmax(t, dim=1)),
    ("log_softmax", log_softmax, {}, lambda F, t: F.log_softmax(t, dim=-1)),
]


@pytest.mark.parametrize("case", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_torch_parity(case, rng):
    torch = pytest.importorskip("torch")
    _, fn, kw, tfn = case
    x = (rng.normal(scale=4.0, size=(3, 4, 5))).astype(np.float32)
    x[0, 0, :3] = [0.0, 30.0, -30.0]
    got = np.asarray(fn(jnp.asarray(x), **kw))
    want = tfn(torch.nn.functional, torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- gradient checks

# Points kept away from kinks (0 for relu/leaky/elu, the softplus threshold).
GRAD_CASES = [
    ("relu", lambda x: relu(x)),
    ("leaky_relu", lambda x: leaky_relu(x, 0.2)),
    ("elu", lambda x: elu(x, 1.5)),
    ("gelu", lambda x: gelu(x)),
    ("gelu_tanh", lambda x: gelu(x, approximate="tanh")),
    ("sigmoid", sigmoid),
    ("tanh", tanh),
    ("softplus", lambda x: softplus(x, beta=2.0, threshold=3.0)),
    ("softmax", lambda x: softmax(x, axis=-1)),
    ("log_softmax", lambda x: log_softmax(x, axis=0)),
    ("linear", lambda x: linear(x, jnp.arange(8.0).reshape(4, 2) / 5, jnp.array([0.5, -1.0]))),
]


# check_grads evaluates f under dozens of transformations; op-by-op
# (disable_jit) lets those tiny compiled primitives be shared by all cases,
# which keeps this suite fast. The jitted path is covered by the value tests.
@pytest.mark.slow
@pytest.mark.parametrize("case", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_grads_second_order(case):
    _, fn = case
    x = np.array([[-2.1, -0.7, 0.4, 1.1], [0.9, 2.3, -1.3, -0.2], [0.6, -1.6, 1.7, -0.45]])
    with jax.enable_x64(True), jax.disable_jit():
        check_grads(fn, (jnp.asarray(x, jnp.float64),), order=2, modes=["rev"])


def test_linear_grads_all_args():
    with jax.enable_x64(True), jax.disable_jit():
        x = jnp.array([[0.3, -1.2, 0.5, 1.0], [0.1, 0.2, -0.4, 0.9], [1.3, -0.1, 0.0, 0.6]])
        w = jnp.array([[0.1, 0.2], [-0.3, 0.4], [0.5, -0.6], [0.8, 0.9]])
        b = jnp.array([0.7, -0.8])
        check_grads(lambda x, w, b: jnp.tanh(linear(x, w, b)), (x, w, b), order=2, modes=["rev"])


# ----------------------------------------------------------------- config errors

def test_gelu_bad_approximate():
    with pytest.raises(ConfigError, match="'none' or 'tanh'"):
        gelu(jnp.zeros(2), approximate=True)


def test_softmax_bad_axis():
    with pytest.raises(ShapeError, match="log_softmax: axis 2 is out of range"):
        log_softmax(jnp.zeros((2, 3)), axis=2)


# ----------------------------------------------------------------- dropout

def test_dropout_pattern_matches_mask_from_same_key():
    key = jax.random.key(42)
    x = jnp.arange(1.0, 201.0).reshape(10, 20)
    y = dropout(x, 0.3, key=key)
    keep = np.asarray(jax.random.bernoulli(key, 0.7, x.shape))
    np.testing.assert_allclose(y, np.where(keep, np.asarray(x) / 0.7, 0.0), rtol=1e-6)
    assert 0 < keep.sum() < keep.size
    # same key -> same mask; different key -> different mask
    np.testing.assert_array_equal(dropout(x, 0.3, key=key), y)
    assert not np.array_equal(dropout(x, 0.3, key=jax.random.key(43)), y)


def test_dropout_statistics():
    x = jnp.ones((500, 400))
    for rate in (0.1, 0.5, 0.8):
        y = np.asarray(dropout(x, rate, key=jax.random.key(int(rate * 10))))
        # 2e5 Bernoulli draws: std of the zero fraction <= 1.2e-3; bounds are ~10 sigma
        assert abs((y == 0).mean() - rate) < 0.01
        assert abs(y.mean() - 1.0) < 0.05            # inverted scaling keeps the mean
        np.testing.assert_allclose(np.unique(y), [0.0, 1.0 / (1.0 - rate)], rtol=1e-6)


def test_dropout_identity_cases():
    x = jnp.arange(6.0)
    assert dropout(x, 0.5, train=False) is x                  # eval: no key needed
    assert dropout(x, 0.5, key=jax.random.key(0), train=False) is x
    assert dropout(x, 0.0) is x                               # rate 0: no key needed


def test_dropout_gradient_is_mask_over_keep_prob():
    key = jax.random.key(1)
    x = jnp.ones((10, 20))
    g = jax.grad(lambda x: dropout(x, 0.25, key=key).sum())(x)
    keep = np.asarray(jax.random.bernoulli(key, 0.75, x.shape))
    np.testing.assert_allclose(g, keep / 0.75, rtol=1e-6)


def test_dropout_under_jit_and_legacy_key():
    f = jax.jit(lambda x, k: dropout(x, 0.5, key=k))
    x = jnp.ones((10, 20))
    np.testing.assert_array_equal(f(x, jax.random.key(3)), dropout(x, 0.5, key=jax.random.key(3)))
    y = dropout(x, 0.5, key=jax.random.PRNGKey(3))  # raw uint32 keys work too
    assert set(np.unique(y).tolist()) <= {0.0, 2.0}


def test_dropout_errors():
    x = np.ones(4, np.float32)
    with pytest.raises(ConfigError, match=r"pass key="):
        dropout(x, 0.5)
    for bad in (1.0, -0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ConfigError, match=r"dropout: rate"):
            dropout(x, bad, key=jax.random.key(0))
    with pytest.raises(TypeError):
        dropout(x, 0.5, jax.random.key(0))   # key is keyword-only

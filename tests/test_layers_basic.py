"""Stateless leaf layers of fundl.layers: shape contract, exact values, params, init, errors."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fundl import ConfigError, ShapeError, summary
from fundl.initializers import (fan_in_conv, fan_in_conv_transpose, torch_conv_init,
                                torch_conv_transpose_init, torch_default, torch_dense_init)
from fundl.functional import conv, conv_transpose
from fundl.layers import (ELU, GELU, AdaptiveAvgPool, AvgPool, Conv, ConvTranspose, Dense, Dropout,
                          Flatten, GlobalAvgPool, Identity, LeakyReLU, LogSoftmax, MaxPool, ReLU,
                          Serial, Sigmoid, Softmax, Softplus, Tanh)

KEY = jax.random.key(0)


def n_params(params):
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))


def abstract_init(layer, shape):
    """``(out_shape, params)`` with params as ShapeDtypeStructs: init traced, never compiled.

    Keeps the suite fast: every eager ``jax.random`` call on a new shape
    compiles, and shape tests need only the shapes.
    """
    out = []

    def f(key):
        out_shape, params = layer.init(key, shape)
        out.append(out_shape)
        return params

    params = jax.eval_shape(f, KEY)
    return out[0], params


def random_params(abstract, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.uniform(-0.5, 0.5, s.shape).astype(np.float32)), abstract)


# -- the shape contract: init's promised shape == apply(...).shape -----------

CASES = [
    (lambda: Dense(7), (3, 5)),
    (lambda: Dense(7, bias=False), (1, 5)),
    # Conv: 1d / 2d / 3d, padding forms, SAME/VALID, stride, dilation, groups
    (lambda: Conv(4, 3), (2, 9, 3)),
    (lambda: Conv(4, 3, stride=2, padding=1), (2, 9, 3)),
    (lambda: Conv(8, 5, padding=2), (2, 28, 28, 1)),
    (lambda: Conv(8, (3, 5), stride=(2, 1), padding=((1, 0), (2, 2))), (2, 10, 11, 3)),
    (lambda: Conv(8, 3, stride=2, padding="SAME"), (2, 9, 10, 3)),
    (lambda: Conv(8, 4, stride=3, padding="same"), (1, 7, 8, 2)),
    (lambda: Conv(8, 3, padding="VALID", dilation=2), (2, 9, 9, 3)),
    (lambda: Conv(6, 3, groups=3, bias=False), (2, 8, 8, 6)),
    (lambda: Conv(4, 3, groups=2, padding="SAME"), (2, 6, 6, 4)),
    (lambda: Conv(4, (2, 3, 3), padding=1), (1, 4, 6, 6, 2)),
    (lambda: Conv(4, 3, stride=2, padding="SAME"), (1, 5, 6, 7, 2)),
    # ConvTranspose: 1d / 2d / 3d, SAME, output_padding, dilation, groups
    (lambda: ConvTranspose(4, 3, stride=2), (2, 5, 3)),
    (lambda: ConvTranspose(3, 4, stride=2, padding=1), (2, 8, 8, 8)),
    (lambda: ConvTranspose(3, 3, stride=2, padding=1, output_padding=1), (2, 7, 7, 4)),
    (lambda: ConvTranspose(4, 3, stride=2, padding="SAME"), (2, 5, 6, 3)),
    (lambda: ConvTranspose(4, 3, padding="VALID", dilation=2), (1, 4, 4, 2)),
    (lambda: ConvTranspose(6, 3, stride=2, groups=2), (2, 4, 4, 4)),
    (lambda: ConvTranspose(2, (2, 3, 3), stride=(1, 2, 2)), (1, 3, 4, 4, 2)),
    # pooling
    (lambda: MaxPool(2), (2, 9, 9, 3)),
    (lambda: MaxPool(3, stride=2, padding=1), (2, 9, 9, 3)),
    (lambda: MaxPool(3, stride=2, ceil_mode=True), (2, 10, 10, 3)),
    (lambda: MaxPool(2, dilation=2), (2, 9, 3)),
    (lambda: MaxPool((2, 2, 2)), (1, 4, 5, 6, 2)),
    (lambda: AvgPool(2), (2, 9, 3)),
    (lambda: AvgPool(3, stride=2, padding=1, count_include_pad=False), (2, 8, 8, 3)),
    (lambda: AvgPool((2, 3), ceil_mode=True), (2, 7, 8, 3)),
    (lambda: AvgPool(2), (1, 4, 4, 4, 2)),
    (lambda: AdaptiveAvgPool(3), (2, 7, 5)),
    (lambda: AdaptiveAvgPool((2, 3)), (2, 7, 8, 5)),
    (lambda: AdaptiveAvgPool((None, 2)), (2, 7, 8, 5)),
    (lambda: AdaptiveAvgPool(1), (1, 3, 4, 5, 2)),
    (lambda: GlobalAvgPool(), (2, 5, 5, 3)),
    (lambda: GlobalAvgPool(keepdims=True), (2, 4, 5, 6, 3)),
    # reshaping, identity, dropout, activations
    (lambda: Flatten(), (2, 4, 4, 3)),
    (lambda: Flatten(), (2, 7)),
    (lambda: Identity(), (2, 3, 4)),
    (lambda: Dropout(0.3), (4, 6, 6, 3)),
    (lambda: ReLU(), (2, 3, 4)),
    (lambda: LeakyReLU(0.2), (2, 3)),
    (lambda: ELU(0.5), (2, 3)),
    (lambda: GELU(), (2, 3)),
    (lambda: GELU(approximate="tanh"), (2, 3)),
    (lambda: Sigmoid(), (2, 3)),
    (lambda: Tanh(), (2, 3)),
    (lambda: Softplus(beta=2, threshold=10), (2, 3)),
    (lambda: Softmax(), (2, 3)),
    (lambda: Softmax(axis=1), (2, 3, 4)),
    (lambda: LogSoftmax(axis=-2), (2, 3, 4)),
]


@pytest.mark.parametrize("make,shape", CASES)
def test_shape_contract(make, shape):
    layer = make()
    out_shape, abstract = abstract_init(layer, shape)
    assert all(isinstance(d, int) for d in out_shape)
    params = random_params(abstract)
    x = jnp.asarray(np.random.default_rng(1).normal(size=shape).astype(np.float32))
    for train in (False, True):
        y = layer.apply(params, x, key=jax.random.key(2), train=train)
        assert y.shape == out_shape, (layer, train)
        assert bool(jnp.all(jnp.isfinite(y)))


def test_shape_contract_under_jit_and_eval_shape():
    layer = Conv(8, 3, stride=2, padding="SAME")
    out_shape, abstract = abstract_init(layer, (2, 9, 9, 3))
    params = random_params(abstract)
    x = jnp.ones((2, 9, 9, 3))
    y = jax.jit(layer.apply)(params, x)
    np.testing.assert_allclose(y, layer.apply(params, x), rtol=1e-6, atol=1e-6)
    assert out_shape == y.shape
    # init traces from shapes alone (as summary does)
    abstract = jax.eval_shape(lambda k: layer.init(k, (2, 9, 9, 3))[1], KEY)
    assert abstract["w"].shape == (3, 3, 3, 8)


def test_default_names_and_kinds():
    expected = {
        Dense(1): ("dense", "Dense"), Conv(1, 1): ("conv", "Conv"),
        ConvTranspose(1, 1): ("conv_transpose", "ConvTranspose"),
        MaxPool(2): ("max_pool", "MaxPool"), AvgPool(2): ("avg_pool", "AvgPool"),
        AdaptiveAvgPool(1): ("adaptive_avg_pool", "AdaptiveAvgPool"),
        GlobalAvgPool(): ("global_avg_pool", "GlobalAvgPool"), Flatten(): ("flatten", "Flatten"),
        Dropout(0.1): ("dropout", "Dropout"), Identity(): ("identity", "Identity"),
        ReLU(): ("relu", "ReLU"), LeakyReLU(): ("leaky_relu", "LeakyReLU"), ELU(): ("elu", "ELU"),
        GELU(): ("gelu", "GELU"), Sigmoid(): ("sigmoid", "Sigmoid"), Tanh(): ("tanh", "Tanh"),
        Softplus(): ("softplus", "Softplus"), Softmax(): ("softmax", "Softmax"),
        LogSoftmax(): ("log_softmax", "LogSoftmax"),
    }
    for layer, (name, kind) in expected.items():
        assert (layer.name, type(layer).__name__, layer.type_name) == (name, kind, kind)
        assert not layer.stateful
    assert Dense(3, name="head").name == "head"
    assert "features=3" in repr(Dense(3))


# -- exact values ---------------------------------------------------------------

def test_dense_exact_2x2():
    layer = Dense(2)
    params = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "b": jnp.array([0.5, -1.0])}
    x = jnp.array([[1.0, 1.0], [2.0, -1.0]])
    # [1,1] @ w = [4, 6]; [2,-1] @ w = [-1, 0]; plus b
    np.testing.assert_array_equal(layer.apply(params, x), [[4.5, 5.0], [-0.5, -1.0]])
    np.testing.assert_array_equal(Dense(2, bias=False).apply({"w": params["w"]}, x),
                                  [[4.0, 6.0], [-1.0, 0.0]])


def test_flatten_is_nhwc_row_major():
    x = jnp.arange(2 * 3 * 4 * 5, dtype=jnp.float32).reshape(2, 3, 4, 5)
    y = Flatten().apply({}, x)
    np.testing.assert_array_equal(y, x.reshape(2, -1))
    # channels vary fastest: the first C entries are pixel (0, 0)
    np.testing.assert_array_equal(y[0, :5], x[0, 0, 0, :])


def test_conv_layers_match_functional_ops():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 7, 7, 4)).astype(np.float32))
    layer = Conv(6, 3, stride=2, padding="SAME", groups=2)
    p = random_params(abstract_init(layer, x.shape)[1])
    np.testing.assert_allclose(layer.apply(p, x),
                               conv(x, p["w"], p["b"], stride=2, padding="SAME", groups=2),
                               rtol=1e-6, atol=1e-6)
    layer = ConvTranspose(6, 3, stride=2, padding=1, output_padding=1, groups=2)
    p = random_params(abstract_init(layer, x.shape)[1])
    np.testing.assert_allclose(
        layer.apply(p, x),
        conv_transpose(x, p["w"], p["b"], stride=2, padding=1, output_padding=1, groups=2),
        rtol=1e-6, atol=1e-6)


def test_conv_layers_match_torch_modules():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(2, 7, 7, 4)).astype(np.float32)
    xt = torch.tensor(x).permute(0, 3, 1, 2)
    layer = Conv(6, 3, stride=2, padding=1, dilation=1, groups=2)
    p = random_params(abstract_init(layer, x.shape)[1])
    m = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    with torch.no_grad():
        m.weight.copy_(torch.tensor(np.asarray(p["w"])).permute(3, 2, 0, 1))
        m.bias.copy_(torch.tensor(np.asarray(p["b"])))
        ref = m(xt).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(layer.apply(p, x), ref, rtol=1e-5, atol=1e-5)
    layer = ConvTranspose(6, 3, stride=2, padding=1, output_padding=1, groups=2)
    p = random_params(abstract_init(layer, x.shape)[1])
    m = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
    with torch.no_grad():
        m.weight.copy_(torch.tensor(np.asarray(p["w"])).permute(2, 3, 0, 1))
        m.bias.copy_(torch.tensor(np.asarray(p["b"])))
        ref = m(xt).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(layer.apply(p, x), ref, rtol=1e-5, atol=1e-5)


def test_pool_and_activation_layers_exact():
    x = jnp.array([[1.0, -2.0, 3.0, 0.5]]).reshape(1, 4, 1)
    np.testing.assert_array_equal(MaxPool(2).apply({}, x)[0, :, 0], [1.0, 3.0])
    np.testing.assert_array_equal(AvgPool(2).apply({}, x)[0, :, 0], [-0.5, 1.75])
    np.testing.assert_array_equal(GlobalAvgPool().apply({}, x), [[0.625]])
    np.testing.assert_array_equal(ReLU().apply({}, x), jnp.maximum(x, 0))
    np.testing.assert_allclose(LeakyReLU(0.1).apply({}, x)[0, 1, 0], -0.2)
    np.testing.assert_allclose(Softmax(axis=1).apply({}, x).sum(axis=1), [[1.0]], rtol=1e-6)
    np.testing.assert_array_equal(Identity().apply({}, x), x)


# -- parameters: names, shapes, counts, MACs ----------------------------------

def test_param_names_shapes_and_counts():
    _, p = Conv(32, 5).init(KEY, (1, 28, 28, 1))  # one real init; the rest from shapes alone
    assert set(p) == {"w", "b"} and p["w"].shape == (5, 5, 1, 32) and p["b"].shape == (32,)
    assert p["w"].dtype == jnp.float32
    assert n_params(p) == 832
    _, p = abstract_init(Dense(200), (1, 256))
    assert set(p) == {"w", "b"} and p["w"].shape == (256, 200) and n_params(p) == 51_400
    _, p = abstract_init(Dense(200, bias=False), (1, 256))
    assert set(p) == {"w"}
    _, p = abstract_init(Conv(8, (3, 5), groups=2), (1, 9, 9, 4))
    assert p["w"].shape == (3, 5, 2, 8)
    _, p = abstract_init(Conv(8, 3), (1, 9, 4))
    assert p["w"].shape == (3, 4, 8)
    _, p = abstract_init(ConvTranspose(6, 4, groups=3), (1, 5, 5, 9))
    assert p["w"].shape == (4, 4, 9, 2) and p["b"].shape == (6,)
    _, p = abstract_init(ConvTranspose(6, 2, bias=False), (1, 3, 3, 3, 2))
    assert set(p) == {"w"} and p["w"].shape == (2, 2, 2, 2, 6)
    for layer in (MaxPool(2), AvgPool(2), AdaptiveAvgPool(2), GlobalAvgPool(), Flatten(),
                  Identity(), Dropout(0.5), ReLU(), Softmax()):
        assert layer.init(KEY, (1, 4, 4, 3))[1] == {}


def test_macs():
    s = summary(Serial(Conv(16, 3, padding=1, groups=2), ConvTranspose(8, 2, stride=2, groups=4),
                       MaxPool(2), Flatten(), Dense(10)), (2, 8, 8, 4))
    conv_r, convt_r, pool_r, _, dense_r = s.rows
    assert conv_r.macs == 2 * 16 * 8 * 8 * (4 // 2) * 9
    assert convt_r.macs == 2 * 16 * 8 * 8 * (8 // 4) * 4
    assert pool_r.macs == 0
    assert dense_r.macs == 2 * (8 * 8 * 8) * 10
    assert s.total_params == (9 * 2 * 16 + 16) + (4 * 16 * 2 + 8) + (512 * 10 + 10)


# -- default initialisation (PyTorch's) and overrides -------------------------

@pytest.mark.parametrize("make,shape,fan_in", [
    (lambda: Dense(512), (1, 1024), 1024),
    (lambda: Conv(128, 3, groups=2), (1, 8, 8, 32), 16 * 9),
    # torch's ConvTranspose fan_in uses dim 1 of (C_in, C_out/groups, *k)
    (lambda: ConvTranspose(64, 3, groups=2), (1, 4, 4, 48), 32 * 9),
])
def test_default_init_bounds_and_std(make, shape, fan_in):
    _, p = make().init(KEY, shape)
    bound = 1 / math.sqrt(fan_in)
    for v in (p["w"], p["b"]):
        assert float(jnp.max(jnp.abs(v))) <= bound
        assert float(jnp.max(jnp.abs(v))) > 0.5 * bound
    w = np.asarray(p["w"])
    assert w.size > 10_000
    assert abs(w.std() / (bound / math.sqrt(3)) - 1) < 0.03
    assert abs(w.mean()) < 0.02 * bound
    assert float(jnp.max(jnp.abs(w))) > 0.99 * bound  # not a narrower interval


def test_init_fan_in_matches_torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    m = torch.nn.ConvTranspose2d(6, 8, 3, groups=2)  # fan_in = 8/2 * 9 = 36
    assert abs(m.weight.abs().max().item() - 1 / 6) < 0.01
    assert fan_in_conv_transpose((3, 3, 6, 4)) == 36
    assert fan_in_conv((3, 3, 3, 8)) == 27
    m = torch.nn.Conv2d(6, 8, 3, groups=2)  # fan_in = 6/2 * 9 = 27
    assert abs(m.bias.abs().max().item() - 1 / math.sqrt(27)) < 0.05
    assert fan_in_conv((3, 3, 3, 8)) == 27


def test_init_helpers():
    w = torch_dense_init(KEY, (256, 200))
    assert w.shape == (256, 200) and float(jnp.max(jnp.abs(w))) <= 1 / 16
    with pytest.raises(ConfigError, match="fan_in must be an int >= 1"):
        torch_default(0)  # PyTorch's bound 0 is for empty layers, which fundl refuses
    # the conv helpers read PyTorch's fan_in from our layouts
    w = torch_conv_init(KEY, (5, 5, 1, 32))
    assert 0.95 / 5 < float(jnp.max(jnp.abs(w))) <= 1 / 5
    w = torch_conv_transpose_init(KEY, (4, 4, 8, 2))  # fan_in = 2 * 16, not 8 * 16
    assert 0.9 / math.sqrt(32) < float(jnp.max(jnp.abs(w))) <= 1 / math.sqrt(32)


def test_w_init_b_init_override():
    layer = Conv(4, 3, w_init=jax.nn.initializers.ones, b_init=jax.nn.initializers.zeros)
    _, p = layer.init(KEY, (1, 5, 5, 2))
    np.testing.assert_array_equal(p["w"], 1.0)
    np.testing.assert_array_equal(p["b"], 0.0)
    _, p = ConvTranspose(4, 2, w_init=lambda k, s, d: jnp.full(s, 2.0, d)).init(KEY, (1, 3, 3, 2))
    np.testing.assert_array_equal(p["w"], 2.0)
    with pytest.raises(ConfigError, match=r"Dense 'dense'.*w_init.*got 3"):
        Dense(3, w_init=3)
    with pytest.raises(ConfigError, match=r"Dense 'dense'.*w_init returned shape \(2,\)"):
        Dense(3, w_init=lambda k, s, d: jnp.zeros(2)).init(KEY, (1, 4))


# -- errors: kind, path, argument and received value in every message ---------

def _net(layer, name="net"):
    return Serial(layer, name=name)


@pytest.mark.parametrize("make,shape,exc,parts", [
    # wrong rank
    (lambda: _net(Conv(8, (3, 3), name="c1")), (2, 28, 28), ShapeError,
     ["Conv 'net/c1'", "(2, 28, 28)", "rank 3", "x[..., None]"]),
    (lambda: _net(Conv(8, 3, name="c1")), (2, 28), ShapeError,
     ["Conv 'net/c1'", "(2, 28)", "rank 2"]),
    (lambda: _net(ConvTranspose(8, (3, 3, 3))), (2, 8, 8, 3), ShapeError,
     ["ConvTranspose 'net/conv_transpose'", "(2, 8, 8, 3)", "rank 5"]),
    (lambda: _net(MaxPool((2, 2))), (2, 8, 3), ShapeError, ["MaxPool 'net/max_pool'", "(2, 8, 3)"]),
    (lambda: _net(GlobalAvgPool()), (2, 3), ShapeError,
     ["GlobalAvgPool 'net/global_avg_pool'", "(2, 3)"]),
    (lambda: _net(Flatten()), (5,), ShapeError, ["Flatten 'net/flatten'", "(5,)"]),
    (lambda: _net(Dense(3)), (5,), ShapeError, ["Dense 'net/dense'", "(5,)", "rank 1"]),
    (lambda: _net(Softmax(axis=2)), (4, 3), ShapeError,
     ["Softmax 'net/softmax'", "axis=2", "(4, 3)"]),
    # Dense on a rank-1 input (no batch axis)
    (lambda: Serial(Dense(10, name="dense1"), name="net"), (6,), ShapeError,
     ["Dense 'net/dense1'", "rank >= 2", "(6,)", "Add a batch axis"]),
    # spatial size too small for kernel and dilation
    (lambda: _net(Conv(8, 3, dilation=2, name="c")), (1, 4, 4, 3), ShapeError,
     ["Conv 'net/c'", "(1, 4, 4, 3)", "padding=0", "d*(k-1)+1 = 5", "dilation=2"]),
    (lambda: _net(Conv(8, 5, padding=(1, 0), name="c")), (1, 6, 4, 3), ShapeError,
     ["Conv 'net/c'", "(1, 6, 4, 3)", "padding=(1, 0)", "= 5"]),
    (lambda: _net(MaxPool(3, dilation=2)), (1, 4, 4, 3), ShapeError,
     ["MaxPool 'net/max_pool'", "(1, 4, 4, 3)", "padding=0"]),
    (lambda: _net(ConvTranspose(4, 3, padding=3)), (1, 1, 1, 2), ShapeError,
     ["ConvTranspose 'net/conv_transpose'", "(1, 1, 1, 2)", "padding=3"]),
    # groups not dividing the input channels
    (lambda: _net(Conv(6, 3, groups=3)), (1, 8, 8, 4), ConfigError,
     ["Conv 'net/conv'", "groups=3", "4 input channels"]),
    (lambda: _net(ConvTranspose(6, 3, groups=3)), (1, 8, 8, 4), ConfigError,
     ["ConvTranspose 'net/conv_transpose'", "groups=3", "4 input channels"]),
    # SAME with tuple padding length mismatch at init
    (lambda: _net(Conv(4, 3, padding=(1, 1, 1))), (1, 8, 8, 2), ConfigError,
     ["Conv 'net/conv'", "padding", "(1, 1, 1)"]),
])
def test_init_errors(make, shape, exc, parts):
    with pytest.raises(exc) as info:
        abstract_init(make(), shape)  # errors are raised while tracing, before any compile
    for part in parts:
        assert part in str(info.value), (part, str(info.value))


@pytest.mark.parametrize("make,exc,parts", [
    (lambda: Conv(8, 3, stride=-1), ConfigError, ["Conv 'conv'", "stride", "-1"]),
    (lambda: Conv(8, 3, stride=(1, 0)), ConfigError, ["Conv 'conv'", "stride", "(1, 0)"]),
    (lambda: Conv(0, 3), ConfigError, ["Conv 'conv'", "out_channels", "0"]),
    (lambda: Conv(8, 0, name="c9"), ConfigError, ["Conv 'c9'", "kernel_size", "0"]),
    (lambda: Conv(8, 3, groups=3), ConfigError, ["Conv 'conv'", "groups=3", "out_channels=8"]),
    (lambda: Conv(8, 3, groups=0), ConfigError, ["Conv 'conv'", "groups", "0"]),
    (lambda: Conv(8, 3, padding=-1), ConfigError, ["Conv 'conv'", "padding", "-1"]),
    (lambda: Conv(8, 3, padding="FULL"), ConfigError, ["Conv 'conv'", "padding", "'FULL'"]),
    (lambda: Conv(8, (3, 3), stride=(1, 1, 1)), ConfigError,
     ["Conv 'conv'", "kernel_size=(3, 3)", "stride=(1, 1, 1)"]),
    (lambda: Conv(8, (3, 3, 3, 3)), ConfigError, ["Conv 'conv'", "kernel_size", "(3, 3, 3, 3)"]),
    (lambda: Conv(8, 3, bias=1), ConfigError, ["Conv 'conv'", "bias", "1"]),
    (lambda: ConvTranspose(8, 3, stride=2, output_padding=2), ConfigError,
     ["ConvTranspose 'conv_transpose'", "output_padding=2", "stride"]),
    (lambda: ConvTranspose(8, 3, groups=3), ConfigError,
     ["ConvTranspose 'conv_transpose'", "groups=3", "out_channels=8"]),
    (lambda: Dense(0), ConfigError, ["Dense 'dense'", "features", "0"]),
    (lambda: Dense(2.5, name="fc"), ConfigError, ["Dense 'fc'", "features", "2.5"]),
    (lambda: Dense(3, name="a/b"), ConfigError, ["Dense", "name", "'a/b'"]),
    (lambda: Dropout(1.5), ConfigError, ["Dropout 'dropout'", "rate", "1.5"]),
    (lambda: Dropout(-0.1), ConfigError, ["Dropout 'dropout'", "rate", "-0.1"]),
    (lambda: Dropout(1.0), ConfigError, ["Dropout 'dropout'", "rate", "1.0"]),
    (lambda: MaxPool(2, padding=2), ConfigError,
     ["MaxPool 'max_pool'", "padding=2", "kernel_size=2"]),
    (lambda: MaxPool(2, stride=0), ConfigError, ["MaxPool 'max_pool'", "stride", "0"]),
    (lambda: AvgPool(3, padding="SAME"), ConfigError, ["AvgPool 'avg_pool'", "padding", "'SAME'"]),
    (lambda: AvgPool(2, count_include_pad="yes"), ConfigError,
     ["AvgPool 'avg_pool'", "count_include_pad", "'yes'"]),
    (lambda: AdaptiveAvgPool(0), ConfigError,
     ["AdaptiveAvgPool 'adaptive_avg_pool'", "output_size", "0"]),
    (lambda: AdaptiveAvgPool((2, -1)), ConfigError, ["AdaptiveAvgPool", "output_size", "(2, -1)"]),
    (lambda: GELU("fast"), ConfigError, ["GELU 'gelu'", "approximate", "'fast'"]),
    (lambda: LeakyReLU("a"), ConfigError, ["LeakyReLU 'leaky_relu'", "negative_slope", "'a'"]),
    (lambda: ELU(float("nan")), ConfigError, ["ELU 'elu'", "alpha", "nan"]),
    (lambda: Softplus(beta=0), ConfigError, ["Softplus 'softplus'", "beta", "0"]),
    (lambda: Softmax(axis=1.0), ConfigError, ["Softmax 'softmax'", "axis", "1.0"]),
])
def test_config_errors(make, exc, parts):
    with pytest.raises(exc) as info:
        make()
    for part in parts:
        assert part in str(info.value), (part, str(info.value))


def test_apply_channel_mismatch():
    net = _net(Conv(8, 3, name="c1"))
    params = random_params(abstract_init(net, (1, 8, 8, 3))[1])
    with pytest.raises(ShapeError) as info:
        net.apply(params, jnp.ones((1, 8, 8, 4)))
    msg = str(info.value)
    for part in ("Conv 'net/c1'", "4 channels", "initialised for 3", "(3, 3, 3, 8)",
                 "(1, 8, 8, 4)"):
        assert part in msg, (part, msg)
    layer = ConvTranspose(8, 3, groups=1)
    p = random_params(abstract_init(layer, (1, 5, 5, 3))[1])
    with pytest.raises(ShapeError, match=r"ConvTranspose 'conv_transpose'.*4 channels.*for 3"):
        layer.apply(p, jnp.ones((1, 5, 5, 4)))
    layer = Dense(2, name="fc")
    p = random_params(abstract_init(layer, (1, 3))[1])
    with pytest.raises(ShapeError, match=r"Dense 'fc': input has 4 features.*initialised for 3"):
        layer.apply(p, jnp.ones((2, 4)))
    assert layer.apply(p, jnp.ones((2, 5, 3))).shape == (2, 5, 2)   # per token, as torch
    with pytest.raises(ShapeError, match=r"Conv 'conv'.*rank 4.*\(1, 8, 3\)"):
        Conv(8, 3).apply(random_params(abstract_init(Conv(8, 3), (1, 8, 8, 3))[1]),
                         jnp.ones((1, 8, 3)))
    with pytest.raises(ShapeError, match=r"Conv 'conv'.*params is missing 'w'"):
        Conv(8, 3).apply({}, jnp.ones((1, 8, 8, 3)))
    # apply re-checks the spatial size against the kernel (input smaller than at init)
    layer = Conv(8, 3, dilation=2)
    p = random_params(abstract_init(layer, (1, 8, 8, 3))[1])
    with pytest.raises(ShapeError, match=r"Conv 'conv'.*\(1, 4, 4, 3\).*= 5"):
        layer.apply(p, jnp.ones((1, 4, 4, 3)))


# -- Dropout ---------------------------------------------------------------------

def test_dropout_key_at_call_time():
    layer = Dropout(0.3)
    _, p = layer.init(KEY, (100, 100))
    x = jnp.ones((100, 100))
    assert layer.apply(p, x) is x                        # eval: identity, no key needed
    assert layer.apply(p, x, key=KEY, train=False) is x
    y = layer.apply(p, x, key=jax.random.key(3), train=True)
    dropped = float(jnp.mean(y == 0))
    assert abs(dropped - 0.3) < 0.02
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)  # inverted dropout scaling
    y2 = layer.apply(p, x, key=jax.random.key(4), train=True)
    assert bool(jnp.any(y != y2))
    np.testing.assert_array_equal(Dropout(0.0).apply({}, x, train=True), x)


def test_dropout_train_without_key():
    net = Serial(Dense(4), Dropout(0.5, name="drop"), name="net")
    p = random_params(abstract_init(net, (2, 3))[1])
    with pytest.raises(ConfigError) as info:
        net.apply(p, jnp.ones((2, 3)), train=True)
    assert "Dropout 'net/drop'" in str(info.value) and "key=" in str(info.value)
    assert net.apply(p, jnp.ones((2, 3)), train=True, key=KEY).shape == (2, 4)

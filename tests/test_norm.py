"""BatchNorm and LayerNorm (fundl.layers): PyTorch parity, state handling, gradients, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fundl import ConfigError, ShapeError
from fundl.layers import BatchNorm, Conv, LayerNorm, ReLU, Serial

KEY = jax.random.key(0)


def enable_x64():
    """float64 context; ``jax.experimental.enable_x64`` moved to ``jax.enable_x64``."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64 as ctx  # older jax
    return ctx()


def _data(shape, seed=0, loc=1.5, scale=2.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale + loc).astype(np.float32)


def _to_torch(x):
    """Channels last -> channels first."""
    import torch
    t = torch.tensor(x)
    return t.permute(0, t.ndim - 1, *range(1, t.ndim - 1))


def _from_torch(t):
    return t.permute(0, *range(2, t.ndim), 1).detach().numpy()


# -- shapes, params, state -----------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 3), (4, 5, 3), (2, 4, 4, 3), (2, 2, 3, 3, 3)])
def test_batchnorm_shape_contract_and_state(shape):
    bn = BatchNorm()
    assert bn.stateful and bn.name == "batch_norm" and isinstance(bn, BatchNorm)
    out_shape, params, state = bn.init(KEY, shape)
    assert out_shape == shape
    assert set(params) == {"scale", "bias"} and set(state) == {"mean", "var"}
    np.testing.assert_array_equal(params["scale"], np.ones(3))
    np.testing.assert_array_equal(params["bias"], np.zeros(3))
    np.testing.assert_array_equal(state["mean"], np.zeros(3))
    np.testing.assert_array_equal(state["var"], np.ones(3))
    x = jnp.asarray(_data(shape))
    for train in (True, False):
        y, new_state = bn.apply(params, x, state=state, train=train)
        assert y.shape == out_shape and y.dtype == x.dtype
        assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
    # train mode: per-channel zero mean, unit (biased) variance
    y, _ = bn.apply(params, x, state=state, train=True)
    axes = tuple(range(len(shape) - 1))
    np.testing.assert_allclose(y.mean(axis=axes), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=axes), 1, rtol=1e-3)


def test_batchnorm_affine_false():
    bn = BatchNorm(affine=False)
    _, params, state = bn.init(KEY, (4, 3))
    assert params == {}
    y, _ = bn.apply(params, _data((4, 3)), state=state, train=True)
    assert y.shape == (4, 3)


def test_batchnorm_needs_state():
    bn = BatchNorm(name="bn1")
    _, params, state = bn.init(KEY, (4, 3))
    with pytest.raises(ConfigError, match=r"BatchNorm 'bn1'.*state="):
        bn.apply(params, _data((4, 3)))
    net = Serial(Conv(3, 1), BatchNorm(), ReLU(), name="net")
    assert net.stateful
    _, p, s = net.init(KEY, (2, 4, 4, 3))
    assert set(s) == {"batch_norm"}
    with pytest.raises(ConfigError, match=r"Serial 'net'.*state="):
        net.apply(p, _data((2, 4, 4, 3)), train=True)
    y, s2 = net.apply(p, _data((2, 4, 4, 3)), state=s, train=True)
    assert y.shape == (2, 4, 4, 3) and set(s2) == {"batch_norm"}


# -- PyTorch parity --------------------------------------------------------------

@pytest.mark.parametrize("shape,module", [((2, 5, 6, 3), "BatchNorm2d"), ((8, 3), "BatchNorm1d"),
                                          ((4, 7, 3), "BatchNorm1d"),
                                          ((2, 3, 4, 2, 3), "BatchNorm3d")])
def test_batchnorm_matches_torch(shape, module):
    torch = pytest.importorskip("torch")
    momentum, eps = 0.3, 1e-3                     # non-defaults: both must be honoured
    bn = BatchNorm(momentum=momentum, eps=eps)
    ref = getattr(torch.nn, module)(shape[-1], momentum=momentum, eps=eps)
    rng = np.random.default_rng(0)
    _, params, state = bn.init(KEY, shape)
    params = {"scale": jnp.asarray(rng.uniform(0.5, 2.0, 3), jnp.float32),
              "bias": jnp.asarray(rng.normal(size=3), jnp.float32)}
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(np.asarray(params["scale"])))
        ref.bias.copy_(torch.tensor(np.asarray(params["bias"])))
    step = jax.jit(lambda p, s, x: bn.apply(p, x, state=s, train=True))
    ref.train()
    for i in range(3):
        x = _data(shape, seed=i, loc=i - 1.0, scale=1.0 + i)
        y, state = step(params, state, x)
        np.testing.assert_allclose(y, _from_torch(ref(_to_torch(x))), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(state["mean"], ref.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["var"], ref.running_var.numpy(), rtol=1e-5, atol=1e-6)
    ref.eval()
    x = _data(shape, seed=7)
    y, same = bn.apply(params, x, state=state, train=False)
    np.testing.assert_allclose(y, _from_torch(ref(_to_torch(x))), rtol=1e-4, atol=1e-4)
    assert same is state                         # eval returns the state unchanged


def test_batchnorm_running_stat_rule():
    """running = (1 - m) * running + m * batch, with the unbiased variance (n / (n - 1))."""
    bn = BatchNorm(momentum=0.25, eps=0.5)
    x = _data((5, 2))
    _, params, state = bn.init(KEY, x.shape)
    y, s = bn.apply(params, x, state=state, train=True)
    np.testing.assert_allclose(s["mean"], 0.25 * x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(s["var"], 0.75 + 0.25 * x.var(0, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(y, (x - x.mean(0)) / np.sqrt(x.var(0) + 0.5), rtol=1e-4, atol=1e-5)
    # eval mode uses the running statistics and eps
    y, _ = bn.apply(params, x, state=s, train=False)
    mean, var = np.asarray(s["mean"]), np.asarray(s["var"])
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 0.5), rtol=1e-5, atol=1e-5)


def test_batchnorm_low_precision_input():
    bn = BatchNorm()
    _, params, state = bn.init(KEY, (16, 4))
    x = jnp.asarray(_data((16, 4), loc=100.0), jnp.bfloat16)
    y, s = bn.apply(params, x, state=state, train=True)
    assert y.dtype == jnp.bfloat16 and s["mean"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y, np.float32).mean(0), 0, atol=0.05)


def test_layernorm_matches_torch():
    torch = pytest.importorskip("torch")
    ln = LayerNorm(eps=1e-3)
    assert ln.name == "layer_norm" and not ln.stateful
    x = _data((2, 4, 5, 6))
    out_shape, params = ln.init(KEY, x.shape)
    assert out_shape == x.shape and set(params) == {"scale", "bias"}
    assert params["scale"].shape == (6,)
    rng = np.random.default_rng(1)
    params = {"scale": jnp.asarray(rng.normal(size=6), jnp.float32),
              "bias": jnp.asarray(rng.normal(size=6), jnp.float32)}
    ref = torch.nn.LayerNorm(6, eps=1e-3)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(np.asarray(params["scale"])))
        ref.bias.copy_(torch.tensor(np.asarray(params["bias"])))
        expected = ref(torch.tensor(x)).numpy()
    np.testing.assert_allclose(ln.apply(params, x), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(jax.jit(ln.apply)(params, x), expected, rtol=1e-4, atol=1e-4)
    plain = LayerNorm(elementwise_affine=False)
    _, p = plain.init(KEY, (3, 6))
    assert p == {}
    with torch.no_grad():
        expected = torch.nn.LayerNorm(6, elementwise_affine=False)(torch.tensor(x[0, 0])).numpy()
    np.testing.assert_allclose(plain.apply(p, x[0, 0]), expected, rtol=1e-4, atol=1e-4)


# -- gradients and cross-replica statistics ---------------------------------------

@pytest.mark.slow
def test_batchnorm_gradients_finite_differences():
    bn = BatchNorm()
    with enable_x64():
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(4, 3, 2)), jnp.float64)
        scale = jnp.asarray(rng.uniform(0.5, 1.5, 2), jnp.float64)
        bias = jnp.asarray(rng.normal(size=2), jnp.float64)
        state = {"mean": jnp.zeros(2, jnp.float64), "var": jnp.ones(2, jnp.float64)}

        def f(x, scale):
            y, _ = bn.apply({"scale": scale, "bias": bias}, x, state=state, train=True)
            return y

        assert f(x, scale).dtype == jnp.float64
        check_grads(f, (x, scale), order=2, modes=["rev"])


@pytest.mark.slow
def test_layernorm_gradients_finite_differences():
    ln = LayerNorm()
    with enable_x64():
        rng = np.random.default_rng(1)
        x = jnp.asarray(rng.normal(size=(3, 4)), jnp.float64)
        scale = jnp.asarray(rng.uniform(0.5, 1.5, 4), jnp.float64)
        bias = jnp.zeros(4, jnp.float64)
        check_grads(lambda x, s: ln.apply({"scale": s, "bias": bias}, x), (x, scale),
                    order=2, modes=["rev"])


@pytest.mark.slow
def test_cross_replica_batchnorm_equals_full_batch():
    x = _data((8, 3, 3, 4))
    full, sharded = BatchNorm(momentum=0.5), BatchNorm(momentum=0.5, axis_name="b")
    _, params, state = full.init(KEY, x.shape)
    y_full, s_full = full.apply(params, x, state=state, train=True)

    def shard_step(xs):
        return sharded.apply(params, xs, state=state, train=True)

    y_sh, s_sh = jax.vmap(shard_step, axis_name="b")(x.reshape(2, 4, 3, 3, 4))
    np.testing.assert_allclose(y_sh.reshape(x.shape), y_full, rtol=1e-5, atol=1e-5)
    for k in ("mean", "var"):  # every replica holds the full-batch running stats
        np.testing.assert_allclose(s_sh[k], np.stack([s_full[k]] * 2), rtol=1e-5, atol=1e-6)
    # without the axis each shard would normalise with its own statistics
    y_local, _ = jax.vmap(lambda xs: full.apply(params, xs, state=state, train=True))(
        x.reshape(2, 4, 3, 3, 4))
    assert not np.allclose(y_local.reshape(x.shape), y_full, atol=1e-3)


# -- errors ------------------------------------------------------------------------

@pytest.mark.parametrize("make,parts", [
    (lambda: BatchNorm(momentum=1.5), ["BatchNorm 'batch_norm'", "momentum", "1.5"]),
    (lambda: BatchNorm(momentum=None), ["BatchNorm 'batch_norm'", "momentum", "None"]),
    (lambda: BatchNorm(eps=0, name="bn2"), ["BatchNorm 'bn2'", "eps", "0"]),
    (lambda: BatchNorm(affine="no"), ["BatchNorm 'batch_norm'", "affine", "'no'"]),
    (lambda: BatchNorm(axis_name=3), ["BatchNorm 'batch_norm'", "axis_name", "3"]),
    (lambda: LayerNorm(eps=-1.0), ["LayerNorm 'layer_norm'", "eps", "-1.0"]),
    (lambda: LayerNorm(elementwise_affine=1),
     ["LayerNorm 'layer_norm'", "elementwise_affine", "1"]),
])
def test_config_errors(make, parts):
    with pytest.raises(ConfigError) as info:
        make()
    for part in parts:
        assert part in str(info.value), (part, str(info.value))


def test_shape_errors():
    net = Serial(BatchNorm(name="bn"), name="net")
    with pytest.raises(ShapeError, match=r"BatchNorm 'net/bn'.*\(5,\)"):
        net.init(KEY, (5,))
    _, params, state = net.init(KEY, (4, 3))
    with pytest.raises(ShapeError) as info:
        net.apply(params, _data((4, 4)), state=state, train=True)
    for part in ("BatchNorm 'net/bn'", "4 channels", "initialised for 3", "(4, 4)"):
        assert part in str(info.value), (part, str(info.value))
    with pytest.raises(ShapeError, match=r"BatchNorm 'net/bn'.*more than 1 value per channel"):
        net.apply(params, _data((1, 3)), state=state, train=True)
    y, _ = net.apply(params, _data((1, 3)), state=state, train=False)  # fine in eval mode
    assert y.shape == (1, 3)
    ln = LayerNorm(name="ln")
    _, p = ln.init(KEY, (2, 3))
    with pytest.raises(ShapeError, match=r"LayerNorm 'ln'.*4 channels.*\(3,\)"):
        ln.apply(p, _data((2, 4)))


# -- BatchNorm with its own axis_name inside train steps ---------------------------------

def _bn_net(axis_name):
    return Serial(Conv(4, 3, padding=1, name="conv"), BatchNorm(axis_name=axis_name, name="bn"),
                  ReLU(), name="net")


def _bn_step(axis_name, parallel):
    import optax

    from fundl.layers import Dense, Flatten
    from fundl.train import make_train_step, replicate, unreplicate
    model = Serial(_bn_net(axis_name), Flatten(), Dense(3, name="head"))
    x, y = _data((4, 5, 5, 2)), np.array([0, 1, 2, 1], np.int32)
    _, p, s = model.init_with_state(KEY, x.shape)
    opt = optax.sgd(0.1)
    trees = (p, s, opt.init(p))
    step = make_train_step(model, opt, parallel=parallel, donate=False)
    if parallel == "pmap":
        return unreplicate(step(*replicate(trees), (x, y), None)[:2])
    return step(*trees, (x, y), None)[:2]


@pytest.mark.parametrize("parallel", ["sharded", "pmap"])
def test_own_axis_name_data_in_parallel_step_equals_plain_step(parallel):
    want = _bn_step(None, None)
    got = _bn_step("data", parallel)
    for u, v in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axis_name, parallel, hint", [
    ("batch", "sharded", "build BatchNorm without axis_name"),
    ("batch", "pmap", "build BatchNorm without axis_name"),
    (("data", "model"), "pmap", "axis_name='model' is not a mapped axis"),
    ("batch", None, "Call the model under jax.vmap/jax.pmap/jax.shard_map with axis_name='batch'"),
    ("data", None, "Call the model under jax.vmap"),  # one-device step: no device axis at all
])
def test_own_unbound_axis_name_is_a_config_error_when_traced(axis_name, parallel, hint):
    with pytest.raises(ConfigError) as info:
        _bn_step(axis_name, parallel)
    msg = str(info.value)
    for part in ("BatchNorm 'serial/net/bn'", "is not a mapped axis here", hint):
        assert part in msg, (part, msg)


def test_own_axis_name_outside_any_map():
    bn = BatchNorm(axis_name="b", name="bn")
    x = _data((4, 3))
    _, params, state = bn.init(KEY, x.shape)
    with pytest.raises(ConfigError, match="BatchNorm 'bn': axis_name='b' is not a mapped axis"):
        bn.apply(params, x, state=state, train=True)
    y, new = bn.apply(params, x, state=state, train=False)  # eval mode needs no axis
    assert y.shape == x.shape and new is state

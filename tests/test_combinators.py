"""Layer protocol, combinators (any DAG, weight sharing) and ResNet blocks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fundl.functional as F
import fundl.layers as L
from fundl import ConfigError, ShapeError

KEY = jax.random.key(0)


def n_params(tree):
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(tree))


def dense(p, x):
    return x @ p["w"] + p["b"][None, :]


def paths(tree):
    return sorted("/".join(str(k.key) for k in path)
                  for path, _ in jax.tree_util.tree_leaves_with_path(tree))


# -- protocol and Serial ------------------------------------------------------

def test_serial_names_shapes_and_values():
    net = L.Serial(L.Dense(4), L.ReLU(), L.Dense(2), name="net")
    out, params = net.init(KEY, (3, 5))
    assert out == (3, 2)
    assert paths(params) == ["dense1/b", "dense1/w", "dense2/b", "dense2/w"]
    x = jax.random.normal(KEY, (3, 5))
    y = net.apply(params, x)
    p1, p2 = params["dense1"], params["dense2"]
    expected = dense(p2, jnp.maximum(dense(p1, x), 0))
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    assert y.shape == out


def test_nested_names_read_like_paths():
    net = L.Serial(L.Serial(L.Conv(4, 3, name="conv1"), L.ReLU(), name="features"),
                   L.Flatten(), L.Dense(3, name="fc"))
    _, params = net.init(KEY, (1, 6, 6, 2))
    assert paths(params) == ["fc/b", "fc/w", "features/conv1/b", "features/conv1/w"]


def test_init_runs_no_network_and_is_deterministic():
    net = L.Serial(L.Dense(4), L.Dense(2))
    _, a = net.init(KEY, (1, 3))
    _, b = net.init(KEY, (1, 3))
    _, c = net.init(jax.random.key(1), (1, 3))
    assert all(np.array_equal(u, v) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    assert not np.array_equal(a["dense1"]["w"], c["dense1"]["w"])
    # Sibling layers get independent keys.
    assert not np.array_equal(a["dense1"]["w"][:2, :2], a["dense2"]["w"][:2, :2])


def test_bad_input_shape_argument():
    with pytest.raises(ShapeError, match="input_shape"):
        L.Dense(3).init(KEY, 5)
    with pytest.raises(ShapeError, match="positive"):
        L.Dense(3).init(KEY, (0, 5))
    with pytest.raises(ConfigError, match="argument 1 must be a fundl Layer"):
        L.Serial(L.Dense(3), jax.nn.relu)


def test_error_names_the_path():
    net = L.Serial(L.Conv(8, 3), L.Dense(10), L.LayerNorm(), name="net")
    _, p = net.init(KEY, (1, 8, 8, 1))
    bad = jax.tree_util.tree_map(lambda a: a, p)
    bad["layer_norm"] = {"scale": jnp.ones(5), "bias": jnp.zeros(10)}
    with pytest.raises(ShapeError, match=r"LayerNorm 'net/layer_norm'.*'scale' has shape \(5,\)"):
        net.apply(bad, jnp.ones((1, 8, 8, 1)))


def test_dense_on_a_feature_map_is_caught_by_the_loss():
    # Dense maps the last axis (torch.nn.Linear), so the classic missing Flatten
    # surfaces where logits meet labels: the loss names both shapes and the fix.
    net = L.Serial(L.Conv(8, 3), L.Dense(10), name="net")
    out, p = net.init(KEY, (2, 8, 8, 1))
    assert out == (2, 6, 6, 10)
    logits = net.apply(p, jnp.ones((2, 8, 8, 1)))
    with pytest.raises(ShapeError, match=r"\(2,\).*\(2, 6, 6, 10\).*Flatten\(\)"):
        F.cross_entropy(logits, jnp.array([0, 1]))


def test_stateful_flag_and_state_plumbing():
    mlp = L.Serial(L.Dense(4), L.ReLU(), L.Dense(2))
    assert not mlp.stateful
    assert len(mlp.init(KEY, (2, 3))) == 2
    bn_net = L.Serial(L.Dense(4), L.BatchNorm(), L.Dense(2))
    assert bn_net.stateful
    out, params, state = bn_net.init(KEY, (8, 3))
    assert paths(state) == ["batchnorm/mean", "batchnorm/var"] or paths(state) == [
        f"{k}/{s}" for k in state for s in ("mean", "var")]
    x = jax.random.normal(KEY, (8, 3))
    with pytest.raises(ConfigError, match="state"):
        bn_net.apply(params, x)
    y, new_state = bn_net.apply(params, x, state=state, train=True)
    assert y.shape == out
    assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
    with pytest.raises(ConfigError, match="stateless"):
        mlp.apply(mlp.init(KEY, (2, 3))[1], x, state={"a": 1})


def test_keys_are_split_per_child():
    net = L.Serial(L.Dropout(0.5), L.Dropout(0.5))
    _, params = net.init(KEY, (1, 1000))
    x = jnp.ones((1, 1000))
    y = net.apply(params, x, key=KEY, train=True)
    # Two independent masks: about a quarter survive, each scaled by 4.
    kept = float(jnp.mean(y > 0))
    assert 0.2 < kept < 0.3
    np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 4.0])
    np.testing.assert_array_equal(net.apply(params, x, train=False), x)


# -- Parallel, Sum, Concat ----------------------------------------------------

def test_parallel_concat_sum_and_tuple():
    a, b = L.Dense(3, name="a"), L.Dense(5, name="b")
    x = jax.random.normal(KEY, (2, 4))
    cat = L.Parallel(a, b, merge="concat")
    out, params = cat.init(KEY, (2, 4))
    assert out == (2, 8)
    y = cat.apply(params, x)
    np.testing.assert_allclose(y[:, :3], a.apply(params["a"], x), rtol=1e-6)
    np.testing.assert_allclose(y[:, 3:], b.apply(params["b"], x), rtol=1e-6)

    tup = L.Parallel(a, b, merge=None)
    out, params = tup.init(KEY, (2, 4))
    assert out == ((2, 3), (2, 5))
    ys = tup.apply(params, x)
    assert tuple(y.shape for y in ys) == out

    s = L.Parallel(L.Dense(3, name="a"), L.Dense(3, name="b"), merge="sum")
    out, params = s.init(KEY, (2, 4))
    np.testing.assert_allclose(s.apply(params, x),
                               dense(params["a"], x) + dense(params["b"], x),
                               rtol=1e-5, atol=1e-6)


def test_parallel_shape_errors():
    with pytest.raises(ShapeError, match=r"merge='sum'.*\(2, 3\).*\(2, 5\)"):
        L.Parallel(L.Dense(3), L.Dense(5), merge="sum").init(KEY, (2, 4))
    with pytest.raises(ConfigError, match="merge"):
        L.Parallel(L.Dense(3), merge="avg")


def test_fan_in_layers_on_tuples():
    net = L.Serial(L.Parallel(L.Identity(name="i"), L.ReLU(), merge=None), L.Concat())
    out, params = net.init(KEY, (2, 3, 3, 4))
    assert out == (2, 3, 3, 8)
    with pytest.raises(ShapeError, match="tuple of inputs"):
        L.Sum().init(KEY, (2, 3))


# -- Residual and blocks -------------------------------------------------------

def test_residual_identity_and_projection():
    body = L.Serial(L.Dense(4), L.ReLU(), L.Dense(4))
    res = L.Residual(body)
    out, params = res.init(KEY, (2, 4))
    x = jax.random.normal(KEY, (2, 4))
    np.testing.assert_allclose(res.apply(params, x), body.apply(params["body"], x) + x, rtol=1e-6)
    with pytest.raises(ShapeError, match="projection shortcut"):
        L.Residual(L.Dense(6)).init(KEY, (2, 4))
    proj = L.Residual(L.Dense(6), L.Dense(6), projection="auto")
    out, params = proj.init(KEY, (2, 4))
    assert out == (2, 6) and set(params) == {"body", "shortcut"}
    same = L.Residual(L.Dense(4), L.Dense(4), projection="auto")
    assert set(same.init(KEY, (2, 4))[1]) == {"body"}


@pytest.mark.slow
def test_basic_block_param_counts_and_shapes():
    out, params, state = L.BasicBlock(64).init(KEY, (1, 8, 8, 64))
    assert out == (1, 8, 8, 64) and "shortcut" not in params
    assert n_params(params) == 2 * 64 * 64 * 9 + 2 * 2 * 64  # 73,984
    out, params, state = L.BasicBlock(128, stride=2).init(KEY, (1, 8, 8, 64))
    assert out == (1, 4, 4, 128)
    assert n_params(params) == 230_144  # torchvision resnet18.layer2[0]
    assert paths(state)[:2] == ["body/bn1/mean", "body/bn1/var"]


@pytest.mark.slow
def test_bottleneck_param_counts_and_shapes():
    out, params, _ = L.Bottleneck(64).init(KEY, (1, 8, 8, 64))
    assert out == (1, 8, 8, 256)
    assert n_params(params) == 75_008  # torchvision resnet50.layer1[0]
    out, params, _ = L.Bottleneck(128, stride=2).init(KEY, (1, 8, 8, 256))
    assert out == (1, 4, 4, 512)
    assert n_params(params) == 379_392  # torchvision resnet50.layer2[0]
    with pytest.raises(ConfigError, match="stride"):
        L.Bottleneck(64, stride=0)


@pytest.mark.slow
def test_basic_block_matches_manual_composition():
    block = L.BasicBlock(8, stride=2)
    out, params, state = block.init(KEY, (2, 6, 6, 4))
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 4))
    y, new_state = block.apply(params, x, state=state, train=True)

    def bn(h):
        mean = h.mean(axis=(0, 1, 2), keepdims=True)
        var = h.var(axis=(0, 1, 2), keepdims=True)
        return (h - mean) / jnp.sqrt(var + 1e-5)  # scale 1, bias 0 at init

    b = params["body"]
    h = jax.nn.relu(bn(F.conv(x, b["conv1"]["w"], stride=2, padding=1)))
    h = bn(F.conv(h, b["conv2"]["w"], padding=1))
    sc = bn(F.conv(x, params["shortcut"]["conv"]["w"], stride=2))
    np.testing.assert_allclose(y, jax.nn.relu(h + sc), rtol=1e-4, atol=1e-4)
    assert y.shape == out
    assert not np.allclose(new_state["body"]["bn1"]["mean"], state["body"]["bn1"]["mean"])


# -- Graph: any DAG, weight sharing ------------------------------------------

def siamese():
    enc = L.Serial(L.Dense(6), L.Tanh(), L.Dense(3))
    return L.Graph(inputs=("a", "b"), outputs="d", nodes=[
        L.Node("left", enc, "a"),
        L.Node("right", enc, "b", share="left"),
        L.Node("d", L.Concat(), ("left", "right")),
    ])


def test_graph_weight_sharing_one_subtree():
    net = siamese()
    out, params = net.init(KEY, ((4, 5), (4, 5)))
    assert out == (4, 6)
    assert set(params) == {"left"}
    xa, xb = jax.random.normal(KEY, (2, 4, 5))
    y = net.apply(params, (xa, xb))
    enc = net.nodes[0].layer
    np.testing.assert_allclose(y[:, :3], enc.apply(params["left"], xa), rtol=1e-6)
    np.testing.assert_allclose(y[:, 3:], enc.apply(params["left"], xb), rtol=1e-6)


def test_graph_shared_gradient_is_sum_over_uses():
    net = siamese()
    _, params = net.init(KEY, ((4, 5), (4, 5)))
    enc = net.nodes[0].layer
    xa, xb = jax.random.normal(KEY, (2, 4, 5))
    t = jax.random.normal(jax.random.key(3), (4, 6))

    def shared_loss(p):
        return jnp.sum((net.apply(p, (xa, xb)) - t) ** 2)

    def untied_loss(p1, p2):  # the same function with the two uses' parameters untied
        y = jnp.concatenate([enc.apply(p1, xa), enc.apply(p2, xb)], axis=-1)
        return jnp.sum((y - t) ** 2)

    g = jax.grad(shared_loss)(params)["left"]
    g1, g2 = jax.grad(untied_loss, argnums=(0, 1))(params["left"], params["left"])
    for a, b1, b2 in zip(*(jax.tree_util.tree_leaves(t_) for t_ in (g, g1, g2))):
        np.testing.assert_allclose(a, b1 + b2, rtol=1e-5, atol=1e-6)
        assert not np.allclose(b1, 0) and not np.allclose(b2, 0)


def test_graph_multi_output_and_skip_connections():
    net = L.Graph(inputs="x", outputs=("h", "y"), nodes=[
        L.Node("h", L.Dense(4), "x"),
        L.Node("r", L.ReLU(), "h"),
        L.Node("s", L.Sum(), ("r", "h")),
        L.Node("y", L.Dense(2), "s"),
    ])
    out, params = net.init(KEY, (3, 5))
    assert out == ((3, 4), (3, 2))
    x = jax.random.normal(KEY, (3, 5))
    h, y = jax.jit(net.apply)(params, x)
    hh = dense(params["h"], x)
    np.testing.assert_allclose(h, hh, rtol=1e-6)
    np.testing.assert_allclose(y, dense(params["y"], jax.nn.relu(hh) + hh),
                               rtol=1e-5, atol=1e-6)


def test_graph_config_errors():
    with pytest.raises(ConfigError, match="reads 'zz'"):
        L.Graph("x", [L.Node("a", L.Dense(2), "zz")], "a")
    with pytest.raises(ConfigError, match="not an earlier node"):
        L.Graph("x", [L.Node("a", L.Dense(2), "x", share="b"), L.Node("b", L.Dense(2), "x")], "b")
    with pytest.raises(ConfigError, match="used twice"):
        L.Graph("x", [L.Node("a", L.Dense(2), "x"), L.Node("a", L.Dense(2), "x")], "a")
    with pytest.raises(ConfigError, match="output 'q'"):
        L.Graph("x", [L.Node("a", L.Dense(2), "x")], "q")
    bad = L.Graph("x", [L.Node("a", L.Dense(2), "x"), L.Node("b", L.Dense(2), "a", share="a")], "b")
    with pytest.raises(ShapeError, match="shares parameters with 'a'"):
        bad.init(KEY, (1, 5))


@pytest.mark.slow
def test_higher_order_grad_through_dag():
    net = L.Residual(L.Serial(L.Dense(3), L.Tanh(), L.Dense(3)))
    _, params = net.init(KEY, (2, 3))
    x = jax.random.normal(KEY, (2, 3))

    def f(p):
        return jnp.sum(net.apply(p, x) ** 2)

    # Hessian-vector product (forward over reverse) equals the finite difference of gradients.
    v = jax.tree_util.tree_map(jnp.ones_like, params)
    hvp = jax.jvp(jax.grad(f), (params,), (v,))[1]
    eps = 1e-3
    shift = lambda s: jax.tree_util.tree_map(lambda p, d: p + s * d, params, v)
    fd = jax.tree_util.tree_map(lambda a, b: (a - b) / (2 * eps), jax.grad(f)(shift(eps)), jax.grad(f)(shift(-eps)))
    for a, b in zip(jax.tree_util.tree_leaves(hvp), jax.tree_util.tree_leaves(fd)):
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2)


def test_names_are_validated_and_snake_case_by_default():
    assert L.Sum().name == "sum" and L.Serial(L.Dense(2)).name == "serial"
    for make in (lambda: L.Serial(L.Dense(2), name="a/b"), lambda: L.Sum(name=""),
                 lambda: L.Dense(2, name="x/y")):
        with pytest.raises(ConfigError, match="name must be a non-empty string"):
            make()

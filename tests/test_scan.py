"""Serial(scan=True): runs of identical layers as one lax.scan, same params and results."""
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import fundl.layers as L
from fundl import ConfigError, models

KEY = jax.random.key(0)


def count_scans(fn, *args):
    """Number of scan equations in the jaxpr of ``fn`` (nested jaxprs included) and their lengths."""
    lengths = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "scan":
                lengths.append(eqn.params["length"])
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return lengths


def block(name=None):
    return L.Residual(L.Serial(L.Dense(8), L.Tanh(), L.Dense(8)), name=name or "block")


def allclose(a, b, tol=1e-6):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


@pytest.mark.slow
def test_runs_of_copies_become_one_scan_with_the_same_params_values_and_grads():
    layers = [L.Dense(8, name="inp"), *[block() for _ in range(4)], L.Dense(3, name="out")]
    plain, scanned = L.Serial(*layers), L.Serial(*layers, scan=2)
    _, params = plain.init(KEY, (5, 6))
    _, params_s = scanned.init(KEY, (5, 6))
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(params_s)
    assert sorted(params) == ["block1", "block2", "block3", "block4", "inp", "out"]
    x = jax.random.normal(KEY, (5, 6))
    assert count_scans(lambda p: scanned.apply(p, x), params) == [4]
    assert count_scans(lambda p: plain.apply(p, x), params) == []
    allclose(scanned.apply(params, x), plain.apply(params, x))
    loss = lambda net: lambda p: jnp.sum(net.apply(p, x) ** 2)  # noqa: E731
    g, g_s = jax.grad(loss(plain))(params), jax.grad(loss(scanned))(params)
    allclose(g_s, g)
    # every block has its own gradient (the stacked parameters are not tied)
    assert not np.allclose(g_s["block1"]["body"]["dense1"]["w"], g_s["block4"]["body"]["dense1"]["w"])
    # forward mode and jit work through the scan too
    v = jax.tree_util.tree_map(jnp.ones_like, params)
    allclose(jax.jvp(loss(scanned), (params,), (v,))[1], jax.jvp(loss(plain), (params,), (v,))[1],
             tol=1e-5)
    allclose(jax.jit(scanned.apply)(params, x), plain.apply(params, x))


def test_layers_that_differ_are_not_scanned():
    # different widths (signatures differ) and a shape-changing copy run as usual
    net = L.Serial(L.Dense(8), L.Dense(8), L.Dense(4), L.Dense(4), scan=2)
    _, p = net.init(KEY, (2, 3))
    x = jnp.ones((2, 3))
    # Dense(8) on a 3-feature input changes the shape, its copy on 8 features
    # does not: the first pair differs in parameter shapes, the second is scanned
    assert count_scans(lambda p: net.apply(p, x), p) == []
    same = L.Serial(L.Dense(4, name="a"), L.Dense(4), L.Dense(4), L.Dense(4), scan=2)
    _, p = same.init(KEY, (2, 4))
    assert count_scans(lambda p: same.apply(p, jnp.ones((2, 4))), p) == [4]
    plain = L.Serial(L.Dense(4, name="a"), L.Dense(4), L.Dense(4), L.Dense(4))
    allclose(same.apply(p, jnp.ones((2, 4))), plain.apply(p, jnp.ones((2, 4))))


@pytest.mark.slow
def test_state_and_dropout_keys_match_the_unscanned_chain():
    def bn_block():
        return L.Residual(L.Serial(L.Dense(6), L.BatchNorm(), L.ReLU(), L.Dropout(0.3)))
    layers = [bn_block() for _ in range(3)]
    plain, scanned = L.Serial(*layers), L.Serial(*layers, scan=3)
    _, params, state = plain.init(KEY, (7, 6))
    x = jax.random.normal(KEY, (7, 6))
    k = jax.random.key(3)
    y, s = plain.apply(params, x, state=state, key=k, train=True)
    y_s, s_s = scanned.apply(params, x, state=state, key=k, train=True)
    assert jax.tree_util.tree_structure(s_s) == jax.tree_util.tree_structure(s)
    allclose(y_s, y)
    allclose(s_s, s)
    # eval mode (running statistics, no dropout, no key)
    allclose(scanned.apply(params, x, state=s)[0], plain.apply(params, x, state=s)[0])


@pytest.mark.slow
def test_resnet_scan_same_tree_and_outputs_fewer_traced_blocks():
    kw = dict(num_classes=10, stem="cifar")
    plain, scanned = models.resnet34(**kw), models.resnet34(**kw, scan=2)
    _, params, state = plain.init(KEY, (2, 32, 32, 3))
    x = jax.random.normal(KEY, (2, 32, 32, 3))
    # layer1: blocks 1-3 (no projection); layer2..4: all but the strided first block
    assert count_scans(lambda p: scanned.apply(p, x, state=state, train=True), params) == [3, 3, 5, 2]
    y, s = plain.apply(params, x, state=state, train=True)
    y_s, s_s = scanned.apply(params, x, state=state, train=True)
    allclose(y_s, y, tol=2e-5)
    allclose(s_s, s, tol=2e-5)


def test_copies_without_parameters_scan_too():
    net = L.Serial(L.Dense(4), L.Tanh(), L.Tanh(), L.Tanh(), scan=2)
    _, p = net.init(KEY, (2, 4))
    x = jnp.linspace(-2, 2, 8).reshape(2, 4)
    assert count_scans(lambda p: net.apply(p, x), p) == [3]
    allclose(net.apply(p, x), jnp.tanh(jnp.tanh(jnp.tanh(x @ p["dense"]["w"] + p["dense"]["b"][None, :]))))


def test_scan_true_means_stretches_of_at_least_eight():
    blocks = [block() for _ in range(7)]
    x = jnp.ones((2, 8))
    for n, expected in ((7, []), (8, [8])):
        net = L.Serial(*blocks[:1] * n, scan=True)
        _, p = net.init(KEY, (2, 8))
        assert count_scans(lambda p: net.apply(p, x), p) == expected
    # ResNet-50's stages have 2-5 repeated blocks: nothing to scan; ResNet-101's third has 22
    net = L.Serial(*[block() for _ in range(5)], scan=5)
    _, p = net.init(KEY, (2, 8))
    assert count_scans(lambda p: net.apply(p, x), p) == [5]


def test_scan_argument_is_checked():
    for bad in ("yes", 1, 0, 2.0):
        with pytest.raises(ConfigError, match=f"Serial 'serial': scan must be True, False or an int >= 2 "
                                              rf".*got scan={bad!r}"):
            L.Serial(L.Dense(2), scan=bad)
    with pytest.raises(ConfigError, match="resnet 'resnet18': scan must be True, False or an int"):
        models.resnet18(scan=1)

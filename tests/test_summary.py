"""fundl.summary: per-layer table from shapes alone, exact totals."""
import jax
import numpy as np
import pytest

import fundl
import fundl.layers as L
from fundl import models


def test_convnet_mnist_totals_and_rows():
    s = fundl.summary(models.convnet_mnist(), (1, 28, 28, 1))
    assert s.total_params == 105_506
    assert s.total_macs == 1_333_200
    assert s.output_shape == (1, 10)
    by_path = {r.path: r for r in s.rows}
    assert by_path["conv1"].output_shape == (1, 24, 24, 32)
    assert by_path["conv1"].params == 832 and by_path["conv1"].macs == 32 * 24 * 24 * 25
    assert by_path["conv2"].macs == 64 * 4 * 4 * 32 * 25
    assert sum(r.params for r in s.rows) == s.total_params
    # Pooling and activations cost no MACs.
    assert all(r.macs == 0 for r in s.rows if not isinstance(r.layer, (L.Conv, L.Dense)))
    text = str(s)
    assert "total params: 105,506" in text and "total MACs: 1,333,200" in text
    assert "conv2" in text and "(1, 4, 4, 64)" in text


def test_macs_scale_with_batch_and_groups():
    one = fundl.summary(models.convnet_mnist(), (1, 28, 28, 1)).total_macs
    assert fundl.summary(models.convnet_mnist(), (4, 28, 28, 1)).total_macs == 4 * one
    s = fundl.summary(L.Conv(8, 3, groups=4), (1, 10, 10, 8))
    assert s.total_macs == 8 * 8 * 8 * (8 // 4) * 9


def test_summary_materialises_nothing_on_a_big_model():
    # VGG-16 has 138M parameters; summary must run abstractly and quickly.
    s = fundl.summary(models.vgg16(), (1, 224, 224, 3))
    assert s.total_params == 138_357_544
    assert s.total_macs == 15_470_264_320  # torchvision-style count (convs + dense)


def test_shared_parameters_counted_once():
    enc = L.Serial(L.Dense(6), L.ReLU(), L.Dense(3))
    net = L.Graph(inputs=("a", "b"), outputs="d", nodes=[
        L.Node("left", enc, "a"), L.Node("right", enc, "b", share="left"),
        L.Node("d", L.Concat(), ("left", "right"))])
    s = fundl.summary(net, ((2, 5), (2, 5)))
    assert s.total_params == 5 * 6 + 6 + 6 * 3 + 3
    assert sum(r.params for r in s.rows) == s.total_params
    shared = [r for r in s.rows if r.shared]
    assert {r.path for r in shared} == {"right/dense1", "right/dense2", "right/relu"}
    assert s.total_macs == 2 * 2 * (5 * 6 + 6 * 3)
    assert "shared" in str(s)


def test_summary_agrees_with_init():
    net = models.resnet18(num_classes=10, stem="cifar")
    s = fundl.summary(net, (2, 32, 32, 3))
    params = jax.eval_shape(lambda k: net.init_with_state(k, (2, 32, 32, 3))[1], jax.random.key(0))
    assert s.total_params == sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
    assert s.output_shape == (2, 10)


def test_summary_rejects_non_layers():
    with pytest.raises(fundl.ConfigError, match="Layer"):
        fundl.summary(lambda x: x, (1, 2))

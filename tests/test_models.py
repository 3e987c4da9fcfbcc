"""The model zoo: exact parameter counts, shapes, forward passes, torch parity,
convolutionize and the dilated context module."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fundl.functional as F
import fundl.layers as L
from fundl import ConfigError, ShapeError, models

KEY = jax.random.key(0)
IMAGENET = (1, 224, 224, 3)
MNIST = (1, 28, 28, 1)


def abstract_init(model, shape):
    """(out_shape, params, state) with ShapeDtypeStructs: no weights are materialised."""
    box = {}

    def f(k):
        box["out"], p, s = model.init_with_state(k, shape)
        return p, s

    params, state = jax.eval_shape(f, KEY)
    return box["out"], params, state


def n_params(tree):
    return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(tree))


def paths(tree):
    return ["/".join(str(k.key) for k in path)
            for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def real_init(model, shape, rng):
    """Real (NumPy-random) params and state of the right shapes.

    Filled from NumPy rather than by ``model.init``: eager jax.random compiles
    one XLA program per parameter shape, which would dominate this file's runtime.
    Scales keep activations O(1); running variances and BN scales are positive.
    """
    _, params, state = abstract_init(model, shape)

    def fill(path, s):
        name = path[-1].key
        if name == "w":
            bound = 1 / math.sqrt(math.prod(s.shape[:-1]))
            value = rng.uniform(-bound, bound, s.shape)
        elif name in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, s.shape)
        else:  # biases, running means
            value = rng.uniform(-0.1, 0.1, s.shape)
        return jnp.asarray(value, s.dtype)

    return (jax.tree_util.tree_map_with_path(fill, params),
            jax.tree_util.tree_map_with_path(fill, state))


def run(model, params, state, x, **kw):
    return model.apply_with_state(params, state, x, **kw)


# (id, builder, input shape, exact parameter count, output shape for batch 1)
ZOO = [
    ("mlp", lambda: models.mlp((256, 10)), MNIST, 203_530, (1, 10)),
    ("convnet_mnist", models.convnet_mnist, MNIST, 105_506, (1, 10)),
    ("lenet5", models.lenet5, MNIST, 61_706, (1, 10)),
    ("lenet5_relu", lambda: models.lenet5(activation="relu"), MNIST, 61_706, (1, 10)),
    ("alexnet", models.alexnet, IMAGENET, 61_100_840, (1, 1000)),
    ("vgg11", models.vgg11, IMAGENET, 132_863_336, (1, 1000)),
    ("vgg11_bn", lambda: models.vgg11(batch_norm=True), IMAGENET, 132_868_840, (1, 1000)),
    ("vgg13", models.vgg13, IMAGENET, 133_047_848, (1, 1000)),
    ("vgg13_bn", lambda: models.vgg13(batch_norm=True), IMAGENET, 133_053_736, (1, 1000)),
    ("vgg16", models.vgg16, IMAGENET, 138_357_544, (1, 1000)),
    ("vgg16_bn", lambda: models.vgg16(batch_norm=True), IMAGENET, 138_365_992, (1, 1000)),
    ("vgg19", models.vgg19, IMAGENET, 143_667_240, (1, 1000)),
    ("vgg19_bn", lambda: models.vgg19(batch_norm=True), IMAGENET, 143_678_248, (1, 1000)),
    ("resnet18", models.resnet18, IMAGENET, 11_689_512, (1, 1000)),
    ("resnet34", models.resnet34, IMAGENET, 21_797_672, (1, 1000)),
    ("resnet50", models.resnet50, IMAGENET, 25_557_032, (1, 1000)),
    ("resnet101", models.resnet101, IMAGENET, 44_549_160, (1, 1000)),
    ("resnet152", models.resnet152, IMAGENET, 60_192_808, (1, 1000)),
    ("resnet18_cifar", lambda: models.resnet18(10, stem="cifar"), (1, 32, 32, 3), 11_173_962,
     (1, 10)),
    ("context_module", lambda: models.context_module(8), (1, 16, 16, 8), 4_160, (1, 16, 16, 8)),
]


# -- the zoo table: counts and shapes -------------------------------------------

@pytest.mark.parametrize("build, shape, count", [z[1:4] for z in ZOO], ids=[z[0] for z in ZOO])
def test_parameter_count(build, shape, count):
    params = jax.eval_shape(lambda k: build().init_with_state(k, shape)[1], KEY)
    assert n_params(params) == count


@pytest.mark.slow
@pytest.mark.parametrize("build, shape, out", [z[1:3] + z[4:] for z in ZOO],
                         ids=[z[0] for z in ZOO])
def test_output_shape(build, shape, out):
    # The shape init promises equals the shape apply produces (traced, batch 2).
    model = build()
    shape2 = (2,) + shape[1:]
    promised, params, state = abstract_init(model, shape2)
    x = jax.ShapeDtypeStruct(shape2, jnp.float32)
    y = jax.eval_shape(lambda p, s, x: run(model, p, s, x)[0], params, state, x)
    assert promised == y.shape == (2,) + out[1:]


def test_parameter_names():
    p = abstract_init(models.vgg11(batch_norm=True), IMAGENET)[1]
    assert {"features/conv1/w", "features/bn1/scale", "classifier/fc1/w",
            "classifier/fc3/b"} <= set(paths(p))
    p = abstract_init(models.resnet50(), IMAGENET)[1]
    assert {"conv1/w", "bn1/scale", "layer1/block1/body/conv3/w", "layer1/block1/shortcut/conv/w",
            "layer2/block1/shortcut/bn/bias", "fc/w"} <= set(paths(p))
    assert "layer1/block2/shortcut/conv/w" not in paths(p)
    p = abstract_init(models.alexnet(), IMAGENET)[1]
    assert p["features"]["conv1"]["w"].shape == (11, 11, 3, 64)
    assert p["classifier"]["fc1"]["w"].shape == (6 * 6 * 256, 4096)


def test_resnet_stems_and_general_builder():
    out, p, _ = abstract_init(models.resnet18(stem="cifar"), (1, 32, 32, 3))
    assert p["conv1"]["w"].shape == (3, 3, 3, 64) and "b" not in p["conv1"]
    assert abstract_init(models.resnet18(), IMAGENET)[1]["conv1"]["w"].shape == (7, 7, 3, 64)
    # The general builder with a block constructor gives the same model as resnet18.
    net = models.resnet(L.BasicBlock, (2, 2, 2, 2), 10, stem="cifar")
    assert n_params(abstract_init(net, (1, 32, 32, 3))[1]) == 11_173_962
    with pytest.raises(ConfigError, match="stem"):
        models.resnet18(stem="tiny")
    with pytest.raises(ConfigError, match="block"):
        models.resnet("wide", (2, 2))


def test_builders_reject_bad_arguments():
    with pytest.raises(ConfigError, match="features"):
        models.mlp(10)
    with pytest.raises(ConfigError, match="dropout"):
        models.mlp((4, 2), dropout=1.5)
    with pytest.raises(ConfigError, match="activation"):
        models.lenet5(activation="swish")
    with pytest.raises(ConfigError, match="config"):
        models.vgg("Z")
    with pytest.raises(ConfigError, match="num_classes"):
        models.alexnet(0)
    with pytest.raises(ConfigError, match="init"):
        models.context_module(4, init="zeros")


# -- forward passes on real arrays -------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("build", [lambda: models.mlp((32, 16, 10), dropout=0.5),
                                   models.convnet_mnist, models.lenet5],
                         ids=["mlp", "convnet_mnist", "lenet5"])
def test_forward_small(build, rng):
    model = build()
    params, state = real_init(model, (4, 28, 28, 1), rng)
    x = jnp.asarray(rng.standard_normal((4, 28, 28, 1)), jnp.float32)
    y = model.apply(params, x)
    assert y.shape == (4, 10) and bool(jnp.all(jnp.isfinite(y)))
    y_train = model.apply(params, x, key=jax.random.key(1), train=True)
    assert y_train.shape == (4, 10)


@pytest.mark.slow
def test_mlp_structure_and_activations(rng):
    net = models.mlp((8, 6, 3), dropout=0.25, name="m")
    assert [type(c) for c in net.layers] == [
        L.Flatten, L.Dense, L.ReLU, L.Dropout, L.Dense, L.ReLU, L.Dropout, L.Dense]
    x = jnp.asarray(rng.standard_normal((5, 4)), jnp.float32)
    params = real_init(net, (5, 4), rng)[0]
    # Dropout only acts in training.
    assert not np.allclose(net.apply(params, x, key=jax.random.key(1), train=True),
                           net.apply(params, x))
    h = x
    for i, name in enumerate(["dense1", "dense2", "dense3"]):
        h = h @ params[name]["w"] + params[name]["b"][None]
        h = jax.nn.relu(h) if i < 2 else h
    np.testing.assert_allclose(net.apply(params, x), h, rtol=1e-5, atol=1e-6)
    # Every spelling of an activation; a plain function becomes a Lambda layer.
    for act, kind in [(L.GELU, L.GELU), ("tanh", L.Tanh), (L.Tanh(), L.Tanh),
                      (jnp.sin, L.Lambda), (None, None)]:
        kinds = [type(c) for c in models.mlp((4, 2), activation=act, flatten=False).layers]
        assert kinds == ([L.Dense, kind, L.Dense] if kind else [L.Dense, L.Dense])
    net = models.mlp((4, 2), activation=jnp.sin, flatten=False)
    p = real_init(net, (5, 4), rng)[0]
    np.testing.assert_allclose(
        net.apply(p, x), jnp.sin(x @ p["dense1"]["w"] + p["dense1"]["b"][None])
        @ p["dense2"]["w"] + p["dense2"]["b"][None], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_resnet18_cifar_train_and_eval(rng):
    model = models.resnet18(10, stem="cifar")
    assert model.stateful
    params, state = real_init(model, (2, 32, 32, 3), rng)
    x = jnp.asarray(rng.standard_normal((2, 32, 32, 3)), jnp.float32)
    apply = jax.jit(model.apply_with_state, static_argnames="train")
    y, new_state = apply(params, state, x, train=True)
    assert y.shape == (2, 10) and bool(jnp.all(jnp.isfinite(y)))
    assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
    changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), state, new_state)
    assert all(jax.tree_util.tree_leaves(changed))  # every running statistic moved
    y_eval, eval_state = apply(params, new_state, x, train=False)
    assert y_eval.shape == (2, 10) and bool(jnp.all(jnp.isfinite(y_eval)))
    for a, b in zip(jax.tree_util.tree_leaves(eval_state), jax.tree_util.tree_leaves(new_state)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match="state"):
        model.apply(params, x)


# -- parity with a PyTorch reference -----------------------------------------------

@pytest.mark.slow
def test_convnet_mnist_matches_torch(rng):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(1, 32, 5), nn.MaxPool2d(3), nn.ReLU(),
                        nn.Conv2d(32, 64, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
                        nn.Linear(256, 200), nn.ReLU(), nn.Linear(200, 10)).eval()
    assert sum(p.numel() for p in ref.parameters()) == 105_506

    def t(a):
        return jnp.asarray(a.detach().numpy())

    c1, c2, f1, f2 = ref[0], ref[3], ref[7], ref[9]
    params = {
        "conv1": {"w": t(c1.weight.permute(2, 3, 1, 0)), "b": t(c1.bias)},
        "conv2": {"w": t(c2.weight.permute(2, 3, 1, 0)), "b": t(c2.bias)},
        # torch flattens (C, H, W), fundl (H, W, C): permute the inputs of fc1.
        "fc1": {"w": t(f1.weight.reshape(200, 64, 2, 2).permute(2, 3, 1, 0).reshape(256, 200)),
                "b": t(f1.bias)},
        "fc2": {"w": t(f2.weight.T), "b": t(f2.bias)},
    }
    model = models.convnet_mnist()
    expected = jax.tree_util.tree_map(lambda a: a.shape, abstract_init(model, MNIST)[1])
    assert jax.tree_util.tree_map(lambda a: a.shape, params) == expected
    x = rng.standard_normal((3, 28, 28, 1)).astype(np.float32)
    with torch.no_grad():
        y_ref = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(model.apply(params, jnp.asarray(x)), y_ref, rtol=1e-4, atol=1e-5)


# -- convolutionize ----------------------------------------------------------------------

def tiny_vgg(padding=1, batch_norm=True):
    """A VGG-like net with nested 'features' and 'classifier' Serials, for 16x16 inputs."""
    bn = [L.BatchNorm(name="bn1")] if batch_norm else []
    features = L.Serial(L.Conv(4, 3, padding=padding, name="conv1"), *bn, L.ReLU(), L.MaxPool(2),
                        L.Conv(6, 3, stride=2 - padding, padding=padding, name="conv2"), L.ReLU(),
                        name="features")
    pool = 8 if padding else 3  # the size the features give at 16x16: an identity pool
    classifier = L.Serial(L.Dropout(0.5), L.Dense(12, name="fc1"), L.ReLU(), L.Dropout(0.5),
                          L.Dense(7, name="fc2"), L.LogSoftmax(axis=1), name="classifier")
    return L.Serial(features, L.AdaptiveAvgPool(pool, name="avgpool"), L.Flatten(), classifier,
                    name="tiny_vgg")


@pytest.mark.slow
@pytest.mark.parametrize("build, shape", [
    (models.convnet_mnist, (3, 28, 28, 1)),
    (models.lenet5, (3, 28, 28, 1)),
    (lambda: models.mlp((16, 10)), (3, 28, 28, 1)),
    (tiny_vgg, (3, 16, 16, 3)),
], ids=["convnet_mnist", "lenet5", "mlp", "tiny_vgg_nested"])
def test_convolutionize_same_output_at_original_size(build, shape, rng):
    model = build()
    params, state = real_init(model, shape, rng)
    conv_model, convert = models.convolutionize(model, shape)
    conv_params = convert(params)
    kinds = [type(c) for c in conv_model.layers]
    assert L.Flatten not in kinds and L.AdaptiveAvgPool not in kinds
    # Same keys: only the dense weights change shape, the state carries over.
    assert sorted(paths(conv_params)) == sorted(paths(params))
    out_shape, p_shapes, _ = abstract_init(conv_model, shape)
    assert jax.tree_util.tree_map(lambda a: a.shape, p_shapes) == \
        jax.tree_util.tree_map(lambda a: a.shape, conv_params)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    y, _ = run(model, params, state, x)
    y_map, _ = run(conv_model, conv_params, state, x)
    assert y_map.shape == out_shape == (shape[0], 1, 1, y.shape[-1])
    np.testing.assert_allclose(y_map.reshape(y.shape), y, rtol=1e-4, atol=1e-5)


def test_convolutionize_weights(rng):
    model = models.convnet_mnist()
    params = real_init(model, MNIST, rng)[0]
    conv_model, convert = models.convolutionize(model, MNIST)
    cp = convert(params)
    assert cp["fc1"]["w"].shape == (2, 2, 64, 200)
    assert cp["fc2"]["w"].shape == (1, 1, 200, 10)
    # NHWC flatten order: row (h * W + w) * C + c of the dense weight is kernel tap [h, w, c].
    np.testing.assert_array_equal(cp["fc1"]["w"][1, 0, 5], params["fc1"]["w"][(1 * 2 + 0) * 64 + 5])
    assert cp["conv1"] is params["conv1"]
    # Works on abstract params too.
    abstract = jax.eval_shape(lambda k: model.init(k, MNIST)[1], KEY)
    assert convert(abstract)["fc1"]["w"].shape == (2, 2, 64, 200)
    with pytest.raises(ShapeError, match="fc1"):
        convert({**params, "fc1": {"w": jnp.zeros((3, 200)), "b": jnp.zeros(200)}})


def crops_agree(model, params, state, conv_model, conv_params, x, size, stride):
    """Entry [i, j] of the map == the original model on the crop at (i*stride, j*stride)."""
    y_map, _ = run(conv_model, conv_params, state, x)
    n, h, w, k = y_map.shape
    assert h > 1 and w > 1
    assert (h - 1) * stride + size <= x.shape[1] and (w - 1) * stride + size <= x.shape[2]
    crops = jnp.stack([x[:, i * stride:i * stride + size, j * stride:j * stride + size]
                       for i in range(h) for j in range(w)], axis=1)
    y, _ = run(model, params, state, crops.reshape((n * h * w, size, size, x.shape[-1])))
    np.testing.assert_allclose(y_map, y.reshape((n, h, w, k)), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_convolutionize_larger_input_is_a_map_of_crops(rng):
    model = models.convnet_mnist()
    params = real_init(model, MNIST, rng)[0]
    conv_model, convert = models.convolutionize(model, MNIST)
    # Total stride 3 * 2 = 6: 40x40 -> 36 -> 12 -> 8 -> 4 -> 3x3 predictions.
    x = jnp.asarray(rng.standard_normal((2, 40, 40, 1)), jnp.float32)
    assert abstract_init(conv_model, x.shape)[0] == (2, 3, 3, 10)
    crops_agree(model, params, {}, conv_model, convert(params), x, 28, 6)


@pytest.mark.slow
def test_convolutionize_nested_strided_net_on_crops(rng):
    # No padding, a strided conv and a pool: stride 2 * 2 = 4; 16 -> 14 -> 7 -> 3 (x 6 ch).
    model = tiny_vgg(padding=0)
    shape = (1, 16, 16, 3)
    params, state = real_init(model, shape, rng)
    conv_model, convert = models.convolutionize(model, shape)
    x = jnp.asarray(rng.standard_normal((2, 28, 24, 3)), jnp.float32)
    out = abstract_init(conv_model, x.shape)[0]
    assert out == (2, 4, 3, 7)  # (28 - 16) / 4 + 1, (24 - 16) / 4 + 1
    crops_agree(model, params, state, conv_model, convert(params), x, 16, 4)


def test_convolutionize_big_models_abstractly():
    # AlexNet's 6x6 and VGG's 7x7 adaptive pools are identities at 224x224.
    for build, size, out in [(models.alexnet, 256, (1, 2, 2, 1000)),
                             (models.vgg11, 256, (1, 2, 2, 1000))]:
        model = build()
        conv_model, convert = models.convolutionize(model, IMAGENET)
        _, params, state = abstract_init(model, IMAGENET)
        cp = jax.eval_shape(convert, params)
        x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
        y = jax.eval_shape(lambda p, s, x: run(conv_model, p, s, x)[0], cp, state, x)
        assert y.shape == out
    assert cp["classifier"]["fc1"]["w"].shape == (7, 7, 512, 4096)


def test_convolutionize_errors():
    # ResNet's global pool really averages a 1x1-or-larger map: not convertible.
    with pytest.raises(ConfigError, match="no Flatten -> Dense head"):
        models.convolutionize(models.resnet18(10, stem="cifar"), (1, 32, 32, 3))
    with pytest.raises(ConfigError, match="not an identity"):
        models.convolutionize(models.alexnet(), (1, 256, 256, 3))
    with pytest.raises(ConfigError, match="no Flatten -> Dense head"):
        models.convolutionize(L.Serial(L.Conv(4, 3), L.ReLU()), (1, 8, 8, 1))
    with pytest.raises(ConfigError, match="no spatial dims"):
        models.convolutionize(models.mlp((4, 2)), (1, 10))
    with pytest.raises(ConfigError, match="not followed by a Dense"):
        models.convolutionize(L.Serial(L.Conv(4, 3), L.Flatten()), (1, 8, 8, 1))
    with pytest.raises(ConfigError, match="LayerNorm"):
        models.convolutionize(L.Serial(L.Flatten(), L.Dense(4), L.LayerNorm(), L.Dense(2)),
                              (1, 4, 4, 1))
    with pytest.raises(ConfigError, match="Serial"):
        models.convolutionize(L.Dense(3), (1, 4))


@pytest.mark.slow
def test_convolutionize_global_pool_over_1x1_acts_as_flatten(rng):
    # ImageNet-stem ResNet on a 32x32 input ends on a 1x1 map: its pool is a reshape.
    model = models.resnet("basic", (1, 1, 1, 1), 5)
    shape = (2, 32, 32, 3)
    params, state = real_init(model, shape, rng)
    conv_model, convert = models.convolutionize(model, shape)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    y, _ = run(model, params, state, x)
    y_map, _ = run(conv_model, convert(params), state, x)
    np.testing.assert_allclose(y_map.reshape(y.shape), y, rtol=1e-4, atol=1e-5)


# -- context module ----------------------------------------------------------------------

@pytest.mark.slow
def test_context_module_shape_and_identity_init(rng):
    ctx = models.context_module(3)
    assert [type(c) for c in ctx.layers].count(L.Conv) == 8
    out, params = ctx.init(KEY, (2, 20, 17, 3))
    assert out == (2, 20, 17, 3)
    assert params["conv2"]["w"].shape == (3, 3, 3, 3) and params["conv8"]["w"].shape == (1, 1, 3, 3)
    # Identity init: every conv passes its input through, so the module is relu(x).
    x = jnp.asarray(rng.standard_normal((2, 20, 17, 3)), jnp.float32)
    np.testing.assert_array_equal(ctx.apply(params, x), jax.nn.relu(x))
    # Random init keeps the shape, and is not the identity.
    rand = models.context_module(3, init="random")
    p = rand.init(KEY, x.shape)[1]
    y = rand.apply(p, x)
    assert y.shape == x.shape and not np.allclose(y, jax.nn.relu(x))
    with pytest.raises(ShapeError, match=r"\[N, H, W, 3\]"):
        ctx.init(KEY, (2, 20, 17, 4))


@pytest.mark.slow
def test_context_module_receptive_field():
    dilations = (1, 1, 2, 4, 8, 16, 1)
    rf = F.receptive_field([(3, 1, d) for d in dilations] + [(1, 1, 1)])
    assert rf == F.ReceptiveField(67, 1)
    # Empirically: with positive weights and input every relu is active, so
    # one output pixel depends on exactly a 67x67 window of the input.
    ctx = models.context_module(1, init=lambda key, shape, dtype: jnp.full(shape, 0.5, dtype))
    size, c = 81, 40
    params = ctx.init(KEY, (1, size, size, 1))[1]
    grad = jax.grad(lambda x: ctx.apply(params, x)[0, c, c, 0])(jnp.ones((1, size, size, 1)))
    rows, cols = np.nonzero(np.asarray(grad[0, :, :, 0]))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (c - 33, c + 33, c - 33, c + 33)
    assert len(rows) == 67 * 67

"""Regression tests for typed layers: each case failed (or answered silently) before.

* params of another model are refused at the outermost apply, in train/eval
  steps and in ``evaluate``, naming the layer and both shapes; the check adds
  nothing to the traced computation;
* ``Serial(scan=k)`` groups only layers equal but for their name (callables by
  identity, not by how they print);
* ``fundl.summary`` counts a user composite's inner layers once;
* ``Dense`` maps the last axis of any rank like ``torch.nn.Linear``;
* a missing batch axis is an error naming it, not a smaller model;
* ``train={pattern: bool}`` runs parts of a model in eval mode;
* ``Reshape``, ``Lambda``, ``Multiply``;
* user layers written as ``fundl.layers`` documents work with grad, jit and
  ``make_train_step``.
"""
from __future__ import annotations

import math

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fundl
import fundl.functional as F
import fundl.layers as L
from fundl import ConfigError, ShapeError, models
from fundl.train import evaluate, make_eval_step, make_train_step

KEY = jax.random.key(0)


# -- helpers ----------------------------------------------------------------------------

def abstract_init(layer, shape):
    """``(out_shape, params, state)`` with abstract leaves (init traced, never compiled)."""
    box = {}

    def f(key):
        box["out"], p, s = layer.init_with_state(key, shape)
        return p, s

    p, s = jax.eval_shape(f, KEY)
    return box["out"], p, s


def init_np(layer, shape, seed=0):
    """``(out_shape, params, state)`` as NumPy arrays: params uniform in [-0.5, 0.5),
    state as init makes it (batch-norm ``var`` ones, the rest zeros). Cheaper than an
    eager init, whose random draws compile once per shape."""
    rng = np.random.default_rng(seed)
    out, p, s = abstract_init(layer, shape)
    params = jax.tree_util.tree_map(
        lambda a: rng.uniform(-0.5, 0.5, a.shape).astype(a.dtype), p)
    state = jax.tree_util.tree_map_with_path(
        lambda path, a: (np.ones if path[-1].key == "var" else np.zeros)(a.shape, a.dtype), s)
    return out, params, state


def normal(shape, seed=1):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def count_scans(fn, *args):
    """Lengths of the scan equations in the jaxpr of ``fn`` (nested jaxprs included)."""
    lengths = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "scan":
                lengths.append(eqn.params["length"])
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return lengths


def assert_tree_close(a, b, tol=1e-6):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


# -- params of another model are refused ---------------------------------------------------

def classifier(num_classes):
    return L.Serial(L.Dense(8, name="fc1"), L.ReLU(), L.Dense(num_classes, name="head"),
                    name="net")


HEAD_SHAPES = ["Dense 'net/head'", "(8, 10)", "(8, 5)", "(10,)", "(5,)"]


@pytest.fixture(scope="module")
def mismatch():
    """A 5-class model, the params of the 10-class one, and a batch."""
    _, p10, _ = init_np(classifier(10), (4, 3))
    x = normal((4, 3))
    y = np.array([0, 1, 2, 4], np.int32)
    return classifier(5), p10, x, y


def assert_names(excinfo, parts):
    msg = str(excinfo.value)
    for part in parts:
        assert part in msg, f"{part!r} not in: {msg}"


def test_apply_refuses_the_params_of_a_ten_class_head(mismatch):
    model, p10, x, _ = mismatch
    with pytest.raises(ShapeError) as e:
        model.apply(p10, x)
    assert_names(e, HEAD_SHAPES)
    assert "fc1" not in str(e.value).split("The expected")[0]  # only the head is wrong
    jitted = jax.jit(model.apply)
    _, p5, _ = init_np(model, (4, 3))
    assert jitted(p5, x).shape == (4, 5)
    with pytest.raises(ShapeError) as e:  # a new trace for the new shapes: checked again
        jitted(p10, x)
    assert_names(e, HEAD_SHAPES)


def test_train_step_refuses_them(mismatch):
    model, p10, x, y = mismatch
    opt = optax.sgd(0.1)
    step = make_train_step(model, opt, donate=False)
    with pytest.raises(ShapeError) as e:
        step(p10, {}, opt.init(p10), (x, y), None)
    assert_names(e, HEAD_SHAPES)


def test_eval_step_and_evaluate_refuse_them(mismatch):
    model, p10, x, y = mismatch
    with pytest.raises(ShapeError) as e:
        make_eval_step(model)(p10, {}, (x, y))
    assert_names(e, HEAD_SHAPES)
    with pytest.raises(ShapeError) as e:
        evaluate(model, p10, {}, (x, y), batch_size=4)
    assert_names(e, HEAD_SHAPES)


@pytest.mark.filterwarnings("ignore:shape requires ndarray:DeprecationWarning")  # jnp on lists
def test_a_python_list_input_is_checked_like_an_array(mismatch):
    # before: a nested list was not "array-like" to the check, which was skipped, and the
    # 5-class model answered with 10 logits
    model, p10, x, _ = mismatch
    with pytest.raises(ShapeError) as e:
        model.apply(p10, x.tolist())
    assert_names(e, HEAD_SHAPES)
    _, p5, _ = init_np(model, (4, 3))
    np.testing.assert_allclose(np.asarray(model.apply(p5, x.tolist())),
                               np.asarray(model.apply(p5, x)), rtol=1e-6)
    # a tuple of lists is one array to jnp, not two inputs (before: Sum concatenated them)
    with pytest.raises(ShapeError, match="tuple of inputs"):
        L.Sum().apply({}, ([1.0, 2.0], [3.0, 4.0]))


def test_extra_unused_params_are_refused():
    model = classifier(5)
    _, p, _ = init_np(model, (4, 3))
    x = normal((4, 3))
    model.apply(p, x)  # the right params pass
    with pytest.raises(ShapeError) as e:
        model.apply({**p, "old_head": {"w": np.zeros((8, 10), np.float32)}}, x)
    assert_names(e, ["Serial 'net'", "'old_head'", "unexpected"])
    with pytest.raises(ShapeError) as e:  # an extra leaf inside a layer, too
        model.apply({**p, "head": {**p["head"], "scale": np.ones(5, np.float32)}}, x)
    assert_names(e, ["Dense 'net/head'", "'scale'", "unexpected"])


def test_dense_refuses_the_params_of_a_wider_dense():
    # before: w [4, 32] on a 4-feature input silently gave 32 outputs from a Dense(16)
    _, p32, _ = init_np(L.Dense(32), (2, 4))
    with pytest.raises(ShapeError) as e:
        L.Dense(16).apply(p32, normal((2, 4)))
    assert_names(e, ["Dense 'dense'", "(4, 32)", "(4, 16)"])


def test_wrong_dtype_kind_is_refused_and_another_float_width_accepted():
    model = classifier(5)
    _, p, _ = init_np(model, (4, 3))
    x = normal((4, 3))
    as_int = jax.tree_util.tree_map(lambda a: a.astype(np.int32), p)
    with pytest.raises(ShapeError) as e:
        model.apply(as_int, x)
    assert_names(e, ["Dense 'net/fc1'", "'w'", "int32", "integer", "floating"])
    as_half = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), p)
    assert jax.eval_shape(model.apply, as_half, x).shape == (4, 5)  # a kind, not a width


def test_the_check_adds_nothing_to_the_traced_computation():
    # A model and input shape used nowhere else: the check's cache is cold at the first
    # trace, which is when it could leak work (e.g. making a key) into the caller's jaxpr.
    net = L.Serial(L.Dense(3, name="fc1"), L.ReLU(), L.Dense(2, name="fc2"),
                   name="jaxpr_probe")
    _, p, _ = init_np(net, (3, 7))
    x = normal((3, 7))

    def by_hand(p, x):
        h = F.relu(F.linear(x, p["fc1"]["w"], p["fc1"]["b"]))
        return F.linear(h, p["fc2"]["w"], p["fc2"]["b"])

    want = str(jax.make_jaxpr(by_hand)(p, x))
    for _ in range(2):  # first trace (cold cache) and a later one
        assert str(jax.make_jaxpr(net.apply)(p, x)) == want
    traced = jax.jit(net.apply).trace(p, x).jaxpr
    assert str(traced) == want


# -- Serial(scan=k): equal but for the name, callables by identity ------------------------------

def scaled(c):
    return lambda y: y * c  # one code object, a new function per call


def res_block(activation):
    return L.Residual(L.Serial(L.Dense(4), L.Tanh(), L.Dense(4)), activation=activation,
                      name="block")


def test_blocks_with_different_activation_functions_are_not_scanned_together():
    double, triple = scaled(2.0), scaled(3.0)
    a, b = res_block(double), res_block(triple)
    assert repr(a) != repr(b) and a != b  # lambdas print with their identity: unequal layers print differently
    plain, scanned = L.Serial(a, b), L.Serial(a, b, scan=2)
    assert scanned != plain
    _, p, _ = init_np(plain, (2, 4))
    x = normal((2, 4))
    assert count_scans(lambda p: scanned.apply(p, x), p) == []
    assert_tree_close(scanned.apply(p, x), plain.apply(p, x))
    # and the activations do differ: blocks applied with one function give another result
    same = L.Serial(a.replace(name="block1"), a.replace(name="block2"))
    assert not np.allclose(same.apply(p, x), plain.apply(p, x))


def test_blocks_with_the_same_activation_object_are_scanned():
    double = scaled(2.0)
    plain = L.Serial(res_block(double), res_block(double))
    scanned = L.Serial(res_block(double), res_block(double), scan=2)
    _, p, _ = init_np(plain, (2, 4))
    x = normal((2, 4))
    assert count_scans(lambda p: scanned.apply(p, x), p) == [2]
    assert_tree_close(scanned.apply(p, x), plain.apply(p, x), tol=1e-5)


# -- summary: a user composite that initialises layers inside build ----------------------------

class SqueezeExcite(L.Layer):
    """Squeeze-and-excitation: ``x * sigmoid(excite(relu(squeeze(mean_hw(x)))))``.

    Initialises its two Dense layers inside ``build`` (not held in fields); its own
    MACs are the gating product, one per element of ``x``.
    """

    reduction: int = 4

    def _dense(self, c):
        return (L.Dense(c // self.reduction, name="squeeze"), L.Dense(c, name="excite"))

    def build(self, key, input_shape):
        n, c = input_shape[0], input_shape[-1]
        squeeze, excite = self._dense(c)
        k1, k2 = jax.random.split(key)
        hidden, p1 = squeeze.init(k1, (n, c))
        _, p2 = excite.init(k2, hidden)
        return input_shape, {"squeeze": p1, "excite": p2}

    def forward(self, params, x, *, key, train):
        n, c = x.shape[0], x.shape[-1]
        squeeze, excite = self._dense(c)
        s = jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
        g = jax.nn.sigmoid(excite.apply(params["excite"],
                                        jax.nn.relu(squeeze.apply(params["squeeze"], s))))
        return x * g.reshape(n, *([1] * (x.ndim - 2)), c)

    def macs(self, input_shape, output_shape, params):
        return math.prod(input_shape)


def se_net():
    return L.Serial(L.Conv(8, (3, 3), padding=1, name="conv"), SqueezeExcite(name="se"),
                    L.GlobalAvgPool(), L.Dense(2, name="fc"), name="net")


def test_summary_counts_a_user_composite_and_its_inner_layers_once():
    s = fundl.summary(se_net(), (2, 4, 4, 3))
    n, hw = 2, 4 * 4
    conv = n * 8 * hw * (3 * 3 * 3)   # N * C_out * H * W * (C_in * k * k) = 6912
    squeeze = n * 8 * 2               # [2, 8] -> [2, 2]: 32
    excite = n * 2 * 8                # [2, 2] -> [2, 8]: 32
    gate = n * hw * 8                 # x * g, one per element: 256
    fc = n * 8 * 2                    # 32
    assert s.total_macs == conv + squeeze + excite + gate + fc == 7264
    assert s.total_params == (27 * 8 + 8) + (8 * 2 + 2) + (2 * 8 + 8) + (8 * 2 + 2) == 284
    rows = {r.path: r for r in s.rows}
    paths = [r.path for r in s.rows]
    assert paths.count("se/squeeze") == 1 and paths.count("se/excite") == 1
    assert (rows["se/squeeze"].macs, rows["se/squeeze"].params) == (squeeze, 18)
    assert (rows["se/excite"].macs, rows["se/excite"].params) == (excite, 24)
    assert (rows["se"].macs, rows["se"].params) == (gate, 0)  # its own: not its inner layers'
    assert sum(r.macs for r in s.rows) == s.total_macs
    assert sum(r.params for r in s.rows) == s.total_params
    assert str(s).count("se/squeeze") == 1


def test_params_of_layers_built_inside_build_are_checked_by_path():
    model = se_net()
    _, p, _ = init_np(model, (2, 4, 4, 3))
    x = normal((2, 4, 4, 3))
    assert model.apply(p, x).shape == (2, 2)
    bad = {**p, "se": {**p["se"], "squeeze": {**p["se"]["squeeze"],
                                              "w": np.zeros((8, 4), np.float32)}}}
    with pytest.raises(ShapeError) as e:
        model.apply(bad, x)
    assert_names(e, ["Dense 'net/se/squeeze'", "'w'", "(8, 4)", "(8, 2)"])


# -- Dense on [N, T, C] is torch.nn.Linear -----------------------------------------------------

def test_dense_on_a_sequence_matches_torch_linear_values_and_grads():
    torch = pytest.importorskip("torch")
    layer = L.Dense(5)
    out, p, _ = init_np(layer, (2, 3, 4))
    assert out == (2, 3, 5) and p["w"].shape == (4, 5)
    x, cot = normal((2, 3, 4), 1), normal((2, 3, 5), 2)
    lin = torch.nn.Linear(4, 5)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(p["w"].T.copy()))
        lin.bias.copy_(torch.from_numpy(p["b"]))
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = lin(xt)
    (yt * torch.from_numpy(cot)).sum().backward()

    y, vjp = jax.vjp(lambda p, x: layer.apply(p, x), p, x)
    gp, gx = vjp(cot)
    tol = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y), yt.detach().numpy(), **tol)
    np.testing.assert_allclose(np.asarray(gx), xt.grad.numpy(), **tol)
    np.testing.assert_allclose(np.asarray(gp["w"]).T, lin.weight.grad.numpy(), **tol)
    np.testing.assert_allclose(np.asarray(gp["b"]), lin.bias.grad.numpy(), **tol)


def test_a_conv_map_fed_to_the_loss_names_both_shapes_and_flatten():
    logits, y = jnp.zeros((2, 3, 3, 10)), jnp.array([1, 2])
    with pytest.raises(ShapeError) as e:
        F.cross_entropy(logits, y)
    assert_names(e, ["(2, 3, 3, 10)", "(2,)", "Flatten"])


# -- the batch axis ------------------------------------------------------------------------

def test_a_missing_batch_axis_is_an_error_not_a_smaller_model():
    with pytest.raises(ShapeError, match="batch axis") as e:
        models.convnet_mnist().init(KEY, (28, 28, 1))
    assert_names(e, ["Conv 'convnet_mnist/conv1'", "(28, 28, 1)", "(1, 28, 28, 1)"])
    with pytest.raises(ShapeError, match="batch axis") as e:
        fundl.summary(models.resnet18(), (224, 224, 3))
    assert_names(e, ["Conv 'resnet18/conv1'", "(224, 224, 3)"])
    with pytest.raises(ShapeError, match="batch axis") as e:
        L.Conv(8, (3, 3)).init(KEY, (5, 5, 3))
    assert_names(e, ["Conv 'conv'", "kernel_size=(3, 3)", "rank 3"])
    # an int kernel size takes its rank from the input, as documented: a 1-d conv here
    assert abstract_init(L.Conv(8, 3), (5, 5, 3))[0] == (5, 3, 8)


# -- per-path train modes ------------------------------------------------------------------

def bn_model():
    return L.Serial(L.Serial(L.Dense(4, name="fc"), L.BatchNorm(name="bn"), name="backbone"),
                    L.Serial(L.Dense(3, name="fc"), L.BatchNorm(name="bn"), name="head"),
                    name="net")


def test_a_frozen_backbone_keeps_its_batch_stats_and_the_head_updates_its_own():
    model = bn_model()
    _, p, s = init_np(model, (8, 5))
    s = jax.tree_util.tree_map(lambda a: a + 0.25, s)  # statistics that are not the defaults
    x = normal((8, 5))
    y, new = model.apply(p, x, state=s, train={"backbone": False, "*": True})
    for k in ("mean", "var"):
        np.testing.assert_array_equal(np.asarray(new["backbone"]["bn"][k]),
                                      s["backbone"]["bn"][k])
        assert not np.allclose(np.asarray(new["head"]["bn"][k]), s["head"]["bn"][k])
    # the same as the backbone evaluated and the head trained, one after the other
    bb, head = model.layers
    h, _ = bb.apply(p["backbone"], x, state=s["backbone"], train=False)
    y_ref, s_head = head.apply(p["head"], h, state=s["head"], train=True)
    assert_tree_close(y, y_ref, 1e-5)
    assert_tree_close(new["head"], s_head, 1e-6)
    # a plain train=True updates both
    _, both = model.apply(p, x, state=s, train=True)
    assert not np.allclose(np.asarray(both["backbone"]["bn"]["mean"]), s["backbone"]["bn"]["mean"])


def test_dropout_under_an_eval_pattern_is_off():
    model = L.Serial(L.Serial(L.Dense(6, name="fc"), L.Dropout(0.5), name="backbone"),
                     L.Dense(3, name="head"), name="net")
    _, p, _ = init_np(model, (4, 5))
    x, key = normal((4, 5)), jax.random.key(3)
    y_eval = model.apply(p, x, train=False)
    y_mixed = model.apply(p, x, key=key, train={"backbone": False, "*": True})
    np.testing.assert_array_equal(np.asarray(y_mixed), np.asarray(y_eval))
    y_train = model.apply(p, x, key=key, train=True)  # dropout on: the check means something
    assert not np.allclose(np.asarray(y_train), np.asarray(y_eval))
    # unmatched paths evaluate: only the head in train mode leaves dropout off too
    np.testing.assert_array_equal(np.asarray(model.apply(p, x, key=key, train={"head": True})),
                                  np.asarray(y_eval))


@pytest.mark.parametrize("train, words", [
    ({"backbone": 1}, ["train['backbone']", "True or False", "1"]),
    ({"backbone": "no"}, ["train['backbone']", "'no'"]),
    ({"backbone": None}, ["train['backbone']", "None"]),
    ({0: True}, ["path patterns", "0"]),
    ({"": True}, ["path patterns", "''"]),
    ("yes", ["train must be True, False or a mapping", "'yes'"]),
    (np.array(True), ["train must be True, False or a mapping"]),
])
def test_bad_train_values_are_config_errors(train, words):
    model = bn_model()
    _, p, s = init_np(model, (8, 5))
    with pytest.raises(ConfigError) as e:
        model.apply(p, normal((8, 5)), state=s, train=train)
    assert_names(e, ["Serial 'net'", *words])


# -- Reshape, Lambda, Multiply -------------------------------------------------------------

def test_reshape_exact_cases():
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    np.testing.assert_array_equal(np.asarray(L.Reshape((2, 3)).apply({}, x)),
                                  x.reshape(2, 2, 3))
    assert L.Reshape((-1, 2)).init(KEY, (2, 6))[0] == (2, 3, 2)
    assert L.Reshape(6).shape == (6,)
    np.testing.assert_array_equal(np.asarray(L.Reshape(6).apply({}, x.reshape(2, 3, 2))), x)
    # the inverse of Flatten, row-major over channels last
    img = np.arange(24, dtype=np.float32).reshape(2, 2, 3, 2)
    back = L.Serial(L.Flatten(), L.Reshape((2, 3, 2))).apply({}, img)
    np.testing.assert_array_equal(np.asarray(back), img)


@pytest.mark.parametrize("shape, input_shape, words", [
    ((4,), (2, 6), ["Reshape 'reshape'", "(6,)", "(4,)", "(2, 6)"]),
    ((-1, 4), (2, 6), ["(6,)", "(-1, 4)", "(2, 6)"]),
    ((2, 2, 2), (3, 2, 3), ["(2, 3)", "(2, 2, 2)", "(3, 2, 3)"]),
])
def test_reshape_to_an_incompatible_size_names_both_shapes(shape, input_shape, words):
    with pytest.raises(ShapeError) as e:
        L.Reshape(shape).init(KEY, input_shape)
    assert_names(e, words)
    with pytest.raises(ShapeError) as e:  # and at apply, on an input of another size
        L.Reshape(shape).apply({}, np.zeros(input_shape, np.float32))
    assert_names(e, words)


@pytest.mark.parametrize("shape", [(), (0,), (2, -1, -1), (-2,), "ab", (2.0,), None])
def test_reshape_bad_config(shape):
    with pytest.raises(ConfigError, match="Reshape"):
        L.Reshape(shape)


def test_lambda_exact_cases_and_names():
    x = np.array([[1.0, -2.0, 3.0]], np.float32)
    np.testing.assert_array_equal(np.asarray(L.Lambda(jnp.square).apply({}, x)), x ** 2)
    assert L.Lambda(jax.nn.silu).name == "silu"
    assert L.Lambda(lambda v: v).name == "lambda"
    net = L.Serial(L.Dense(3, name="fc"), L.Lambda(jnp.abs))
    _, p, _ = init_np(net, (1, 3))
    np.testing.assert_allclose(np.asarray(net.apply(p, x)),
                               np.abs(x @ p["fc"]["w"] + p["fc"]["b"]), rtol=1e-6)
    # by identity of the function
    f = scaled(2.0)
    assert L.Lambda(f) == L.Lambda(f) and L.Lambda(scaled(2.0)) != L.Lambda(scaled(2.0))


def test_lambda_that_changes_the_shape_is_refused_at_init():
    with pytest.raises(ShapeError) as e:
        L.Lambda(lambda v: v.sum(-1)).init(KEY, (2, 3))
    assert_names(e, ["Lambda 'lambda'", "(2, 3)", "(2,)", "Reshape"])
    with pytest.raises(ShapeError):  # and at apply
        L.Lambda(lambda v: v.sum(-1)).apply({}, np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("fn", [3, None, "relu", L.ReLU()])
def test_lambda_needs_a_function(fn):
    with pytest.raises(ConfigError, match="Lambda"):
        L.Lambda(fn)


def test_multiply_exact_cases():
    a, b = np.array([[1.0, 2.0]], np.float32), np.array([[3.0, -0.5]], np.float32)
    np.testing.assert_array_equal(np.asarray(L.Multiply().apply({}, (a, b))), a * b)
    np.testing.assert_array_equal(np.asarray(L.Multiply().apply({}, (a, b, b))), a * b * b)
    assert L.Multiply().init(KEY, ((2, 3), (2, 3)))[0] == (2, 3)
    # a gate: x * sigmoid(x), as a graph
    gate = L.Graph(inputs="x", outputs="m", nodes=[L.Node("g", L.Sigmoid(), "x"),
                                                   L.Node("m", L.Multiply(), ("x", "g"))])
    x = normal((2, 3))
    np.testing.assert_allclose(np.asarray(gate.apply({}, x)), x / (1 + np.exp(-x)), rtol=1e-6)


def test_multiply_of_mismatched_shapes_is_refused():
    words = ["Multiply 'multiply'", "(2, 3)", "(2, 4)"]
    with pytest.raises(ShapeError) as e:
        L.Multiply().init(KEY, ((2, 3), (2, 4)))
    assert_names(e, words)
    with pytest.raises(ShapeError) as e:
        L.Multiply().apply({}, (np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32)))
    assert_names(e, words)
    with pytest.raises(ShapeError, match="tuple of inputs"):
        L.Multiply().init(KEY, (2, 3))


# -- user layers, as fundl.layers documents them ---------------------------------------------

class Scale(L.Layer):
    """y = x * s + t per channel (a leaf with params)."""

    init_scale: float = 1.0

    def build(self, key, input_shape):
        c = input_shape[-1]
        return input_shape, {"s": jnp.full((c,), self.init_scale), "t": jnp.zeros((c,))}

    def forward(self, params, x, *, key, train):
        return x * params["s"][None] + params["t"][None]

    def macs(self, input_shape, output_shape, params):
        return 0


class Gate(L.Layer):
    """y = x * sigmoid(dense(x)) (a composite holding its child in a field)."""

    dense: L.Layer

    def build(self, key, input_shape):
        _, p = self.dense.init(key, input_shape)
        return input_shape, {self.dense.name: p}

    def forward(self, params, x, *, key, train):
        return x * jax.nn.sigmoid(self.dense.apply(params[self.dense.name], x))


class RunningMean(L.Layer):
    """y = x - running mean (stateful)."""

    momentum: float = 0.1
    stateful = True

    def build(self, key, input_shape):
        return input_shape, {}, {"mean": jnp.zeros(input_shape[-1])}

    def forward(self, params, x, *, state, key, train):
        if not train:
            return x - state["mean"][None], state
        m = (1 - self.momentum) * state["mean"] + self.momentum * x.mean(0)
        return x - m[None], {"mean": m}


def user_model():
    return L.Serial(L.Dense(4, name="inp"), Scale(2.0), Gate(L.Dense(4, name="proj")),
                    RunningMean(), L.Dense(3, name="out"), name="net")


def test_user_layers_are_typed_values():
    assert Scale(2.0) == Scale(2.0) and hash(Scale(2.0)) == hash(Scale(2.0))
    assert Scale(2.0) != Scale(3.0) and Scale(2.0).replace(init_scale=3.0) == Scale(3.0)
    assert repr(Scale(2.0)) == "Scale(init_scale=2.0, name='scale')"
    g = Gate(L.Dense(4, name="proj"))
    assert g.children() == (("proj", L.Dense(4, name="proj")),)
    assert g.with_child("proj", L.Dense(2)) == Gate(L.Dense(2, name="proj"))
    assert RunningMean().stateful and not Scale().stateful and user_model().stateful
    with pytest.raises(ConfigError):
        Scale().replace(scale=1.0)


def test_user_layers_with_grad_jit_and_the_param_check():
    model = user_model()
    assert np.all(np.asarray(Scale(2.0).init(KEY, (1, 4))[1]["s"]) == 2.0)
    out, p, s = init_np(model, (6, 5))
    assert out == (6, 3) and sorted(p) == ["gate", "inp", "out", "scale"]
    assert sorted(p["gate"]) == ["proj"] and sorted(s) == ["running_mean"]
    x = normal((6, 5))
    y, s1 = model.apply(p, x, state=s, train=True)
    np.testing.assert_allclose(np.asarray(s1["running_mean"]["mean"]),
                               0.1 * np.asarray(jnp.mean(
                                   L.Serial(*model.layers[:3]).apply(
                                       {k: p[k] for k in ("inp", "scale", "gate")}, x), 0)),
                               rtol=1e-5, atol=1e-6)
    y_jit, s_jit = jax.jit(lambda p, s, x: model.apply(p, x, state=s, train=True))(p, s, x)
    assert_tree_close((y_jit, s_jit), (y, s1), 1e-5)

    def loss(p):
        y, _ = model.apply(p, x, state=s, train=True)
        return jnp.sum(y ** 2)

    g = jax.jit(jax.grad(loss))(p)
    assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(p)
    assert np.abs(np.asarray(g["scale"]["s"])).sum() > 0
    assert np.abs(np.asarray(g["gate"]["proj"]["w"])).sum() > 0
    with pytest.raises(ShapeError) as e:
        model.apply({**p, "scale": {"s": p["scale"]["s"][:2], "t": p["scale"]["t"]}}, x,
                    state=s)
    assert_names(e, ["Scale 'net/scale'", "'s'", "(2,)", "(4,)"])


def test_user_layers_train_with_make_train_step():
    model = user_model()
    _, p, s = init_np(model, (6, 5))
    x, y = normal((6, 5)), np.array([0, 1, 2, 0, 1, 2], np.int32)
    opt = optax.sgd(0.1)
    step = make_train_step(model, opt, donate=False)
    p1, s1, o1, m1 = step(p, s, opt.init(p), (x, y), None)
    _, _, _, m2 = step(p1, s1, o1, (x, y), None)
    assert float(m2["loss"]) < float(m1["loss"])
    assert not np.allclose(np.asarray(s1["running_mean"]["mean"]), 0.0)
    assert not np.allclose(np.asarray(p1["scale"]["s"]), np.asarray(p["scale"]["s"]))

"""fundl.surgery: editing models by layer path, and carrying weights over with adapt."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fundl
import fundl.layers as L
from fundl import surgery
from fundl import ConfigError

KEY = jax.random.key(0)


def shapes(model, input_shape):
    """``(params, state)`` of ``model`` as a tree of shapes, computed abstractly (no arrays)."""
    p, s = jax.eval_shape(lambda k: model.init_with_state(k, input_shape)[1:], KEY)
    return jax.tree_util.tree_map(lambda a: a.shape, (p, s))


def flat(tree):
    """``{'a/b/w': leaf}`` for a nested dict (a shape tuple is one leaf)."""
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: isinstance(x, tuple))
    return {"/".join(k.key for k in path): leaf for path, leaf in leaves}


def mlp():
    """On ``(2, 4)`` inputs; all hidden widths are 4, like :func:`mini_resnet`'s, so that
    the tests compile few initialisers (the first init of each shape compiles)."""
    return L.Serial(L.Dense(4, name="hidden"), L.ReLU(),
                    L.Serial(L.Dense(4), L.Tanh(), name="inner"),
                    L.Dense(5, name="head"), name="mlp")


def tiny_resnet():
    """Two BasicBlock stages of 4 and 8 channels; the second stage's first block projects."""
    return fundl.models.resnet("basic", (1, 1), 5, stem="cifar", width=4, name="tiny")


def mini_resnet():
    """Two BasicBlocks of 4 channels on ``(1, 4, 4, 4)``; ``block2`` (stride 2) projects."""
    return L.Serial(L.BasicBlock(4, name="block1"), L.BasicBlock(4, stride=2, name="block2"),
                    L.GlobalAvgPool(), L.Dense(5, name="fc"), name="mini")


@pytest.fixture(scope="module")
def resnet_init():
    """``(model, params, state)`` of :func:`mini_resnet`, made once: the first init of each
    array shape compiles (up to a second or more each on a busy CPU)."""
    model = mini_resnet()
    return (model, *model.init(KEY, (1, 4, 4, 4))[1:])


def siamese():
    enc = L.Serial(L.Dense(4), L.ReLU(), name="enc")
    return L.Graph(inputs=("a", "b"), outputs="out", nodes=[
        L.Node("left", enc, "a"), L.Node("right", enc, "b", share="left"),
        L.Node("cat", L.Concat(), ("left", "right")), L.Node("out", L.Dense(2), "cat")])


# -- get and paths ----------------------------------------------------------------------------

def test_paths_depth_first_over_serial_residual_and_graph():
    assert surgery.paths(mlp()) == ["hidden", "relu", "inner", "inner/dense", "inner/tanh",
                                    "head"]
    res = L.Serial(L.Residual(L.Dense(4), L.Dense(4, name="proj")), L.ReLU())
    assert surgery.paths(res) == ["residual", "residual/body", "residual/shortcut", "relu"]
    assert surgery.paths(siamese()) == ["left", "left/dense", "left/relu", "right",
                                        "right/dense", "right/relu", "cat", "out"]


def test_get_follows_params_keys_in_zoo_models():
    r18 = fundl.models.resnet18(10, stem="cifar")
    conv = surgery.get(r18, "layer4/block2/body/conv1")
    assert isinstance(conv, L.Conv) and conv.out_channels == 512 and conv.name == "conv1"
    assert isinstance(surgery.get(r18, "layer4/block2"), L.BasicBlock)
    assert surgery.get(r18, "") is r18
    assert "layer4/block2/body/conv1" in surgery.paths(r18)
    assert "layer2/block1/shortcut/conv" in surgery.paths(r18)
    # every params key path of the model is a layer path (plus the array name)
    p, s = shapes(r18, (1, 32, 32, 3))
    layer_paths = set(surgery.paths(r18))
    assert {k.rsplit("/", 1)[0] for k in flat(p)} <= layer_paths
    vgg = fundl.models.vgg11(10)
    fc3 = surgery.get(vgg, "classifier/fc3")
    assert isinstance(fc3, L.Dense) and fc3.features == 10


def test_get_graph_node_and_residual_children():
    g = siamese()
    assert surgery.get(g, "right").name == "right"
    assert surgery.get(g, "left/dense").features == 4
    block = L.BasicBlock(8, stride=2)
    assert surgery.get(block, "shortcut/conv").kernel_size == (1, 1)
    assert surgery.get(block, "body/bn2").name == "bn2"


# -- replace --------------------------------------------------------------------------------------

def test_replace_in_serial_keeps_every_other_param_key():
    net = mlp()
    before = repr(net)
    new = surgery.replace(net, "head", L.Dense(6, name="whatever"))
    assert repr(net) == before  # the input is untouched
    assert surgery.get(new, "head") == L.Dense(6, name="head")
    (p0, _), (p1, _) = shapes(net, (2, 4)), shapes(new, (2, 4))
    assert sorted(p1) == sorted(p0) == ["head", "hidden", "inner"]
    assert p1["head"] == {"w": (4, 6), "b": (6,)}
    assert {k: v for k, v in p1.items() if k != "head"} == {
        k: v for k, v in p0.items() if k != "head"}


def test_replace_in_nested_serial_and_of_the_model():
    new = surgery.replace(mlp(), "inner/dense", L.Dense(6))
    assert shapes(new, (2, 4))[0]["inner"] == {"dense": {"w": (4, 6), "b": (6,)}}
    assert shapes(new, (2, 4))[0]["head"]["w"] == (6, 5)
    whole = surgery.replace(mlp(), "", L.Dense(2))
    assert whole == L.Dense(2, name="mlp")


def test_replace_residual_body_and_shortcut():
    res = L.Serial(L.Residual(L.Dense(4), L.Dense(4, name="proj"), name="res"), name="net")
    new = surgery.replace(res, "res/shortcut", L.Dense(4, bias=False))
    assert surgery.get(new, "res/shortcut") == L.Dense(4, bias=False, name="shortcut")
    assert surgery.get(new, "res/body") == surgery.get(res, "res/body")
    assert shapes(new, (2, 4))[0]["res"] == {"body": {"w": (4, 4), "b": (4,)},
                                             "shortcut": {"w": (4, 4)}}
    new = surgery.replace(res, "res/body", L.Identity())
    assert list(shapes(new, (2, 4))[0]["res"]) == ["shortcut"]


def test_replace_graph_node_keeps_inputs_and_sharing():
    g = siamese()
    new = surgery.replace(g, "out", L.Dense(7))
    assert [(n.name, n.inputs, n.share) for n in new.nodes] == [
        (n.name, n.inputs, n.share) for n in g.nodes]
    assert shapes(new, ((3, 5), (3, 5)))[0]["out"] == {"w": (8, 7), "b": (7,)}
    # inside the owner of shared params: the sharer keeps its own layer, so init refuses
    inner = surgery.replace(g, "left/dense", L.Dense(6))
    assert surgery.get(inner, "right/dense").features == 4
    with pytest.raises(fundl.ShapeError, match="shares parameters"):
        shapes(inner, ((3, 5), (3, 5)))


def test_replace_inside_basic_block_makes_a_residual_with_the_same_keys():
    r18 = fundl.models.resnet18(10, stem="cifar")
    new = surgery.replace(r18, "layer4/block2/body/conv1",
                          L.Conv(512, 3, padding=1, bias=False, name="x"))
    edited = surgery.get(new, "layer4/block2")
    assert type(edited) is L.Residual and edited.name == "block2"
    assert edited.activation is jax.nn.relu and edited.projection == "auto"
    assert type(surgery.get(new, "layer4/block1")) is L.BasicBlock
    assert type(surgery.get(r18, "layer4/block2")) is L.BasicBlock  # input untouched
    (p0, s0), (p1, s1) = shapes(r18, (1, 32, 32, 3)), shapes(new, (1, 32, 32, 3))
    assert p1 == p0 and s1 == s0  # same keys and shapes: the conv is equivalent
    vgg = fundl.models.vgg11(1000)
    new = surgery.replace(vgg, "classifier/fc3", L.Dense(10))
    assert surgery.get(new, "classifier/fc3") == L.Dense(10, name="fc3")
    assert [c.name for c in new.layers] == [c.name for c in vgg.layers]


# -- remove and insert ----------------------------------------------------------------------------

def test_remove_from_serial_keeps_sibling_names():
    net = L.Serial(L.Dense(4), L.ReLU(), L.Dense(4), L.ReLU(), L.Dense(2))
    assert [c.name for c in net.layers] == ["dense1", "relu1", "dense2", "relu2", "dense3"]
    new = surgery.remove(net, "dense2")
    assert [c.name for c in new.layers] == ["dense1", "relu1", "relu2", "dense3"]
    assert list(shapes(new, (2, 3))[0]) == ["dense1", "dense3"]
    nested = surgery.remove(mlp(), "inner/tanh")
    assert [c.name for c in surgery.get(nested, "inner").layers] == ["dense"]
    block = surgery.remove(fundl.models.resnet18(stem="cifar"), "layer1/block1/body/relu")
    assert type(surgery.get(block, "layer1/block1")) is L.Residual
    assert [c.name for c in surgery.get(block, "layer1/block1/body").layers] == [
        "conv1", "bn1", "conv2", "bn2"]


def test_insert_before_and_after():
    net = mlp()
    new = surgery.insert(net, "head", L.Dropout(0.1))
    assert [c.name for c in new.layers] == ["hidden", "relu", "inner", "dropout", "head"]
    new = surgery.insert(net, "inner/dense", L.LayerNorm(), after=True)
    assert [c.name for c in surgery.get(new, "inner").layers] == ["dense", "layer_norm", "tanh"]
    p0, p1 = shapes(net, (2, 4))[0], shapes(new, (2, 4))[0]
    assert p1["inner"]["layer_norm"] == {"scale": (4,), "bias": (4,)}
    assert {k: v for k, v in p1["inner"].items() if k != "layer_norm"} == p0["inner"]
    assert len(net.layers) == 4  # input untouched


# -- adapt ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_adapt_resnet_new_head_keeps_backbone_bit_identical(resnet_init):
    old, p, s = resnet_init
    new = surgery.replace(old, "fc", L.Dense(3))
    k2 = jax.random.key(7)
    p2, s2, report = surgery.adapt(new, p, s, key=k2, input_shape=(1, 4, 4, 4))
    _, fresh_p, fresh_s = new.init(k2, (1, 4, 4, 4))
    old_p, new_p, ref_p = flat(p), flat(p2), flat(fresh_p)
    assert list(new_p) == list(ref_p)
    for path, a in new_p.items():
        want = ref_p[path] if path.startswith("fc/") else old_p[path]
        assert np.array_equal(a, want), path
    assert not np.array_equal(new_p["block1/body/conv1/w"], ref_p["block1/body/conv1/w"])
    assert p2["block2"]["shortcut"]["conv"]["w"] is p["block2"]["shortcut"]["conv"]["w"]
    assert jax.tree.structure(s2) == jax.tree.structure(s)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(s2), jax.tree.leaves(s)))
    assert report.initialised == report.dropped == ["fc"]
    assert report.reasons == {"fc": "b (5,) -> (3,), w (4, 5) -> (4, 3)"}
    # every batch norm's statistics, but for the unused shortcut of block1 (identity there)
    bns = [q for q in surgery.paths(old) if isinstance(surgery.get(old, q), L.BatchNorm)]
    assert "block1/shortcut/bn" in bns and len(bns) == 6
    assert [k for k in report.kept if k.startswith("state:")] == sorted(
        f"state:{q}" for q in bns if q != "block1/shortcut/bn")
    assert len(report.kept) == 5 + 5 + 5  # convs' w, batch norms' scale/bias, their state
    assert str(report).splitlines() == [
        "kept 15 groups of arrays (10 params, 5 state), initialised 1, dropped 1",
        "  initialised fc: b (5,) -> (3,), w (4, 5) -> (4, 3)",
        "  dropped     fc: b (5,) -> (3,), w (4, 5) -> (4, 3)"]
    # apply accepts them (its params/state check runs at trace time; nothing compiles)
    y, _ = jax.eval_shape(lambda p, s, x: new.apply(p, x, state=s), p2, s2, jnp.ones((1, 4, 4, 4)))
    assert y.shape == (1, 3)


@pytest.mark.slow
def test_adapt_after_an_edit_of_a_block_lists_exactly_the_edited_groups(resnet_init):
    old, p, s = resnet_init
    new = surgery.replace(old, "block2/body/bn1", L.Identity())
    new = surgery.insert(new, "block2/body/conv2", L.BatchNorm(name="bn_new"), after=True)
    p2, s2, report = surgery.adapt(new, p, s, key=KEY, input_shape=(1, 4, 4, 4))
    bn1, bn_new = "block2/body/bn1", "block2/body/bn_new"
    assert report.initialised == [bn_new, f"state:{bn_new}"]
    assert report.dropped == [bn1, f"state:{bn1}"]
    assert report.reasons == {bn1: "not in the new model", f"state:{bn1}": "not in the new model",
                              bn_new: "new", f"state:{bn_new}": "new"}
    assert np.array_equal(p2["block2"]["body"]["conv2"]["w"], p["block2"]["body"]["conv2"]["w"])
    assert np.array_equal(s2["block2"]["body"]["bn_new"]["var"], np.ones(4))
    assert "bn1" not in s2["block2"]["body"] and "bn1" in s2["block1"]["body"]


def test_adapt_refreshes_groups_whose_names_or_dtypes_changed():
    net = mlp()
    _, p = net.init(KEY, (2, 4))
    p = {**p, "hidden": {k: v.astype(jnp.bfloat16) for k, v in p["hidden"].items()}}
    new = surgery.replace(net, "head", L.Dense(3, bias=False))
    p2, s2, report = surgery.adapt(new, p, {}, key=KEY, input_shape=(2, 4))
    assert s2 == {}
    assert report.kept == ["inner/dense"]
    assert report.initialised == report.dropped == ["head", "hidden"]
    assert report.reasons == {"head": "arrays ['b', 'w'] -> ['w']",
                              "hidden": "b bfloat16 -> float32, w bfloat16 -> float32"}
    assert p2["hidden"]["w"].dtype == jnp.float32 and set(p2["head"]) == {"w"}
    assert p2["inner"]["dense"]["w"] is p["inner"]["dense"]["w"]


def test_adapt_stateless_to_stateful_and_back():
    net = mlp()
    _, p = net.init(KEY, (2, 4))
    bn = surgery.insert(net, "head", L.BatchNorm())
    p2, s2, report = surgery.adapt(bn, p, None, key=KEY, input_shape=(2, 4))
    assert report.initialised == ["batch_norm", "state:batch_norm"] and report.dropped == []
    assert set(s2) == {"batch_norm"}
    p3, s3, report = surgery.adapt(net, p2, s2, key=KEY, input_shape=(2, 4))
    assert s3 == {} and report.dropped == ["batch_norm", "state:batch_norm"]
    assert report.initialised == []


def test_adapt_of_a_single_layer_model_uses_the_empty_path():
    _, p = L.Dense(5).init(KEY, (2, 4))
    p2, _, report = surgery.adapt(L.Dense(4), p, {}, key=KEY, input_shape=(2, 4))
    assert report == ([], [""], [""], {"": "b (5,) -> (4,), w (4, 5) -> (4, 4)"})
    assert "initialised (the model): b (5,) -> (4,)" in str(report)
    assert p2["w"].shape == (4, 4)


class OnTheFly(L.Layer):
    """A user layer that makes its Dense inside build (not a field): surgery cannot enter it."""

    features: int = 4

    def build(self, key, input_shape):
        return L.Dense(self.features).init(key, input_shape)

    def forward(self, params, x, *, key, train):
        return L.Dense(self.features).apply(params, x)


class Pair(L.Layer):
    """A user layer with two child fields."""

    first: L.Layer
    second: L.Layer


def test_user_layers_with_child_fields_can_be_edited():
    pair = L.Serial(Pair(L.Dense(2, name="a"), L.Dense(3, name="b")), name="net")
    assert surgery.paths(pair) == ["pair", "pair/a", "pair/b"]
    new = surgery.replace(pair, "pair/b", L.Dense(7))
    assert surgery.get(new, "pair/b") == L.Dense(7, name="b")
    assert surgery.get(new, "pair/a") is surgery.get(pair, "pair/a")


# -- errors ---------------------------------------------------------------------------------------

def _err(fn, *args, **kwargs):
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    return str(info.value)


BAD_INPUTS = [
    # (call, fragments the message must contain)
    (lambda: surgery.get(fundl.models.resnet18(stem="cifar"), "layer4/block9/body"),
     ["surgery.get", "'layer4/block9/body'", "deepest valid prefix is 'layer4'",
      "['block1', 'block2']", "surgery.paths(model)"]),
    (lambda: surgery.replace(mlp(), "mlp/head", L.Dense(2)),
     ["surgery.replace", "'mlp/head'", "do not start with its name", "try 'head'"]),
    (lambda: surgery.get(mlp(), "inner/dens"),
     ["'inner/dens'", "['dense', 'tanh']", "Did you mean 'inner/dense'", "Valid paths: ["]),
    (lambda: surgery.get(mlp(), "head/w"),
     ["'head/w'", "Dense 'head'", "holds no child layers", "replace(model, 'head', new_layer)"]),
    (lambda: surgery.get(mlp(), "/head"), ["'/head'", "empty component", "'head'"]),
    (lambda: surgery.get(mlp(), ("head",)), ["path must be a string", "tuple"]),
    (lambda: surgery.remove(tiny_resnet(), "layer1/block1/shortcut"),
     ["surgery.remove", "'layer1/block1/shortcut'", "not a Serial", "L.Identity()",
      "replace(model, 'layer1/block1/shortcut'"]),
    (lambda: surgery.remove(siamese(), "cat"),
     ["'cat'", "Graph", "read a node's output by name", "L.Identity()"]),
    (lambda: surgery.remove(L.Serial(L.Serial(L.Dense(2), name="s"), L.ReLU()), "s/dense"),
     ["'s/dense'", "only layer", "L.Identity()"]),
    (lambda: surgery.remove(mlp(), ""), ["path '' is the model itself", "no parent"]),
    (lambda: surgery.get(L.Serial(OnTheFly(), L.ReLU()), "on_the_fly/dense"),
     ["'on_the_fly/dense'", "OnTheFly 'on_the_fly'", "builds its sub-layers inside build",
      "cannot enter", "replace(model, 'on_the_fly', new_layer)"]),
    # two children under one name are refused when the layer is built
    (lambda: Pair(L.Dense(2), L.Dense(3)),
     ["Pair 'pair'", "distinct names", "['dense']"]),
    (lambda: surgery.insert(mlp(), "head", L.ReLU()),
     ["surgery.insert", "'head'", "named 'relu'", "layer.rename('relu_1')",
      "change their params keys"]),
    (lambda: surgery.insert(tiny_resnet(), "layer1/block1/body", L.ReLU()),
     ["'layer1/block1/body'", "BasicBlock 'block1'", "not a Serial", "Wrap the layer in a "
      "Serial", "L.Serial(fundl.surgery.get(model, 'layer1/block1/body'), new_layer)"]),
    (lambda: surgery.insert(mlp(), "head", "relu"), ["layer must be a fundl Layer", "str"]),
    (lambda: surgery.replace({"w": 1}, "head", L.ReLU()),
     ["surgery.replace", "model must be a fundl Layer", "dict"]),
    (lambda: surgery.insert(mlp(), "head", L.ReLU(name="r"), after=1),
     ["surgery.insert", "after must be True or False", "1"]),
    (lambda: surgery.adapt(lambda x: x, {}, {}, key=KEY, input_shape=(2, 4)),
     ["surgery.adapt", "new_model must be a fundl Layer", "function"]),
    (lambda: surgery.adapt(mlp(), {}, [1], key=KEY, input_shape=(2, 4)),
     ["surgery.adapt", "state must be a dict", "list"]),
    (lambda: surgery.adapt(mlp(), [1, 2], {}, key=KEY, input_shape=(2, 4)),
     ["surgery.adapt", "params must be a dict", "list"]),
    (lambda: surgery.adapt(mlp(), {"head": {"w": [1.0]}}, {}, key=KEY, input_shape=(2, 4)),
     ["params leaf 'head/w' must be an array", "list"]),
    (lambda: surgery.adapt(mlp(), {}, {}, key="0", input_shape=(2, 4)),  # an int seed is accepted
     ["surgery.adapt: key must be a jax.random.key(seed)", "or an int seed", "str"]),
    (lambda: surgery.adapt(mlp(), {"mlp": {"head": {"w": jnp.ones((8, 3))}}}, {}, key=KEY,
                           input_shape=(2, 4)),
     ["no path of the old params or state exists", "'mlp/head'", "relative to the model"]),
]


@pytest.mark.parametrize("call, fragments", BAD_INPUTS, ids=range(len(BAD_INPUTS)))
def test_bad_inputs_raise_messages_naming_the_path_and_the_fix(call, fragments):
    message = _err(call)
    for fragment in fragments:
        assert fragment in message, (fragment, message)

"""A sweep over every name in ``fundl.layers.__all__``: each layer type has a sample.

For every sample: the shape contract (``init``'s promised output shape is
``apply``'s actual one), the check of params/state at the outermost apply
(a missing, an extra and a misshapen leaf each raise a ShapeError naming the
layer path and the leaf), value semantics (``==``, ``hash``, ``replace``) and
``repr``. A new name in ``__all__`` without a sample (or an exemption with a
reason) fails :func:`test_every_public_name_has_a_sample_or_an_exemption`.

Everything runs abstractly (``jax.eval_shape``): no array is computed.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fundl
import fundl.layers as L

KEY = jax.random.key(0)


# -- the samples ------------------------------------------------------------------------

class Sample(NamedTuple):
    """A sample instance of one public layer name.

    Attributes:
      make: builds the sample (called twice for the equality checks, so it must
        not create new function objects: those compare by identity).
      shape: an input shape (batch included) it accepts; a tuple of shapes for
        multi-input layers.
      field: a hyper-parameter to change with ``replace`` (None: the type has
        none besides its name).
      value: the new value of ``field``.
      shown: what ``repr`` of the changed layer must contain (None: not checked,
        for combinators whose changed field is not a plain value).
    """

    make: Callable[[], L.Layer]
    shape: Any
    field: str | None = None
    value: Any = None
    shown: str | None = None


def _scale_init(key, shape):
    return shape, {"a": jnp.ones((shape[-1],))}


def _scale_apply(params, x, *, key, train):
    return x * params["a"][None]


def _count_init(key, shape):
    return shape, {}, {"n": jnp.zeros((), jnp.int32)}


def _count_apply(params, state, x, *, key, train):
    return x, ({"n": state["n"] + 1} if train else state)


def _siamese():
    return L.Graph(inputs=("a", "b"), outputs="d", nodes=[
        L.Node("left", L.Dense(3), "a"),
        L.Node("right", L.Dense(3), "b", share="left"),
        L.Node("d", L.Concat(), ("left", "right"))])


SAMPLES: dict[str, Sample] = {
    # leaves with parameters
    "Dense": Sample(lambda: L.Dense(3), (2, 4), "features", 5, "features=5"),
    "Conv": Sample(lambda: L.Conv(3, (3, 3), padding=1), (1, 5, 5, 2),
                   "out_channels", 4, "out_channels=4"),
    "ConvTranspose": Sample(lambda: L.ConvTranspose(3, (2, 2), stride=2), (1, 3, 3, 2),
                            "stride", 3, "stride=3"),
    "BatchNorm": Sample(lambda: L.BatchNorm(), (4, 3), "momentum", 0.2, "momentum=0.2"),
    "LayerNorm": Sample(lambda: L.LayerNorm(), (2, 3), "eps", 1e-3, "eps=0.001"),
    # parameter-free leaves
    "MaxPool": Sample(lambda: L.MaxPool(2), (1, 4, 4, 2), "stride", 1, "stride=1"),
    "AvgPool": Sample(lambda: L.AvgPool(2), (1, 4, 4, 2), "kernel_size", 4, "kernel_size=4"),
    "AdaptiveAvgPool": Sample(lambda: L.AdaptiveAvgPool((2, 2)), (1, 5, 5, 2),
                              "output_size", (3, 3), "output_size=(3, 3)"),
    "GlobalAvgPool": Sample(lambda: L.GlobalAvgPool(), (1, 3, 3, 2),
                            "keepdims", True, "keepdims=True"),
    "Flatten": Sample(lambda: L.Flatten(), (2, 3, 2)),
    "Reshape": Sample(lambda: L.Reshape((4, 2)), (2, 8), "shape", (2, 4), "shape=(2, 4)"),
    "Identity": Sample(lambda: L.Identity(), (2, 3)),
    "Lambda": Sample(lambda: L.Lambda(jnp.tanh), (2, 3), "fn", jnp.sin, "fn=sin"),
    "Dropout": Sample(lambda: L.Dropout(0.5), (2, 3), "rate", 0.25, "rate=0.25"),
    "ReLU": Sample(lambda: L.ReLU(), (2, 3)),
    "LeakyReLU": Sample(lambda: L.LeakyReLU(0.1), (2, 3), "negative_slope", 0.2,
                        "negative_slope=0.2"),
    "ELU": Sample(lambda: L.ELU(), (2, 3), "alpha", 0.5, "alpha=0.5"),
    "GELU": Sample(lambda: L.GELU(), (2, 3), "approximate", "tanh", "approximate='tanh'"),
    "Sigmoid": Sample(lambda: L.Sigmoid(), (2, 3)),
    "Tanh": Sample(lambda: L.Tanh(), (2, 3)),
    "Softplus": Sample(lambda: L.Softplus(), (2, 3), "beta", 2.0, "beta=2.0"),
    "Softmax": Sample(lambda: L.Softmax(), (2, 3), "axis", 0, "axis=0"),
    "LogSoftmax": Sample(lambda: L.LogSoftmax(), (2, 3), "axis", 0, "axis=0"),
    "Sum": Sample(lambda: L.Sum(), ((2, 3), (2, 3))),
    "Concat": Sample(lambda: L.Concat(), ((2, 3), (2, 2))),
    "Multiply": Sample(lambda: L.Multiply(), ((2, 3), (2, 3))),
    # leaves from functions
    "layer": Sample(lambda: L.layer("Scale", None, _scale_init, _scale_apply), (2, 3),
                    "shown", (("gain", 3),), "gain=3"),
    "stateful_layer": Sample(lambda: L.stateful_layer("Count", None, _count_init, _count_apply),
                             (2, 3), "title", "Tally", "Tally("),
    # combinators (small children) and blocks
    "Serial": Sample(lambda: L.Serial(L.Dense(3), L.ReLU(), L.Dense(2)), (2, 4),
                     "scan", 2, "scan=2"),
    "Parallel": Sample(lambda: L.Parallel(L.Dense(2, name="a"), L.Dense(2, name="b")), (2, 4),
                       "merge", "sum", "merge='sum'"),
    "Residual": Sample(lambda: L.Residual(L.Serial(L.Dense(4), L.Tanh(), L.Dense(4))), (2, 4),
                       "activation", jax.nn.relu, "activation=relu"),
    "Graph": Sample(_siamese, ((2, 4), (2, 4)), "outputs", "left", "outputs='left'"),
    "BasicBlock": Sample(lambda: L.BasicBlock(4), (1, 4, 4, 4), "stride", 2, "stride=2"),
    "Bottleneck": Sample(lambda: L.Bottleneck(2), (1, 4, 4, 8), "stride", 2, "stride=2"),
    "Remat": Sample(lambda: L.Remat(L.Serial(L.Dense(3), L.BatchNorm(), L.Dense(2))), (2, 4),
                    "policy", "dots_saveable", "policy='dots_saveable'"),
}

EXEMPT = {
    "Layer": "the abstract base class: build/forward raise NotImplementedError; user "
             "subclasses are tested in test_typed_layers.py",
    "Elementwise": "an abstract base: fn raises NotImplementedError; every concrete subclass "
                   "(Identity, Lambda, Dropout, the activations) has its own sample",
    "Node": "a NamedTuple describing a Graph node, not a layer; covered by the Graph sample",
}

# Samples whose init gives no parameters (and no state): the params tests that remove or
# reshape a leaf do not apply to them (the extra-key test does).
PARAM_FREE = {"MaxPool", "AvgPool", "AdaptiveAvgPool", "GlobalAvgPool", "Flatten", "Reshape",
              "Identity", "Lambda", "Dropout", "ReLU", "LeakyReLU", "ELU", "GELU", "Sigmoid",
              "Tanh", "Softplus", "Softmax", "LogSoftmax", "Sum", "Concat", "Multiply",
              "stateful_layer"}

NAMES = sorted(SAMPLES)
WITH_PARAMS = sorted(set(SAMPLES) - PARAM_FREE)
WITH_FIELD = sorted(n for n, s in SAMPLES.items() if s.field is not None)
STATEFUL = sorted(n for n, s in SAMPLES.items() if s.make().stateful)


# -- helpers ----------------------------------------------------------------------------

def abstract_init(layer, shape):
    """``(out_shape, params, state)`` with abstract leaves (nothing is allocated)."""
    box = {}

    def f(key):
        box["out"], p, s = layer.init_with_state(key, shape)
        return p, s

    p, s = jax.eval_shape(f, KEY)
    return box["out"], p, s


def zeros_like(tree):
    return jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), tree)


def input_like(shape):
    if shape and isinstance(shape[0], tuple):
        return tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in shape)
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def abstract_apply(layer, params, state, shape):
    """The shapes of ``layer.apply_with_state(params, state, x, train=False)``."""
    return jax.eval_shape(lambda p, s, x: layer.apply_with_state(p, s, x, train=False),
                          params, state, input_like(shape))


def shapes_of(tree):
    return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)


def first_leaf(tree) -> tuple[str, ...]:
    """The dict path of the first leaf of a nested dict."""
    (path, _), *_ = jax.tree_util.tree_flatten_with_path(tree)[0]
    return tuple(k.key for k in path)


def edit(tree: Mapping, path, fn):
    """A copy of nested dict ``tree`` with the dict at ``path[:-1]`` changed by
    ``fn(dict, last_key)`` (which edits it in place)."""
    tree = dict(tree)
    if len(path) == 1:
        fn(tree, path[0])
    else:
        tree[path[0]] = edit(tree[path[0]], path[1:], fn)
    return tree


def layer_at(layer: L.Layer, keys) -> L.Layer:
    """The layer whose params live under ``keys`` (a child's key is its name)."""
    for k in keys:
        layer = dict(layer.children())[k]
    return layer


def check_error_names(excinfo, model, tree_path, leaf):
    """The ShapeError names the layer owning the leaf by type and full path, and the leaf."""
    owner = layer_at(model, tree_path)
    full = "/".join((model.name, *tree_path))
    msg = str(excinfo.value)
    assert f"{owner.type_name} '{full}'" in msg, msg
    assert repr(leaf) in msg, msg


# -- coverage ---------------------------------------------------------------------------

def test_every_public_name_has_a_sample_or_an_exemption():
    public = set(L.__all__)
    missing = public - set(SAMPLES) - set(EXEMPT)
    assert not missing, f"add a sample to SAMPLES (or a reasoned exemption) for {sorted(missing)}"
    assert not (set(SAMPLES) | set(EXEMPT)) - public, "stale entries: not in fundl.layers.__all__"
    assert not set(SAMPLES) & set(EXEMPT)
    assert all(reason for reason in EXEMPT.values())


@pytest.mark.parametrize("name", NAMES)
def test_sample_is_an_instance_of_its_type(name):
    layer = SAMPLES[name].make()
    assert isinstance(layer, L.Layer) and isinstance(layer, fundl.Layer)
    cls = getattr(L, name)
    if isinstance(cls, type):
        assert type(layer) is cls
        assert layer.type_name == name


# -- (a) the shape contract ------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_init_shape_is_the_shape_apply_gives(name):
    s = SAMPLES[name]
    layer = s.make()
    out, params, state = abstract_init(layer, s.shape)
    y, new_state = abstract_apply(layer, params, state, s.shape)
    assert shapes_of(y) == out
    assert shapes_of(new_state) == shapes_of(state)  # eval mode keeps the state's structure
    # init's short form agrees with the stateful flag
    short = jax.eval_shape(lambda k: layer.init(k, s.shape), KEY)
    assert len(short) == (3 if layer.stateful else 2)
    assert (name in PARAM_FREE) == (params == {})
    assert layer.stateful == (state != {})


# -- (b) params checked at the outermost apply ---------------------------------------------

def _trees(name):
    s = SAMPLES[name]
    layer = s.make()
    _, params, state = abstract_init(layer, s.shape)
    return layer, s.shape, zeros_like(params), zeros_like(state)


@pytest.mark.parametrize("name", WITH_PARAMS)
def test_missing_leaf_is_refused(name):
    layer, shape, params, state = _trees(name)
    path = first_leaf(params)
    bad = edit(params, path, lambda d, k: d.pop(k))
    with pytest.raises(fundl.ShapeError) as e:
        abstract_apply(layer, bad, state, shape)
    check_error_names(e, layer, path[:-1], path[-1])
    assert "missing" in str(e.value)


@pytest.mark.parametrize("name", NAMES)
def test_extra_key_is_refused(name):
    layer, shape, params, state = _trees(name)
    # next to the first leaf, or at the top for a layer without parameters
    path = first_leaf(params)[:-1] + ("extra",) if params else ("extra",)
    bad = edit(params, path, lambda d, k: d.__setitem__(k, np.zeros(2, np.float32)))
    with pytest.raises(fundl.ShapeError) as e:
        abstract_apply(layer, bad, state, shape)
    check_error_names(e, layer, path[:-1], "extra")
    assert "unexpected" in str(e.value)


@pytest.mark.parametrize("name", WITH_PARAMS)
def test_misshapen_leaf_is_refused(name):
    layer, shape, params, state = _trees(name)
    path = first_leaf(params)

    def grow(d, k):
        d[k] = np.zeros(tuple(n + 1 for n in d[k].shape) or (2,), d[k].dtype)

    bad = edit(params, path, grow)
    with pytest.raises(fundl.ShapeError) as e:
        abstract_apply(layer, bad, state, shape)
    check_error_names(e, layer, path[:-1], path[-1])
    assert "has shape" in str(e.value)


@pytest.mark.parametrize("name", STATEFUL)
def test_state_is_checked_too(name):
    layer, shape, params, state = _trees(name)
    path = first_leaf(state)
    bad = edit(state, path, lambda d, k: d.pop(k))
    with pytest.raises(fundl.ShapeError) as e:
        abstract_apply(layer, params, bad, shape)
    check_error_names(e, layer, path[:-1], path[-1])
    assert "state is missing" in str(e.value)


# -- (c) equality, hashing, replace ----------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_equal_fields_make_equal_layers_and_a_new_name_a_different_one(name):
    make = SAMPLES[name].make
    a, b = make(), make()
    assert a is not b
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    other = a.replace(name="other")
    assert other != a and other.name == "other" and type(other) is type(a)
    assert other.replace(name=a.name) == a
    with pytest.raises(fundl.ConfigError, match="nonexistent"):
        a.replace(nonexistent=1)


@pytest.mark.parametrize("name", WITH_FIELD)
def test_replace_changes_a_hyper_parameter_into_a_valid_layer(name):
    s = SAMPLES[name]
    a = s.make()
    changed = a.replace(**{s.field: s.value})
    assert changed != a and type(changed) is type(a) and changed.name == a.name
    assert changed == s.make().replace(**{s.field: s.value})
    assert hash(changed) == hash(s.make().replace(**{s.field: s.value}))
    value = getattr(changed, s.field)
    assert value is s.value if callable(s.value) else value == s.value
    out, _, _ = abstract_init(changed, s.shape)  # valid: it builds on the same input
    assert out


# -- (d) repr ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_repr_names_the_type_the_name_and_a_changed_field(name):
    s = SAMPLES[name]
    layer = s.make().replace(name="probe")
    text = repr(layer)
    assert text.startswith(layer.type_name + "("), text
    assert "name='probe'" in text, text
    if s.field is not None:
        changed = repr(layer.replace(**{s.field: s.value}))
        assert s.shown in changed, changed

"""A model zoo: functions that return :class:`~fundl.layers.Layer` s.

Data layout: channels last, ``x: [N, H, W, C]``. Building a model allocates
nothing: parameters appear only when ``model.init`` (or
``model.init_with_state``) is called, so ``jax.eval_shape`` counts them for
free::

    >>> import jax, math
    >>> from fundl import models
    >>> net = models.vgg16()
    >>> params = jax.eval_shape(lambda k: net.init(k, (1, 224, 224, 3))[1], jax.random.key(0))
    >>> sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params))
    138357544

Parameter names follow the layer tree, e.g. ``features/conv1/w`` or
``layer2/block1/body/conv1/w``. Parameter counts quoted in the docstrings
equal torchvision's for the same architecture (the torchvision flatten order
is NCHW, ours NHWC: porting a first dense layer's weights needs a permutation,
the counts do not). :mod:`fundl.interop` loads and writes PyTorch state dicts
of every model here: torchvision's keys for the ResNets, VGGs and AlexNet
(``conv1``, ``layer1.0.conv1``, ``features.0``, ``classifier.6``, ...) and, for
``mlp``, ``convnet_mnist`` and ``lenet5``, those of the ``torch.nn.Sequential``
shown in their docstrings; it permutes the first dense layer's rows.

Models with batch norm (the ``*_bn`` VGGs, ResNets) are ``stateful``: ``init``
returns ``(out_shape, params, state)`` and ``apply(params, x, state=state,
train=...)`` returns ``(y, new_state)``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.nn import initializers

from . import _context, _scan
from . import layers as L
from ._blocks import resnet_conv_init
from ._errors import ConfigError, ShapeError
from ._layer import Layer
from ._remat import POLICY_NAMES, RematSerial

__all__ = [
    "mlp", "convnet_mnist", "lenet5", "alexnet",
    "vgg", "vgg11", "vgg13", "vgg16", "vgg19",
    "resnet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "convolutionize", "context_module",
]


# -- helpers -------------------------------------------------------------------

_ACTIVATIONS = {"relu": L.ReLU, "tanh": L.Tanh, "sigmoid": L.Sigmoid, "gelu": L.GELU,
                "elu": L.ELU, "leaky_relu": L.LeakyReLU, "softplus": L.Softplus}
# jax functions with an exact Layer twin (a named type reads better in summaries).
_FUNCTION_LAYERS = {jax.nn.relu: L.ReLU, jnp.tanh: L.Tanh, jax.nn.sigmoid: L.Sigmoid}


def _activation(act, where: str) -> Callable[[], Layer] | None:
    """A zero-argument factory of activation layers, from any accepted spelling.

    ``act`` may be ``None``, a name (``'relu'``), a :class:`Layer`, a layer
    class (``L.ReLU``) or an elementwise function (``jax.nn.relu``, which
    becomes a :class:`~fundl.layers.Lambda`).
    """
    if act is None:
        return None
    if isinstance(act, Layer):
        return lambda: act
    if isinstance(act, str):
        if act not in _ACTIVATIONS:
            raise ConfigError(f"{where}: activation must be one of {sorted(_ACTIVATIONS)}, a Layer, "
                              f"a Layer class or a function; got {act!r}")
        return _ACTIVATIONS[act]
    if isinstance(act, type) and issubclass(act, Layer):
        return act
    if not callable(act):
        raise ConfigError(f"{where}: activation must be a name, a Layer, a Layer class (e.g. "
                          f"fundl.layers.ReLU) or an elementwise function (e.g. jax.nn.relu); "
                          f"got {act!r}")
    try:
        if act in _FUNCTION_LAYERS:
            return _FUNCTION_LAYERS[act]
    except TypeError:  # unhashable callable
        pass
    # A Layer factory (e.g. functools.partial(L.LeakyReLU, 0.2)) builds a Layer when
    # called without arguments; an elementwise function needs its input.
    try:
        probe = act()
    except TypeError:
        probe = None
    return act if isinstance(probe, Layer) else (lambda: L.Lambda(act))


def _check_int(where: str, **values):
    for arg, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{where}: {arg} must be a positive int; got {arg}={v!r}")


def _remat_policy(where: str, remat):
    """``(on, policy)`` for a model's ``remat`` argument (False, True or a policy name)."""
    if isinstance(remat, bool):
        return remat, None
    if isinstance(remat, str) and remat in POLICY_NAMES:
        return True, remat
    raise ConfigError(f"{where}: remat must be False, True (recompute everything) or a "
                      f"jax.checkpoint_policies name among {list(POLICY_NAMES)}; got "
                      f"remat={remat!r}"[:400])


def _remat(where: str, remat) -> Callable[[Layer], Layer]:
    """The function wrapping a block for a model's ``remat`` argument (identity when off)."""
    on, policy = _remat_policy(where, remat)
    return (lambda block: L.Remat(block, policy)) if on else (lambda block: block)


def _check_rate(where: str, rate):
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ConfigError(f"{where}: dropout must be a probability in [0, 1); got dropout={rate!r}")
    return float(rate)


# -- multilayer perceptron -----------------------------------------------------

def mlp(features: Sequence[int], *, activation=jax.nn.relu, dropout: float = 0.0,
        flatten: bool = True, name: str = "mlp") -> Layer:
    """A multilayer perceptron: ``Flatten -> Dense -> act [-> Dropout] -> ... -> Dense``.

    Shapes: ``[N, *dims] -> [N, features[-1]]`` (with ``flatten=False`` the
    input must already be ``[N, in]``).

    Args:
      features: output sizes of the dense layers, e.g. ``(256, 10)``.
      activation: between dense layers (not after the last): a function such
        as ``jax.nn.relu``, a Layer factory such as ``fundl.layers.GELU``, a
        Layer, a name (``'relu'``, ``'tanh'``, ...) or ``None``.
      dropout: drop probability after each hidden activation (0: no Dropout layer).
      flatten: start with :func:`~fundl.layers.Flatten`.
      name: parameter key (children ``dense1, dense2, ...``).

    Parameters: ``sum(in_i * out_i + out_i)`` over the dense layers, e.g.
    ``mlp((256, 10))`` on ``(N, 28, 28, 1)`` has 784*256+256 + 256*10+10 = 203,530.

    PyTorch twin (the state-dict keys :mod:`fundl.interop` uses): for
    ``mlp((256, 10))`` on 28x28x1, ``nn.Sequential(nn.Flatten(), nn.Linear(784,
    256), nn.ReLU(), nn.Linear(256, 10))``, keys ``'1.weight'``, ``'3.weight'``
    (and biases); every layer counts, so with ``dropout > 0`` each hidden
    activation is followed by an ``nn.Dropout`` and the indices shift.

    Example:
      >>> net = mlp((32, 10))
      >>> out_shape, params = net.init(jax.random.key(0), (8, 28, 28, 1))
      >>> out_shape, params['dense1']['w'].shape
      ((8, 10), (784, 32))
    """
    where = f"mlp '{name}'"
    if isinstance(features, int) or not isinstance(features, Sequence) or not features:
        raise ConfigError(f"{where}: features must be a non-empty sequence of ints, e.g. (256, 10); "
                          f"got {features!r}")
    _check_int(where, **{f"features[{i}]": f for i, f in enumerate(features)})
    act = _activation(activation, where)
    rate = _check_rate(where, dropout)
    if not isinstance(flatten, bool):
        raise ConfigError(f"{where}: flatten must be True or False; got {flatten!r}")
    parts = [L.Flatten()] if flatten else []
    for i, f in enumerate(features):
        parts.append(L.Dense(f, name=f"dense{i + 1}"))
        if i < len(features) - 1:
            if act is not None:
                parts.append(act())
            if rate > 0:
                parts.append(L.Dropout(rate))
    return L.Serial(*parts, name=name)


# -- small convnets for MNIST ----------------------------------------------------

def convnet_mnist(num_classes: int = 10, *, name: str = "convnet_mnist") -> Layer:
    """A small MNIST convnet (no padding anywhere, so it convolutionizes exactly).

    ``conv 32 k5 -> maxpool 3 -> relu -> conv 64 k5 -> maxpool 2 -> relu ->
    flatten -> dense 200 -> relu -> dense num_classes``.

    Shapes: ``[N, 28, 28, 1] -> [N, num_classes]`` (maps 24 -> 8 -> 4 -> 2, so
    the flatten sees ``2 * 2 * 64 = 256``; the first dense layer fixes 28x28).

    Parameters: 103,496 + 201 * num_classes = 105,506 for 10 classes.

    PyTorch twin (the state-dict keys :mod:`fundl.interop` uses):
    ``nn.Sequential(nn.Conv2d(1, 32, 5), nn.MaxPool2d(3), nn.ReLU(), nn.Conv2d(32,
    64, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(256, 200),
    nn.ReLU(), nn.Linear(200, num_classes))``: keys ``'0.weight'``,
    ``'3.weight'``, ``'7.weight'``, ``'9.weight'`` (and biases); ``fc1``'s rows
    are permuted from torch's (C, H, W) flatten order to (H, W, C).

    Example:
      >>> convnet_mnist().init(jax.random.key(0), (8, 28, 28, 1))[0]
      (8, 10)
    """
    _check_int(f"convnet_mnist '{name}'", num_classes=num_classes)
    return L.Serial(
        L.Conv(32, (5, 5), name="conv1"), L.MaxPool(3, name="pool1"), L.ReLU(name="relu1"),
        L.Conv(64, (5, 5), name="conv2"), L.MaxPool(2, name="pool2"), L.ReLU(name="relu2"),
        L.Flatten(),
        L.Dense(200, name="fc1"), L.ReLU(name="relu3"),
        L.Dense(num_classes, name="fc2"),
        name=name)


def lenet5(num_classes: int = 10, *, activation="tanh", name: str = "lenet5") -> Layer:
    """LeNet-5 (LeCun et al. 1998) for 28x28 inputs, with average-pool subsampling.

    ``conv 6 k5 p2 -> act -> avgpool 2 -> conv 16 k5 -> act -> avgpool 2 ->
    flatten -> dense 120 -> act -> dense 84 -> act -> dense num_classes``.
    The padding of 2 makes a 28x28 input behave like the original 32x32.

    Shapes: ``[N, 28, 28, 1] -> [N, num_classes]`` (maps 28 -> 14 -> 10 -> 5,
    flatten ``5 * 5 * 16 = 400``).

    Args:
      num_classes: outputs of the last layer.
      activation: ``'tanh'`` (the original), ``'relu'``, ``'sigmoid'``, a
        Layer factory, a Layer or an elementwise function.
      name: parameter key (children ``conv1, conv2, fc1, fc2, fc3``).

    Parameters: 60,856 + 85 * num_classes = 61,706 for 10 classes.

    PyTorch twin (the state-dict keys :mod:`fundl.interop` uses), with ``act``
    ``nn.Tanh()`` (or the chosen activation): ``nn.Sequential(nn.Conv2d(1, 6, 5,
    padding=2), act, nn.AvgPool2d(2), nn.Conv2d(6, 16, 5), act, nn.AvgPool2d(2),
    nn.Flatten(), nn.Linear(400, 120), act, nn.Linear(120, 84), act,
    nn.Linear(84, num_classes))``: keys ``'0.weight'``, ``'3.weight'``,
    ``'7.weight'``, ``'9.weight'``, ``'11.weight'`` (and biases).

    Example:
      >>> lenet5(activation='relu').init(jax.random.key(0), (8, 28, 28, 1))[0]
      (8, 10)
    """
    where = f"lenet5 '{name}'"
    _check_int(where, num_classes=num_classes)
    act = _activation(activation, where)
    if act is None:
        raise ConfigError(f"{where}: activation must not be None")
    return L.Serial(
        L.Conv(6, (5, 5), padding=2, name="conv1"), act(), L.AvgPool(2, name="pool1"),
        L.Conv(16, (5, 5), name="conv2"), act(), L.AvgPool(2, name="pool2"),
        L.Flatten(),
        L.Dense(120, name="fc1"), act(),
        L.Dense(84, name="fc2"), act(),
        L.Dense(num_classes, name="fc3"),
        name=name)


# -- AlexNet and VGG ---------------------------------------------------------------

def _classifier(hidden: int, num_classes: int, rate: float, dropout_first: bool, **init):
    """fc-relu-dropout x2 then fc (VGG); AlexNet puts each dropout before its fc."""
    parts = []
    for i in (1, 2):
        if dropout_first and rate > 0:
            parts.append(L.Dropout(rate))
        parts += [L.Dense(hidden, name=f"fc{i}", **init), L.ReLU()]
        if not dropout_first and rate > 0:
            parts.append(L.Dropout(rate))
    parts.append(L.Dense(num_classes, name="fc3", **init))
    return L.Serial(*parts, name="classifier")


def alexnet(num_classes: int = 1000, *, dropout: float = 0.5, name: str = "alexnet") -> Layer:
    """AlexNet as in torchvision (Krizhevsky 2014, "one weird trick" variant).

    ``features``: conv 64 k11 s4 p2, relu, maxpool 3 s2, conv 192 k5 p2, relu,
    maxpool 3 s2, conv 384 k3 p1, relu, conv 256 k3 p1, relu, conv 256 k3 p1,
    relu, maxpool 3 s2; ``avgpool``: adaptive average pool to 6x6; ``flatten``;
    ``classifier``: dropout, fc 4096, relu, dropout, fc 4096, relu, fc num_classes.
    PyTorch's default initialisation.

    Shapes: ``[N, 224, 224, 3] -> [N, num_classes]``; any input of at least
    63x63 works (the adaptive pool fixes the classifier's input at 6x6x256).

    Parameters: 57,003,840 + 4,097 * num_classes = 61,100,840 for 1000 classes.

    Example:
      >>> from fundl import summary
      >>> s = summary(alexnet(10), (1, 224, 224, 3))  # shapes only, no weights made
      >>> s.output_shape, s.total_params
      ((1, 10), 57044810)
    """
    where = f"alexnet '{name}'"
    _check_int(where, num_classes=num_classes)
    rate = _check_rate(where, dropout)
    features = L.Serial(
        L.Conv(64, (11, 11), stride=4, padding=2, name="conv1"), L.ReLU(),
        L.MaxPool(3, 2, name="pool"),
        L.Conv(192, (5, 5), padding=2, name="conv2"), L.ReLU(), L.MaxPool(3, 2, name="pool"),
        L.Conv(384, (3, 3), padding=1, name="conv3"), L.ReLU(),
        L.Conv(256, (3, 3), padding=1, name="conv4"), L.ReLU(),
        L.Conv(256, (3, 3), padding=1, name="conv5"), L.ReLU(), L.MaxPool(3, 2, name="pool"),
        name="features")
    return L.Serial(features, L.AdaptiveAvgPool(6, name="avgpool"), L.Flatten(),
                    _classifier(4096, num_classes, rate, dropout_first=True), name=name)


# torchvision's configurations: channels of 3x3 convs, "M" a 2x2 max-pool.
VGG_CONFIGS = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
          512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"),
}

# torchvision's VGG initialisation.
_vgg_conv_init = initializers.variance_scaling(2.0, "fan_out", "normal")
_vgg_dense_init = initializers.normal(0.01)


def vgg(config: str | Sequence, num_classes: int = 1000, *, batch_norm: bool = False,
        dropout: float = 0.5, remat: bool | str = False, name: str = "vgg") -> Layer:
    """A VGG network (Simonyan & Zisserman 2015) from a torchvision-style configuration.

    ``features``: for each entry of ``config``, an int ``c`` adds ``conv c k3 p1
    [-> batch norm] -> relu`` and ``"M"`` adds a 2x2 max-pool; ``avgpool``:
    adaptive average pool to 7x7; ``flatten``; ``classifier``: fc 4096, relu,
    dropout, fc 4096, relu, dropout, fc num_classes. Initialisation as
    torchvision (kaiming-normal fan-out convs, N(0, 0.01) dense, zero biases).

    Args:
      config: ``'A'``, ``'B'``, ``'D'``, ``'E'`` (VGG 11/13/16/19) or a sequence
        of ints and ``"M"``.
      num_classes: outputs of the last layer.
      batch_norm: add batch norm after every conv (the model is then stateful).
      dropout: drop probability in the classifier (0: no Dropout layers).
      remat: recompute each stage of ``features`` (its convs, batch norms,
        ReLUs and its max-pool) in the backward pass (``jax.checkpoint``), so a
        train step keeps only the stages' (pooled) outputs; ``features`` is then
        a :class:`~fundl._remat.RematSerial` with the same children and
        parameter tree. ``True`` recomputes everything; a policy name (e.g.
        ``'dots_saveable'``) chooses what may be saved. The classifier is not
        recomputed (its dense layers dominate the parameters, not the
        activations). The same parameters, state and results. The stages
        differ, so there is no scan to keep the recomputation apart on the CPU
        backend, whose compiler merges it back (no saving there; see
        :class:`~fundl.layers.Remat`).
      name: parameter key (children ``features/conv1..``, ``features/bn1..``,
        ``classifier/fc1..fc3``).

    Shapes: ``[N, 224, 224, 3] -> [N, num_classes]``; any input of at least
    32x32 works (the adaptive pool fixes the classifier's input at 7x7x512).
    """
    where = f"vgg '{name}'"
    cfg = VGG_CONFIGS.get(config) if isinstance(config, str) else config
    if cfg is None or isinstance(cfg, str) or not isinstance(cfg, Sequence) or not cfg or any(
            v != "M" and (not isinstance(v, int) or isinstance(v, bool) or v < 1) for v in cfg):
        raise ConfigError(f"{where}: config must be one of {sorted(VGG_CONFIGS)} or a sequence "
                          f"of positive ints and 'M'; got {config!r}")
    if not isinstance(batch_norm, bool):
        raise ConfigError(f"{where}: batch_norm must be True or False; got {batch_norm!r}")
    _check_int(where, num_classes=num_classes)
    rate = _check_rate(where, dropout)
    parts, i = [], 0
    for v in cfg:
        if v == "M":
            parts.append(L.MaxPool(2, name="pool"))
            continue
        i += 1
        parts.append(L.Conv(v, (3, 3), padding=1, w_init=_vgg_conv_init, b_init=initializers.zeros,
                            name=f"conv{i}"))
        if batch_norm:
            parts.append(L.BatchNorm(name=f"bn{i}"))
        parts.append(L.ReLU())
    return L.Serial(_features(parts, _remat_policy(where, remat)),
                    L.AdaptiveAvgPool(7, name="avgpool"),
                    L.Flatten(),
                    _classifier(4096, num_classes, rate, dropout_first=False,
                                w_init=_vgg_dense_init, b_init=initializers.zeros),
                    name=name)


def _features(parts, remat) -> Layer:
    """VGG's ``features`` chain; with ``remat = (True, policy)`` one checkpointed segment
    per stage (the layers up to and including each max-pool)."""
    features = L.Serial(*parts, name="features")
    on, policy = remat
    if not on:
        return features
    segments, stage = [], []
    for child in features.layers:
        stage.append(child.name)
        if isinstance(child, L.MaxPool):
            segments.append(tuple(stage))
            stage = []
    segments += [tuple(stage)] if stage else []
    return RematSerial(*features.layers, segments=tuple(segments), policy=policy,
                       name="features")


def _vgg_variant(depth, config, counts):
    def build(num_classes: int = 1000, *, batch_norm: bool = False, dropout: float = 0.5,
              remat: bool | str = False, name: str | None = None) -> Layer:
        default = f"vgg{depth}_bn" if batch_norm else f"vgg{depth}"
        return vgg(config, num_classes, batch_norm=batch_norm, dropout=dropout, remat=remat,
                   name=name or default)

    build.__name__ = build.__qualname__ = f"vgg{depth}"
    build.__doc__ = f"""VGG-{depth} (configuration {config}), as torchvision's ``vgg{depth}`` / ``vgg{depth}_bn``.

    See :func:`vgg` for the layers and arguments.

    Shapes: ``[N, 224, 224, 3] -> [N, num_classes]`` (any input >= 32x32).

    Parameters (1000 classes): {counts[0]:,}; with ``batch_norm=True``
    {counts[1]:,} (plus the running statistics in the state).
    """
    return build


vgg11 = _vgg_variant(11, "A", (132_863_336, 132_868_840))
vgg13 = _vgg_variant(13, "B", (133_047_848, 133_053_736))
vgg16 = _vgg_variant(16, "D", (138_357_544, 138_365_992))
vgg19 = _vgg_variant(19, "E", (143_667_240, 143_678_248))


# -- ResNet ----------------------------------------------------------------------

_BLOCKS = {"basic": (L.BasicBlock, 1), "bottleneck": (L.Bottleneck, 4)}


def resnet(block, layers: Sequence[int], num_classes: int = 1000, *, stem: str = "imagenet",
           width: int = 64, scan: bool | int = False, remat: bool | str = False,
           name: str = "resnet") -> Layer:
    """A ResNet (He et al. 2016) as in torchvision, with an ImageNet or CIFAR stem.

    ``stem`` -> ``layer1 .. layerK`` -> ``avgpool`` (global average) -> ``fc``.
    Stage ``i`` (1-based) has ``layers[i-1]`` blocks of ``width * 2**(i-1)``
    channels (times 4 for bottlenecks); its first block has stride 2 for
    ``i >= 2``, and a projection shortcut where the shape changes.

    Args:
      block: ``fundl.layers.BasicBlock`` / ``'basic'`` or
        ``fundl.layers.Bottleneck`` / ``'bottleneck'``, or any
        ``block(channels, *, stride, name) -> Layer``.
      layers: the number of blocks per stage, e.g. ``(2, 2, 2, 2)``.
      num_classes: outputs of ``fc``.
      stem: ``'imagenet'``: ``conv1`` 64 k7 s2 p3 (no bias), ``bn1``, ``relu``,
        ``maxpool`` 3 s2 p1 (total stride 4); ``'cifar'``: ``conv1`` 64 k3 s1
        p1 (no bias), ``bn1``, ``relu`` (stride 1, for 32x32 inputs).
      width: channels of the stem and the first stage.
      scan: run the identical blocks of each stage (all but a stage's first
        block when that one changes the shape) as one ``lax.scan``
        (``Serial(..., scan=...)``): ``True`` for stages with at least 8
        such blocks (ResNet-101/152's third stage), an int ``k`` for at
        least ``k``. The same parameters, state and results; ResNet-152's
        train step compiles in about half the time on CPU.
      remat: wrap every residual block in :class:`~fundl.layers.Remat`
        (``jax.checkpoint``): the backward pass recomputes each block's
        activations from its input, so a train step keeps only the blocks'
        inputs (ResNet-50, 224x224, batch 32: see BENCHMARKS.md) for about
        one more forward pass of compute. ``True`` recomputes everything; a
        policy name (e.g. ``'dots_saveable'``: keep the conv outputs) chooses
        what may be saved. Composes with ``scan`` (the scanned body is the
        wrapped block). The same parameters, state and results. On the CPU
        backend XLA merges the recomputation back unless it sits in a scan:
        use ``scan=2`` with it there (ResNet-50: 0.64x the peak memory).
      name: parameter key (children ``conv1, bn1, layer1/block1/..., fc``).

    Shapes: ``[N, H, W, 3] -> [N, num_classes]``; ImageNet: 224x224 (total
    stride 32, 7x7 before the pool); CIFAR: 32x32 (total stride 8, 4x4).
    The model is stateful (batch norm).
    """
    where = f"resnet '{name}'"
    if isinstance(block, str):
        if block not in _BLOCKS:
            raise ConfigError(f"{where}: block must be 'basic', 'bottleneck' or a block "
                              f"constructor; got {block!r}")
        block = _BLOCKS[block][0]
    elif not callable(block):
        raise ConfigError(f"{where}: block must be 'basic', 'bottleneck' or a block constructor "
                          f"such as fundl.layers.BasicBlock; got {block!r}")
    if isinstance(layers, int) or not isinstance(layers, Sequence) or not layers:
        raise ConfigError(f"{where}: layers must be a non-empty sequence of block counts, e.g. "
                          f"(2, 2, 2, 2); got {layers!r}")
    _scan.min_run(scan, where)  # a clear error naming this model
    wrap = _remat(where, remat)
    _check_int(where, num_classes=num_classes, width=width,
               **{f"layers[{i}]": n for i, n in enumerate(layers)})
    if stem == "imagenet":
        head = [L.Conv(width, (7, 7), stride=2, padding=3, bias=False, w_init=resnet_conv_init,
                       name="conv1"),
                L.BatchNorm(name="bn1"), L.ReLU(), L.MaxPool(3, 2, 1, name="maxpool")]
    elif stem == "cifar":
        head = [L.Conv(width, (3, 3), stride=1, padding=1, bias=False, w_init=resnet_conv_init,
                       name="conv1"),
                L.BatchNorm(name="bn1"), L.ReLU()]
    else:
        raise ConfigError(f"{where}: stem must be 'imagenet' or 'cifar'; got {stem!r}")
    stages = []
    for i, n in enumerate(layers):
        blocks = [wrap(block(width * 2 ** i, stride=2 if (i > 0 and j == 0) else 1,
                             name=f"block{j + 1}")) for j in range(n)]
        stages.append(L.Serial(*blocks, scan=scan, name=f"layer{i + 1}"))
    return L.Serial(*head, *stages, L.GlobalAvgPool(name="avgpool"),
                    L.Dense(num_classes, name="fc"), name=name)


def _resnet_variant(depth, kind, layers, count):
    def build(num_classes: int = 1000, *, stem: str = "imagenet", scan: bool | int = False,
              remat: bool | str = False, name: str | None = None) -> Layer:
        return resnet(kind, layers, num_classes, stem=stem, scan=scan, remat=remat,
                      name=name or f"resnet{depth}")

    block = "BasicBlock" if kind == "basic" else "Bottleneck"
    build.__name__ = build.__qualname__ = f"resnet{depth}"
    build.__doc__ = f"""ResNet-{depth}: {block} stages {list(layers)}, as torchvision's ``resnet{depth}``.

    See :func:`resnet` for the stems and the layer names.

    Args:
      num_classes: outputs of ``fc``.
      stem: ``'imagenet'`` (224x224 inputs) or ``'cifar'`` (32x32 inputs).
      scan: compile each stage's repeated blocks once (``lax.scan``); same
        parameters and results (see :func:`resnet`).
      remat: recompute each residual block in the backward pass (less memory,
        more compute; ``True`` or a ``jax.checkpoint_policies`` name; see
        :func:`resnet`); same parameters and results.
      name: parameter key (default ``'resnet{depth}'``).

    Shapes: ``[N, 224, 224, 3] -> [N, num_classes]`` (``'cifar'``: ``[N, 32, 32, 3]``).

    Parameters (ImageNet stem, 1000 classes): {count:,} (plus batch-norm
    statistics in the state).
    """
    return build


resnet18 = _resnet_variant(18, "basic", (2, 2, 2, 2), 11_689_512)
resnet34 = _resnet_variant(34, "basic", (3, 4, 6, 3), 21_797_672)
resnet50 = _resnet_variant(50, "bottleneck", (3, 4, 6, 3), 25_557_032)
resnet101 = _resnet_variant(101, "bottleneck", (3, 4, 23, 3), 44_549_160)
resnet152 = _resnet_variant(152, "bottleneck", (3, 8, 36, 3), 60_192_808)


# -- convolutionize ----------------------------------------------------------------

# Layers that act on each position's channel vector alone (last axis), so they
# mean the same on [N, F] and on a map [N, H, W, F]. Elementwise layers include
# the activations, Identity, Dropout and Lambda (whose function is assumed to be
# elementwise, as mlp's activation functions are).
_PER_POSITION = (L.Elementwise, L.BatchNorm)
_AXIS_LAYERS = (L.Softmax, L.LogSoftmax)
_GLOBAL_POOLS = (L.AdaptiveAvgPool, L.GlobalAvgPool)


def _linear_units(lay: Layer, path: tuple):
    """The leaves of nested Serials, in order, as ``(path, layer)``; other layers stay whole."""
    if isinstance(lay, L.Serial):
        for child in lay.layers:
            yield from _linear_units(child, path + (child.name,))
    else:
        yield path, lay


def _abstract_init(lay: Layer, shape):
    """Output shape and abstract params of ``lay`` on ``shape`` (nothing is allocated)."""
    box = {}

    def f():
        box["out"], p, s = lay.init_with_state(jax.random.key(0), shape)
        return p, s

    with _context.using(shapes_only=True):
        params, _ = jax.eval_shape(f)
    return box["out"], params


def _find(lay: Layer, types, path=()):
    """``(path, layer)`` for every layer of one of ``types`` in ``lay``'s tree."""
    if isinstance(lay, types):
        yield path, lay
    for n, child in lay.children():
        yield from _find(child, types, path + (n,))


def _rebuild(lay: Layer, path: tuple, actions: dict):
    """``lay`` with the actions applied (a Layer to substitute, or None to drop)."""
    if path in actions:
        return actions[path]
    if not isinstance(lay, L.Serial):
        return lay
    kids = [_rebuild(c, path + (c.name,), actions) for c in lay.layers]
    if all(new is old for new, old in zip(kids, lay.layers)):
        return lay
    # Children already carry their unique names, so Serial keeps every parameter key.
    kids = tuple(k for k in kids if k is not None)
    return lay.replace(layers=kids) if kids else None


def _update(tree, path, fn, where):
    if not path:
        return fn(tree)
    if not isinstance(tree, dict) or path[0] not in tree:
        raise ShapeError(f"{where}: params have no entry {path[0]!r} on the way to a dense layer; "
                         "were they made by the original model's init?")
    out = dict(tree)
    out[path[0]] = _update(tree[path[0]], path[1:], fn, where)
    return out


class _Units(NamedTuple):
    """The Serial chain of a model, flattened: paths, layers and their input shapes."""

    model: Layer
    input_shape: tuple
    paths: list
    layers: list
    shapes: list

    def at(self, i: int) -> str:
        """``"Dense 'net/classifier/fc1'"``: unit ``i``, for messages."""
        return f"{self.layers[i].type_name} '{'/'.join((self.model.name,) + self.paths[i])}'"


def _units(model: Layer, input_shape) -> _Units:
    where = "convolutionize"
    if not isinstance(model, Layer):
        raise ConfigError(f"{where}: model must be a fundl Layer; got {type(model).__name__}")
    if not isinstance(model, L.Serial):
        raise ConfigError(f"{where}: model must be a Serial ending in a Flatten -> Dense head; "
                          f"got a {model.type_name}")
    paths, layers, shapes = [], [], []
    shape = tuple(input_shape)
    for path, unit in _linear_units(model, ()):
        paths.append(path)
        layers.append(unit)
        shapes.append(shape)
        shape, _ = _abstract_init(unit, shape)
    return _Units(model, tuple(input_shape), paths, layers, shapes)


def _head_start(u: _Units) -> int:
    """Index of the Flatten (or GlobalAvgPool over a 1x1 map) that starts the head."""
    for i, unit in enumerate(u.layers):
        s = u.shapes[i]
        if isinstance(unit, L.Flatten) or (
                isinstance(unit, L.GlobalAvgPool) and len(s) > 2
                and all(d == 1 for d in s[1:-1]) and not unit.keepdims):
            return i
    chain = " -> ".join(x.type_name for x in u.layers)
    pools = [f" {u.at(i)} averages its {u.shapes[i][1:-1]} input at input_shape {u.input_shape}, "
             "which is not an identity, so it cannot be made convolutional."
             for i, x in enumerate(u.layers) if isinstance(x, L.GlobalAvgPool)]
    raise ConfigError(f"convolutionize: found no Flatten -> Dense head in {u.model.type_name} "
                      f"'{u.model.name}' (its chain: {chain}). The head must be a Flatten (or a "
                      "GlobalAvgPool over a 1x1 map) followed by Dense layers, inside nested "
                      "Serials." + "".join(pools))


def _head_actions(u: _Units, start: int):
    """What becomes of each head unit: ``(actions, dense_paths)``."""
    spatial = u.shapes[start][1:-1]
    if not spatial:
        raise ConfigError(f"convolutionize: the input of {u.at(start)} has shape "
                          f"{u.shapes[start]}: no spatial dims, so there is nothing to make "
                          "convolutional")
    n = len(spatial)
    actions, dense_paths = {u.paths[start]: None}, {}
    for i in range(start + 1, len(u.layers)):
        path, unit, shape = u.paths[i], u.layers[i], u.shapes[i]
        if isinstance(unit, L.Dense):
            first = not dense_paths
            kernel = tuple(spatial) if first else (1,) * n
            c_in = u.shapes[start][-1] if first else shape[-1]
            actions[path] = L.Conv(unit.features, kernel, padding=0, bias=unit.bias,
                                   w_init=unit.w_init, b_init=unit.b_init, name=unit.name)
            dense_paths[path] = (kernel, c_in, unit.features)
        elif isinstance(unit, L.Flatten) and len(shape) == 2:
            actions[path] = None  # a no-op on [N, F]; it would undo the map
        elif isinstance(unit, _AXIS_LAYERS) and len(shape) == 2 and unit.axis in (-1, 1):
            actions[path] = unit.replace(axis=-1)
        elif not isinstance(unit, _PER_POSITION):
            raise ConfigError(
                f"convolutionize: {u.at(i)} sits in the head after {u.at(start)}; only Dense "
                "layers and per-position layers (elementwise layers such as activations, "
                "Identity, Dropout, Lambda; BatchNorm; Softmax/LogSoftmax on the last axis) can "
                "be made convolutional")
    if not dense_paths:
        raise ConfigError(f"convolutionize: {u.at(start)} is not followed by a Dense layer; "
                          "there is no dense head to convert")
    return actions, dense_paths


def _pool_actions(u: _Units, start: int, actions: dict) -> None:
    """Global pools before the head: drop identities, refuse real averaging."""
    for i in range(start):
        path, unit = u.paths[i], u.layers[i]
        if isinstance(unit, _GLOBAL_POOLS):
            out, _ = _abstract_init(unit, u.shapes[i])
            if out != u.shapes[i]:
                raise ConfigError(
                    f"convolutionize: {u.at(i)} maps {u.shapes[i]} to {out} at input_shape "
                    f"{u.input_shape}, so it is not an identity there; on a larger input the "
                    "converted model could not reproduce it window by window. Use an "
                    "input_shape at which it is an identity (e.g. 224x224 for VGG/AlexNet) or "
                    "remove the pool")
            actions[path] = None
            continue
        for sub, pool in _find(unit, _GLOBAL_POOLS):
            raise ConfigError(
                f"convolutionize: {pool.type_name} '{'/'.join((u.model.name,) + path + sub)}' "
                f"inside {u.at(i)} cannot be removed; convolutionize handles global pools only "
                "in the Serial chain before the head")


def _param_converter(model_name: str, dense_paths: dict):
    def convert_params(params):
        """Reshape the head's dense weights into conv kernels (other entries unchanged)."""
        out = params
        for path, (kernel, c_in, features) in dense_paths.items():
            def reshape(node, path=path, kernel=kernel, c_in=c_in, features=features):
                w = node.get("w") if isinstance(node, dict) else None
                expected = (math.prod(kernel) * c_in, features)
                if w is None or tuple(w.shape) != expected:
                    got = tuple(w.shape) if w is not None else node
                    raise ShapeError(f"convert_params: Dense '{'/'.join((model_name,) + path)}' "
                                     f"needs w of shape {expected}; got {got}")
                new = dict(node)
                new["w"] = (jax.ShapeDtypeStruct((*kernel, c_in, features), w.dtype)
                            if isinstance(w, jax.ShapeDtypeStruct)
                            else jnp.reshape(w, (*kernel, c_in, features)))
                return new
            out = _update(out, path, reshape, "convert_params")
        return out

    return convert_params


def convolutionize(model: Layer, input_shape):
    """The fully convolutional equivalent of a classifier with a dense head.

    The head ``Flatten -> Dense -> ... -> Dense`` (per-position layers such as
    activations, dropout or batch norm may sit in between or after) becomes
    convolutions (Long et al. 2015; Sermanet et al. 2014): the ``Flatten`` and
    the first ``Dense`` become one ``Conv`` whose kernel is the spatial size
    that entered ``Flatten`` (no padding), later ``Dense`` s become 1x1 ``Conv``
    s, and the ``Flatten`` is dropped. The head may be spread over nested
    ``Serial`` s (e.g. a ``classifier`` sub-Serial); every other layer is kept
    as it is, and each new conv keeps its dense layer's name, so the parameter
    tree keeps its keys (only the dense weights change shape) and the state
    carries over unchanged.

    ``AdaptiveAvgPool`` / ``GlobalAvgPool`` layers in the ``Serial`` chain are
    dropped when they are identities at ``input_shape`` (e.g. AlexNet's 6x6 pool
    at 224x224, VGG's 7x7); a ``GlobalAvgPool`` over a 1x1 map may also play the
    role of the ``Flatten``. A global pool that really averages at
    ``input_shape`` cannot be made convolutional without changing the outputs,
    which is a :class:`~fundl.ConfigError`.

    Guarantees: at ``input_shape`` the converted model's output ``[N, 1, 1, K]``
    reshaped to ``[N, K]`` equals the original's. On a larger input
    ``[N, H, W, C]`` the output is a map ``[N, H', W', K]``; when the layers
    before the head have no padding (and no ``ceil_mode``), entry ``[i, j]``
    equals the original model on the crop starting at ``(i * s, j * s)``, ``s``
    the total stride before the head (e.g. 6 for :func:`convnet_mnist`). With
    padded layers the inner entries agree only away from the borders.

    Args:
      model: a ``Serial`` model whose ``Serial`` chain ends in such a head.
      input_shape: the shape the model was built for, e.g. ``(1, 28, 28, 1)``.

    Returns:
      ``(conv_model, convert_params)``, where ``convert_params(params) ->
      conv_params`` reshapes each dense ``w`` (``[H * W * C, out]`` in NHWC
      flatten order -> ``[H, W, C, out]``; later ones ``[in, out] -> [1, 1, in,
      out]``) and leaves every other entry as it is (it works on arrays or
      ``jax.ShapeDtypeStruct`` s).

    Raises:
      ConfigError: no ``Flatten -> Dense`` head, an unsupported layer inside the
        head, or a global pool that is not an identity at ``input_shape``.

    Example:
      >>> net = convnet_mnist()
      >>> _, params = net.init(jax.random.key(0), (1, 28, 28, 1))
      >>> fcn, convert = convolutionize(net, (1, 28, 28, 1))
      >>> fcn.apply(convert(params), jnp.zeros((1, 40, 40, 1))).shape
      (1, 3, 3, 10)
    """
    u = _units(model, input_shape)
    start = _head_start(u)
    actions, dense_paths = _head_actions(u, start)
    _pool_actions(u, start, actions)
    return _rebuild(model, (), actions), _param_converter(model.name, dense_paths)


# -- context module (dilated convolutions) --------------------------------------------

def _identity_init(key, shape, dtype=jnp.float32):
    """Yu & Koltun's identity init: ``w[centre, a, b] = 1[a == b]``, zero elsewhere."""
    del key
    *kernel, c_in, c_out = shape
    centre = tuple(k // 2 for k in kernel)
    return jnp.zeros(shape, dtype).at[centre].set(jnp.eye(c_in, c_out, dtype=dtype))


def context_module(channels: int, *, dilations: Sequence[int] = (1, 1, 2, 4, 8, 16, 1),
                   init="identity", name: str = "context") -> Layer:
    """The basic context module of Yu & Koltun (2016), "Multi-scale context
    aggregation by dilated convolutions".

    One 3x3 conv (``channels`` -> ``channels``, padding = dilation, so the size
    is kept) per entry of ``dilations``, each followed by relu, then a 1x1 conv
    ``channels -> channels`` without activation. With the default dilations the
    receptive field is 67x67 (``1 + 2 * (1 + 1 + 2 + 4 + 8 + 16 + 1)``).

    Shapes: ``[N, H, W, channels] -> [N, H, W, channels]``.

    Args:
      channels: input and output channels ``C``.
      dilations: dilation of each 3x3 conv.
      init: ``'identity'`` (the paper's: each kernel is the identity at its
        centre, biases zero, so the module initially computes ``relu(x)``),
        ``'random'`` (fundl's default conv init) or an initialiser
        ``(key, shape, dtype)`` for every ``w`` (biases then zero).
      name: parameter key (children ``conv1 .. conv{len(dilations) + 1}``).

    Parameters: ``len(dilations) * (9 C^2 + C) + C^2 + C``, e.g. 7 * 584 + 72 =
    4,160 for ``C = 8`` (28,392 for the paper's 21 classes).

    Example:
      >>> ctx = context_module(8)
      >>> ctx.init(jax.random.key(0), (2, 64, 64, 8))[0]
      (2, 64, 64, 8)
    """
    where = f"context_module '{name}'"
    _check_int(where, channels=channels)
    if isinstance(dilations, int) or not isinstance(dilations, Sequence) or not dilations:
        raise ConfigError(f"{where}: dilations must be a non-empty sequence of ints; "
                          f"got {dilations!r}")
    _check_int(where, **{f"dilations[{i}]": d for i, d in enumerate(dilations)})
    if init == "identity":
        inits = {"w_init": _identity_init, "b_init": initializers.zeros}
    elif init == "random":
        inits = {}
    elif callable(init):
        inits = {"w_init": init, "b_init": initializers.zeros}
    else:
        raise ConfigError(f"{where}: init must be 'identity', 'random' or an initialiser "
                          f"(key, shape, dtype) -> array; got {init!r}")
    parts = []
    for i, d in enumerate(dilations):
        parts += [L.Conv(channels, (3, 3), padding=d, dilation=d, name=f"conv{i + 1}", **inits),
                  L.ReLU()]
    parts.append(L.Conv(channels, (1, 1), name=f"conv{len(dilations) + 1}", **inits))
    return ContextModule(*parts, channels=channels, name=name)


class ContextModule(L.Serial):
    """The :func:`context_module` chain, which keeps its input's shape: it checks that
    the input is ``[N, H, W, channels]`` before a convolution would complain.

    Fields: those of :class:`~fundl.layers.Serial`, and ``channels``.
    """

    _: KW_ONLY
    channels: int = 1

    def __init__(self, *layers, channels: int, scan: bool | int = False,
                 name: str | None = None):
        self._set(channels=channels)
        super().__init__(*layers, scan=scan, name=name)

    def build_with_state(self, key, input_shape):
        if len(input_shape) != 4 or input_shape[-1] != self.channels:
            raise ShapeError(f"context_module '{self.name}': input must be "
                             f"[N, H, W, {self.channels}]; got input shape {tuple(input_shape)}")
        return super().build_with_state(key, input_shape)

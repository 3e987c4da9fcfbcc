"""PyTorch state dicts in and out: :func:`from_torch`, :func:`to_torch`, :func:`torch_names`.

``from_torch(model, state_dict) -> (params, state)`` turns a PyTorch
``state_dict`` (a dict of tensors or NumPy arrays, a ``.pt``/``.pth`` file or a
``.safetensors`` file) into fundl's params and state for ``model``;
``to_torch(model, params, state)`` gives the ``state_dict`` back, as NumPy
arrays under PyTorch's names and in PyTorch's layouts. Loading torchvision's
ImageNet ResNet-50 from disk::

    model = fundl.models.resnet50()
    params, state = fundl.interop.from_torch(model, "resnet50-0676ba61.pth")
    logits, _ = model.apply(params, images_nhwc, state=state)    # eval mode

Names. Each layer with parameters gets a torch module name (the key prefix)
from the model's structure, one path component at a time (``torch_names(model)``
lists them; it is what ``from_torch`` expects):

* a :class:`~fundl.layers.Serial` whose children are all leaf layers (or all
  residual blocks) is an ``nn.Sequential``: a child is named by its position,
  counting every child, parameter-free ones included (``features/conv3`` of
  ``vgg16`` -> ``features.5``);
* any other Serial keeps its children's names (``resnet18/layer1``, ``fc``;
  ``vgg16/features``, ``classifier``);
* a :class:`~fundl.layers.Residual` (``BasicBlock``, ``Bottleneck``) is
  torchvision's block: its ``body`` Serial's children become the block's own
  (``conv1``, ``bn1``, ...), its ``shortcut`` is ``downsample``
  (``layer2/block1/shortcut/conv`` -> ``layer2.0.downsample.0``);
* a child of any other layer keeps its name.

So every model of :mod:`fundl.models` gets torchvision's keys where torchvision
has the model (``resnet18..152``: ``conv1``, ``bn1``,
``layer{k}.{i}.conv1/bn1/...``, ``layer{k}.{i}.downsample.0/1``, ``fc``;
``vgg*``/``vgg*_bn``: ``features.{i}`` with torchvision's indices,
``classifier.0/3/6``; ``alexnet``: ``features.0/3/6/8/10``,
``classifier.1/4/6``), and the course models (``mlp``, ``convnet_mnist``,
``lenet5``) those of the ``nn.Sequential`` shown in their docstrings. A model
built with ``dropout=0`` has no Dropout layers, so its classifier indices
differ from torchvision's (whose Dropout modules always exist): keep the
default dropout to load torchvision's files. Other names: ``name_map``, a dict
``{torch prefix: fundl layer path}`` (``{'body.0': 'features/conv1', 'head':
'fc'}``); a path may name a composite layer, whose layers then get the prefix
followed by their names below it (``{'backbone': 'features'}``); unlisted
layers keep their names; or ``name_map='order'``: the layers with parameters,
in the order ``init`` meets them, pair with the state dict's modules in the
order of its keys (as ``nn.Module.state_dict()`` lists them; not for
``.safetensors`` files, which store keys sorted).

Layouts (torch -> fundl): ``Conv{1,2,3}d`` weight ``[C_out, C_in/groups,
*kernel] -> [*kernel, C_in/groups, C_out]``; ``ConvTranspose{1,2,3}d``
``[C_in, C_out/groups, *kernel] -> [*kernel, C_in, C_out/groups]``; ``Linear``
``[out, in] -> [in, out]``; ``BatchNorm{1,2,3}d`` ``weight, bias`` -> params
``scale, bias``, ``running_mean, running_var`` -> state ``mean, var``
(``num_batches_tracked`` is read and dropped, and not written: PyTorch's
``load_state_dict`` fills it in); ``LayerNorm`` ``weight, bias -> scale, bias``.
A :class:`~fundl.layers.Flatten` of a feature map ``[N, *spatial, C]``
flattens channels last, PyTorch's ``nn.Flatten`` channels first, so the rows of
the first ``Dense`` after it (and any ``BatchNorm``/``LayerNorm`` on the
flattened vector before that Dense, through activations and Dropout) are
permuted from ``(C, *spatial)`` to ``(*spatial, C)`` order. The feature map's
shape comes from an abstract ``init`` at ``input_shape``: by default the first
of :data:`STANDARD_INPUTS` at which the model's parameter shapes agree with the
given arrays, e.g. ``(1, 224, 224, 3)`` for VGG and AlexNet (their adaptive
pools fix the map at 7x7x512 and 6x6x256 whatever the input size),
``(1, 28, 28, 1)`` for the course convnets. Pass ``input_shape`` for other
inputs. A Flatten followed by other layers (a Reshape, a combinator) is not
permuted.

Dtypes: arrays are float32 both ways; torch tensors are converted with
``tensor.detach().cpu().float().numpy()`` (bfloat16, float16 and float64
tensors become float32), and so are NumPy or ``.safetensors`` arrays of other
float types. ``torch`` is imported only to read a ``.pt``/``.pth`` file
(``torch.load(path, weights_only=True, map_location='cpu')``).

Example:
  >>> import jax
  >>> from fundl import models, interop
  >>> net = models.convnet_mnist()
  >>> interop.torch_names(net)
  {'0': 'conv1', '3': 'conv2', '7': 'fc1', '9': 'fc2'}
  >>> _, params = net.init(jax.random.key(0), (1, 28, 28, 1))
  >>> sd = interop.to_torch(net, params, {})
  >>> {k: v.shape for k, v in sd.items() if k.endswith('weight')}
  {'0.weight': (32, 1, 5, 5), '3.weight': (64, 32, 5, 5), '7.weight': (200, 256), '9.weight': (10, 200)}
  >>> params2, state2 = interop.from_torch(net, sd)
  >>> bool((params2['fc1']['w'] == params['fc1']['w']).all())
  True
"""
from __future__ import annotations

import math
import os
import pathlib
import warnings
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import layers as L
from ._errors import ConfigError, FundlError, ShapeError
from ._layer import Layer
from ._paramcheck import check as _check_trees
from ._paramcheck import expected as _expected
from ._remat import unwrap

__all__ = ["from_torch", "to_torch", "torch_names", "StateDictError", "StateDictWarning",
           "STANDARD_INPUTS"]

#: The inputs tried, in order, when ``input_shape`` is not given: ImageNet
#: (ResNet, VGG, AlexNet), MNIST (the course models), CIFAR (the ResNet CIFAR stem).
STANDARD_INPUTS = ((1, 224, 224, 3), (1, 28, 28, 1), (1, 32, 32, 3))

_MAX_LISTED = 20
_DROPPED = "num_batches_tracked"
_CONVERTED = "Dense, Conv, ConvTranspose, BatchNorm and LayerNorm"


class StateDictError(FundlError):
    """A state dict that does not fit the model (``from_torch(..., strict=True)``).

    The message lists every problem at once, each with the torch key and the
    fundl layer path. The same lists, for programs:

    Attributes:
      missing: torch keys the model needs that the state dict lacks.
      unexpected: keys of the state dict no layer of the model reads.
      mismatched: keys whose array has another shape than the model needs
        (in torch's layout), or a dtype that is not floating point.
      unsupported: layers with parameters of a type interop cannot convert.
    """

    def __init__(self, message, *, missing=(), unexpected=(), mismatched=(), unsupported=()):
        super().__init__(message)
        self.missing, self.unexpected = list(missing), list(unexpected)
        self.mismatched, self.unsupported = list(mismatched), list(unsupported)


class StateDictWarning(UserWarning):
    """What ``from_torch(..., strict=False)`` could not load; the attributes of
    :class:`StateDictError` (``missing``, ``unexpected``, ``mismatched``, ``unsupported``)."""

    def __init__(self, message, *, missing=(), unexpected=(), mismatched=(), unsupported=()):
        super().__init__(message)
        self.missing, self.unexpected = list(missing), list(unexpected)
        self.mismatched, self.unsupported = list(mismatched), list(unsupported)


# -- layouts ----------------------------------------------------------------------------

class _Layout(NamedTuple):
    """fundl array = the torch array with axes transposed by ``axes``, then its rows
    (axis 0) taken in ``perm`` order (the channels-last flatten)."""

    axes: tuple | None = None
    perm: np.ndarray | None = None

    def torch_shape(self, shape) -> tuple:
        if self.axes is None:
            return tuple(shape)
        return tuple(int(shape[i]) for i in np.argsort(self.axes))

    def load(self, a: np.ndarray) -> np.ndarray:
        if self.axes is not None:
            a = np.transpose(a, self.axes)
        return a[self.perm] if self.perm is not None else a

    def save(self, w: np.ndarray) -> np.ndarray:
        if self.perm is not None:
            w = w[np.argsort(self.perm)]
        if self.axes is not None:
            w = np.transpose(w, np.argsort(self.axes))
        return np.require(w, np.float32, ["C", "W", "O"])  # a fresh array the caller owns


def _flatten_perm(fmap) -> np.ndarray | None:
    """Row order taking torch's channels-first flatten of a ``[*spatial, C]`` map to
    fundl's channels-last one (``None`` when they agree: one channel or one position)."""
    *spatial, c = fmap
    if c == 1 or math.prod(spatial) == 1:
        return None
    n = len(spatial)
    return np.arange(math.prod(fmap)).reshape(c, *spatial).transpose(*range(1, n + 1), 0).ravel()


class _Unit(NamedTuple):
    """A layer owning params or state: path below the model, own leaves, flattened map read."""

    path: tuple
    layer: Layer
    params: dict
    state: dict
    fmap: tuple | None


def _rules(u: _Unit):
    """``[(torch suffix, tree, fundl leaf, layout)]`` for the unit's arrays, or None when
    its type (or one of its arrays) has no known torch counterpart."""
    layer, perm = u.layer, (_flatten_perm(u.fmap) if u.fmap else None)
    if isinstance(layer, L.Dense):
        table = [("weight", "params", "w", _Layout((1, 0), perm)),
                 ("bias", "params", "b", _Layout())]
    elif isinstance(layer, (L.Conv, L.ConvTranspose)) and "w" in u.params:
        n = len(u.params["w"].shape) - 2
        io = (0, 1) if isinstance(layer, L.ConvTranspose) else (1, 0)
        table = [("weight", "params", "w", _Layout((*range(2, n + 2), *io))),
                 ("bias", "params", "b", _Layout())]
    elif isinstance(layer, (L.BatchNorm, L.LayerNorm)):
        vec = _Layout(None, perm)
        table = [("weight", "params", "scale", vec), ("bias", "params", "bias", vec),
                 ("running_mean", "state", "mean", vec), ("running_var", "state", "var", vec)]
    else:
        return None
    have = {("params", k) for k in u.params} | {("state", k) for k in u.state}
    if not have <= {(tree, leaf) for _, tree, leaf, _ in table}:
        return None
    return [r for r in table if (r[1], r[2]) in have]


# -- the layers, in order ------------------------------------------------------------------

def _own(tree, path) -> dict:
    """The arrays directly under ``path`` in an abstract params/state tree."""
    for name in path:
        if not isinstance(tree, Mapping) or name not in tree:
            return {}
        tree = tree[name]
    return {k: v for k, v in tree.items() if not isinstance(v, Mapping)} \
        if isinstance(tree, Mapping) else {}


def _track_flatten(layer, x_in, y, pending):
    """``(map the layer reads flattened, pending after it)``; ``pending`` is
    ``(flattened shape, map)`` after a Flatten whose order differs from torch's."""
    if isinstance(layer, L.Flatten):
        fmap = tuple(x_in[1:])
        ok = len(fmap) >= 2 and _flatten_perm(fmap) is not None
        return None, ((tuple(y), fmap) if ok else None)
    if pending is None or tuple(x_in) != pending[0]:
        return None, None
    if isinstance(layer, L.Dense):
        return pending[1], None
    if isinstance(layer, (L.BatchNorm, L.LayerNorm)):
        return pending[1], pending
    return None, (pending if isinstance(layer, L.Elementwise) else None)


def _units(model: Layer, want) -> list[_Unit]:
    """The layers owning params or state, in the order init meets them."""
    paths = list(want.layers)
    inner = {p[:i] for p in paths for i in range(len(p))}  # composites: prefixes of others
    units, pending = [], None
    for path in paths:
        layer = unwrap(want.layers[path])
        fmap = None
        if path not in inner:
            full = (model.name,) + path
            fmap, pending = _track_flatten(layer, want.inputs[full], want.outputs[full], pending)
        params, state = _own(want.params, path), _own(want.state, path)
        if params or state:
            units.append(_Unit(path, layer, params, state, fmap))
    return units


# -- names ---------------------------------------------------------------------------------

def _sequential(layers: dict, at: tuple, serial) -> bool:
    """Whether the Serial at ``at`` is an ``nn.Sequential`` (children named by position)."""
    if at and at[-1] == "body" and isinstance(layers.get(at[:-1]), L.Residual):
        return False  # a block's body: its children are the block's named attributes
    kids = [unwrap(k) for k in serial.layers]
    return all(not k.children() for k in kids) or all(isinstance(k, L.Residual) for k in kids)


def _part(layers: dict, at: tuple, child: str) -> str:
    """The torch name of ``child`` of the layer at ``at`` ('' when it adds no level)."""
    parent = layers.get(at)
    if isinstance(parent, L.Residual):
        if child == "shortcut":
            return "downsample"
        return "" if child == "body" and isinstance(parent.body, L.Serial) else child
    if isinstance(parent, L.Serial) and _sequential(layers, at, parent):
        names = [c.name for c in parent.layers]
        return str(names.index(child)) if child in names else child
    return child


def _auto(layers: dict, path: tuple, start: tuple = ()) -> str:
    """The torch module name of the layer at ``path``, relative to the layer at ``start``."""
    parts = (_part(layers, path[:i], path[i]) for i in range(len(start), len(path)))
    return ".".join(p for p in parts if p)


def _mapped(fn, model, layers, units, name_map) -> dict:
    """Names from a ``{torch prefix: fundl path}`` dict (automatic ones elsewhere)."""
    targets = {}
    for prefix, fpath in name_map.items():
        if not isinstance(prefix, str) or not isinstance(fpath, str):
            raise ConfigError(f"{fn}: name_map must map torch prefixes (str) to fundl layer "
                              f"paths (str, e.g. 'features/conv1'); got {prefix!r}: {fpath!r}")
        at = tuple(p for p in fpath.split("/") if p)
        if at not in layers:
            some = ["/".join(u.path) for u in units[:6]]
            raise ConfigError(f"{fn}: name_map[{prefix!r}] = {fpath!r} names no layer of "
                              f"{model.type_name} '{model.name}'; paths are below the model, "
                              f"e.g. {some} (torch_names(model) lists them all)")
        if at in targets:
            raise ConfigError(f"{fn}: name_map maps both {targets[at]!r} and {prefix!r} to "
                              f"{fpath!r}; give each fundl layer one torch prefix")
        targets[at] = prefix
    names = {}
    for u in units:
        hits = [t for t in targets if u.path[:len(t)] == t]
        if not hits:
            names[u.path] = _auto(layers, u.path)
            continue
        at = max(hits, key=len)
        names[u.path] = ".".join(p for p in (targets[at], _auto(layers, u.path, at)) if p)
    return names


def _ordered(fn, units, sd_keys):
    """Names by order: the units pair with the state dict's modules as its keys list them."""
    if sd_keys is None:
        raise ConfigError(f"{fn}: name_map='order' pairs the model's layers with a state dict's "
                          f"modules in order, and {fn} has no state dict; pass the dict "
                          "torch_names(model, state_dict=sd, name_map='order') returns")
    modules = {}
    for k in sd_keys:
        prefix, _, suffix = k.rpartition(".")
        if suffix != _DROPPED:
            modules.setdefault(prefix, None)
    modules = list(modules)
    names = {u.path: m for u, m in zip(units, modules)}
    for u in units[len(modules):]:
        names[u.path] = "<unpaired>/" + "/".join(u.path)
    note = "" if len(units) == len(modules) else (
        f"name_map='order' paired the model's {len(units)} layers with parameters with the "
        f"state dict's {len(modules)} modules, in order")
    return names, note


def _names(fn, model, layers, units, name_map, sd_keys):
    """``({layer path: torch prefix}, note)`` under the chosen naming."""
    note = ""
    if name_map is None:
        names = {u.path: _auto(layers, u.path) for u in units}
    elif isinstance(name_map, str) and name_map == "order":
        names, note = _ordered(fn, units, sd_keys)
    elif isinstance(name_map, Mapping):
        names = _mapped(fn, model, layers, units, name_map)
    else:
        raise ConfigError(f"{fn}: name_map must be None (names from the model's structure), "
                          "'order' or a dict {torch prefix: fundl layer path}; got "
                          f"{name_map!r}")
    seen = {}
    for path, prefix in names.items():
        if prefix in seen:
            raise ConfigError(f"{fn}: layers '{'/'.join(seen[prefix])}' and '{'/'.join(path)}' "
                              f"of {model.type_name} '{model.name}' would both read torch module "
                              f"{prefix!r}; tell them apart with name_map entries")
        seen[prefix] = path
    return names, note


# -- the plan: every array with its torch key and layout -------------------------------------

class _Slot(NamedTuple):
    key: str        # torch key
    tree: str       # 'params' or 'state'
    path: tuple     # fundl layer path + leaf name
    owner: str      # "Conv 'resnet18/conv1'", for messages
    shape: tuple    # fundl shape
    layout: _Layout

    @property
    def torch_shape(self) -> tuple:
        return self.layout.torch_shape(self.shape)


class _Plan(NamedTuple):
    slots: list
    dropped: set        # torch keys read and dropped (num_batches_tracked)
    unsupported: list   # layers with params of an unknown type
    input_shape: tuple
    names: dict         # layer path -> torch prefix
    note: str


def _build(fn, model, want, shape, name_map, sd_keys) -> _Plan:
    units = _units(model, want)
    layers = {path: unwrap(layer) for path, layer in want.layers.items()}
    names, note = _names(fn, model, layers, units, name_map, sd_keys)
    slots, dropped, unsupported = [], set(), []
    for u in units:
        owner = f"{u.layer.type_name} '{'/'.join((model.name,) + u.path)}'"
        rules = _rules(u)
        if rules is None:
            unsupported.append(f"{owner} (params {sorted(u.params)}, state {sorted(u.state)})")
            continue
        prefix = names[u.path]
        for suffix, tree, leaf, layout in rules:
            own = u.params if tree == "params" else u.state
            key = f"{prefix}.{suffix}" if prefix else suffix
            slots.append(_Slot(key, tree, u.path + (leaf,), owner, tuple(own[leaf].shape), layout))
        if isinstance(u.layer, L.BatchNorm):
            dropped.add(f"{prefix}.{_DROPPED}" if prefix else _DROPPED)
    return _Plan(slots, dropped, unsupported, shape, names, note)


def _input_shape(fn, input_shape) -> tuple:
    def ok(s):
        return (isinstance(s, (tuple, list)) and len(s) > 0
                and (all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in s)
                     or all(ok(t) for t in s)))
    if not ok(input_shape):
        raise ConfigError(f"{fn}: input_shape must be the model's input shape with the batch, "
                          f"e.g. (1, 224, 224, 3); got {input_shape!r}")
    return tuple(tuple(t) if isinstance(t, (tuple, list)) else t for t in input_shape)


def _plan(fn, model, input_shape, name_map, sd, misfits) -> _Plan:
    """The plan at ``input_shape``; by default at the first standard input where the model
    has no ``misfits`` (arrays of other shapes than given), else where it has the fewest."""
    shapes = STANDARD_INPUTS if input_shape is None else (_input_shape(fn, input_shape),)
    best, errors = None, []
    sd_keys = None if sd is None else list(sd)
    for shape in shapes:
        try:
            want = _expected(model, shape)
        except FundlError as e:
            if input_shape is not None:
                raise
            errors.append(f"{shape}: {e}")
            continue
        plan = _build(fn, model, want, shape, name_map, sd_keys)
        if input_shape is not None:
            return plan
        n = misfits(plan, want)
        if n == 0:
            return plan
        best = min(best or (n, plan), (n, plan), key=lambda t: t[0])
    if best is None:
        raise ConfigError(f"{fn}: {model.type_name} '{model.name}' takes none of the standard "
                          f"inputs {STANDARD_INPUTS}; pass input_shape=..., the shape it is "
                          f"used with (batch included). First error: {errors[0]}")
    return best[1]


# -- reading state dicts ---------------------------------------------------------------------

def _array(fn, key, v) -> np.ndarray:
    """One state-dict entry as a NumPy array (floating point as float32)."""
    if isinstance(v, Mapping):
        raise ConfigError(f"{fn}: state_dict[{key!r}] is a dict, not an array: a training "
                          f"checkpoint holding the state dict under {key!r}? Pass that entry, "
                          f"e.g. torch.load(path, weights_only=True)[{key!r}]")
    if type(v).__module__.split(".")[0] == "torch" and hasattr(v, "detach"):
        t = v.detach().cpu()
        return (t.float() if t.is_floating_point() else t).numpy()
    a = None if isinstance(v, (str, bytes)) else np.asarray(v)
    if a is None or not (jnp.issubdtype(a.dtype, jnp.number) or a.dtype == np.bool_):
        raise ConfigError(f"{fn}: state_dict[{key!r}] must be an array or a tensor; got "
                          f"{type(v).__name__}")
    return a.astype(np.float32) if jnp.issubdtype(a.dtype, jnp.floating) else a


def _read_file(fn, path: pathlib.Path):
    if not path.is_file():
        raise FileNotFoundError(f"{fn}: state_dict names the file '{path}', which does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        import ml_dtypes  # noqa: F401  (NumPy learns bfloat16, which safetensors' numpy API needs)
        from safetensors.numpy import load_file
        return load_file(str(path)), "safetensors"
    if suffix in (".pt", ".pth", ".bin"):
        import torch
        return torch.load(path, weights_only=True, map_location="cpu"), "torch"
    raise ConfigError(f"{fn}: state_dict file '{path}' must end in .pt, .pth, .bin (torch.save) "
                      f"or .safetensors; got suffix {suffix!r}")


def _read(fn, state_dict) -> tuple[dict, str]:
    """``({key: array}, source)``, source 'dict', 'torch' or 'safetensors'."""
    if isinstance(state_dict, (str, os.PathLike)):
        raw, source = _read_file(fn, pathlib.Path(state_dict))
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{fn}: '{state_dict}' holds a {type(raw).__name__}, not a state "
                              "dict (a dict of tensors); save model.state_dict()")
    elif isinstance(state_dict, Mapping):
        raw, source = state_dict, "dict"
    else:
        raise ConfigError(f"{fn}: state_dict must be a dict of tensors or arrays, or the path of "
                          f"a .pt/.pth/.safetensors file; got {type(state_dict).__name__}")
    for k in raw:
        if not isinstance(k, str):
            raise ConfigError(f"{fn}: state dict keys must be strings such as 'fc.weight'; "
                              f"got {k!r}")
    return {k: _array(fn, k, v) for k, v in raw.items()}, source


# -- checks and messages ---------------------------------------------------------------------

def _misfits(plan: _Plan, sd: dict) -> int:
    """How many keys the plan shares with ``sd`` have another shape than the plan needs."""
    return sum(tuple(sd[s.key].shape) != s.torch_shape for s in plan.slots if s.key in sd)


def _compare(plan: _Plan, sd: dict):
    """``(missing slots, unexpected keys, [(mismatched slot, array)])``."""
    keys = {s.key for s in plan.slots}
    missing, mismatched = [], []
    for s in plan.slots:
        if s.key not in sd:
            missing.append(s)
        elif (tuple(sd[s.key].shape) != s.torch_shape
              or not jnp.issubdtype(sd[s.key].dtype, jnp.floating)):
            mismatched.append((s, sd[s.key]))
    unexpected = [k for k in sd if k not in keys and k not in plan.dropped]
    return missing, unexpected, mismatched


def _listed(label: str, items: list) -> list[str]:
    lines = [f"  {label}: {item}" for item in items[:_MAX_LISTED]]
    if len(items) > _MAX_LISTED:
        lines.append(f"  ... and {len(items) - _MAX_LISTED} more {label}")
    return lines


def _message(fn, model, plan, sd, missing, unexpected, mismatched) -> str:
    n = len(missing) + len(unexpected) + len(mismatched) + len(plan.unsupported)
    lines = [f"{fn}: the state dict does not fit {model.type_name} '{model.name}' ({n} "
             f"problem{'s' if n != 1 else ''}; shapes for input_shape {plan.input_shape}):"]
    lines += _listed("missing", [
        f"key {s.key!r} for {s.owner} ({s.tree} {s.path[-1]!r}, torch shape {s.torch_shape})"
        for s in missing])
    lines += _listed("unexpected", [
        f"key {k!r} of shape {tuple(sd[k].shape)}: no layer of the model reads it"
        for k in unexpected])
    lines += _listed("mismatched", [
        f"key {s.key!r} has shape {tuple(a.shape)} ({np.dtype(a.dtype).name}); {s.owner} needs "
        f"float {s.torch_shape} (torch layout of {s.tree} {s.path[-1]!r} of shape {s.shape})"
        for s, a in mismatched])
    lines += _listed("unsupported", [f"{o}: no known torch layout (interop converts "
                                     f"{_CONVERTED})" for o in plan.unsupported])
    if plan.note:
        lines.append(f"  note: {plan.note}")
    if missing and unexpected and all(k.startswith("module.") for k in unexpected):
        lines.append("Fix: the keys carry the 'module.' prefix of torch.nn.DataParallel; strip "
                     "it: {k.removeprefix('module.'): v for k, v in state_dict.items()}")
    else:
        lines.append("Fix: torch_names(model) lists the torch module names the model reads; "
                     "rename with name_map={'torch.prefix': 'fundl/layer/path'} or "
                     "name_map='order'; strict=False loads what fits (fundl.surgery.adapt then "
                     "initialises the rest); for another input size pass input_shape=...")
    return "\n".join(lines)


def _check_model(fn, model) -> None:
    if not isinstance(model, Layer):
        raise ConfigError(f"{fn}: model must be a fundl Layer (e.g. fundl.models.resnet18()); "
                          f"got {type(model).__name__}")


def _put(tree: dict, path: tuple, value) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _get(tree, path: tuple):
    for name in path:
        tree = tree[name]
    return tree


def _leaf_shapes(tree):
    try:
        leaves = jax.tree_util.tree_leaves_with_path(tree)
    except Exception:  # noqa: BLE001  (not a pytree: the params check says what is wrong)
        return None
    return {jax.tree_util.keystr(p): tuple(np.shape(a)) for p, a in leaves}


def _abstract_input(shape):
    if all(isinstance(d, int) for d in shape):
        return jax.ShapeDtypeStruct(shape, jnp.float32)
    return tuple(_abstract_input(s) for s in shape)


# -- the public functions --------------------------------------------------------------------

def from_torch(model: Layer, state_dict, *, input_shape=None, name_map=None,
               strict: bool = True) -> tuple[dict, dict]:
    """fundl params and state for ``model`` from a PyTorch state dict.

    Names, layouts, the flatten permutation, dtypes and the default
    ``input_shape`` are described in :mod:`fundl.interop`.

    Args:
      model: a fundl model, e.g. ``fundl.models.resnet50()``.
      state_dict: a dict ``{torch key: tensor or NumPy array}``
        (``torch_model.state_dict()``), or the path of a file saved with
        ``torch.save`` (``.pt``, ``.pth``, ``.bin``) or ``safetensors``
        (``.safetensors``; read without torch).
      input_shape: the input the model is used with, batch included, e.g.
        ``(1, 224, 224, 3)``; default: the first of :data:`STANDARD_INPUTS` at
        which the model's shapes agree with the state dict. It matters only for
        the shape of a feature map a ``Flatten`` feeds to a ``Dense``.
      name_map: ``None`` (names from the model's structure), a dict
        ``{torch prefix: fundl layer path}`` or ``'order'``.
      strict: as ``torch.nn.Module.load_state_dict``: every key read and every
        array of the model set, or one :class:`StateDictError` listing the
        missing keys, the unexpected keys and the shape mismatches together.
        ``False`` loads the arrays that fit and warns (:class:`StateDictWarning`)
        about the rest, which the returned trees then lack (e.g.
        ``fundl.surgery.adapt`` initialises them).

    Returns:
      ``(params, state)``: nested dicts of float32 ``jax.Array`` s as
      ``model.init`` makes them (``state`` is ``{}`` for a stateless model).

    Raises:
      StateDictError: with ``strict=True``, when keys are missing, unexpected
        or misshapen, or a layer type has no known torch layout.
      ConfigError: a bad argument (an unknown ``name_map`` path, a checkpoint
        dict instead of a state dict, ``'order'`` with a ``.safetensors`` file).

    Example:
      >>> import numpy as np
      >>> from fundl import layers as L
      >>> net = L.Serial(L.Dense(3, name="fc"))
      >>> sd = {"0.weight": np.ones((3, 2), np.float32), "0.bias": np.zeros(3, np.float32)}
      >>> params, state = from_torch(net, sd, input_shape=(1, 2))
      >>> params["fc"]["w"].shape, state
      ((2, 3), {})
    """
    fn = "from_torch"
    _check_model(fn, model)
    if not isinstance(strict, bool):
        raise ConfigError(f"{fn}: strict must be True or False; got {strict!r}")
    sd, source = _read(fn, state_dict)
    if isinstance(name_map, str) and name_map == "order" and source == "safetensors":
        raise ConfigError(f"{fn}: name_map='order' needs the modules in their order, and a "
                          ".safetensors file stores its keys sorted; pass a dict name_map, or "
                          "the .pt file / model.state_dict() itself")
    plan = _plan(fn, model, input_shape, name_map, sd, lambda p, w: _misfits(p, sd))
    missing, unexpected, mismatched = _compare(plan, sd)
    if missing or unexpected or mismatched or plan.unsupported:
        message = _message(fn, model, plan, sd, missing, unexpected, mismatched)
        lists = dict(missing=[s.key for s in missing], unexpected=unexpected,
                     mismatched=[s.key for s, _ in mismatched], unsupported=plan.unsupported)
        if strict:
            raise StateDictError(message, **lists)
        warnings.warn(StateDictWarning(f"{message}\n(strict=False: the rest was loaded; the "
                                       "returned params and state lack these arrays)", **lists),
                      stacklevel=2)
    bad = {s.key for s, _ in mismatched}
    params, state = {}, {}
    for s in plan.slots:
        if s.key in sd and s.key not in bad:
            value = jnp.array(s.layout.load(sd[s.key]), dtype=jnp.float32)  # a copy
            _put(params if s.tree == "params" else state, s.path, value)
    return params, state


def to_torch(model: Layer, params, state, *, input_shape=None,
             name_map=None) -> dict[str, np.ndarray]:
    """``model``'s params and state as a PyTorch state dict of NumPy arrays.

    The inverse of :func:`from_torch` (bit for bit): the same names and layouts
    (see :mod:`fundl.interop`), float32 arrays the caller owns, in the order
    ``init`` meets the layers. BatchNorm's ``num_batches_tracked`` is not
    written; ``torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in
    sd.items()})`` fills it in.

    Args:
      model: the fundl model the trees belong to.
      params, state: its trees (``state``: ``{}`` or ``None`` for a stateless model).
      input_shape: as in :func:`from_torch`; default: the first of
        :data:`STANDARD_INPUTS` at which ``model.init`` gives trees of these shapes.
      name_map: ``None`` or a dict ``{torch prefix: fundl layer path}``
        (``'order'`` needs a state dict: use :func:`torch_names` with one).

    Returns:
      ``{torch key: np.ndarray}``.

    Raises:
      ShapeError: ``params``/``state`` do not fit ``model`` (every difference listed).
      ConfigError: a layer type without a known torch layout, or a bad argument.

    Example:
      >>> import jax
      >>> from fundl import layers as L
      >>> net = L.Serial(L.Conv(4, 3, name="conv"), L.BatchNorm(name="bn"))
      >>> _, p, s = net.init(jax.random.key(0), (1, 8, 8, 2))
      >>> {k: v.shape for k, v in to_torch(net, p, s, input_shape=(1, 8, 8, 2)).items()}
      {'0.weight': (4, 2, 3, 3), '0.bias': (4,), '1.weight': (4,), '1.bias': (4,), '1.running_mean': (4,), '1.running_var': (4,)}
    """
    fn = "to_torch"
    _check_model(fn, model)
    state = {} if state is None else state
    shapes = (_leaf_shapes(params), _leaf_shapes(state))
    plan = _plan(fn, model, input_shape, name_map, None,
                 lambda p, w: int(shapes != (_leaf_shapes(w.params), _leaf_shapes(w.state))))
    try:
        _check_trees(model, params, state, _abstract_input(plan.input_shape))
    except ShapeError as e:
        if input_shape is not None:
            raise
        raise ShapeError(f"{e}\n{fn}: input_shape was not given, and at none of the standard "
                         f"inputs {STANDARD_INPUTS} does the model have trees of these shapes; "
                         "pass input_shape=... if it is used with another input") from e
    if plan.unsupported:
        raise ConfigError(f"{fn}: no known torch layout for {plan.unsupported} (interop "
                          f"converts {_CONVERTED}); export these arrays yourself")
    out = {}
    for s in plan.slots:
        a = np.asarray(_get(params if s.tree == "params" else state, s.path))
        out[s.key] = s.layout.save(a.astype(np.float32, copy=False))
    return out


def torch_names(model: Layer, *, input_shape=None, name_map=None,
                state_dict=None) -> dict[str, str]:
    """``{torch module name: fundl layer path}`` for the layers with parameters.

    The names :func:`from_torch` expects and :func:`to_torch` writes (a key is
    the module name, a dot, and ``weight``, ``bias``, ``running_mean`` or
    ``running_var``). The result is a valid ``name_map``: with
    ``name_map='order'`` and a ``state_dict``, it gives :func:`to_torch` the
    names of that state dict.

    Args:
      model: a fundl model.
      input_shape: as in :func:`from_torch` (names do not depend on it).
      name_map: as in :func:`from_torch`.
      state_dict: a state dict or file, for ``name_map='order'`` (and to choose
        the default ``input_shape``).

    Example:
      >>> from fundl import models
      >>> names = torch_names(models.resnet18())
      >>> names['conv1'], names['layer2.0.downsample.0'], names['fc']
      ('conv1', 'layer2/block1/shortcut/conv', 'fc')
    """
    fn = "torch_names"
    _check_model(fn, model)
    sd = None if state_dict is None else _read(fn, state_dict)[0]
    plan = _plan(fn, model, input_shape, name_map, sd,
                 lambda p, w: 0 if sd is None else _misfits(p, sd))
    return {prefix: "/".join(path) for path, prefix in plan.names.items()}

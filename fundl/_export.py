"""A trained model as bytes that run without its Python code: :func:`export`, :func:`load_exported`.

:func:`export` traces ``model.apply(params, x, state=state)`` in evaluation
mode (``train=False``) with ``jax.export`` into StableHLO, with a symbolic
batch dimension by default, and packs that program together with the params
and state into one fundl.io-format file (``fundl.format = 'fundl.export'``:
the usual ``params/...`` and ``state/...`` tensors, checksums and metadata,
plus a ``uint8`` tensor ``exported``, the ``jax.export`` serialization).
:func:`load_exported` verifies the bytes and returns ``f(x) -> logits``, which
needs jax and fundl.io's reader but none of the model's code.

The weights are arguments of the exported program, not constants baked into
it: the program is then exactly the computation a jitted ``model.apply`` runs
(baked-in weights let XLA constant-fold them, which changed logits by an ulp in
our tests), and the weights stay checkable (checksums) and readable by
:func:`fundl.io.load`.
"""
from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import _context
from . import io as _io
from ._errors import ConfigError, CorruptFileError, FundlError, ShapeError
from ._layer import Layer, check_shape, is_shape

__all__ = ["export", "load_exported"]

_BATCH = "N"  # the symbolic batch dimension's name


def export(model: Layer, params, state, input_shape, *, batch_polymorphic: bool = True,
           dtype=jnp.float32, platforms: Sequence[str] | None = None,
           metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise ``model``'s inference function (``train=False``) with its weights.

    Args:
      model: the model.
      params: its params (checked against ``model`` for ``input_shape``, with
        ``model.apply``'s messages).
      state: its state (``None`` or ``{}`` for a stateless model).
      input_shape: the input shape, batch included, e.g. ``(1, 28, 28, 1)`` (a
        tuple of shapes for several inputs). With ``batch_polymorphic`` the batch
        is symbolic, so any batch size runs; on CPU, fundl picks the convolution
        lowering (im2col or XLA's) as ``apply`` does for a batch of
        ``input_shape[0]``.
      batch_polymorphic: a symbolic batch dimension (``jax.export`` shape
        polymorphism); ``False``: exactly ``input_shape``.
      dtype: the input's dtype.
      platforms: ``jax.export`` platforms, a sequence of ``'cpu'``, ``'cuda'``, ``'rocm'``,
        ``'tpu'`` (e.g. ``('cpu', 'cuda')``), or one such name; default: the current backend.
      metadata: extra ``{str: str}`` entries for the header (see :func:`fundl.io.save`).

    Returns:
      The bytes of a fundl.io-format file (see the module docstring); write them
      to a file, or pass them to :func:`load_exported`.

    Example:
      >>> import jax, jax.numpy as jnp, fundl, fundl.layers as L
      >>> net = L.Serial(L.Dense(8), L.BatchNorm(), L.ReLU(), L.Dense(3))
      >>> _, params, state = net.init(jax.random.key(0), (1, 4))
      >>> f = fundl.load_exported(fundl.export(net, params, state, (1, 4)))
      >>> x = jnp.ones((5, 4))
      >>> bool((f(x) == net.apply(params, x, state=state)[0]).all())
      True
    """
    fn = "fundl.export"
    if not isinstance(model, Layer):
        raise ConfigError(f"{fn}: model must be a fundl Layer; got {type(model).__name__}")
    if not isinstance(batch_polymorphic, bool):
        raise ConfigError(f"{fn}: batch_polymorphic must be True or False; got {batch_polymorphic!r}")
    user = _io._check_metadata(metadata, fn)
    platforms = _check_platforms(platforms, fn)
    flat, empty = _io._flatten(params, state, fn)
    params, state = _io._unflatten(flat, empty, fn)  # host arrays, as load_exported gives them
    shapes = check_shape(input_shape, model)
    _io._check_fit(model, params, state, shapes, f"given to {fn}", {})
    program = _trace(model, params, state, shapes, np.dtype(dtype), batch_polymorphic, platforms)
    meta = {"fundl.model": repr(model), "fundl.model_label": model.where(),
            "fundl.input_shape": json.dumps(_contract(shapes, batch_polymorphic)),
            "fundl.input_dtype": np.dtype(dtype).name,
            "fundl.platforms": json.dumps(list(program.platforms)), **user}
    blob = np.frombuffer(bytes(program.serialize()), np.uint8)
    return _io._encode({**flat, "exported": blob}, empty, meta, _io.EXPORT_FORMAT)


PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def _check_platforms(platforms, fn: str):
    """``platforms`` as a tuple of names ``jax.export`` knows (``None`` stays ``None``)."""
    if platforms is None:
        return None
    names = (platforms,) if isinstance(platforms, str) else platforms
    names = tuple(names) if isinstance(names, Sequence) else ()
    bad = [p for p in names if p not in PLATFORMS]
    if not names or bad:
        hint = " ('gpu' is 'cuda' or 'rocm')" if "gpu" in bad else ""
        raise ConfigError(f"{fn}: platforms must be a non-empty sequence of {list(PLATFORMS)}"
                          f"{hint}; got platforms={platforms!r}"[:300])
    return names


def _trace(model: Layer, params, state, shapes, dtype, batch_polymorphic: bool, platforms):
    """The ``jax.export.Exported`` of ``(params, state, x) -> model.apply(...)`` in eval mode."""
    single = is_shape(shapes)
    batch = shapes[0] if single else shapes[0][0]
    dims = jax.export.symbolic_shape(_BATCH) if batch_polymorphic else (batch,)

    def spec(shape):
        return jax.ShapeDtypeStruct((dims[0], *shape[1:]), dtype)

    x = spec(shapes) if single else tuple(spec(s) for s in shapes)

    def infer(p, s, x):
        if model.stateful:
            return model.apply(p, x, state=s, train=False)[0]
        return model.apply(p, x, train=False)

    def abstract(tree):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)

    # a symbolic batch stands for input_shape's batch where fundl needs a number
    with _context.using(symbolic_size=batch):
        return jax.export.export(jax.jit(infer), platforms=platforms)(
            abstract(params), abstract(state), x)


def _contract(shapes, batch_polymorphic: bool):
    """The input shape(s) recorded in the metadata: the batch as None when symbolic."""
    def one(s):
        return [None if batch_polymorphic else s[0], *s[1:]]
    return one(shapes) if is_shape(shapes) else [one(s) for s in shapes]


def load_exported(data) -> Callable:
    """The inference function in :func:`export`'s bytes, ready to call.

    Args:
      data: the bytes :func:`export` returned, or the path of a file holding them.

    Returns:
      ``f(x) -> logits``, computing what ``jax.jit(model.apply)(params, x,
      state=state)`` (``train=False``; for a stateful model the first element)
      computes, bit for bit on the same backend. (An op-by-op, un-jitted apply
      can differ by an ulp where XLA fuses operations, e.g. ``x * a + b`` into a
      fused multiply-add; for the zoo's models on CPU it is equal too.) ``x`` must have the exported input's dtype
      and shape but for the batch (any batch >= 1 when batch-polymorphic).
      Each new batch size compiles once. ``f.metadata`` is the file's metadata
      (``fundl.model`` holds the model's ``repr``). The weights are moved to
      the default device once.

    Raises:
      CorruptFileError: damaged bytes (the checksums of fundl.io); nothing runs.
      ConfigError: a fundl.io params file, not an exported model.

    Example:
      >>> import jax, jax.numpy as jnp, fundl, fundl.models as M
      >>> net = M.mlp([16, 10])
      >>> _, params = net.init(jax.random.key(0), (1, 8))
      >>> f = fundl.load_exported(fundl.export(net, params, {}, (1, 8)))
      >>> f(jnp.ones((3, 8))).shape, f.metadata["fundl.input_shape"]
      ((3, 10), '[null, 8]')
    """
    fn = "fundl.load_exported"
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw, where = data, "the exported bytes"
    elif isinstance(data, (str, pathlib.PurePath)):
        raw, where = _io._read_file(pathlib.Path(data), fn, "fundl.export"), str(data)
    else:
        raise ConfigError(f"{fn}: data must be the bytes fundl.export returned (or a file path); "
                          f"got {type(data).__name__}")
    arrays, meta = _io._decode(raw, where, (_io.EXPORT_FORMAT,))
    params, state = _io._rebuild(arrays, meta, where)
    try:
        program = jax.export.deserialize(bytearray(arrays["exported"].tobytes()))
    except KeyError:
        raise CorruptFileError(f"{where}: no 'exported' tensor: not written by fundl.export") from None
    except Exception as e:  # noqa: BLE001  (an intact program this jax cannot read)
        raise FundlError(f"{where}: jax {jax.__version__} cannot read the exported program "
                         f"({type(e).__name__}: {e}); run it with the jax version that wrote it "
                         f"(fundl {meta.get('fundl.version')})") from None
    params, state = jax.device_put((params, state))
    label = f"exported {meta.get('fundl.model_label', 'model')}"
    want = json.loads(meta.get("fundl.input_shape", "null"))
    dtype = meta.get("fundl.input_dtype")

    def f(x):
        _check_input(label, x, want, dtype)
        return program.call(params, state, x)

    f.metadata = dict(meta)
    return f


def _check_input(label: str, x, want, dtype) -> None:
    """A ShapeError naming the expected shape and dtype when ``x`` does not fit the program."""
    if want and isinstance(want[0], list):  # several inputs
        if not isinstance(x, (tuple, list)) or len(x) != len(want):
            raise ShapeError(f"{label}: x must be a tuple of {len(want)} inputs; got "
                             f"{type(x).__name__}")
        for i, (xi, wi) in enumerate(zip(x, want)):
            _check_input(f"{label} (input {i})", xi, wi, dtype)
        return
    shape, got = tuple(np.shape(x)), np.dtype(getattr(x, "dtype", np.asarray(x).dtype))
    fits = (len(shape) == len(want) and all(w is None or w == d for w, d in zip(want, shape))
            and (want[0] is not None or shape[0] >= 1))
    text = "(" + ", ".join("N" if w is None else str(w) for w in want) + ")"
    if not fits:
        raise ShapeError(f"{label}: x has shape {shape}, expected {text}"
                         + (" (any batch N >= 1)" if want and want[0] is None else ""))
    if got != np.dtype(dtype):
        raise ShapeError(f"{label}: x has dtype {got.name}, expected {dtype}; convert it "
                         f"(x.astype('{dtype}')), after the preprocessing used in training")

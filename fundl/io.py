"""Params and state in one ``.safetensors`` file, checked on the way back in.

:func:`save` writes a model's params and state (nested dicts of arrays, as
``model.init`` returns them) to one file; :func:`load` reads them back, bit
for bit, as NumPy arrays, optionally checked against a model the way
``model.apply`` checks them::

    >>> import os, tempfile, numpy as np, fundl
    >>> path = os.path.join(tempfile.mkdtemp(), "net.safetensors")
    >>> params = {"fc": {"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.float32)}}
    >>> fundl.io.save(path, params, metadata={"note": "demo"})
    >>> params, state = fundl.io.load(path)
    >>> params["fc"]["w"].shape, params["fc"]["w"].dtype, state
    ((3, 2), dtype('float32'), {})
    >>> fundl.io.metadata(path)["note"]
    'demo'

File format (version 1): a plain safetensors file (an 8-byte little-endian
header length, a JSON header, then the tensors' raw little-endian bytes), so
any safetensors reader opens it (``safetensors.torch.load_file``, ...).

* Tensors: one per leaf, keyed ``params/<path>`` or ``state/<path>``, where
  ``<path>`` is the leaf's dict keys joined by ``/``: the layer path, then the
  leaf's name, e.g. ``params/layer1/block1/body/conv1/w`` or ``state/bn1/mean``
  (the paths :func:`fundl.surgery.paths` and error messages use). Dtype and
  shape are the leaf's; supported dtypes: bool, (u)int8/16/32/64, float16,
  bfloat16, float32, float64, complex64, float8_e4m3fn, float8_e5m2.
* Metadata (``str -> str``, as safetensors requires); keys starting with
  ``fundl.`` are fundl's:

  ========================  ===========================================================
  ``fundl.format``          ``'fundl.io'`` (``'fundl.export'`` for :func:`fundl.export`,
                            whose bytes are this format plus an ``exported`` tensor)
  ``fundl.format_version``  ``'1'``
  ``fundl.version``         the writer's ``fundl.__version__``
  ``fundl.model``           ``repr(model)``, when :func:`save` was given ``model=``
  ``fundl.empty``           JSON list of the keys of empty dicts inside the trees
                            (usually ``'[]'``), rebuilt on load
  ``fundl.crc32``           JSON ``{key: CRC-32 of the tensor's bytes, 8 hex digits}``
  ``fundl.header_crc32``    CRC-32 of the canonical JSON of all other metadata and of
                            every tensor's key, dtype and shape
  any other key             the ``metadata=`` given to :func:`save`, as given
  ========================  ===========================================================

Loud on damage: :func:`load` checks the header's structure, the data's length
and layout and both checksums before it returns anything, so a truncated
file, a flipped bit anywhere in the header or the data, or a file of another
format raises :class:`CorruptFileError` (naming the file and what is wrong),
never half-read or silently wrong params. A readable file that fundl.io did
not write (a PyTorch checkpoint, a safetensors file of another library) raises
:class:`NotFundlFileError`: PyTorch state_dicts go through ``fundl.interop``.

Atomic: :func:`save` writes a temporary file next to the target, flushes it to
disk (``fsync``) and renames it over the target (``os.replace``), so a reader
sees the old file or the new one, never a truncated one. On an exception the
temporary file is removed; a process killed mid-save can leave a
``.NAME.<pid>-<random>.tmp`` file beside it (never under the final name).
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pathlib
import re
import secrets
import zlib
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import ConfigError, CorruptFileError, FundlError, NotFundlFileError, ShapeError
from ._layer import Layer, check_shape

__all__ = ["save", "load", "metadata", "flatten", "unflatten", "CorruptFileError",
           "NotFundlFileError", "FORMAT_VERSION"]

FORMAT = "fundl.io"
EXPORT_FORMAT = "fundl.export"  # fundl.export's bytes: this format plus an 'exported' tensor
FORMAT_VERSION = 1
_ROOTS = ("params", "state")
_HEADER_CRC = "fundl.header_crc32"
_WRITE_CHUNK = 1 << 24  # bytes per os.write call

# safetensors dtype codes and the NumPy dtypes they hold (bfloat16, float8: ml_dtypes via jnp)
_DTYPES = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16,
           "U32": np.uint32, "I32": np.int32, "U64": np.uint64, "I64": np.int64,
           "F16": np.float16, "BF16": jnp.bfloat16, "F32": np.float32, "F64": np.float64,
           "C64": np.complex64, "F8_E4M3": jnp.float8_e4m3fn, "F8_E5M2": jnp.float8_e5m2}
_CODES = {np.dtype(t): code for code, t in _DTYPES.items()}


# -- trees <-> flat {key: array} ---------------------------------------------------------------

def flatten(params, state=None) -> dict[str, np.ndarray]:
    """The file's view of ``params`` and ``state``: ``{key: NumPy array}``, one entry per leaf.

    Args:
      params: nested dicts of arrays (``jax``/NumPy arrays, or Python scalars, which
        become NumPy's default dtypes), as ``model.init`` returns; keys are
        non-empty strings without ``/``.
      state: the same for the state (``None``: no state).

    Returns:
      ``{'params/<path>': array, 'state/<path>': array}``, keys sorted, ``<path>``
      the leaf's keys joined by ``/``; arrays on the host, C-contiguous. Empty
      dicts have no leaves and no entry (:func:`save` records them separately).

    Raises:
      ConfigError: a tree is not a dict, a key is not a string or holds ``/``, or a
        leaf is not an array of a dtype safetensors stores.

    Example:
      >>> import numpy as np
      >>> flat = flatten({"enc": {"conv1": {"w": np.zeros((3, 3, 1, 8))}}}, {"bn": {"mean": np.zeros(8)}})
      >>> list(flat)
      ['params/enc/conv1/w', 'state/bn/mean']
    """
    return _flatten(params, state, "fundl.io.flatten")[0]


def unflatten(flat: Mapping[str, object]) -> tuple[dict, dict]:
    """The inverse of :func:`flatten`: ``(params, state)`` nested dicts from ``{key: array}``.

    Args:
      flat: ``{'params/<path>': array, 'state/<path>': array}``.

    Returns:
      ``(params, state)``; either is ``{}`` when no key has its prefix.

    Raises:
      ConfigError: a key does not start with ``params/`` or ``state/``, has an empty
        part, or is both a leaf and a prefix of another key.

    Example:
      >>> unflatten({"params/fc/w": 1.0, "params/fc/b": 0.0})
      ({'fc': {'w': 1.0, 'b': 0.0}}, {})
    """
    return _unflatten(flat, (), "fundl.io.unflatten")


def _flatten(params, state, fn: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """``(flat, empty)``: the leaves by key, and the keys of empty dicts inside the trees."""
    flat: dict[str, np.ndarray] = {}
    empty: list[str] = []
    for root, tree in zip(_ROOTS, (params, {} if state is None else state)):
        if not isinstance(tree, Mapping):
            raise ConfigError(f"{fn}: {root} must be a dict of arrays nested by layer name (as "
                              f"model.init returns it); got {type(tree).__name__}")
        _walk(tree, root, flat, empty, fn)
    return dict(sorted(flat.items())), sorted(empty)


def _walk(tree, key: str, flat: dict, empty: list, fn: str) -> None:
    if not isinstance(tree, Mapping):
        flat[key] = _host_array(tree, key, fn)
        return
    if not tree and "/" in key:
        empty.append(key)
    for k, v in tree.items():
        if not isinstance(k, str) or not k or "/" in k:
            raise ConfigError(f"{fn}: every dict key must be a non-empty string without '/' (the "
                              f"file joins keys with '/'); got the key {k!r} in {key!r}")
        _walk(v, f"{key}/{k}", flat, empty, fn)


def _host_array(value, key: str, fn: str) -> np.ndarray:
    try:
        a = np.asarray(value)  # a jax.Array is copied to the host
    except Exception as e:  # noqa: BLE001  (e.g. a typed PRNG key array)
        raise ConfigError(f"{fn}: {key} must be an array; got {type(value).__name__} ({e})") from None
    if a.dtype not in _CODES:
        names = sorted(np.dtype(t).name for t in _DTYPES.values())
        raise ConfigError(f"{fn}: {key} has dtype {a.dtype} ({type(value).__name__}), which "
                          f"safetensors cannot store; expected one of {names}. Cast it first, "
                          "e.g. x.astype(np.float32)")
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))  # the file is little-endian
    return a if a.flags.c_contiguous else a.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)


def _unflatten(flat: Mapping, empty, where: str) -> tuple[dict, dict]:
    """``(params, state)`` from ``{key: leaf}`` plus the keys of empty dicts."""
    trees = {root: {} for root in _ROOTS}
    entries = [(k, v, False) for k, v in flat.items()] + [(k, {}, True) for k in empty]
    for key, value, is_dict in entries:
        parts = key.split("/") if isinstance(key, str) else []
        if len(parts) < 2 or parts[0] not in trees or not all(parts):
            raise ConfigError(f"{where}: key {key!r} must be 'params/<path>' or 'state/<path>' "
                              "with non-empty '/'-separated parts")
        node = trees[parts[0]]
        for part in parts[1:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        here = node.get(parts[-1]) if isinstance(node, dict) else None
        if not isinstance(node, dict) or (parts[-1] in node
                                          and not (is_dict and isinstance(here, dict) and not here)):
            raise ConfigError(f"{where}: key {key!r} clashes with another key: a key cannot be "
                              "both a leaf and a prefix of other keys")
        node[parts[-1]] = value
    return trees["params"], trees["state"]


# -- save -------------------------------------------------------------------------------------

def save(path, params, state=None, *, model: Layer | None = None,
         metadata: Mapping[str, str] | None = None) -> None:
    """Write ``params`` and ``state`` to one ``.safetensors`` file, atomically.

    Args:
      path: the file to write (str or path-like; its directory must exist). An
        existing file is replaced only once the new one is complete on disk.
      params: nested dicts of arrays, as ``model.init`` returns (any dtype in
        the module docstring's list; ``jax`` arrays are copied to the host).
      state: the state tree (batch-norm statistics), or ``None`` for none.
      model: the model the trees belong to: its ``repr`` is recorded in the
        metadata (``fundl.model``), for people and error messages.
      metadata: extra ``{str: str}`` entries for the header (keys not starting
        with ``fundl.``); encode other values yourself, e.g. ``json.dumps(v)``.

    Raises:
      ConfigError: a tree, key, leaf or metadata entry that cannot be stored.
      OSError: the write failed (e.g. disk full); nothing was written under
        ``path`` and a file already there is unchanged.

    Example:
      >>> import os, tempfile, jax, fundl, fundl.layers as L
      >>> net = L.Serial(L.Dense(4), L.BatchNorm(), L.Dense(2))
      >>> _, params, state = net.init(jax.random.key(0), (1, 3))
      >>> path = os.path.join(tempfile.mkdtemp(), "net.safetensors")
      >>> fundl.io.save(path, params, state, model=net)
      >>> sorted(fundl.io.flatten(params, state))[:3]
      ['params/batch_norm/bias', 'params/batch_norm/scale', 'params/dense1/b']
    """
    fn = "fundl.io.save"
    path = _as_path(path, fn)
    if model is not None and not isinstance(model, Layer):
        raise ConfigError(f"{fn}: model must be a fundl Layer (or None); got {type(model).__name__}")
    user = _check_metadata(metadata, fn)
    flat, empty = _flatten(params, state, fn)
    extra = {"fundl.model": repr(model)} if model is not None else {}
    _write_atomic(path, _encode(flat, empty, {**extra, **user}, FORMAT), fn)


def _as_path(path, fn: str) -> pathlib.Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"{fn}: path must be a str or path-like (e.g. 'net.safetensors'); got "
                          f"{type(path).__name__}")
    return pathlib.Path(path)


def _check_metadata(metadata, fn: str) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ConfigError(f"{fn}: metadata must be a dict of str -> str; got {type(metadata).__name__}")
    for k, v in metadata.items():
        if not isinstance(k, str) or not k or k.startswith("fundl."):
            raise ConfigError(f"{fn}: metadata keys must be non-empty strings not starting with "
                              f"'fundl.' (reserved for fundl); got {k!r}")
        if not isinstance(v, str):
            raise ConfigError(f"{fn}: metadata values must be strings (safetensors stores text); "
                              f"got {k!r}: {type(v).__name__} {v!r}. Encode it, e.g. json.dumps(value)")
    return dict(metadata)


def _encode(flat: Mapping[str, np.ndarray], empty, extra: Mapping[str, str], fmt: str) -> bytes:
    """The bytes of a file of format ``fmt`` holding ``flat`` (checksums and fundl's metadata added)."""
    import safetensors.numpy

    from . import __version__

    crcs = {k: _crc(a) for k, a in flat.items()}
    meta = {"fundl.format": fmt, "fundl.format_version": str(FORMAT_VERSION),
            "fundl.version": __version__, "fundl.empty": json.dumps(list(empty)),
            "fundl.crc32": json.dumps(crcs, sort_keys=True), **extra}
    index = {k: [_CODES[a.dtype], list(a.shape)] for k, a in flat.items()}
    meta[_HEADER_CRC] = _header_crc(meta, index)
    return safetensors.numpy.save(dict(flat), metadata=meta)


def _crc(a: np.ndarray) -> str:
    return f"{zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8)):08x}"


def _header_crc(meta: Mapping[str, str], index: Mapping[str, list]) -> str:
    """CRC-32 of the metadata (less this checksum) and ``{key: [dtype code, shape]}``."""
    rest = {k: v for k, v in meta.items() if k != _HEADER_CRC}
    text = json.dumps([rest, index], sort_keys=True, separators=(",", ":"))
    return f"{zlib.crc32(text.encode()):08x}"


def _write_atomic(path: pathlib.Path, data: bytes, fn: str) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"{fn}: the directory {path.parent} does not exist; "
                                "create it first (os.makedirs)", str(path))
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{fn}: {path} is a directory; give a file name, "
                                "e.g. 'net.safetensors'", str(path))
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view[:_WRITE_CHUNK]):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None:
            raise OSError(e.errno, f"{fn}: writing {path} failed ({e.strerror or e}); nothing was "
                                   "written under that name and a file already there is unchanged") from e
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: pathlib.Path) -> None:
    """Make the rename durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- load ------------------------------------------------------------------------------------

def load(path, *, model: Layer | None = None, input_shape=None) -> tuple[dict, dict]:
    """Read params and state written by :func:`save`, bit for bit, checked for damage.

    Args:
      path: the file (str or path-like).
      model: check the trees against this model, as ``model.apply`` does (keys,
        shapes, dtype kinds), with the same messages: ``"Dense 'net/fc2':
        params 'w' has shape (200, 10), expected (200, 5)"``.
      input_shape: the input shape (batch included, e.g. ``(1, 28, 28, 1)``; a
        tuple of shapes for several inputs) the model is checked for; required
        with ``model``.

    Returns:
      ``(params, state)``: nested dicts of NumPy arrays (writable, on the host;
      bfloat16 and float8 as ``ml_dtypes`` arrays), exactly the dtypes, shapes and
      bytes saved; ``state`` is ``{}`` when none was saved. ``model.apply``
      takes them as they are; ``jax.device_put`` moves them to a device.

    Raises:
      FileNotFoundError / IsADirectoryError: no such file / a directory.
      CorruptFileError: empty, truncated, damaged (a checksum fails) or not a
        safetensors file; nothing is returned.
      NotFundlFileError: a readable file fundl.io did not write (a PyTorch
        checkpoint, another library's safetensors file).
      ShapeError: the trees do not fit ``model`` (the message of ``model.apply``,
        plus the file's name).

    Example:
      >>> import os, tempfile, jax, fundl, fundl.layers as L
      >>> net = L.Serial(L.Dense(8), L.ReLU(), L.Dense(10, name="fc2"), name="net")
      >>> _, params = net.init(jax.random.key(0), (1, 4))
      >>> path = os.path.join(tempfile.mkdtemp(), "net.safetensors")
      >>> fundl.io.save(path, params, model=net)
      >>> p, s = fundl.io.load(path, model=net, input_shape=(1, 4))
      >>> net5 = net.replace(layers=(*net.layers[:-1], L.Dense(5, name="fc2")))
      >>> try:
      ...     fundl.io.load(path, model=net5, input_shape=(1, 4))
      ... except fundl.ShapeError as e:
      ...     print(str(e).splitlines()[2].strip())
      Dense 'net/fc2': params 'w' has shape (8, 10), expected (8, 5)
    """
    fn = "fundl.io.load"
    _check_model_args(fn, model, input_shape)
    path = _as_path(path, fn)
    arrays, meta = _decode(_read_file(path, fn), str(path), (FORMAT, EXPORT_FORMAT))
    params, state = _rebuild(arrays, meta, str(path))
    if model is not None:
        _check_fit(model, params, state, input_shape, f"read from {path} by {fn}", meta)
    return params, state


def metadata(path) -> dict[str, str]:
    """The metadata of a fundl.io file (or of :func:`fundl.export`'s bytes), its header checked.

    Reads only the header, so it is cheap on large files.

    Args:
      path: the file (str or path-like), or the file's bytes.

    Returns:
      ``{str: str}``: fundl's entries (``fundl.format``, ``fundl.version``,
      ``fundl.model``, ...; see the module docstring) and the user's.

    Raises:
      As :func:`load`: FileNotFoundError, CorruptFileError, NotFundlFileError.
    """
    fn = "fundl.io.metadata"
    if isinstance(path, (bytes, bytearray, memoryview)):
        head, size, where = path, len(path), "the given bytes"
    else:
        path = _as_path(path, fn)
        (head, size), where = _read_head(path, fn), str(path)
    header, meta, _ = _parse_header(head, size, where)
    _check_fundl(header, meta, where, (FORMAT, EXPORT_FORMAT))
    return dict(sorted(meta.items()))


def _check_model_args(fn: str, model, input_shape) -> None:
    if model is not None and not isinstance(model, Layer):
        raise ConfigError(f"{fn}: model must be a fundl Layer (or None); got {type(model).__name__}")
    if model is not None and input_shape is None:
        raise ConfigError(f"{fn}: model= needs input_shape=, the input shape (batch included, "
                          "e.g. (1, 28, 28, 1)) the params are checked for")
    if model is None and input_shape is not None:
        raise ConfigError(f"{fn}: input_shape= is only used with model=; pass the model too")


def _read_file(path: pathlib.Path, fn: str, written_by: str = "fundl.io.save") -> bytearray:
    """The whole file, in a writable buffer (the arrays :func:`load` returns are views of it)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = bytearray(size)
            got = f.readinto(data)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"{fn}: no such file; expected a file written by "
                                f"{written_by}", str(path)) from None
    except IsADirectoryError:
        raise IsADirectoryError(errno.EISDIR, f"{fn}: this is a directory; expected a file written "
                                f"by {written_by} (a run's checkpoints/<epoch>/ directory becomes "
                                "a params file with fundl.experiment.export_checkpoint)",
                                str(path)) from None
    if got != size:
        raise CorruptFileError(f"{path}: the file changed while it was read ({got} of {size} bytes)")
    return data


def _read_head(path: pathlib.Path, fn: str) -> tuple[bytes, int]:
    """The 8-byte length and the header it announces (as much as the file holds), and the
    file's size."""
    try:
        f = open(path, "rb")
    except (FileNotFoundError, IsADirectoryError):
        _read_file(path, fn)  # raises the explanatory error
        raise
    with f:
        size = os.fstat(f.fileno()).st_size
        first = f.read(8)
        n = int.from_bytes(first, "little") if len(first) == 8 else 0
        return first + f.read(min(n, size)), size


def _parse_header(head, size: int, where: str) -> tuple[dict, dict, int]:
    """``(tensor entries, metadata, data start)`` from the first bytes of a ``size``-byte file."""
    if size < 8:
        what = "empty (0 bytes)" if size == 0 else f"only {size} bytes long"
        raise CorruptFileError(f"{where}: the file is {what}; a fundl.io file starts with an "
                               "8-byte header length (truncated, or not a fundl.io file)")
    n = int.from_bytes(bytes(head[:8]), "little")
    header, problem = None, None
    if n <= size - 8 and len(head) >= 8 + n:
        try:
            header = json.loads(bytes(head[8:8 + n]).decode("utf-8"))
        except ValueError as e:  # UnicodeDecodeError included
            problem = f"the header is not valid JSON ({e})"
    if header is None:
        _raise_if_foreign(head, where)
        problem = problem or (f"the header length field says {n} bytes, but only {size - 8} "
                              "follow it")
        raise CorruptFileError(f"{where}: {problem}: the file is truncated, damaged (a flipped "
                               "bit?) or not a safetensors file")
    if not isinstance(header, dict):
        raise CorruptFileError(f"{where}: the header is JSON but not an object: damaged")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in meta.items()):
        raise CorruptFileError(f"{where}: the header's __metadata__ is not a str -> str map: damaged")
    return header, meta, 8 + n


_FOREIGN = ((b"PK\x03\x04", "a zip archive (PyTorch's torch.save format, or NumPy's .npz)"),
            (b"\x93NUMPY", "a NumPy .npy file"))


def _raise_if_foreign(head, where: str) -> None:
    """NotFundlFileError for the formats a params file is often confused with."""
    head = bytes(head[:8])
    kind = next((what for magic, what in _FOREIGN if head.startswith(magic)), None)
    # a pickle: PROTO 2-5, then an opcode (a safetensors length this large would be absurd)
    if kind is None and head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") \
            and head[2:3] != b"\x00":
        kind = "a Python pickle (an older torch.save format)"
    if kind is not None:
        raise NotFundlFileError(f"{where}: {kind}, not a fundl.io (safetensors) file; PyTorch "
                                "state_dicts need fundl.interop")


_WHAT = {FORMAT: "params and state (written by fundl.io.save, read by fundl.io.load)",
         EXPORT_FORMAT: "an exported model (written by fundl.export, run by fundl.load_exported)"}


def _check_fundl(header: dict, meta: dict, where: str, formats) -> None:
    """The file is fundl's (else NotFundlFileError), its header intact, its format one of ``formats``."""
    fmt = meta.get("fundl.format")
    if fmt is None and _HEADER_CRC not in meta:
        for key, info in header.items():  # a well-formed file (else a damaged one of ours)
            _span(key, info if isinstance(info, dict) else {}, where)
        raise NotFundlFileError(f"{where}: a safetensors file without fundl.io's metadata (written "
                                "by another library, e.g. safetensors.torch.save_file); PyTorch "
                                "state_dicts need fundl.interop")
    index = {}
    for key, info in header.items():
        if not isinstance(info, dict):
            raise CorruptFileError(f"{where}: the header entry {key!r} is not a JSON object: damaged")
        index[key] = [info.get("dtype"), info.get("shape")]
    got, want = _header_crc(meta, index), meta.get(_HEADER_CRC)
    if got != want:
        raise CorruptFileError(f"{where}: the header fails its checksum (crc32 {got}, recorded "
                               f"{want}): the file was damaged (a flipped bit?) or edited after "
                               "it was written")
    version = meta.get("fundl.format_version")
    if version != str(FORMAT_VERSION):
        from . import __version__
        raise FundlError(f"{where}: fundl.io format version {version}; this fundl ({__version__}) "
                         f"reads version {FORMAT_VERSION}: upgrade fundl to read it")
    if fmt not in formats:
        raise ConfigError(f"{where}: this file holds {_WHAT.get(fmt, repr(fmt))}; expected "
                          + " or ".join(_WHAT[f] for f in formats))


def _decode(data, where: str, formats) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``({key: array}, metadata)`` of a whole file, every structure and checksum verified.

    The arrays are views of ``data`` (writable when ``data`` is a bytearray).
    """
    header, meta, start = _parse_header(data, len(data), where)
    _check_fundl(header, meta, where, formats)
    try:
        crcs = json.loads(meta["fundl.crc32"])
    except (KeyError, ValueError):
        raise CorruptFileError(f"{where}: the metadata lacks a readable fundl.crc32 table") from None
    spans = sorted(_span(key, info, where) for key, info in header.items())
    pos = 0
    for begin, end, key, _, _ in spans:
        if begin != pos:
            raise CorruptFileError(f"{where}: tensor {key!r} starts at byte {begin} of the data, "
                                   f"expected {pos}: overlapping or missing data (damaged)")
        pos = end
    have = len(data) - start
    if pos != have:
        raise CorruptFileError(
            f"{where}: truncated: the header describes {pos} bytes of tensor data, but only "
            f"{have} follow it" if pos > have else
            f"{where}: {have - pos} unexpected bytes after the last tensor (appended or damaged)")
    arrays = {}
    for begin, end, key, dtype, shape in spans:
        raw = (np.frombuffer(data, np.uint8, count=end - begin, offset=start + begin)
               if end > begin else np.zeros(0, np.uint8))
        crc = f"{zlib.crc32(raw):08x}"
        if crc != crcs.get(key):
            raise CorruptFileError(f"{where}: tensor {key!r} fails its checksum (crc32 {crc}, "
                                   f"recorded {crcs.get(key)}): its bytes were damaged (a flipped "
                                   "bit?) after it was written")
        arrays[key] = raw.view(dtype).reshape(shape)
    return arrays, meta


def _span(key: str, info: dict, where: str):
    """``(begin, end, key, dtype, shape)`` of one header entry, checked for consistency."""
    code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")

    def count(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not (code in _DTYPES and isinstance(shape, list) and all(count(d) for d in shape)
            and isinstance(offsets, list) and len(offsets) == 2 and all(count(o) for o in offsets)):
        raise CorruptFileError(f"{where}: the header entry {key!r} is malformed: {info}")
    dtype = np.dtype(_DTYPES[code])
    if offsets[1] - offsets[0] != math.prod(shape) * dtype.itemsize:
        raise CorruptFileError(f"{where}: tensor {key!r} ({code} {shape}) needs "
                               f"{math.prod(shape) * dtype.itemsize} bytes but its offsets "
                               f"{offsets} span {offsets[1] - offsets[0]}: damaged")
    return offsets[0], offsets[1], key, dtype, tuple(shape)


def _rebuild(arrays: dict, meta: dict, where: str) -> tuple[dict, dict]:
    """``(params, state)`` from a decoded file (an export's ``exported`` tensor left out)."""
    skip = {"exported"} if meta.get("fundl.format") == EXPORT_FORMAT else set()
    try:
        empty = json.loads(meta.get("fundl.empty", "[]"))
        if not isinstance(empty, list):
            raise ValueError("fundl.empty is not a JSON list")
        return _unflatten({k: v for k, v in arrays.items() if k not in skip}, empty, where)
    except ValueError as e:  # ConfigError included: keys that do not make trees
        raise CorruptFileError(f"{where}: the keys do not form params/state trees: {e}") from None


def _check_fit(model: Layer, params, state, input_shape, note: str, meta: Mapping) -> None:
    """Raise ``model.apply``'s ShapeError (plus ``note``) if the trees do not fit ``model``."""
    from . import _paramcheck

    shapes = check_shape(input_shape, model)
    single = all(isinstance(d, int) for d in shapes)
    x = (jax.ShapeDtypeStruct(shapes, jnp.float32) if single else
         tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes))
    try:
        _paramcheck.check(model, params, state, x)
    except ShapeError as e:
        saved = meta.get("fundl.model")
        was = (f"; the file was saved from {_one_line(saved)}"
               if saved and saved != repr(model) else "")
        raise ShapeError(f"{e}\n(The params/state were {note}{was})") from None


def _one_line(text: str, n: int = 160) -> str:
    """A multi-line repr on one line: ``Serial(layers=(Dense(...), ...), name='net')``."""
    text = re.sub(r",?\s*\n\s*\)", ")", text)
    text = re.sub(r"\(\s*\n\s*", "(", text)
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "..."

"""A run's checkpoints: Orbax, one directory per epoch, each with checksums, verified on restore.

Part of :mod:`fundl.experiment` (which re-exports the public names).

Layout: ``OUT/checkpoints/<E>/train`` (Orbax's ``StandardSave`` of ``{'params',
'state', 'opt_state'}``) and ``OUT/checkpoints/<E>/meta/metadata`` (JSON: ``epoch``,
``finite`` and ``arrays``: ``{leaf path: [crc32, shape, dtype]}`` of every array,
computed on the host copy when the checkpoint is written). Orbax itself records no
checksums of array values (a bit flip in its OCDBT data files restores silently), so:

* **Restore verifies.** Every restored array must match its recorded crc32, shape and
  dtype. A checkpoint that fails (empty directory, missing or unreadable file, truncated
  array data, checksum mismatch) is reported with a warning naming the file and the
  fault, and the newest older checkpoint that passes is used instead; when none passes,
  :class:`fundl.CheckpointError` lists every checkpoint and its fault.
* **Rotation keeps what a resume needs.** Orbax's ``max_to_keep`` is not used: after
  each completed save, the newest ``2`` checkpoints whose params are all finite
  (``finite: true``) are kept, plus the newest checkpoint whatever its params; older
  ones are deleted. A checkpoint with NaN or Inf params is therefore never the only one.

Cost: the record is computed on a host copy of the trees once per epoch (zlib crc32 and
``isfinite``): about 0.1 s for a ResNet-18-size tree (11 M params plus momentum, 90 MB)
on one CPU core; restore verifies the same way.
"""
from __future__ import annotations

import gc
import json
import pathlib
import shutil
import sys
import warnings
import zlib
from collections.abc import Mapping

import jax
import numpy as np
import optax

from . import io as _io
from ._errors import CheckpointError, ConfigError
from ._layer import Layer

_KEEP_FINITE = 2


class _Fault(Exception):
    """A checkpoint that cannot be used: ``file`` and what is wrong with it."""

    def __init__(self, file, problem: str):
        super().__init__(f"{file} {problem}")
        self.file, self.problem = pathlib.Path(file), problem


def _checkpoint_manager(directory: pathlib.Path):
    import orbax.checkpoint as ocp
    # max_to_keep=None: the rotation is _rotate's (it knows which checkpoints are finite).
    return ocp.CheckpointManager(directory.resolve(), options=ocp.CheckpointManagerOptions(
        max_to_keep=None, create=True))


def _path_str(path) -> str:
    """``'opt_state/0/trace/conv/w'``: a tree path as Orbax's generic form and Optax's agree."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _host(a) -> np.ndarray:
    """A host copy of ``a`` (this process's copy of a replicated multi-process array)."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        a = a.addressable_data(0)
    return np.asarray(a, order="C")  # (np.ascontiguousarray would make a scalar 1-d)


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(a.reshape(-1).view(np.uint8)) if a.size else 0


def _checksums(tree) -> dict:
    """``{'finite': bool, 'arrays': {path: [crc32, shape, dtype]}}`` of ``tree``'s host copy;
    ``finite``: every float array of ``tree['params']`` is free of NaN and Inf."""
    arrays, finite = {}, True
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = _host(leaf)
        arrays[_path_str(path)] = [_crc(a), list(a.shape), str(a.dtype)]
        if _path_str(path[:1]) == "params" and jax.numpy.issubdtype(a.dtype, jax.numpy.inexact):
            finite = finite and bool(np.isfinite(a).all())
    return {"finite": finite, "arrays": arrays}


def _verify(tree, record: Mapping, where) -> None:
    """Raise :class:`_Fault` unless ``tree``'s arrays match ``record['arrays']``."""
    got = {_path_str(p): _host(a) for p, a in jax.tree_util.tree_flatten_with_path(tree)[0]}
    want = record["arrays"]
    if set(got) != set(want):
        raise _Fault(where, f"holds arrays {sorted(set(got) - set(want))[:3]} and lacks "
                            f"{sorted(set(want) - set(got))[:3]} of its checksum record")
    bad = [k for k, (crc, shape, dtype) in want.items()
           if (_crc(got[k]), list(got[k].shape), str(got[k].dtype)) != (crc, list(shape), dtype)]
    if bad:
        names = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise _Fault(where, f"has {len(bad)} array(s) that fail their checksum ({names}): its "
                            "data files are damaged")


def _save(manager, epoch: int, tree) -> None:
    """Checkpoint ``tree`` as epoch ``epoch`` (asynchronously), with its checksum record;
    first waits for the previous save and rotates (:func:`_rotate`)."""
    import orbax.checkpoint as ocp
    manager.wait_until_finished()
    _rotate(manager)
    record = {"epoch": epoch, **_checksums(tree)}
    # Orbax copies the arrays to the host before save() returns, so the next
    # (donating) train step may reuse their buffers while the write goes on.
    manager.save(epoch, args=ocp.args.Composite(train=ocp.args.StandardSave(tree),
                                                meta=ocp.args.JsonSave(record)))


def _steps(directory: pathlib.Path) -> list[int]:
    """The epochs with a checkpoint directory in ``directory``, newest first."""
    if not directory.is_dir():
        return []
    return sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir()),
                  reverse=True)


def _read_meta(step_dir: pathlib.Path) -> dict:
    path = step_dir / "meta" / "metadata"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise _Fault(path, "is missing (the checkpoint is partial)") from None
    except (OSError, ValueError) as e:
        raise _Fault(path, f"is unreadable ({_short(e)})") from None
    if not isinstance(meta, dict) or meta.get("epoch") != int(step_dir.name):
        raise _Fault(path, f"does not record epoch {step_dir.name}")
    return meta


def _rotate(manager) -> None:
    """Delete all but the newest ``_KEEP_FINITE`` checkpoints with finite params and the newest."""
    directory = pathlib.Path(manager.directory)
    # Orbax's list of steps, not the directory's: every process must delete the same steps
    # (delete() is a barrier), and process 0 may already be deleting.
    steps, keep = sorted(manager.all_steps(), reverse=True), set()
    for step in steps:
        try:
            finite = _read_meta(directory / str(step)).get("finite", True)
        except _Fault:
            continue  # unusable: does not count as a kept one
        if finite and len(keep) < _KEEP_FINITE:
            keep.add(step)
    keep.update(steps[:1])
    for step in steps:
        if step not in keep:
            manager.delete(step)


def _short(e: BaseException) -> str:
    """``'Type: first line'`` of the innermost cause of an exception, at most 200 characters
    (TensorStore's outer message is a page of its spec; the cause says what is wrong)."""
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


def _collect_quietly() -> None:
    """Collect the coroutines a failed Orbax read leaves behind without their "Exception
    ignored in <coroutine>" tracebacks (a page of TensorStore spec each) on stderr."""
    hook, sys.unraisablehook = sys.unraisablehook, lambda unraisable: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook


def _read_step(step_dir: pathlib.Path, target):
    """``(tree, meta)`` of one checkpoint, verified; :class:`_Fault` when it is not usable.

    ``target(train_dir, reader)`` gives the restore target (abstract arrays).
    """
    import orbax.checkpoint as ocp

    if not any(step_dir.iterdir()):
        raise _Fault(step_dir, "is empty")
    meta = _read_meta(step_dir)
    train = step_dir / "train"
    if not train.is_dir():
        raise _Fault(train, "is missing (the checkpoint is partial)")
    with ocp.StandardCheckpointer() as reader:
        abstract = target(train, reader)
        try:
            tree = reader.restore(train, abstract)
        except Exception as e:  # Orbax/TensorStore: truncated or missing data files, bad JSON
            fault = _Fault(train, f"cannot be read ({_short(e)})")
        else:
            fault = None
    if fault is not None:
        _collect_quietly()
        raise fault
    if "arrays" not in meta:
        warnings.warn(f"checkpoint {step_dir} has no checksum record (written by an older "
                      "fundl): restored without verification", stacklevel=3)
    else:
        _verify(tree, meta, train)
    return tree, meta


def _restore_newest(directory: pathlib.Path, target, *, who: str, epoch: int | None = None):
    """``(epoch, tree, faults)``: the newest checkpoint in ``directory`` that passes
    :func:`_read_step` (or only ``epoch``'s), the faults of the newer ones (each reported
    with a warning); ``(0, None, [])`` when there is none.

    Raises:
      CheckpointError: there are checkpoints but none is usable (each named with its fault).
    """
    faults: list[_Fault] = []
    for step in ([epoch] if epoch is not None else _steps(directory)):
        try:
            tree, _ = _read_step(directory / str(step), target)
            return step, tree, faults
        except _Fault as fault:
            faults.append(fault)
            if epoch is None:
                warnings.warn(f"{who}: the checkpoint of epoch {step} is unusable: {fault}; "
                              "trying the next older one", stacklevel=3)
    if not faults:
        return 0, None, []
    listing = "; ".join(f"epoch {f.file.relative_to(directory).parts[0]}: {f}" for f in faults)
    fix = ("" if epoch is not None else
           f". Start afresh with another --out (or delete {directory}), or restore a backup")
    raise CheckpointError(f"{who}: no usable checkpoint in {directory} ({listing}){fix}") from None


def _restore(directory: pathlib.Path, like):
    """``(epoch, tree, faults)`` of the newest verified checkpoint in ``directory``, restored
    into the structure and shardings of ``like``; ``(0, like, [])`` when there is none."""
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    epoch, tree, faults = _restore_newest(directory, lambda train, reader: abstract,
                                          who="run: --resume")
    return epoch, (like if tree is None else tree), faults


def _set_aside(directory: pathlib.Path, faults) -> list[pathlib.Path]:
    """Rename each faulty checkpoint ``<E>`` to ``<E>.unusable`` (out of the way of the epoch's
    new save, kept for inspection); the new names."""
    moved = []
    for fault in faults:
        step_dir = directory / fault.file.relative_to(directory).parts[0]
        new, n = step_dir.with_name(step_dir.name + ".unusable"), 1
        while new.exists():
            new, n = step_dir.with_name(f"{step_dir.name}.unusable{n}"), n + 1
        shutil.move(step_dir, new)
        moved.append(new)
    return moved


def load_checkpoint(out, epoch: int | None = None, *,
                    optimizer: optax.GradientTransformation | None = None) -> tuple[int, dict]:
    """Read a checkpoint written by :func:`run` (to evaluate, visualise or continue training).

    Every array is verified against the checksums recorded when the checkpoint
    was written.

    Args:
      out: the run's output directory (holding ``checkpoints/``).
      epoch: which epoch's checkpoint; ``None`` for the newest one that passes
        verification (a damaged newer one is reported with a warning and skipped).
      optimizer: the run's optimizer (e.g. ``make_optimizer('momentum', 0.1)``):
        ``opt_state`` is then restored in Optax's own structure, ready for
        ``make_train_step(model, optimizer)`` to continue training.

    Returns:
      ``(epoch, tree)`` with ``tree = {'params', 'state', 'opt_state'}``; ``params``
      and ``state`` have the model's nested-dict structure (NumPy arrays),
      ``opt_state`` Optax's structure with ``optimizer``, else Orbax's generic
      form (lists and dicts, not Optax's named tuples).

    Raises:
      ConfigError: no such checkpoint, or an ``optimizer`` whose state does not
        have the checkpoint's structure.
      CheckpointError: the checkpoint asked for (or, with ``epoch=None``, every
        checkpoint) is empty, partial, unreadable or fails its checksums.
    """
    directory = pathlib.Path(out).resolve() / "checkpoints"
    if not directory.is_dir():
        raise ConfigError(f"load_checkpoint: no checkpoints/ in {out}; expected the --out of a run")
    have = sorted(_steps(directory))
    if not have or (epoch is not None and epoch not in have):
        raise ConfigError(f"load_checkpoint: no checkpoint of epoch {epoch} in {directory}; "
                          f"have epochs {have}")
    # Read every array onto this process's first device, whatever devices wrote it
    # (a --data-parallel run saves arrays replicated over all of its devices).
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def target(path, reader):
        try:
            meta = reader.metadata(path)
        except Exception as e:  # unreadable _METADATA
            raise _Fault(path, f"has unreadable metadata ({_short(e)})") from None
        meta = getattr(meta, "item_metadata", meta)
        tree = dict(jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev),
                                 meta))
        if optimizer is not None:
            tree["opt_state"] = _optax_target(optimizer, tree, dev, path)
        return tree

    epoch, tree, _ = _restore_newest(directory, target, who="load_checkpoint", epoch=epoch)
    return epoch, dict(jax.device_get(tree))


def _optax_target(optimizer, target, dev, path):
    """Abstract ``optimizer.init(params)`` placed on ``dev``, as a restore target; checked
    against the checkpoint's ``opt_state`` arrays (``target['opt_state']``) by path."""
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise ConfigError(f"load_checkpoint: optimizer must be an optax GradientTransformation; "
                          f"got {type(optimizer).__name__}")
    want = jax.eval_shape(optimizer.init, target["params"])
    paths = {_path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(want)[0]}
    have = {_path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(target["opt_state"])[0]}
    if paths != have:
        raise ConfigError(f"load_checkpoint: the optimizer state in {path} has {len(have)} arrays "
                          f"but optimizer.init gives {len(paths)} (e.g. "
                          f"{sorted(paths ^ have)[:2]} differ); was the run trained with this "
                          "optimizer (and frozen parts)?")
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev), want)


def export_checkpoint(out, path, epoch: int | None = None, *, model: Layer | None = None,
                      input_shape=None, metadata: Mapping[str, str] | None = None) -> int:
    """Write a checkpoint's params and state to a fundl.io file (for ``--init-from``, sharing).

    Args:
      out: the run's output directory (holding ``checkpoints/``).
      path: the ``.safetensors`` file to write (atomically, :func:`fundl.io.save`).
      epoch: which epoch's checkpoint; ``None`` for the latest.
      model: the run's model, to record its ``repr`` (the checkpoint does not know it).
      input_shape: with ``model``, the input shape (batch included, e.g. ``(1, 28, 28, 1)``):
        the params and state are then checked against ``model`` before anything is
        written, as ``fundl.io.load(model=, input_shape=)`` does. Without it, ``model``
        is only recorded (the checkpoint cannot tell the input shape): a model of another
        architecture goes unnoticed until the file is loaded with a model.
      metadata: extra ``{str: str}`` entries; ``epoch`` and, when ``out/config.json``
        exists, ``config`` (its text) are recorded anyway.

    Returns:
      The epoch written.

    Raises:
      ConfigError: no such checkpoint (as :func:`load_checkpoint`).
      CheckpointError: it fails verification (as :func:`load_checkpoint`).
      ShapeError: with ``model`` and ``input_shape``, the checkpoint's params or state do
        not fit ``model`` (every mismatch named by layer path).

    Example (after ``python experiments/mnist.py --out runs/mnist``)::

        epoch = export_checkpoint("runs/mnist", "mnist.safetensors")
        params, state = fundl.io.load("mnist.safetensors")
    """
    if model is not None and not isinstance(model, Layer):
        raise ConfigError(f"export_checkpoint: model must be a fundl Layer (or None); got "
                          f"{type(model).__name__}")
    if input_shape is not None and model is None:
        raise ConfigError("export_checkpoint: input_shape= is only used with model=; pass the "
                          "model too")
    epoch, tree = load_checkpoint(out, epoch)
    if input_shape is not None:
        _io._check_fit(model, tree["params"], tree.get("state") or {}, input_shape,
                       f"read from {out}'s checkpoint of epoch {epoch} by export_checkpoint",
                       {})
    meta = {"epoch": str(epoch)}
    config = pathlib.Path(out) / "config.json"
    if config.is_file():
        meta["config"] = config.read_text()
    _io.save(path, tree["params"], tree.get("state") or {}, model=model,
             metadata={**meta, **dict(metadata or {})})
    return epoch



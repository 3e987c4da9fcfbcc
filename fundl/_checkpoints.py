"""A run's checkpoints: Orbax, one directory per epoch, the newest kept.

Part of :mod:`fundl.experiment` (which re-exports the public names).
"""
from __future__ import annotations

import pathlib
from collections.abc import Mapping

import jax
import optax

from . import io as _io
from ._errors import ConfigError
from ._layer import Layer

_KEEP_CHECKPOINTS = 2


def _checkpoint_manager(directory: pathlib.Path):
    import orbax.checkpoint as ocp
    return ocp.CheckpointManager(directory.resolve(), options=ocp.CheckpointManagerOptions(
        max_to_keep=_KEEP_CHECKPOINTS, create=True))


def _save(manager, epoch: int, tree) -> None:
    import orbax.checkpoint as ocp
    # Orbax copies the arrays to the host before save() returns, so the next
    # (donating) train step may reuse their buffers while the write goes on.
    manager.save(epoch, args=ocp.args.Composite(train=ocp.args.StandardSave(tree),
                                                meta=ocp.args.JsonSave({"epoch": epoch})))


def _restore(manager, like):
    import orbax.checkpoint as ocp
    epoch = manager.latest_step()
    if epoch is None:
        return 0, like
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    got = manager.restore(epoch, args=ocp.args.Composite(train=ocp.args.StandardRestore(abstract),
                                                         meta=ocp.args.JsonRestore()))
    if got.meta["epoch"] != epoch:
        raise ConfigError(f"checkpoint {manager.directory}/{epoch} says epoch {got.meta['epoch']}")
    return epoch, got.train


def load_checkpoint(out, epoch: int | None = None, *,
                    optimizer: optax.GradientTransformation | None = None) -> tuple[int, dict]:
    """Read a checkpoint written by :func:`run` (to evaluate, visualise or continue training).

    Args:
      out: the run's output directory (holding ``checkpoints/``).
      epoch: which epoch's checkpoint; ``None`` for the latest.
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
    """
    import orbax.checkpoint as ocp

    directory = pathlib.Path(out).resolve() / "checkpoints"
    if not directory.is_dir():
        raise ConfigError(f"load_checkpoint: no checkpoints/ in {out}; expected the --out of a run")
    with ocp.CheckpointManager(directory) as manager:
        have = sorted(manager.all_steps())
        epoch = have[-1] if epoch is None and have else epoch
        if epoch not in have:
            raise ConfigError(f"load_checkpoint: no checkpoint of epoch {epoch} in {directory}; "
                              f"have epochs {have}")
    # Read every array onto this process's first device, whatever devices wrote it
    # (a --data-parallel run saves arrays replicated over all of its devices).
    path = directory / str(epoch) / "train"
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with ocp.StandardCheckpointer() as reader:
        meta = reader.metadata(path)
        meta = getattr(meta, "item_metadata", meta)
        target = dict(jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev),
                                   meta))
        if optimizer is not None:
            target["opt_state"] = _optax_target(optimizer, target, dev, path)
        try:
            got = jax.device_get(reader.restore(path, target))
        except (ValueError, KeyError, TypeError) as e:
            if optimizer is None:
                raise
            raise ConfigError(f"load_checkpoint: the optimizer state in {path} does not have the "
                              "structure optimizer.init gives; was the run trained with this "
                              f"optimizer (and frozen parts)? ({type(e).__name__}: "
                              f"{str(e)[:200]})") from None
    return epoch, dict(got)


def _optax_target(optimizer, target, dev, path):
    """Abstract ``optimizer.init(params)`` placed on ``dev``, as a restore target."""
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise ConfigError(f"load_checkpoint: optimizer must be an optax GradientTransformation; "
                          f"got {type(optimizer).__name__}")
    want = jax.eval_shape(optimizer.init, target["params"])
    got_n = len(jax.tree.leaves(target["opt_state"]))
    if len(jax.tree.leaves(want)) != got_n:
        raise ConfigError(f"load_checkpoint: the optimizer state in {path} has {got_n} arrays but "
                          f"optimizer.init gives {len(jax.tree.leaves(want))}; was the run "
                          "trained with this optimizer?")
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev), want)


def export_checkpoint(out, path, epoch: int | None = None, *, model: Layer | None = None,
                      metadata: Mapping[str, str] | None = None) -> int:
    """Write a checkpoint's params and state to a fundl.io file (for ``--init-from``, sharing).

    Args:
      out: the run's output directory (holding ``checkpoints/``).
      path: the ``.safetensors`` file to write (atomically, :func:`fundl.io.save`).
      epoch: which epoch's checkpoint; ``None`` for the latest.
      model: the run's model, to record its ``repr`` (the checkpoint does not know it).
      metadata: extra ``{str: str}`` entries; ``epoch`` and, when ``out/config.json``
        exists, ``config`` (its text) are recorded anyway.

    Returns:
      The epoch written.

    Raises:
      ConfigError: no such checkpoint (as :func:`load_checkpoint`).

    Example (after ``python experiments/mnist.py --out runs/mnist``)::

        epoch = export_checkpoint("runs/mnist", "mnist.safetensors")
        params, state = fundl.io.load("mnist.safetensors")
    """
    epoch, tree = load_checkpoint(out, epoch)
    meta = {"epoch": str(epoch)}
    config = pathlib.Path(out) / "config.json"
    if config.is_file():
        meta["config"] = config.read_text()
    _io.save(path, tree["params"], tree.get("state") or {}, model=model,
             metadata={**meta, **dict(metadata or {})})
    return epoch



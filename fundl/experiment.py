"""Experiment runner: the resumable training loop behind ``experiments/*.py``.

One call, :func:`run`, trains a model on in-memory arrays and writes, into an
output directory ``OUT``::

    OUT/config.json        the run's settings (checked again on --resume)
    OUT/metrics.jsonl      one JSON line per epoch: epoch, train_loss, train_accuracy,
                           test_loss, test_accuracy, epoch_seconds, examples_per_second, lr
    OUT/curves.png         loss and error (1 - accuracy) vs epoch, train and test
    OUT/checkpoints/<E>/   params, batch-norm state and optimizer state after epoch E,
                           written with Orbax (atomic: a directory appears only when
                           complete); the two newest are kept

and, when asked, files outside ``OUT``: ``export_params`` (the final params and
state, :func:`fundl.io.save`) and ``export_model`` (the final model as
:func:`fundl.export` bytes). ``init_from`` starts training from a params file
instead of a fresh initialisation; :func:`export_checkpoint` turns any
checkpoint into a params file.

Reproducibility: epoch ``e`` (0-based) visits the training set in the order
``fundl.data.batches(..., seed=seed, epoch=e)`` gives, and step ``i`` of it
gets the key ``fold_in(fold_in(key(seed), e), i)`` (dropout, augmentation).
Both depend on nothing else, so a run resumed after epoch ``E`` continues
exactly as if it had never stopped: on the same backend its parameters equal,
bit for bit, those of an uninterrupted run.

Helpers shared by the runners: :func:`make_schedule`, :func:`make_optimizer`,
:func:`add_training_flags`, :func:`read_metrics`, :func:`plot_curves`,
:func:`load_checkpoint`, :func:`export_checkpoint`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import optax

from . import _loop
from . import io as _io
from . import train as _train  # module lookup: train.evaluate is the one evaluator
from ._errors import ConfigError, NotFundlFileError, ShapeError
from ._export import export as _export_model
from ._layer import Layer
from .data import batches, prefetch_to_device
from .train import make_train_step, param_labels

__all__ = ["run", "load_checkpoint", "export_checkpoint", "load_splits", "steps_per_epoch", "make_schedule", "make_optimizer", "add_training_flags", "read_metrics",
           "plot_curves", "SCHEDULES", "OPTIMIZERS"]

SCHEDULES = ("constant", "step", "cosine")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
# Settings that may change between a run and its --resume without changing the result.
_RESUMABLE_CHANGES = {"resume", "progress", "out", "data_dir", "stop_after", "epochs",
                      "export_params", "export_model"}
_KEEP_CHECKPOINTS = 2


# -- optimizers ------------------------------------------------------------------

def make_schedule(name: str, lr: float, *, epochs: int, steps_per_epoch: int,
                  milestones: tuple[float, ...] = (0.5, 0.75), gamma: float = 0.1):
    """A learning-rate schedule over ``epochs * steps_per_epoch`` steps.

    Args:
      name: ``'constant'``; ``'step'`` (multiply by ``gamma`` at each fraction of
        training in ``milestones``, rounded to whole epochs, as PyTorch's
        ``MultiStepLR`` stepped per epoch); ``'cosine'`` (cosine decay from
        ``lr`` to 0 over all steps, per step).
      lr: the initial learning rate.
      epochs: total epochs of the run.
      steps_per_epoch: optimizer steps per epoch.
      milestones: fractions of ``epochs`` for ``'step'``.
      gamma: the factor for ``'step'``.

    Returns:
      A float (``'constant'``) or an Optax schedule ``step -> lr``.

    Example:
      >>> s = make_schedule("step", 0.1, epochs=4, steps_per_epoch=10)
      >>> [round(float(s(i)), 4) for i in (0, 19, 20, 30)]
      [0.1, 0.1, 0.01, 0.001]
    """
    if name not in SCHEDULES:
        raise ConfigError(f"make_schedule: unknown schedule name={name!r}; expected one of {list(SCHEDULES)}")
    if name == "constant":
        return lr
    total = max(1, epochs * steps_per_epoch)
    if name == "cosine":
        return optax.cosine_decay_schedule(init_value=lr, decay_steps=total)
    # Milestone epochs are floored (0.75 * 10 -> epoch 7), as int() would in a PyTorch script.
    bounds = sorted({math.floor(f * epochs) * steps_per_epoch for f in milestones} - {0})
    return optax.piecewise_constant_schedule(lr, {b: gamma for b in bounds})


def make_optimizer(name: str, learning_rate, *, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> optax.GradientTransformation:
    """An Optax optimizer by name, with PyTorch's conventions.

    Args:
      name: ``'sgd'`` (plain), ``'momentum'`` (heavy ball, PyTorch's
        ``SGD(momentum=m)``), ``'nesterov'``, ``'adam'``, ``'adamw'``.
      learning_rate: a float or an Optax schedule.
      momentum: for ``'momentum'`` and ``'nesterov'``.
      weight_decay: L2 coefficient on the weights (``'w'`` leaves; biases and
        batch-norm scales are not decayed), added to the gradient as in
        PyTorch's ``weight_decay=`` for the SGD family and ``'adam'``; decoupled
        for ``'adamw'``.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> opt = make_optimizer("momentum", 0.1, weight_decay=5e-4)
    """
    if name not in OPTIMIZERS:
        raise ConfigError(f"make_optimizer: unknown optimizer name={name!r}; expected one of {list(OPTIMIZERS)}")
    if weight_decay < 0:
        raise ConfigError(f"make_optimizer: weight_decay must be >= 0; got {weight_decay}")

    def decay_mask(params):
        return param_labels(params, {"*/w": True}, default=False)

    if name == "adamw":
        return optax.adamw(learning_rate, weight_decay=weight_decay, mask=decay_mask)
    base = {"sgd": lambda: optax.sgd(learning_rate),
            "momentum": lambda: optax.sgd(learning_rate, momentum=momentum),
            "nesterov": lambda: optax.sgd(learning_rate, momentum=momentum, nesterov=True),
            "adam": lambda: optax.adam(learning_rate)}[name]()
    if weight_decay == 0:
        return base
    return optax.chain(optax.add_decayed_weights(weight_decay, mask=decay_mask), base)


def add_training_flags(parser: argparse.ArgumentParser, *, epochs: int, batch_size: int,
                       optimizer: str, lr: float, schedule: str, momentum: float,
                       weight_decay: float, out: str) -> None:
    """Add the flags every runner shares to ``parser``, with the runner's defaults.

    Flags: ``--epochs --batch-size --optimizer --lr --momentum --weight-decay
    --schedule --seed --out --resume --stop-after --no-progress --limit-train
    --limit-test --eval-batch-size --data-parallel --init-from --export-params
    --export-model`` (the last three: :func:`run`'s ``init_from``,
    ``export_params``, ``export_model``).
    """
    a = parser.add_argument
    a("--epochs", type=int, default=epochs, help=f"passes over the training set (default {epochs})")
    a("--batch-size", type=int, default=batch_size, help=f"examples per SGD step (default {batch_size})")
    a("--optimizer", choices=OPTIMIZERS, default=optimizer, help=f"(default {optimizer})")
    a("--lr", type=float, default=lr, help=f"initial learning rate (default {lr})")
    a("--momentum", type=float, default=momentum,
      help=f"for --optimizer momentum/nesterov (default {momentum})")
    a("--weight-decay", type=float, default=weight_decay,
      help=f"L2 on the weights, not biases or batch-norm scales (default {weight_decay})")
    a("--schedule", choices=SCHEDULES, default=schedule,
      help=f"learning-rate schedule: step = x0.1 at 50%% and 75%% of the epochs, cosine = per step to 0 "
           f"(default {schedule})")
    a("--seed", type=int, default=0, help="seed of initialisation, data order, dropout, augmentation (default 0)")
    a("--out", type=pathlib.Path, default=pathlib.Path(out),
      help=f"output directory: metrics.jsonl, curves.png, checkpoints/ (default {out})")
    a("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    a("--stop-after", type=int, default=None, metavar="E",
      help="end this invocation after epoch E (the schedule still spans --epochs); "
           "continue later with --resume")
    a("--no-progress", action="store_true", help="no progress bar (one line per epoch only)")
    a("--limit-train", type=int, default=None, metavar="N", help="train on the first N examples only")
    a("--limit-test", type=int, default=None, metavar="N", help="evaluate on the first N test examples only")
    a("--eval-batch-size", type=int, default=1000, help="examples per evaluation call (default 1000)")
    a("--data-parallel", action="store_true",
      help="data parallel over all devices (of every process when FUNDL_COORDINATOR, "
           "FUNDL_NUM_PROCESSES, FUNDL_PROCESS_ID are set); --batch-size is the global batch, "
           "divisible by the device count")
    a("--init-from", type=pathlib.Path, default=None, metavar="FILE",
      help="start from the params and state in FILE (fundl.io.save, --export-params or "
           "fundl.experiment.export_checkpoint) or from a PyTorch state_dict (.pt/.pth/.bin/"
           ".safetensors, names as fundl.interop.torch_names), checked against the model; the "
           "optimizer starts fresh")
    a("--export-params", type=pathlib.Path, default=None, metavar="FILE",
      help="after the last epoch of this invocation (epoch E with --stop-after E), write the "
           "params and state to FILE with fundl.io.save (.safetensors; the model's repr and "
           "the run's config in its metadata)")
    a("--export-model", type=pathlib.Path, default=None, metavar="FILE",
      help="after the last epoch, write the model as fundl.export bytes to FILE (StableHLO and "
           "weights, any batch size; run it with fundl.load_exported(FILE) on input normalised "
           "as in training)")


def load_splits(name: str, *, image_shape: tuple[int, int, int], data_dir=None, source: str = "auto",
                synthetic: int | None = None, seed: int = 0, limit_train: int | None = None,
                limit_test: int | None = None):
    """Train and test arrays for a runner: a named data set, or random images.

    Args:
      name: a :func:`fundl.data.load` name (``'mnist'``, ``'cifar10'``, ...).
      image_shape: ``(H, W, C)`` of the synthetic images.
      data_dir: passed to :func:`fundl.data.load`.
      source: passed to :func:`fundl.data.load`.
      synthetic: if given, ``synthetic`` random ``uint8`` training images and
        ``max(1, synthetic // 4)`` test images with random labels in ``[0, 10)``
        (from ``seed``) instead of real data: a pipeline check needing no files.
      seed: seeds the synthetic arrays.
      limit_train: keep the first ``limit_train`` training examples.
      limit_test: keep the first ``limit_test`` test examples.

    Returns:
      ``(train, test, description)`` with ``train = (x uint8 [N, H, W, C], y int32 [N])``.
    """
    from .data import load

    if synthetic is not None:
        rng = np.random.default_rng(seed)

        def make(n):
            return (rng.integers(0, 256, (n, *image_shape), dtype=np.uint8),
                    rng.integers(0, 10, n).astype(np.int32))

        train, test = make(synthetic), make(max(1, synthetic // 4))
        description = f"{synthetic} synthetic {'x'.join(map(str, image_shape))} images"
    else:
        train, test = (load(name, split, data_dir=data_dir, source=source)[:2] for split in ("train", "test"))
        description = f"{name} from {data_dir or 'the default locations'}"
    return (tuple(a[:limit_train] for a in train), tuple(a[:limit_test] for a in test), description)


# -- metrics and plots -------------------------------------------------------------

def read_metrics(path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file, one dict per epoch, in order (``[]`` if absent)."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_metrics(path: pathlib.Path, records: list[dict]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)  # atomic: a reader sees the old or the new file, never half


def plot_curves(records: list[dict], path, *, title: str = "") -> pathlib.Path:
    """Training curves: loss (left) and error = 1 - accuracy (right) vs epoch, train and test.

    Args:
      records: :func:`read_metrics` output (keys ``epoch``, ``train_loss``,
        ``test_loss``, ``train_accuracy``, ``test_accuracy``; ``None`` values are skipped).
      path: the PNG to write (written to a temporary name, then renamed).
      title: the figure's title.

    Returns:
      ``path`` as a ``Path``.
    """
    import matplotlib
    matplotlib.use("Agg", force=False)  # no display needed
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for ax, metric, to_y, label in ((ax_loss, "loss", lambda v: v, "cross-entropy loss"),
                                    (ax_err, "accuracy", lambda v: 1 - v, "error (1 - accuracy)")):
        for split, style in (("train", "o-"), ("test", "s--")):
            pts = [(r["epoch"], to_y(r[f"{split}_{metric}"])) for r in records
                   if r.get(f"{split}_{metric}") is not None]
            if pts:
                ax.plot(*zip(*pts), style, label=split, markersize=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if metric == "accuracy":
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# -- checkpoints -------------------------------------------------------------------

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


# -- the loop ----------------------------------------------------------------------

def _check_config(out: pathlib.Path, config: Mapping[str, Any], resume: bool,
                  write: bool = True) -> None:
    path = out / "config.json"
    config = json.loads(json.dumps(dict(config), default=str))  # as it will read back
    if resume and path.exists():
        saved = json.loads(path.read_text())
        diff = {k: (saved.get(k), config.get(k)) for k in set(saved) | set(config)
                if k not in _RESUMABLE_CHANGES and saved.get(k) != config.get(k)}
        if diff:
            lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ConfigError(f"--resume: the settings differ from the run in {out} ({lines}); "
                              "resume with the same settings or use a new --out")
    if write:
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _check_arrays(name, data):
    x, y = data
    if len(x) != len(y) or len(x) == 0:
        raise ShapeError(f"run: {name} must be non-empty (x, y) arrays of one length; "
                         f"got len(x)={len(x)}, len(y)={len(y)}")
    return np.asarray(x), np.asarray(y)


def run(model: Layer, optimizer: optax.GradientTransformation, train, test, *, out,
        epochs: int, batch_size: int, seed: int = 0, transform: Callable | None = None,
        augment: Callable | None = None, resume: bool = False, stop_after: int | None = None,
        progress: bool = True, eval_batch_size: int = 1000, config: Mapping[str, Any] | None = None,
        learning_rate: Callable | float | None = None, log_every: int = 10,
        title: str = "", data_parallel: bool = False, init_from=None, export_params=None,
        export_model=None) -> list[dict]:
    """Train ``model`` for ``epochs`` epochs with checkpoints, metrics and curves in ``out``.

    Args:
      model: a classifier ``[N, H, W, C] -> [N, num_classes]``.
      optimizer: an Optax optimizer (e.g. from :func:`make_optimizer`).
      train: ``(x, y)`` host arrays, ``x: [N, H, W, C]`` (e.g. ``uint8``), ``y: [N]`` int.
      test: ``(x, y)`` host arrays, evaluated after every epoch with
        :func:`fundl.train.evaluate` (the same ``transform``, ``eval_batch_size`` rows per call).
      out: output directory (created).
      epochs: total epochs.
      batch_size: examples per step; the last partial batch of an epoch is dropped
        (one compiled shape; each epoch still sees a fresh order).
      seed: seeds initialisation, data order, dropout and ``augment`` keys.
      transform: host-side ``x_batch -> float32 x_batch`` applied to every train
        and test batch (e.g. a :func:`fundl.data.standardizer`); default casts to float32.
      augment: a jittable ``augment(key, x) -> x`` applied on the device to every
        training batch after ``transform`` (e.g. :func:`fundl.data.augment_cifar`).
      resume: continue from the latest checkpoint in ``out/checkpoints``, if any
        (``config`` must match the saved one but for epochs and output options).
      stop_after: end after this epoch (a planned interruption); ``None``: run to ``epochs``.
      progress: a tqdm bar on stderr with live loss and examples/s.
      eval_batch_size: examples per evaluation call.
      config: the settings to record in ``out/config.json`` (JSON-able).
      learning_rate: the schedule, to record the learning rate of each epoch in the metrics.
      log_every: steps between reads of the metrics from the device (each read waits
        for it; with or without the progress bar).
      title: the curves figure's title.
      data_parallel: train with ``make_train_step(..., parallel='sharded')`` over
        all devices of all processes (``batch_size`` is the global batch and must
        be divisible by ``jax.device_count()``); prints the device count at
        start. With several processes (after :func:`fundl.distributed.initialize`)
        each process reads only its rows of every batch, only process 0 writes
        ``config.json``, ``metrics.jsonl`` and ``curves.png``, and every process
        takes part in the Orbax checkpoints. Evaluation runs on each process's
        first device's copy of the (replicated) trees, over the whole test set.
      init_from: a params file (:func:`fundl.io.save`, ``export_params`` or
        :func:`export_checkpoint`) or a PyTorch state_dict file (read by
        :func:`fundl.interop.from_torch`) to start from instead of a fresh
        initialisation: checked against ``model`` for a batch of ``x_train``,
        cast to the dtypes a fresh init has; the optimizer state starts fresh.
        Ignored when ``resume`` finds a checkpoint (training continues from it).
      export_params: after the last epoch this call trains (epoch ``stop_after``
        when given; the restored epoch when there is nothing left to train), write
        the params and state to this file with :func:`fundl.io.save`, with the
        model's ``repr`` and the metadata ``epoch`` (the epochs done),
        ``test_accuracy`` (that epoch's) and ``config`` (``config`` as JSON).
        Process 0 writes it.
      export_model: likewise, :func:`fundl.export` bytes of the final model
        (batch-polymorphic, traced for a batch of ``eval_batch_size``, on input
        after ``transform``; ``fundl.load_exported`` runs them).

    Returns:
      All epoch records of the run (those restored from ``metrics.jsonl`` on
      resume included), as written to ``metrics.jsonl``.
    """
    x_train, y_train, test, steps = _check_run_args(
        model, train, test, epochs=epochs, batch_size=batch_size, eval_batch_size=eval_batch_size,
        log_every=log_every, data_parallel=data_parallel)
    _check_export_paths(pathlib.Path(out), export_params=export_params, export_model=export_model)
    primary = jax.process_index() == 0  # the one process that writes logs and plots
    transform = transform or (lambda a: np.asarray(a, np.float32))
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, dict(config or {}), resume, write=primary)
    if data_parallel:
        print(f"data parallel: {jax.device_count()} devices ({jax.local_device_count()} local, "
              f"{jax.process_count()} process(es)), {batch_size // jax.device_count()} examples "
              f"per device", flush=True)
    t_run = time.perf_counter()
    root = jax.random.key(seed)
    trees, manager, start, records = _init_or_restore(
        model, optimizer, root, (batch_size, *x_train.shape[1:]), out, resume=resume,
        primary=primary, init_from=init_from)
    step_fn = make_train_step(model, optimizer, parallel="sharded" if data_parallel else None)
    step = _train_step_with_augment(step_fn, augment, data_parallel)
    epoch_batches = _data_pipeline(step_fn, x_train, y_train, batch_size=batch_size, seed=seed,
                                   transform=transform, data_parallel=data_parallel)

    def test_metrics(trees):  # evaluation on this process's first device, whole test set
        return _train.evaluate(model, *_local(trees[:2]), test, batch_size=eval_batch_size,
                               transform=transform)

    last = epochs if stop_after is None else min(epochs, stop_after)
    for epoch in range(start, last):
        trees, record = _train_epoch(step, trees, epoch_batches, epoch, root=root, steps=steps,
                                     epochs=epochs, progress=progress, log_every=log_every,
                                     test_metrics=test_metrics, learning_rate=learning_rate)
        records.append(record)
        _save(manager, epoch + 1, dict(zip(("params", "state", "opt_state"), trees)))
        _write_epoch(out, records, title=title, primary=primary, epochs=epochs)
    manager.wait_until_finished()
    manager.close()
    if primary and (export_params is not None or export_model is not None):
        _export_final(model, *_local(trees[:2]), max(start, last), records, params_path=export_params,
                      model_path=export_model, config=config,
                      input_shape=(eval_batch_size, *x_train.shape[1:]))
    _report(records, start=start, last=last, epochs=epochs, out=out, seconds=time.perf_counter() - t_run,
            untrained=lambda: test_metrics(trees))
    return records


def _check_run_args(model, train, test, *, epochs, batch_size, eval_batch_size, log_every,
                    data_parallel):
    """Validate :func:`run`'s arguments; return ``(x_train, y_train, (x_test, y_test), steps)``."""
    if not isinstance(model, Layer):
        raise ConfigError(f"run: model must be a fundl Layer; got {type(model).__name__}")
    x_train, y_train = _check_arrays("train", train)
    test = _check_arrays("test", test)
    for arg, value, lo in (("epochs", epochs, 0), ("batch_size", batch_size, 1),
                           ("eval_batch_size", eval_batch_size, 1), ("log_every", log_every, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ConfigError(f"run: {arg} must be an int >= {lo}; got {arg}={value!r}")
    steps = len(x_train) // batch_size
    if steps == 0:
        raise ConfigError(f"run: batch_size={batch_size} exceeds the {len(x_train)} training "
                          "examples; lower --batch-size")
    if not isinstance(data_parallel, bool):
        raise ConfigError(f"run: data_parallel must be True or False; got {data_parallel!r}")
    if data_parallel and batch_size % jax.device_count():
        raise ConfigError(f"run: with data_parallel, batch_size must be divisible by the "
                          f"{jax.device_count()} devices; got batch_size={batch_size}")
    return x_train, y_train, test, steps


def _check_export_paths(out: pathlib.Path, **paths) -> None:
    """Fail before training, not after it, when an export file cannot be written: it must be
    in an existing directory, or in the run's ``out`` directory (which the run creates)."""
    for arg, path in paths.items():
        if path is None:
            continue
        path = pathlib.Path(path)
        in_out = path.parent.resolve() == out.resolve()
        problem = ("it is a directory" if path.is_dir() else
                   f"the directory {path.parent} does not exist"
                   if not (path.parent.is_dir() or in_out) else None)
        if problem:
            raise ConfigError(f"run: {arg}={str(path)!r} must name a file in an existing "
                              f"directory (or in --out); {problem}")


def _init_or_restore(model, optimizer, root, input_shape, out: pathlib.Path, *, resume: bool,
                     primary: bool, init_from=None):
    """Fresh ``(params, state, opt_state)`` from ``root`` (or ``init_from``'s params and state),
    or the latest checkpoint's on ``resume``.

    Returns:
      ``(trees, manager, start, records)``: the trees, the open checkpoint manager,
      the number of epochs already done and their ``metrics.jsonl`` records.
    """
    # One compiled init instead of one small compilation per layer.
    _, params, state = jax.jit(model.init_with_state, static_argnums=1)(root, input_shape)
    manager = _checkpoint_manager(out / "checkpoints")
    if init_from is not None and not (resume and manager.latest_step() is not None):
        params, state = _init_from(init_from, model, input_shape, params, state)
    opt_state = jax.jit(optimizer.init)(params)
    start = 0
    records: list[dict] = []
    if resume:
        start, tree = _restore(manager, {"params": params, "state": state, "opt_state": opt_state})
        params, state, opt_state = tree["params"], tree["state"], tree["opt_state"]
        records = [r for r in read_metrics(out / "metrics.jsonl") if r["epoch"] <= start]
        print(f"resumed from {out / 'checkpoints'} after epoch {start}" if start else
              f"--resume: no checkpoint in {out / 'checkpoints'}; starting from scratch", flush=True)
    elif manager.latest_step() is not None:
        raise ConfigError(f"run: {out / 'checkpoints'} already holds checkpoints; pass --resume to "
                          "continue that run, or choose another --out")
    if primary:
        _write_metrics(out / "metrics.jsonl", records)
    return (params, state, opt_state), manager, start, records


def _init_from(path, model, input_shape, params, state):
    """``(params, state)`` read from ``path``, checked against ``model``, cast to the dtypes of
    the fresh ``params``/``state``; a file fundl.io did not write goes to :func:`_load_init`."""
    try:
        loaded = _io.load(path, model=model, input_shape=input_shape)
    except NotFundlFileError:
        loaded = _load_init(path, model, input_shape)
    params, state = jax.tree.map(lambda a, fresh: jax.numpy.asarray(a, fresh.dtype), loaded,
                                 (params, state))
    print(f"initialised from {path}", flush=True)
    return params, state


def _load_init(path, model, input_shape):
    """``(params, state)`` for ``model`` from a file that is not a fundl.io file: a PyTorch
    state_dict (``.pt``/``.pth``/``.bin`` or ``.safetensors``), read by
    :func:`fundl.interop.from_torch` (strict: every key used, every param set)."""
    from . import interop

    suffix = pathlib.Path(path).suffix.lower()
    if suffix not in (".pt", ".pth", ".bin", ".safetensors"):
        raise ConfigError(f"run: init_from={str(path)!r} is neither a fundl.io file nor a PyTorch "
                          "state_dict (.pt, .pth, .bin or .safetensors); fundl.io files come from "
                          "fundl.io.save, --export-params or fundl.experiment.export_checkpoint")
    return interop.from_torch(model, str(path), input_shape=input_shape)


def _export_final(model, params, state, epoch: int, records, *, params_path, model_path, config,
                  input_shape) -> None:
    """Write ``export_params`` / ``export_model`` (see :func:`run`) for the trees after ``epoch``."""
    meta = {"epoch": str(epoch), "config": json.dumps(dict(config or {}), default=str, sort_keys=True)}
    if records and records[-1]["epoch"] == epoch:
        meta["test_accuracy"] = repr(records[-1]["test_accuracy"])
    if params_path is not None:
        _io.save(params_path, params, state, model=model, metadata=meta)
        print(f"wrote params and state after epoch {meta['epoch']} to {params_path}", flush=True)
    if model_path is not None:
        data = _export_model(model, params, state, input_shape, metadata=meta)
        _io._write_atomic(pathlib.Path(model_path), data, "run: export_model")
        print(f"wrote the exported model after epoch {meta['epoch']} to {model_path}", flush=True)


def _train_step_with_augment(step_fn, augment, data_parallel):
    """``step_fn`` preceded by ``augment`` on the device, with this process's copy of the metrics.

    Step ``i``'s key ``k`` feeds dropout; the augmentation gets ``fold_in(k, 1)``.
    """
    augment_fn = _device_augment(step_fn, augment, data_parallel)

    def step(params, state, opt_state, batch, key):
        x, y = batch
        if augment_fn is not None:
            x = augment_fn(jax.random.fold_in(key, 1), x)
        params, state, opt_state, metrics = step_fn(params, state, opt_state, (x, y), key)
        return params, state, opt_state, _local(metrics)  # of the (replicated) global metrics

    return step


def _device_augment(step_fn, augment, data_parallel):
    """``augment`` compiled, as ``(key, x) -> x``; ``None`` without augmentation."""
    if augment is None:
        return None
    if not (data_parallel and jax.process_count() > 1):
        return jax.jit(augment)
    # Several processes: the key must be a global (replicated) array too.
    replicated = step_fn.replicated
    aug = jax.jit(lambda kd, x: augment(jax.random.wrap_key_data(kd), x))

    def augment_fn(key, x):
        kd = np.asarray(jax.random.key_data(key))
        return aug(jax.make_array_from_callback(kd.shape, replicated, lambda i: kd[i]), x)

    return augment_fn


def _data_pipeline(step_fn, x, y, *, batch_size, seed, transform, data_parallel):
    """``epoch -> iterator`` of the epoch's device batches ``(x, y)``, prepared a batch ahead.

    Epoch ``e`` visits ``fundl.data.batches(x, y, batch_size, seed=seed, epoch=e,
    drop_remainder=True)``; ``transform`` and the host-to-device copy run in a
    background thread. Data parallel: each process reads its own rows of every
    global batch (assembled into global arrays with several processes).
    Otherwise every process (if several) trains on whole batches by itself.
    """
    procs = (dict(process_index=jax.process_index(), process_count=jax.process_count())
             if data_parallel else {})
    if data_parallel and jax.process_count() > 1:
        # Global arrays built from this process's rows; device_put to the same sharding is a no-op.
        sharding = step_fn.batch_sharding
        put = _process_local_to_global(sharding, transform)
    else:
        sharding = step_fn.batch_sharding if data_parallel else None
        put = lambda b: (transform(b[0]), b[1])  # noqa: E731

    def epoch_batches(epoch):
        return prefetch_to_device(batches(x, y, batch_size, seed=seed, epoch=epoch,
                                          drop_remainder=True, **procs),
                                  sharding=sharding, transform=put)

    return epoch_batches


def _train_epoch(step, trees, epoch_batches, epoch, *, root, steps, epochs, progress, log_every,
                 test_metrics, learning_rate):
    """Train epoch ``epoch`` (0-based) through the shared loop, then evaluate.

    Step ``i`` gets the key ``fold_in(fold_in(root, epoch), i)``; the record's
    train metrics are means over the epoch's examples (every batch is full).

    Returns:
      ``(trees, record)``: the trees after the epoch and its ``metrics.jsonl`` record.
    """
    t0 = time.perf_counter()
    epoch_key = jax.random.fold_in(root, epoch)
    result = _loop.run_epoch(step, trees, epoch_batches(epoch),
                             key_for_step=lambda i: jax.random.fold_in(epoch_key, i), steps=steps,
                             progress=progress, desc=f"epoch {epoch + 1}/{epochs}",
                             log_every=log_every)
    train_seconds = time.perf_counter() - t0
    ev = test_metrics(result.trees)
    record = {"epoch": epoch + 1, "train_loss": result.metrics["loss"],
              "train_accuracy": result.metrics["accuracy"], "test_loss": ev["loss"],
              "test_accuracy": ev["accuracy"], "epoch_seconds": time.perf_counter() - t0,
              "examples_per_second": result.examples / train_seconds}
    if learning_rate is not None:
        record["lr"] = float(learning_rate((epoch + 1) * steps - 1) if callable(learning_rate)
                             else learning_rate)
    return result.trees, record


def _write_epoch(out: pathlib.Path, records: list[dict], *, title: str, primary: bool,
                 epochs: int) -> None:
    """After an epoch: ``metrics.jsonl`` and ``curves.png`` (primary process only), one printed line."""
    r = records[-1]
    if primary:
        _write_metrics(out / "metrics.jsonl", records)
        plot_curves(records, out / "curves.png", title=title)
    print(f"epoch {r['epoch']}/{epochs}  train_loss={r['train_loss']:.4f}  "
          f"test_loss={r['test_loss']:.4f}  test_accuracy={r['test_accuracy']:.4f}  "
          f"{r['epoch_seconds']:.1f}s  {r['examples_per_second']:.0f} ex/s", flush=True)


def _report(records, *, start, last, epochs, out, seconds, untrained) -> None:
    """The closing lines: ``done: ...``, then ``test_accuracy=0.xxxx`` (the last line).

    ``untrained() -> {'accuracy': ...}`` evaluates the model when no epoch was
    ever trained (``epochs=0``).
    """
    print(f"done: epochs {start + 1}..{last} in {seconds:.1f}s; wrote {out}/"
          if last > start else f"done: nothing to train (epoch {start} of {epochs}); {out}/", flush=True)
    test_acc = records[-1]["test_accuracy"] if records else untrained()["accuracy"]
    print(f"test_accuracy={test_acc:.4f}", flush=True)


def _local(tree):
    """This process's first copy of every replicated multi-device array (no copy, no sync)."""
    return jax.tree.map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array)
                        and len(a.sharding.device_set) > 1 else a, tree)


def _process_local_to_global(sharding, transform):
    """``(x_local, y_local) -> global (x, y)`` for a multi-process sharded step."""
    def put(b):
        return tuple(jax.make_array_from_process_local_data(sharding, np.asarray(a))
                     for a in (transform(b[0]), b[1]))
    return put


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps per epoch for ``n`` examples (the last partial batch is dropped)."""
    return max(1, n // batch_size)


"""Experiment runner: the resumable training loop behind ``experiments/*.py``.

One call, :func:`run`, trains a model on in-memory arrays and writes, into an
output directory ``OUT``::

    OUT/config.json        the run's settings (checked again on --resume)
    OUT/metrics.jsonl      one JSON line per epoch: epoch, train_loss, train_accuracy,
                           test_loss, test_accuracy, epoch_seconds, examples_per_second, lr
    OUT/curves.png         loss and error (1 - accuracy) vs epoch, train and test
    OUT/checkpoints/<E>/   params, batch-norm state and optimizer state after epoch E,
                           written with Orbax (atomic: a directory appears only when
                           complete), with the crc32 of every array in <E>/meta/metadata;
                           kept: the two newest whose params are all finite, and the
                           newest (a NaN/Inf one is never the only one)
    OUT/checkpoints/<E>.unusable/  a checkpoint that failed verification on --resume
    OUT/.lock              while a run writes into OUT: its PID, host, start time and
                           command (JSON); a second run into OUT is refused
                           (DirectoryInUseError)

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

Nothing silent about the directory: before anything in ``OUT`` is written,
the arguments and ``OUT`` are validated (checkpoints without ``resume``, other
settings than ``config.json``'s on ``resume``, a missing or unreadable
``config.json`` on ``resume`` unless ``force``, a live lock). A resume restores
the newest checkpoint whose arrays pass their checksums; a damaged newer one
(bit flip, truncated or missing file, empty directory) is reported with a
warning and set aside, and the ``metrics.jsonl`` records after the epoch used are
dropped; when no checkpoint is usable, :class:`fundl.CheckpointError` lists each
with its fault. A truncated last line of ``metrics.jsonl`` is dropped with a
warning.

Helpers shared by the runners: :func:`make_schedule`, :func:`make_optimizer`,
:func:`add_training_flags`, :func:`read_metrics`, :func:`plot_curves`,
:func:`load_checkpoint`, :func:`export_checkpoint`; the persistent compilation cache
(:func:`add_compile_cache_flags`, :func:`setup_compile_cache`: ``--compile-cache DIR``,
``--no-compile-cache``, by default ``$FUNDL_COMPILE_CACHE`` or ``~/.cache/fundl/jax``).
"""
from __future__ import annotations

import json
import pathlib
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import optax

from . import _loop, _parallel
from . import io as _io
from . import train as _train  # module lookup: train.evaluate is the one evaluator
from ._errors import ConfigError, DirectoryInUseError, NonFiniteError, NotFundlFileError, ShapeError
from ._export import export as _export_model
from .functional import cross_entropy as _cross_entropy
from ._layer import Layer
from .data import batches, prefetch_to_device
from .distributed import to_host
from .train import make_train_step

from . import _lock
from ._checkpoints import (_checkpoint_manager, _restore, _rotate, _save, _set_aside, _steps,
                           export_checkpoint, load_checkpoint)
from ._compile_cache import (add_compile_cache_flags, default_compile_cache_dir, setup_compile_cache,
                             use_compile_cache)
from ._flags import OPTIMIZERS, SCHEDULES, add_training_flags, make_optimizer, make_schedule
from ._flags import (check_paths, check_training_flags, class_spec, momentum_float, non_negative_float,
                     non_negative_int, open_unit_float, positive_float, positive_int)
from ._rundir import _check_run_dir, _write_config, _write_metrics, plot_curves, read_metrics

__all__ = ["run", "load_checkpoint", "export_checkpoint", "load_splits", "steps_per_epoch",
           "make_schedule", "make_optimizer", "add_training_flags", "read_metrics",
           "plot_curves", "SCHEDULES", "OPTIMIZERS", "check_training_flags", "check_paths",
           "positive_int", "non_negative_int", "positive_float", "non_negative_float",
           "momentum_float", "open_unit_float", "class_spec", "add_compile_cache_flags",
           "setup_compile_cache", "use_compile_cache", "default_compile_cache_dir"]


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

    Raises:
      ConfigError: ``synthetic``, ``limit_train`` or ``limit_test`` given but not an int >= 1
        (a negative limit would silently drop examples from the end).
    """
    from .data import load

    for arg, value, minimum in (("synthetic", synthetic, 1), ("limit_train", limit_train, 1),
                                ("limit_test", limit_test, 1)):
        if value is not None:
            _check_count(value, arg, "load_splits", minimum)
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


# -- the loop ----------------------------------------------------------------------

def _check_arrays(name, data):
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ShapeError(f"run: {name} must be non-empty (x, y) arrays of one length: a pair of "
                         f"examples and labels; got {type(data).__name__}"
                         + (f" of shape {tuple(data.shape)}" if hasattr(data, "shape") else "")
                         + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""))
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
        export_model=None, on_nonfinite: str = "stop", allow_nonfinite: bool = False,
        force: bool = False, parallel: str | None = None) -> list[dict]:
    """Train ``model`` for ``epochs`` epochs with checkpoints, metrics and curves in ``out``.

    Args:
      model: a classifier ``[N, H, W, C] -> [N, num_classes]``.
      optimizer: an Optax optimizer (e.g. from :func:`make_optimizer`).
      train: ``(x, y)`` host arrays, ``x: [N, H, W, C]`` (e.g. ``uint8``), ``y: [N]`` int.
      test: ``(x, y)`` host arrays, evaluated after every epoch with
        :func:`fundl.train.evaluate` (the same ``transform``, ``eval_batch_size`` rows per call).
      out: output directory (created; ``out/.lock`` holds it while this run writes into it).
      epochs: total epochs.
      batch_size: examples per step; the last partial batch of an epoch is dropped
        (one compiled shape; each epoch still sees a fresh order).
      seed: seeds initialisation, data order, dropout and ``augment`` keys.
      transform: host-side ``x_batch -> float32 x_batch`` applied to every train
        and test batch (e.g. a :func:`fundl.data.standardizer`); default casts to float32.
      augment: a jittable ``augment(key, x) -> x`` applied on the device to every
        training batch after ``transform`` (e.g. :func:`fundl.data.augment_cifar`).
      resume: continue from the newest checkpoint in ``out/checkpoints`` that passes
        verification, if any (``config`` must match the saved one but for epochs and
        output options; a damaged newer checkpoint is reported and renamed
        ``<E>.unusable``).
      stop_after: end after this epoch (a planned interruption); ``None``: run to ``epochs``.
      progress: a tqdm bar on stderr with live loss and examples/s.
      eval_batch_size: examples per evaluation call.
      config: the settings to record in ``out/config.json`` (JSON-able).
      learning_rate: the schedule, to record the learning rate of each epoch in the metrics.
      log_every: steps between reads of the metrics from the device (each read waits
        for it; with or without the progress bar).
      title: the curves figure's title.
      data_parallel: ``True`` is ``parallel='sharded'`` (kept for earlier callers).
      parallel: ``None`` (one device), ``'sharded'`` or ``'fsdp'``: train with
        ``make_train_step(..., parallel=parallel)`` over all devices of all
        processes (``batch_size`` is the global batch and must be divisible by
        ``jax.device_count()``) and evaluate the test set with
        ``fundl.train.evaluate(..., parallel=parallel)`` (every evaluation batch
        split over the devices, padded and masked: the metrics equal a one-device
        evaluation's); prints the device count and the mode at start. With
        several processes (after :func:`fundl.distributed.initialize`) each
        process reads only its rows of every training batch and passes the whole
        test set to the evaluation (each places its devices' rows), only process 0
        writes ``config.json``, ``metrics.jsonl`` and ``curves.png``, and every
        process takes part in the Orbax checkpoints. ``data_parallel=True`` with
        another ``parallel`` than ``'sharded'`` is a ConfigError.
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
      on_nonfinite: what to do when training goes non-finite (a NaN/Inf metric or
        parameter, checked at every metrics read, no per-step sync; see
        :func:`fundl.train.fit`): ``'stop'`` (default): end the run before the
        epoch's checkpoint is saved (the newest checkpoint stays the last good
        one), append ``{"epoch": E, "stopped": message}`` to the records and to
        ``metrics.jsonl``, print the message (epoch, steps, first non-finite
        metric, likely causes) on stderr, skip the exports and return; the
        runners (``experiments/*.py``) then exit with status 1. ``'raise'``:
        the same, then raise :class:`~fundl.NonFiniteError`. ``'skip'``: the
        step skips updates with a non-finite loss, gradient or new parameter
        (``make_train_step(skip_nonfinite=True)``); each record gets
        ``'skipped'``, the number of steps skipped in the epoch.
      allow_nonfinite: accept float ``train``/``test`` arrays holding NaN/Inf.
      force: with ``resume``, accept a missing or unreadable ``out/config.json`` (with
        a warning; the settings cannot be checked, and ``config`` is written).

    Returns:
      All epoch records of the run (those restored from ``metrics.jsonl`` on
      resume included), as written to ``metrics.jsonl``.

    Raises:
      DataError: before anything is written: integer labels outside ``[0, C)``
        (``C`` the model's number of outputs) or float labels, in ``train`` or
        ``test``; NaN/Inf in float ``x`` (unless ``allow_nonfinite``). The
        message names the first bad value and its index.
      NonFiniteError: ``on_nonfinite='raise'`` and training went non-finite.
      ConfigError: bad arguments, or ``out`` cannot be used (see above); nothing in
        ``out`` is written then.
      DirectoryInUseError: another runner holds ``out/.lock`` (the message names its PID
        and host; a lock left by a dead process of this host is taken over).
      CheckpointError: ``resume`` found checkpoints but none passes verification.
    """
    x_train, y_train, test, steps, parallel = _check_run_args(
        model, train, test, epochs=epochs, batch_size=batch_size, eval_batch_size=eval_batch_size,
        log_every=log_every, data_parallel=data_parallel, parallel=parallel, transform=transform,
        on_nonfinite=on_nonfinite, allow_nonfinite=allow_nonfinite)
    out = pathlib.Path(out)
    _check_export_paths(out, export_params=export_params, export_model=export_model)
    primary = jax.process_index() == 0  # the one process that writes logs, plots and the lock
    transform = transform or (lambda a: np.asarray(a, np.float32))
    if init_from is not None and not (resume and _steps(out / "checkpoints")):
        # Read and checked before anything in ``out`` is written: a bad file leaves no trace.
        init_from = (init_from, _read_init(init_from, model, (batch_size, *x_train.shape[1:])))
    else:
        init_from = None  # none given, or a resume that continues from a checkpoint
    records, lock = _open_run_dir(out, dict(config or {}), resume=resume, force=force,
                                  primary=primary)
    try:
        return _run_locked(model, optimizer, x_train, y_train, test, steps, out=out,
                           records=records, epochs=epochs, batch_size=batch_size, seed=seed,
                           transform=transform, augment=augment, resume=resume,
                           stop_after=stop_after, progress=progress,
                           eval_batch_size=eval_batch_size, config=config,
                           learning_rate=learning_rate, log_every=log_every, title=title,
                           parallel=parallel, init_from=init_from,
                           export_params=export_params, export_model=export_model,
                           primary=primary, on_nonfinite=on_nonfinite)
    finally:
        _lock.release(lock)


def _open_run_dir(out: pathlib.Path, config, *, resume, force, primary):
    """Validate ``out`` (writing nothing: a live lock, then
    :func:`fundl._rundir._check_run_dir`), then create it, take its lock and write
    ``config.json`` (process 0 only). Returns ``(records, lock)``: the ``metrics.jsonl``
    records to resume from and the lock (``None`` on other processes)."""
    lock = error = records = None
    try:
        if primary:
            _lock.check_free(out)
        records = _check_run_dir(out, config, resume=resume, force=force)
        if primary:
            out.mkdir(parents=True, exist_ok=True)
            lock = _lock.acquire(out)
            _write_config(out, config)
    except Exception as e:  # noqa: BLE001 -- re-raised below, after telling the other processes
        _lock.release(lock)
        error = e
    if jax.process_count() > 1:  # the others stop too, instead of waiting for process 0
        from jax.experimental import multihost_utils
        ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if not ok and error is None:
            raise DirectoryInUseError(f"run: process 0 could not validate or lock {out}; its "
                                      "output says why")
    if error is not None:
        raise error
    return records, lock


def _run_locked(model, optimizer, x_train, y_train, test, steps, *, out, records, epochs,
                batch_size, seed, transform, augment, resume, stop_after, progress,
                eval_batch_size, config, learning_rate, log_every, title, parallel,
                init_from, export_params, export_model, primary, on_nonfinite):
    """The body of :func:`run` once ``out`` is validated and locked (same arguments;
    ``parallel`` resolved from ``data_parallel``)."""
    data_parallel = parallel is not None
    if data_parallel:
        print(f"data parallel: {jax.device_count()} devices ({jax.local_device_count()} local, "
              f"{jax.process_count()} process(es)), {batch_size // jax.device_count()} examples "
              f"per device; parallel={parallel!r}, training and evaluation", flush=True)
    t_run = time.perf_counter()
    root = jax.random.key(seed)
    step_fn = make_train_step(model, optimizer, parallel=parallel,
                              skip_nonfinite=on_nonfinite == "skip")
    step = _train_step_with_augment(step_fn, augment, data_parallel)
    compiling = _compile_in_background(
        step, model, optimizer, root,
        lambda: (transform(x_train[:batch_size]), y_train[:batch_size]),
        lambda: (transform(test[0][:eval_batch_size]), test[1][:eval_batch_size]))
    trees, manager, start, records = _init_or_restore(
        model, optimizer, root, (batch_size, *x_train.shape[1:]), out, resume=resume,
        primary=primary, init_from=init_from, records=records)
    if compiling is not None:
        compiling.join()
    epoch_batches = _data_pipeline(step_fn, x_train, y_train, batch_size=batch_size, seed=seed,
                                   transform=transform, data_parallel=data_parallel)

    def test_metrics(trees):  # the whole test set, split over the devices when parallel
        return _train.evaluate(model, *trees[:2], test, batch_size=eval_batch_size,
                               transform=transform, check_data=False,  # checked up front
                               parallel=parallel)

    last = epochs if stop_after is None else min(epochs, stop_after)
    for epoch in range(start, last):
        trees, record = _train_epoch(step, trees, epoch_batches, epoch, root=root, steps=steps,
                                     epochs=epochs, progress=progress, log_every=log_every,
                                     test_metrics=test_metrics, learning_rate=learning_rate,
                                     on_nonfinite=on_nonfinite)
        records.append(record)
        if "stopped" in record:  # non-finite: no checkpoint of it, the last good one stays newest
            _write_stop(out, records, primary=primary)
            break
        _save(manager, epoch + 1, dict(zip(("params", "state", "opt_state"), trees)))
        _write_epoch(out, records, title=title, primary=primary, epochs=epochs)
    manager.wait_until_finished()
    _rotate(manager)
    manager.close()
    stopped = records[-1].get("stopped") if records else None
    if stopped and on_nonfinite == "raise":
        raise NonFiniteError(stopped)
    if not stopped and (export_params is not None or export_model is not None):
        final = to_host(trees[:2])  # on every process: sharded (FSDP) params are gathered
        if primary:
            _export_final(model, *final, max(start, last), records, params_path=export_params,
                          model_path=export_model, config=config,
                          input_shape=(eval_batch_size, *x_train.shape[1:]))
    _report(records, start=start, last=last, epochs=epochs, out=out, seconds=time.perf_counter() - t_run,
            untrained=lambda: test_metrics(trees))
    return records


def _check_run_args(model, train, test, *, epochs, batch_size, eval_batch_size, log_every,
                    data_parallel, parallel=None, transform=None, on_nonfinite="stop",
                    allow_nonfinite=False):
    """Validate :func:`run`'s arguments; return ``(x_train, y_train, (x_test, y_test), steps,
    parallel)``, ``parallel`` the mode ``data_parallel`` and ``parallel`` ask for.

    The data checks (labels in ``[0, C)``, finite float ``x``) run on the host, once."""
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
    parallel = _check_parallel(data_parallel, parallel)
    if parallel and batch_size % jax.device_count():
        raise ConfigError(f"run: with parallel={parallel!r}, batch_size must be divisible by the "
                          f"{jax.device_count()} devices; got batch_size={batch_size}")
    if on_nonfinite not in ("stop", "raise", "skip"):
        raise ConfigError(f"run: on_nonfinite must be 'stop', 'raise' or 'skip'; "
                          f"got on_nonfinite={on_nonfinite!r}")
    x_like = (transform or (lambda a: np.asarray(a, np.float32)))(x_train[:1])  # the model's input
    for arg, (x, y) in (("train", (x_train, y_train)), ("test", test)):
        _train._check_values(model, x, y, "run", arg, loss_fn=_cross_entropy, x_like=x_like,
                             allow_nonfinite=allow_nonfinite)
    return x_train, y_train, test, steps, parallel


def _check_parallel(data_parallel, parallel):
    """:func:`run`'s mode: ``parallel``, or ``'sharded'`` for ``data_parallel=True``."""
    if not isinstance(data_parallel, bool):
        raise ConfigError(f"run: data_parallel must be True or False; got {data_parallel!r}")
    _parallel.check_eval_parallel(parallel, None, "run")
    if data_parallel and parallel not in (None, "sharded"):
        raise ConfigError(f"run: data_parallel=True means parallel='sharded'; got "
                          f"parallel={parallel!r} too. Pass parallel={parallel!r} alone")
    return "sharded" if data_parallel else parallel


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
                     primary: bool, init_from=None, records=()):
    """Fresh ``(params, state, opt_state)`` from ``root`` (or ``init_from``'s params and state),
    or, on ``resume``, the newest checkpoint that passes verification (newer unusable ones
    are reported and renamed ``<E>.unusable``).

    Args:
      records: the ``metrics.jsonl`` records read when ``out`` was validated; those
        after the restored epoch are dropped.

    Returns:
      ``(trees, manager, start, records)``: the trees, the open checkpoint manager,
      the number of epochs already done and their ``metrics.jsonl`` records.
    """
    # One compiled init instead of one small compilation per layer.
    _, params, state = _compile_fast(lambda key: model.init_with_state(key, input_shape), root)
    directory = out / "checkpoints"
    if init_from is not None:  # (path, (params, state)) read by run() before writing anything
        params, state = _init_from(*init_from, params, state)
    opt_state = _compile_fast(optimizer.init, params)
    start, kept = 0, []
    if resume:
        start, tree, faults = _restore(directory, {"params": params, "state": state,
                                                   "opt_state": opt_state})
        params, state, opt_state = tree["params"], tree["state"], tree["opt_state"]
        kept = [r for r in records if r["epoch"] <= start]
        moved = _set_aside(directory, faults) if primary and faults else []
        if faults and jax.process_count() > 1:  # every process sees the renames before saving
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("fundl: unusable checkpoints set aside")
        print(f"resumed from {directory} after epoch {start}" if start else
              f"--resume: no checkpoint in {directory}; starting from scratch", flush=True)
        if moved:
            print(f"set aside the unusable newer checkpoint(s) as "
                  f"{', '.join(p.name for p in moved)}", flush=True)
    if primary:
        _write_metrics(out / "metrics.jsonl", kept)
    return (params, state, opt_state), _checkpoint_manager(directory), start, kept


def _compile_fast(fn, *args):
    """``jax.jit(fn)(*args)``, compiled on CPU at XLA's backend optimisation level 1: for the
    one-off initialisation (its random bits) about 3x less compilation time than the default
    level, with bit-identical values (checked in tests/test_experiments.py)."""
    options = {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else {}
    return jax.jit(fn).lower(*args).compile(compiler_options=options)(*args)


def _compile_in_background(step, model, optimizer, root, batch, eval_batch):
    """Start compiling, in a thread, what the first epoch runs for the trees a fresh init
    gives: ``step.fold_in_step`` (see :func:`_train_step_with_augment`) for the shapes of
    ``batch()`` (a first training batch ``(x, y)`` as the step gets it), the epoch loop's
    finiteness check of the params and the evaluation step for ``eval_batch()``'s shapes
    (both called in the thread: a failing ``transform`` fails later, where it did). XLA's
    compiler releases the GIL, so on 2+ cores this overlaps the initialisation's
    compilation, and each first call finds its executable in JAX's cache. Returns the thread (join it before training), or ``None`` (no such step, or
    several processes). A failure here is ignored: the first call compiles again and
    raises it."""
    fast = getattr(step, "fold_in_step", None)
    if fast is None or jax.process_count() > 1:
        return None
    import threading

    def spec(arrays):
        return tuple(jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) for a in arrays)

    def compile_all():
        try:
            train_batch = batch()
            _, params, state = jax.eval_shape(
                lambda key: model.init_with_state(key, train_batch[0].shape), root)
            trees = (params, state, jax.eval_shape(optimizer.init, params))
            fast.lower(*trees, spec(train_batch), root, np.uint32(0)).compile()
            _loop._params_finite.lower(params).compile()
            # positional, as evaluate() calls it: the same lru_cache entry
            evaluator = _train._cached_eval_step(model, _cross_entropy, None, None)
            evaluator.lower(params, state, spec(eval_batch())).compile()
        except Exception:  # noqa: BLE001 -- the first call compiles again and reports it
            pass

    thread = threading.Thread(target=compile_all, name="fundl-compile", daemon=True)
    thread.start()
    return thread


def _read_init(path, model, input_shape):
    """``(params, state)`` read from ``path`` and checked against ``model``; a file fundl.io did
    not write goes to :func:`_load_init`."""
    try:
        return _io.load(path, model=model, input_shape=input_shape)
    except NotFundlFileError:
        return _load_init(path, model, input_shape)


def _init_from(path, loaded, params, state):
    """``loaded = (params, state)`` (from :func:`_read_init`) cast to the dtypes of the fresh
    ``params``/``state``."""
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
        return params, state, opt_state, _parallel.first_copy(metrics)  # replicated global

    if augment_fn is None and hasattr(step_fn, "fold_in_step"):
        # One device, no augmentation: the epoch loop's StepKeys are folded inside the compiled
        # step (its metrics live on one device: nothing to take a first copy of).
        step.fold_in_step = step_fn.fold_in_step
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
                 test_metrics, learning_rate, on_nonfinite="stop"):
    """Train epoch ``epoch`` (0-based) through the shared loop, then evaluate.

    Step ``i`` gets the key ``fold_in(fold_in(root, epoch), i)``; the record's
    train metrics are means over the epoch's examples (every batch is full).

    Returns:
      ``(trees, record)``: the trees after the epoch and its ``metrics.jsonl`` record;
      after a non-finite stop, the last good trees (``None`` for ``'raise'``) and
      ``{"epoch": epoch + 1, "stopped": message}``.
    """
    t0 = time.perf_counter()
    epoch_key = jax.random.fold_in(root, epoch)
    try:
        result = _loop.run_epoch(step, trees, epoch_batches(epoch),
                                 key_for_step=_loop.StepKeys(epoch_key, 0),
                                 steps=steps, progress=progress, desc=f"epoch {epoch + 1}/{epochs}",
                                 log_every=log_every, on_nonfinite=on_nonfinite, where="run")
    except NonFiniteError as e:  # 'raise': run() raises it after closing the checkpoints
        return None, {"epoch": epoch + 1, "stopped": str(e)}
    if result.stopped:
        return result.trees, {"epoch": epoch + 1, "stopped": result.stopped}
    train_seconds = time.perf_counter() - t0
    ev = test_metrics(result.trees)
    record = {"epoch": epoch + 1, "train_loss": result.metrics["loss"],
              "train_accuracy": result.metrics["accuracy"], "test_loss": ev["loss"],
              "test_accuracy": ev["accuracy"], "epoch_seconds": time.perf_counter() - t0,
              "examples_per_second": result.examples / train_seconds}
    if "skipped" in result.metrics:
        record["skipped"] = int(result.metrics["skipped"])
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


def _write_stop(out: pathlib.Path, records: list[dict], *, primary: bool) -> None:
    """After a non-finite stop: ``metrics.jsonl`` with the stop record, the message on stderr."""
    if primary:
        _write_metrics(out / "metrics.jsonl", records)
    print(f"stopped: {records[-1]['stopped']}", file=sys.stderr, flush=True)


def _report(records, *, start, last, epochs, out, seconds, untrained) -> None:
    """The closing lines: ``done: ...``, then ``test_accuracy=0.xxxx`` (the last line).

    ``untrained() -> {'accuracy': ...}`` evaluates the model when no epoch was
    ever trained (``epochs=0``).
    """
    if records and "stopped" in records[-1]:
        r = records[-1]
        newest = (f"the newest checkpoint in {out}/checkpoints is from epoch {r['epoch'] - 1}"
                  if r["epoch"] > 1 else "no checkpoint was written")
        print(f"stopped at epoch {r['epoch']} (non-finite); {newest}", flush=True)
        return
    print(f"done: epochs {start + 1}..{last} in {seconds:.1f}s; wrote {out}/"
          if last > start else f"done: nothing to train (epoch {start} of {epochs}); {out}/", flush=True)
    test_acc = records[-1]["test_accuracy"] if records else untrained()["accuracy"]
    print(f"test_accuracy={test_acc:.4f}", flush=True)


def _process_local_to_global(sharding, transform):
    """``(x_local, y_local) -> global (x, y)`` for a multi-process sharded step."""
    def put(b):
        return tuple(jax.make_array_from_process_local_data(sharding, np.asarray(a))
                     for a in (transform(b[0]), b[1]))
    return put


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps per epoch for ``n`` examples (the last partial batch is dropped).

    Raises:
      ConfigError: ``n`` not an int >= 0 or ``batch_size`` not an int >= 1.
    """
    _check_count(n, "n", "steps_per_epoch", 0)
    _check_count(batch_size, "batch_size", "steps_per_epoch", 1)
    return max(1, n // batch_size)


def _check_count(value, arg: str, where: str, minimum: int) -> None:
    """``value`` must be an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{where}: {arg} must be an int >= {minimum}; got {arg}={value!r}")


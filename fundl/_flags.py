"""The runners' shared settings: optimizers and schedules by name, the command-line flags and
their checks (argparse ``type=`` functions, :func:`check_training_flags`, :func:`check_paths`).

Part of :mod:`fundl.experiment` (which re-exports the public names).
"""
from __future__ import annotations

import argparse
import math
import numbers
import pathlib

import optax

from ._compile_cache import add_compile_cache_flags
from ._errors import ConfigError
from .train import param_labels

SCHEDULES = ("constant", "step", "cosine")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")


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
      milestones: fractions of ``epochs`` for ``'step'``, each in ``(0, 1)``.
      gamma: the factor for ``'step'``, a finite number > 0.

    Returns:
      A float (``'constant'``) or an Optax schedule ``step -> lr``.

    Raises:
      ConfigError: an unknown ``name``, a learning rate not finite and > 0, or for
        ``'step'`` a ``gamma`` not finite and > 0 or a milestone outside ``(0, 1)``.

    Example:
      >>> s = make_schedule("step", 0.1, epochs=4, steps_per_epoch=10)
      >>> [round(float(s(i)), 4) for i in (0, 19, 20, 30)]
      [0.1, 0.1, 0.01, 0.001]
    """
    if name not in SCHEDULES:
        raise ConfigError(f"make_schedule: unknown schedule name={name!r}; expected one of {list(SCHEDULES)}")
    _check_lr(lr, "make_schedule")
    if name == "constant":
        return lr
    if name == "step":
        _check_step_schedule(milestones, gamma)
    total = max(1, epochs * steps_per_epoch)
    if name == "cosine":
        return optax.cosine_decay_schedule(init_value=lr, decay_steps=total)
    # Milestone epochs are floored (0.75 * 10 -> epoch 7), as int() would in a PyTorch script.
    bounds = sorted({math.floor(f * epochs) * steps_per_epoch for f in milestones} - {0})
    return optax.piecewise_constant_schedule(lr, {b: gamma for b in bounds})


def _check_step_schedule(milestones, gamma) -> None:
    """``'step'``'s milestones must be fractions in (0, 1) and ``gamma`` a finite number > 0."""
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not 0 < gamma < math.inf:
        raise ConfigError(f"make_schedule: gamma (the factor at each milestone) must be a finite "
                          f"number > 0, e.g. 0.1; got gamma={gamma!r}")
    try:
        bad = [f for f in milestones if isinstance(f, bool) or not isinstance(f, numbers.Real)
               or not 0 < f < 1]
    except TypeError:
        bad = [milestones]
    if bad:
        raise ConfigError(f"make_schedule: milestones must be fractions of the training in (0, 1), "
                          f"e.g. (0.5, 0.75); got milestones={milestones!r} (bad: {bad!r}): a "
                          "milestone at or past the end never decays the rate")


def _check_lr(lr, where: str) -> None:
    """A number learning rate must be finite and > 0 (a schedule, a callable, is not checked)."""
    if callable(lr):
        return
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 < lr < math.inf:
        raise ConfigError(f"{where}: learning rate must be a finite number > 0 (or an Optax "
                          f"schedule); got {lr!r}")


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

    Raises:
      ConfigError: an unknown name, a learning rate that is not a finite number > 0 (or a
        schedule), ``momentum`` outside ``[0, 1)``, ``weight_decay`` negative or not finite.

    Example:
      >>> opt = make_optimizer("momentum", 0.1, weight_decay=5e-4)
    """
    if name not in OPTIMIZERS:
        raise ConfigError(f"make_optimizer: unknown optimizer name={name!r}; expected one of {list(OPTIMIZERS)}")
    if not (isinstance(weight_decay, numbers.Real) and 0 <= weight_decay < math.inf):
        raise ConfigError(f"make_optimizer: weight_decay must be a finite number >= 0; got "
                          f"weight_decay={weight_decay!r}")
    if not (isinstance(momentum, numbers.Real) and 0 <= momentum < 1):
        raise ConfigError(f"make_optimizer: momentum must be in [0, 1) (1 or more diverges); got "
                          f"momentum={momentum!r}")
    _check_lr(learning_rate, "make_optimizer")

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


# -- flag types: argparse calls them on the text, and reports their ArgumentTypeError as
# "argument --lr: ..." with exit status 2, as for its own errors ---------------------------

def _number(text: str, kind, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}; got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}; got {text!r} (not finite)")
    return value


def positive_int(text: str) -> int:
    """An ``int >= 1`` (counts, sizes, epochs of a part), for ``type=`` of an argparse flag."""
    value = _number(text, int, "an integer >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An ``int >= 0`` (e.g. ``--epochs 0``: evaluate or export only), for ``type=``."""
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite ``float > 0`` (learning rates, clipping bounds), for ``type=``."""
    value = _number(text, float, "a finite number > 0")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0; got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A finite ``float >= 0`` (weight decay, penalty weights, noise), for ``type=``."""
    value = _number(text, float, "a finite number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0; got {value}")
    return value


def momentum_float(text: str) -> float:
    """A momentum coefficient in ``[0, 1)`` (1 or more diverges), for ``type=``."""
    value = _number(text, float, "a number in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a momentum in [0, 1); got {value}")
    return value


def open_unit_float(text: str) -> float:
    """A number in ``(0, 1)`` (e.g. DP's delta), for ``type=``."""
    value = _number(text, float, "a number in (0, 1)")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1); got {value}")
    return value


def class_spec(text: str) -> str:
    """A class-label spec such as ``'0-4'`` or ``'5,7,9'`` (:func:`fundl.data.parse_classes`),
    checked and returned unchanged (the text is what ``config.json`` records), for ``type=``."""
    from .data import parse_classes

    try:
        parse_classes(text, "labels")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("labels: ")) from None
    return text


def check_paths(parser: argparse.ArgumentParser, args, *, out=(), inputs=(), outputs=(),
                dirs=()) -> None:
    """Cross-flag path checks after parsing, reported with ``parser.error`` (exit status 2).

    Args:
      parser: the runner's parser.
      args: its parsed namespace.
      out: attribute names of output directories: must not be existing regular files.
      inputs: attribute names of files to read: must exist (``None`` values are skipped).
      outputs: attribute names of files to write: not a directory, parent directory exists
        (or is the run directory ``args.out``, which the run creates).
      dirs: attribute names of directories to read: must exist.
    """
    for name in out:
        path = getattr(args, name)
        if path is not None and pathlib.Path(path).exists() and not pathlib.Path(path).is_dir():
            parser.error(f"argument {_flag(name)}: {str(path)!r} is an existing file, not a "
                         "directory; choose another path")
    for name in inputs:
        path = getattr(args, name)
        if path is not None and not pathlib.Path(path).is_file():
            what = "is a directory" if pathlib.Path(path).is_dir() else "does not exist"
            parser.error(f"argument {_flag(name)}: {str(path)!r} {what}; give an existing file")
    for name in dirs:
        path = getattr(args, name)
        if path is not None and not pathlib.Path(path).is_dir():
            parser.error(f"argument {_flag(name)}: {str(path)!r} is not an existing directory")
    run_dir = getattr(args, "out", None)
    for name in outputs:
        path = getattr(args, name)
        if path is None:
            continue
        path = pathlib.Path(path)
        in_run = run_dir is not None and path.parent.resolve() == pathlib.Path(run_dir).resolve()
        if path.is_dir():
            parser.error(f"argument {_flag(name)}: {str(path)!r} is a directory; name a file")
        if not (path.parent.is_dir() or in_run):
            parser.error(f"argument {_flag(name)}: the directory {str(path.parent)!r} does not "
                         "exist; create it or choose another path")


def check_training_flags(parser: argparse.ArgumentParser, args):
    """The cross-flag checks of :func:`add_training_flags`' flags, after ``parse_args``.

    ``--stop-after`` at most ``--epochs``; ``--out`` not an existing regular file;
    ``--init-from`` an existing file; ``--export-params``/``--export-model`` files in an
    existing directory (or in ``--out``). (``--batch-size`` against the data set size is
    checked by :func:`run`, once the data is loaded.) Errors go through ``parser.error``
    (``"argument --stop-after: ..."``, exit status 2).

    Returns:
      ``args``, unchanged.

    Example:
      >>> p = argparse.ArgumentParser()
      >>> add_training_flags(p, epochs=2, batch_size=8, optimizer="sgd", lr=0.1,
      ...                    schedule="constant", momentum=0.9, weight_decay=0.0, out="runs/x")
      >>> check_training_flags(p, p.parse_args(["--stop-after", "1"])).stop_after
      1
    """
    if args.stop_after is not None and args.stop_after > args.epochs:
        parser.error(f"argument --stop-after: {args.stop_after} is after the last epoch "
                     f"(--epochs {args.epochs}); use a value in [0, {args.epochs}]")
    check_paths(parser, args, out=("out",), inputs=("init_from",),
                outputs=("export_params", "export_model"))
    return args


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_training_flags(parser: argparse.ArgumentParser, *, epochs: int, batch_size: int,
                       optimizer: str, lr: float, schedule: str, momentum: float,
                       weight_decay: float, out: str) -> None:
    """Add the flags every runner shares to ``parser``, with the runner's defaults.

    Flags: ``--epochs --batch-size --optimizer --lr --momentum --weight-decay
    --schedule --seed --out --resume --stop-after --no-progress --limit-train
    --limit-test --eval-batch-size --data-parallel --fsdp --init-from --export-params
    --export-model --on-nonfinite --force --compile-cache --no-compile-cache`` (the last two:
    :func:`add_compile_cache_flags`; ``--data-parallel`` and ``--fsdp``, exclusive:
    :func:`run`'s ``parallel='sharded'`` and ``'fsdp'``; the last five: ``init_from``,
    ``export_params``, ``export_model``, ``on_nonfinite``, ``force``). Each value is checked as it is parsed
    (:func:`positive_int`, :func:`positive_float`, :func:`momentum_float`, ...: an argparse
    error, exit status 2); call :func:`check_training_flags` after ``parse_args`` for the
    checks that involve several flags or the file system.
    """
    a = parser.add_argument
    a("--epochs", type=non_negative_int, default=epochs, help=f"passes over the training set (default {epochs})")
    a("--batch-size", type=positive_int, default=batch_size, help=f"examples per SGD step (default {batch_size})")
    a("--optimizer", choices=OPTIMIZERS, default=optimizer, help=f"(default {optimizer})")
    a("--lr", type=positive_float, default=lr, help=f"initial learning rate (default {lr})")
    a("--momentum", type=momentum_float, default=momentum,
      help=f"for --optimizer momentum/nesterov (default {momentum})")
    a("--weight-decay", type=non_negative_float, default=weight_decay,
      help=f"L2 on the weights, not biases or batch-norm scales (default {weight_decay})")
    a("--schedule", choices=SCHEDULES, default=schedule,
      help=f"learning-rate schedule: step = x0.1 at 50%% and 75%% of the epochs, cosine = per step to 0 "
           f"(default {schedule})")
    a("--seed", type=non_negative_int, default=0, help="seed of initialisation, data order, dropout, augmentation (default 0)")
    a("--out", type=pathlib.Path, default=pathlib.Path(out),
      help=f"output directory: metrics.jsonl, curves.png, checkpoints/ (default {out})")
    a("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    a("--stop-after", type=non_negative_int, default=None, metavar="E",
      help="end this invocation after epoch E (the schedule still spans --epochs); "
           "continue later with --resume")
    a("--no-progress", action="store_true", help="no progress bar (one line per epoch only)")
    a("--limit-train", type=positive_int, default=None, metavar="N", help="train on the first N examples only")
    a("--limit-test", type=positive_int, default=None, metavar="N", help="evaluate on the first N test examples only")
    a("--eval-batch-size", type=positive_int, default=1000, help="examples per evaluation call (default 1000)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--data-parallel", action="store_true",
                      help="data parallel over all devices (of every process when launched as "
                           "several: FUNDL_COORDINATOR, FUNDL_NUM_PROCESSES, FUNDL_PROCESS_ID set, "
                           "or srun with several tasks, or a Kubernetes Indexed Job), training and "
                           "evaluation; --batch-size is the global batch, divisible by the device "
                           "count")
    mode.add_argument("--fsdp", action="store_true",
                      help="as --data-parallel, with the params and optimizer state sharded "
                           "over the devices (run(parallel='fsdp')); not with --data-parallel")
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
    a("--on-nonfinite", choices=("stop", "raise", "skip"), default="stop",
      help="when the loss or the params turn NaN/Inf (checked at every metrics read): stop = "
           "end the run before saving that epoch's checkpoint and exit with status 1 (the "
           "newest checkpoint stays the last good one); raise = the same with a NonFiniteError "
           "traceback; skip = skip every update with a non-finite loss, gradient or parameter "
           "and count them ('skipped' in metrics.jsonl) (default stop)")
    a("--force", action="store_true",
      help="with --resume: continue although --out's config.json is missing or unreadable "
           "(its settings cannot be checked; it is rewritten with this invocation's)")
    add_compile_cache_flags(parser)



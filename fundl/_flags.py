"""The runners' shared settings: optimizers and schedules by name, and the command-line flags.

Part of :mod:`fundl.experiment` (which re-exports the public names).
"""
from __future__ import annotations

import argparse
import math
import pathlib

import optax

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
    --export-model --force`` (the last four: :func:`run`'s ``init_from``,
    ``export_params``, ``export_model``, ``force``).
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
    a("--force", action="store_true",
      help="with --resume: continue although --out's config.json is missing or unreadable "
           "(its settings cannot be checked; it is rewritten with this invocation's)")



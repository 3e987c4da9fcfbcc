"""The epoch loop: the one place where a train step runs over an epoch's batches.

Both :func:`fundl.train.fit` (host-shuffled NumPy slices) and
:func:`fundl.experiment.run` (the prefetching, process-sharded
``fundl.data.batches`` pipeline with on-device augmentation) call
:func:`run_epoch`; they differ only in the batches they feed, the step they
pass and the key each step gets.

Metrics are weighted by batch size and summed on the device: each step's
batch-mean metrics stay there until a read, which sums ``mean * batch_size``
over the steps since the previous read in one compiled call and copies the few
scalars to the host, where they are added in float64. A read happens every
``log_every`` steps and once at the end of the epoch; nothing else waits for
the device. The epoch's metric is ``sum(mean_b * size_b) / sum(size_b)``:
exact for a smaller last batch.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _datacheck
from ._parallel import first_copy
from ._errors import ConfigError, NonFiniteError


class EpochResult(NamedTuple):
    """What :func:`run_epoch` returns.

    Attributes:
      trees: ``(params, state, opt_state)`` after the epoch's last step; after a
        stop on a non-finite value, the trees of the last good read instead.
      metrics: ``{name: float}``, each the mean over the epoch's examples of the
        step's batch-mean metric (weighted by batch size); with skipped steps
        (``metrics['skipped']`` from a ``skip_nonfinite`` step) the means are over
        the examples of the steps not skipped, and ``'skipped'`` is the number of
        steps skipped.
      steps: the number of steps run.
      examples: the number of examples seen (global batch sizes summed).
      seconds: wall time from the first batch requested to the last read.
      stopped: ``None``, or the message of a stop on a non-finite value
        (``on_nonfinite='stop'``).
    """

    trees: tuple
    metrics: dict
    steps: int
    examples: int
    seconds: float
    stopped: str | None = None


class StepKeys(NamedTuple):
    """:func:`run_epoch`'s ``key_for_step`` in the form step ``i`` gets ``fold_in(key, offset + i)``.

    The same keys as ``key_for_step=lambda i: jax.random.fold_in(key, offset + i)``; a step
    from :func:`fundl.train.make_train_step` (one device, without ``checks``) then derives
    the key inside its compiled call (its ``fold_in_step``) instead of the host running one
    more dispatch per step (about 3x the dispatch of a tiny step on CPU).

    Attributes:
      key: a typed ``jax.random`` key (shape ``()``).
      offset: an int ``>= 0`` added to the step index.
    """

    key: Any
    offset: int = 0


def _caller(step: Callable, key_for_step) -> Callable:
    """``call(trees, batch, i) -> (*trees, metrics)`` running ``step`` on step ``i``'s key."""
    if not isinstance(key_for_step, StepKeys):
        return lambda trees, batch, i: step(*trees, batch, key_for_step(i))
    key, offset = key_for_step
    fast = getattr(step, "fold_in_step", None)
    if fast is None:
        return lambda trees, batch, i: step(*trees, batch, jax.random.fold_in(key, offset + i))
    # a NumPy uint32 scalar: jit's fast argument path (a Python int is converted far slower)
    return lambda trees, batch, i: fast(*trees, batch, key, np.uint32(offset + i))


COUNTS = ("skipped",)  # 0/1 per step metrics that are summed over steps, not averaged


@jax.jit
def _weighted_sums(metrics: list, sizes, params_finite):
    """Window sums on the device, for ``k`` steps since the last read.

    Args:
      metrics: ``k`` dicts of scalar arrays (one per step), same keys.
      sizes: ``float32 [k]`` batch sizes.
      params_finite: a bool scalar from :func:`_params_finite` (``None``: not checked).

    Returns:
      ``{name: sum_j metrics[j][name] * w_j}`` in float32 with ``w_j = sizes[j]``, or
      ``sizes[j] * (1 - skipped_j)`` when the steps report ``'skipped'`` (a skipped
      step's metrics count for nothing); ``'skipped'``: the number of skipped steps;
      ``'_weight'``: ``sum_j w_j``; ``'_params_finite'``: every parameter is finite.
    """
    stack = {name: jnp.stack([jnp.asarray(m[name], jnp.float32) for m in metrics])
             for name in metrics[0]}
    skipped = stack.get("skipped", jnp.zeros_like(sizes))
    w = sizes * (1.0 - skipped)
    out = {name: jnp.sum(v) if name in COUNTS else jnp.sum(jnp.where(w > 0, v, 0.0) * w)
           for name, v in stack.items()}
    out["_weight"] = jnp.sum(w)
    out["_params_finite"] = jnp.asarray(True) if params_finite is None else params_finite
    return out


_copy_trees = jax.jit(lambda trees: jax.tree.map(jnp.copy, trees))

# Every parameter finite: one reduction over the global arrays wherever they live (one
# device, replicated, or sharded over devices as FSDP params are: each shard is checked).
_params_finite = jax.jit(_datacheck.all_finite)


class _MetricSums:
    """Batch-size-weighted metric sums: on the device between reads, float64 on the host after."""

    def __init__(self):
        self.pending, self.sizes = [], []  # device metrics and batch sizes not yet read
        self.sums: dict[str, float] = {}
        self.seen = 0
        self.weight = 0.0

    def add(self, metrics, size: int) -> None:
        # This process's copy of replicated (data-parallel) metrics: the window sums then run
        # on its first device, beside the params' finiteness flag.
        self.pending.append(first_copy(metrics))
        self.sizes.append(size)

    def read(self, params=None) -> dict | None:
        """Sum the pending steps on the device and add them up on the host (one sync).

        Returns the window's values (``'_params_finite'`` included), ``None`` if no step.
        """
        if not self.pending:
            return None
        finite = None if params is None else first_copy(_params_finite(params))
        window = jax.device_get(_weighted_sums(self.pending, np.asarray(self.sizes, np.float32),
                                               finite))
        self.weight += float(window["_weight"])
        for name, value in window.items():
            if not name.startswith("_"):
                self.sums[name] = self.sums.get(name, 0.0) + float(value)
        self.seen += sum(self.sizes)
        self.pending, self.sizes = [], []
        return window

    def means(self) -> dict[str, float]:
        w = self.weight if self.weight else float("nan")
        return {name: total if name in COUNTS else total / w for name, total in self.sums.items()}


def nonfinite_message(where: str, window: dict, *, desc: str, first: int, last: int,
                      action: str) -> str | None:
    """The message for a read with a non-finite metric or parameter; ``None`` if all finite."""
    bad = [(n, v) for n, v in window.items()
           if not n.startswith("_") and n not in COUNTS and not np.isfinite(v)]
    if not bad and bool(window["_params_finite"]):
        return None
    what = (f"the metric {bad[0][0]} is {bad[0][1]}" if bad
            else "the parameters hold NaN/Inf (the loss was still finite)")
    return (f"{where}: non-finite training in {desc or 'this epoch'}, steps {first}..{last} "
            f"(1-based, the steps since the last good read): {what}. Likely causes: a learning "
            "rate too high or diverging (try one 10x smaller; runners: --lr), NaN/Inf in the "
            "data, float16 overflow (use precision='bfloat16' or float32). " + action)


def _batch_size(batch) -> int:
    """Rows in ``batch = (x, y)``: ``x.shape[0]`` (the global size for a global ``jax.Array``)."""
    return int(np.shape(batch[0])[0])


def _show(bar, sums: _MetricSums, done: int, last: tuple[float, int]) -> tuple[float, int]:
    """Update the progress bar after a read; ``last`` is ``(time, seen)`` at the previous one."""
    now = time.perf_counter()
    postfix = {"ex_s": f"{(sums.seen - last[1]) / max(now - last[0], 1e-9):.0f}"}
    if "loss" in sums.sums:
        postfix = {"loss": f"{sums.sums['loss'] / max(sums.weight, 1e-9):.4f}", **postfix}  # running epoch mean
    bar.set_postfix(postfix, refresh=False)
    bar.update(done - bar.n)
    return now, sums.seen


def run_epoch(step: Callable, trees: tuple, batches: Iterable, *,
              key_for_step: Callable[[int], Any], steps: int, progress: bool = True,
              desc: str = "", log_every: int = 20, on_nonfinite: str | None = None,
              where: str = "run_epoch") -> EpochResult:
    """Run ``step`` over one epoch of ``batches``, with a progress bar and device-side metrics.

    Args:
      step: ``step(params, state, opt_state, batch, key) -> (params, state,
        opt_state, metrics)``, e.g. from :func:`fundl.train.make_train_step`
        (its inputs may be donated: only the returned trees are used);
        ``metrics`` is a dict of scalar batch means.
      trees: ``(params, state, opt_state)`` before the first step.
      batches: an iterable of exactly ``steps`` batches ``(x, y)``,
        ``x: [B, ...]`` (host or device arrays; ``B`` may vary).
      key_for_step: ``i -> key`` for step ``i`` (0-based) of this epoch, or a
        :class:`StepKeys` ``(key, offset)``: ``fold_in(key, offset + i)``, derived in the
        compiled step when ``step`` has a ``fold_in_step``.
      steps: the number of batches ``batches`` yields (the progress bar's total).
      progress: show a tqdm bar on stderr with the running mean loss and examples/s.
      desc: the bar's label, e.g. ``'epoch 2/10'``.
      log_every: steps between reads of the metrics from the device.
      on_nonfinite: ``None``: no check. Otherwise every read (every ``log_every``
        steps and at the end) also checks that the window's metrics and the
        params are finite (no extra sync: one fused device reduction read with
        the metrics) and on a non-finite value: ``'stop'``: end the epoch and
        return the trees of the last good read (a copy of the trees is kept at
        every good read: one tree copy per ``log_every`` steps, twice the
        parameter and optimizer memory) with the message in
        :attr:`EpochResult.stopped`; ``'raise'``: raise :class:`~fundl.NonFiniteError`;
        ``'skip'``: like ``'raise'`` (the step itself skips bad updates, see
        ``make_train_step(skip_nonfinite=True)``; a non-finite param is then unexpected).
      where: the caller's name for messages (``'fit'``, ``'run'``).

    Returns:
      An :class:`EpochResult` ``(trees, metrics, steps, examples, seconds, stopped)``.

    Raises:
      ConfigError: ``batches`` yielded more or fewer than ``steps`` batches.
      NonFiniteError: a non-finite value with ``on_nonfinite`` ``'raise'`` or ``'skip'``.
    """
    from tqdm.auto import tqdm  # imported here: only the loop needs it

    t0 = time.perf_counter()
    call = _caller(step, key_for_step)
    sums, done, good_step = _MetricSums(), 0, 0
    keep = on_nonfinite == "stop"
    good = _copy_trees(tuple(trees)) if keep else None
    bar = tqdm(total=steps, desc=desc, unit="step", leave=False, disable=not progress,
               dynamic_ncols=True)
    last, stopped = (t0, 0), None

    def check(window):  # after a read: None, or the stop message (raises for 'raise'/'skip')
        nonlocal good, good_step
        if on_nonfinite is None or window is None:
            return None
        action = (f"Stopped; keeping the parameters after step {good_step}, the last good read."
                  if keep else "")
        msg = nonfinite_message(where, window, desc=desc, first=good_step + 1, last=done,
                                action=action)
        if msg is None:
            good, good_step = (_copy_trees(tuple(trees)) if keep else None), done
        elif not keep:
            raise NonFiniteError(msg)
        return msg

    try:
        for batch in batches:
            if done == steps:
                raise ConfigError(f"run_epoch: batches yielded more than steps={steps} batches; "
                                  "pass the number of batches the iterator yields")
            *trees, metrics = call(trees, batch, done)
            sums.add(metrics, _batch_size(batch))
            done += 1
            if done % log_every == 0:
                # a host sync, once every log_every steps
                stopped = check(sums.read(trees[0] if on_nonfinite else None))
                last = _show(bar, sums, done, last) if progress else last
                if stopped:
                    break
        if not stopped:
            stopped = check(sums.read(trees[0] if on_nonfinite else None))  # waits for the last step
        if progress:
            _show(bar, sums, done, last)
    finally:
        bar.close()
        if stopped and hasattr(batches, "close"):
            batches.close()  # end a prefetching generator's background work
    if stopped:
        return EpochResult(good, sums.means(), done, sums.seen, time.perf_counter() - t0, stopped)
    if done != steps:
        raise ConfigError(f"run_epoch: batches yielded {done} batches; expected steps={steps}")
    return EpochResult(tuple(trees), sums.means(), done, sums.seen, time.perf_counter() - t0)

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

from ._errors import ConfigError


class EpochResult(NamedTuple):
    """What :func:`run_epoch` returns.

    Attributes:
      trees: ``(params, state, opt_state)`` after the epoch's last step.
      metrics: ``{name: float}``, each the mean over the epoch's examples of the
        step's batch-mean metric (weighted by batch size).
      steps: the number of steps run.
      examples: the number of examples seen (global batch sizes summed).
      seconds: wall time from the first batch requested to the last read.
    """

    trees: tuple
    metrics: dict
    steps: int
    examples: int
    seconds: float


@jax.jit
def _weighted_sums(metrics: list, sizes):
    """``{name: sum_j metrics[j][name] * sizes[j]}`` in float32, for a window of steps.

    Args:
      metrics: ``k`` dicts of scalar arrays (one per step), same keys.
      sizes: ``float32 [k]`` batch sizes.
    """
    return {name: jnp.sum(jnp.stack([jnp.asarray(m[name], jnp.float32) for m in metrics]) * sizes)
            for name in metrics[0]}


class _MetricSums:
    """Batch-size-weighted metric sums: on the device between reads, float64 on the host after."""

    def __init__(self):
        self.pending, self.sizes = [], []  # device metrics and batch sizes not yet read
        self.sums: dict[str, float] = {}
        self.seen = 0

    def add(self, metrics, size: int) -> None:
        self.pending.append(metrics)
        self.sizes.append(size)

    def read(self) -> None:
        """Sum the pending steps on the device and add them up on the host (one sync)."""
        if not self.pending:
            return
        window = jax.device_get(_weighted_sums(self.pending, np.asarray(self.sizes, np.float32)))
        for name, value in window.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
        self.seen += sum(self.sizes)
        self.pending, self.sizes = [], []

    def means(self) -> dict[str, float]:
        return {name: total / self.seen for name, total in self.sums.items()}


def _batch_size(batch) -> int:
    """Rows in ``batch = (x, y)``: ``x.shape[0]`` (the global size for a global ``jax.Array``)."""
    return int(np.shape(batch[0])[0])


def _show(bar, sums: _MetricSums, done: int, last: tuple[float, int]) -> tuple[float, int]:
    """Update the progress bar after a read; ``last`` is ``(time, seen)`` at the previous one."""
    now = time.perf_counter()
    postfix = {"ex_s": f"{(sums.seen - last[1]) / max(now - last[0], 1e-9):.0f}"}
    if "loss" in sums.sums:
        postfix = {"loss": f"{sums.sums['loss'] / sums.seen:.4f}", **postfix}  # running epoch mean
    bar.set_postfix(postfix, refresh=False)
    bar.update(done - bar.n)
    return now, sums.seen


def run_epoch(step: Callable, trees: tuple, batches: Iterable, *,
              key_for_step: Callable[[int], Any], steps: int, progress: bool = True,
              desc: str = "", log_every: int = 20) -> EpochResult:
    """Run ``step`` over one epoch of ``batches``, with a progress bar and device-side metrics.

    Args:
      step: ``step(params, state, opt_state, batch, key) -> (params, state,
        opt_state, metrics)``, e.g. from :func:`fundl.train.make_train_step`
        (its inputs may be donated: only the returned trees are used);
        ``metrics`` is a dict of scalar batch means.
      trees: ``(params, state, opt_state)`` before the first step.
      batches: an iterable of exactly ``steps`` batches ``(x, y)``,
        ``x: [B, ...]`` (host or device arrays; ``B`` may vary).
      key_for_step: ``i -> key`` for step ``i`` (0-based) of this epoch.
      steps: the number of batches ``batches`` yields (the progress bar's total).
      progress: show a tqdm bar on stderr with the running mean loss and examples/s.
      desc: the bar's label, e.g. ``'epoch 2/10'``.
      log_every: steps between reads of the metrics from the device.

    Returns:
      An :class:`EpochResult` ``(trees, metrics, steps, examples, seconds)``.

    Raises:
      ConfigError: ``batches`` yielded more or fewer than ``steps`` batches.
    """
    from tqdm.auto import tqdm  # imported here: only the loop needs it

    t0 = time.perf_counter()
    sums, done = _MetricSums(), 0
    bar = tqdm(total=steps, desc=desc, unit="step", leave=False, disable=not progress,
               dynamic_ncols=True)
    last = (t0, 0)
    try:
        for batch in batches:
            if done == steps:
                raise ConfigError(f"run_epoch: batches yielded more than steps={steps} batches; "
                                  "pass the number of batches the iterator yields")
            # fold_in per step: one key per step from one small compiled function.
            *trees, metrics = step(*trees, batch, key_for_step(done))
            sums.add(metrics, _batch_size(batch))
            done += 1
            if done % log_every == 0:
                sums.read()  # a host sync, once every log_every steps
                last = _show(bar, sums, done, last) if progress else last
        sums.read()  # the epoch's last steps: waits for the last one
        if progress:
            _show(bar, sums, done, last)
    finally:
        bar.close()
    if done != steps:
        raise ConfigError(f"run_epoch: batches yielded {done} batches; expected steps={steps}")
    return EpochResult(tuple(trees), sums.means(), done, sums.seen, time.perf_counter() - t0)

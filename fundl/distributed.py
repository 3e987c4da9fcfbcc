"""Several processes (hosts) training one model: start-up, data sharding, host reads.

The model is data parallel over every device of every process (a global
``jax.sharding.Mesh``; see ``make_train_step(..., parallel='sharded')``). Each
process runs the same program on its own part of every global batch:

>>> import fundl.distributed as dist                               # doctest: +SKIP
>>> dist.initialize()                  # before any other JAX call  # doctest: +SKIP
>>> step = make_train_step(model, opt, parallel="sharded")         # doctest: +SKIP
>>> for xb, yb in dist.process_batches(x, y, 256, seed=0, epoch=e):  # doctest: +SKIP
...     params, state, opt_state, m = step(params, state, opt_state, (xb, yb), key)

``process_batches`` gives process ``i`` only its ``256 / P`` rows of each global
batch (the global order is the same everywhere); the step assembles them with
``jax.make_array_from_process_local_data``. The returned ``params`` and
metrics are replicated global arrays: every process holds the same values and
reads them with :func:`to_host`. Checkpoints are written with Orbax, whose
``CheckpointManager`` coordinates the processes (every process calls
``save``; the primary process writes the metadata, each array is written by
the process owning its primary copy, so no file is written twice).
"""
from __future__ import annotations

import os

import jax
import numpy as np

from ._errors import ConfigError
from .data import batches

__all__ = ["initialize", "requested", "process_batches", "to_host", "is_primary", "ENV_VARS"]

ENV_VARS = ("FUNDL_COORDINATOR", "FUNDL_NUM_PROCESSES", "FUNDL_PROCESS_ID")


def _env_int(name, value):
    if value is None:
        raw = os.environ.get(name)
        if raw is None or raw == "":
            return None
        value = raw
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"fundl.distributed.initialize: {name.split('FUNDL_')[-1].lower()} "
                          f"must be an int; got {value!r}") from None
    if out < 0:
        raise ConfigError(f"fundl.distributed.initialize: {name.split('FUNDL_')[-1].lower()} "
                          f"must be >= 0; got {out}")
    return out


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, cpu_collectives: str = "gloo") -> tuple[int, int]:
    """Join this process to a multi-process JAX job (thin over ``jax.distributed.initialize``).

    Call it once, first, in every process, before any other JAX computation.
    Each argument left ``None`` is read from the environment
    (``FUNDL_COORDINATOR`` = ``host:port`` of process 0, ``FUNDL_NUM_PROCESSES``,
    ``FUNDL_PROCESS_ID``); if all three are still unset, JAX auto-detects the
    cluster (SLURM, Open MPI, Cloud TPU, ...).

    Args:
      coordinator_address: ``'host:port'`` where process 0 listens, reachable by all.
      num_processes: number of processes in the job, ``>= 1``.
      process_id: this process's index in ``[0, num_processes)``.
      cpu_collectives: the CPU backend's cross-process collectives
        (``'gloo'``, or ``'mpi'``); ignored by GPU/TPU backends.

    Returns:
      ``(jax.process_index(), jax.process_count())``.

    Raises:
      ConfigError: only some of the three settings given, or malformed ones.
    """
    coordinator_address = coordinator_address or os.environ.get("FUNDL_COORDINATOR") or None
    num_processes = _env_int("FUNDL_NUM_PROCESSES", num_processes)
    process_id = _env_int("FUNDL_PROCESS_ID", process_id)
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
             "process_id": process_id}
    missing = [k for k, v in given.items() if v is None]
    if missing and len(missing) < 3:
        raise ConfigError(f"fundl.distributed.initialize: give all of coordinator_address, "
                          f"num_processes, process_id (or FUNDL_COORDINATOR, FUNDL_NUM_PROCESSES, "
                          f"FUNDL_PROCESS_ID), or none for auto-detection; missing {missing}")
    if coordinator_address is not None:
        if ":" not in coordinator_address:
            raise ConfigError(f"fundl.distributed.initialize: coordinator_address must be "
                              f"'host:port'; got {coordinator_address!r}")
        if num_processes < 1 or process_id >= num_processes:
            raise ConfigError(f"fundl.distributed.initialize: need num_processes >= 1 and "
                              f"0 <= process_id < num_processes; got num_processes={num_processes}, "
                              f"process_id={process_id}")
    if cpu_collectives not in ("gloo", "mpi"):
        raise ConfigError(f"fundl.distributed.initialize: cpu_collectives must be 'gloo' or "
                          f"'mpi'; got {cpu_collectives!r}")
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return jax.process_index(), jax.process_count()


def requested() -> bool:
    """Whether ``FUNDL_COORDINATOR`` is set: the runners then call :func:`initialize` first."""
    return bool(os.environ.get("FUNDL_COORDINATOR"))


def is_primary() -> bool:
    """Whether this is process 0 (the one that writes logs, metrics and plots)."""
    return jax.process_index() == 0


def process_batches(x, y, batch_size: int, **kwargs):
    """This process's rows of each global batch: :func:`fundl.data.batches` with
    ``process_index=jax.process_index()`` and ``process_count=jax.process_count()``.

    Args:
      x: ``[N, ...]`` host array, the whole data set (same on every process).
      y: ``[N]`` host array.
      batch_size: the *global* batch size, divisible by ``jax.process_count()``.
      **kwargs: ``seed``, ``epoch``, ``shuffle``, ``drop_remainder`` as for ``batches``.

    Returns:
      An iterator of ``(x_local, y_local)`` NumPy arrays,
      ``[batch_size // process_count, ...]``.
    """
    return batches(x, y, batch_size, process_index=jax.process_index(),
                   process_count=jax.process_count(), **kwargs)


def to_host(tree):
    """NumPy copies of a pytree of (possibly multi-process) arrays, on every process.

    Replicated arrays (params, state, metrics of the sharded step) are read from
    this process's own copy, with no communication; arrays split across
    processes are gathered (a collective: every process must call this).

    Args:
      tree: a pytree of ``jax.Array`` / NumPy arrays.

    Returns:
      The same tree of ``np.ndarray`` (full global shapes).
    """
    from jax.experimental import multihost_utils

    def one(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return np.asarray(a)
        if a.is_fully_replicated:
            return np.asarray(a.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    return jax.tree.map(one, tree)

"""Several processes (hosts) training one model: start-up, data sharding, host reads.

The model is data parallel over every device of every process (a global
``jax.sharding.Mesh``; see ``make_train_step(..., parallel='sharded')``). Each
process runs the same program on its own part of every global batch:

>>> import fundl.distributed as dist                               # doctest: +SKIP
>>> dist.initialize()                  # before any other JAX call  # doctest: +SKIP
>>> step = make_train_step(model, opt, parallel="sharded")         # doctest: +SKIP
>>> for xb, yb in dist.process_batches(x, y, 256, seed=0, epoch=e):  # doctest: +SKIP
...     params, state, opt_state, m = step(params, state, opt_state, (xb, yb), key)

Under SLURM (``srun``, one task per GPU) or in a Kubernetes Indexed Job,
``initialize()`` needs no arguments; :func:`initialize` lists the variables it
reads and their order of precedence.

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

# What srun gives each task and JAX's SLURM detection reads (jax/_src/clusters/slurm_cluster.py).
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
# Every variable :func:`initialize` and :func:`requested` read.
ENV_VARS = ("FUNDL_COORDINATOR", "FUNDL_NUM_PROCESSES", "FUNDL_PROCESS_ID", "JAX_COORDINATOR_ADDRESS",
            "JAX_COORDINATOR_PORT", "JOB_COMPLETION_INDEX", "OMPI_MCA_orte_hnp_uri",
            "OMPI_COMM_WORLD_SIZE") + SLURM_VARS
_OMPI_URI = "OMPI_MCA_orte_hnp_uri"  # set by Open MPI's mpirun (ORTE), read by JAX
_WHERE = "fundl.distributed.initialize"
_K8S_FIX = ("in the Job's pod template set FUNDL_COORDINATOR=<job-name>-0.<headless-service>:<port> "
            "and FUNDL_NUM_PROCESSES=<parallelism> (README, 'Scaling out')")


def _env(name):
    raw = os.environ.get(name)
    return None if raw is None or raw.strip() == "" else raw.strip()


def _first(*candidates):
    """The first ``(source, value)`` whose value is set: an argument, then variables in order."""
    for source, value in candidates:
        if value is not None:
            return source, value
    return None, None


def _as_int(source, value, minimum=0):
    """``value`` (from the argument or variable named ``source``) as an int ``>= minimum``."""
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{_WHERE}: {source} must be an int; got {source}={value!r}") from None
    if out < minimum:
        raise ConfigError(f"{_WHERE}: {source} must be >= {minimum}; got {source}={out}")
    return out


def _check_address(source, address):
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{_WHERE}: {source} must be 'host:port' (port 1-65535); got "
                          f"{source}={address!r}")


def _slurm_step():
    """``(complete, missing)``: whether all of :data:`SLURM_VARS` are set (an ``srun`` task),
    and which are missing when only some are (``SLURM_JOB_ID`` alone: inside an allocation)."""
    missing = [v for v in SLURM_VARS if _env(v) is None]
    return not missing, (missing if len(missing) < len(SLURM_VARS) else [])


def _check_slurm(coordinator):
    """The SLURM variables JAX will read, checked so that a bad one is named here."""
    n = _as_int("SLURM_NTASKS", _env("SLURM_NTASKS"), 1)
    i = _as_int("SLURM_PROCID", _env("SLURM_PROCID"))
    _as_int("SLURM_LOCALID", _env("SLURM_LOCALID"))
    if i >= n:
        raise ConfigError(f"{_WHERE}: need 0 <= SLURM_PROCID < SLURM_NTASKS; got SLURM_PROCID={i}, "
                          f"SLURM_NTASKS={n}")
    if coordinator is None:  # JAX derives the port from the job id unless JAX_COORDINATOR_PORT
        port = _env("JAX_COORDINATOR_PORT")
        if port is None:
            _as_int("SLURM_JOB_ID", _env("SLURM_JOB_ID"))
        else:
            _as_int("JAX_COORDINATOR_PORT", port, 1)


def _resolve(coordinator_address=None, num_processes=None, process_id=None):
    """``(kwargs for jax.distributed.initialize, source)``: where each setting comes from.

    ``source`` is ``'explicit'`` (all three from arguments / variables), ``'k8s'`` (the
    same with the process id from ``JOB_COMPLETION_INDEX``), ``'slurm'`` (JAX's SLURM
    detection fills what is unset) or ``'auto'`` (nothing set: JAX's other detectors).
    """
    c_src, address = _first(("coordinator_address", coordinator_address),
                             ("FUNDL_COORDINATOR", _env("FUNDL_COORDINATOR")),
                             ("JAX_COORDINATOR_ADDRESS", _env("JAX_COORDINATOR_ADDRESS")))
    n_src, count = _first(("num_processes", num_processes),
                          ("FUNDL_NUM_PROCESSES", _env("FUNDL_NUM_PROCESSES")))
    i_src, index = _first(("process_id", process_id), ("FUNDL_PROCESS_ID", _env("FUNDL_PROCESS_ID")),
                          ("JOB_COMPLETION_INDEX", _env("JOB_COMPLETION_INDEX")))
    count = None if count is None else _as_int(n_src, count)
    index = None if index is None else _as_int(i_src, index)
    if address is not None:
        _check_address(c_src, str(address))
    kwargs = {"coordinator_address": address, "num_processes": count, "process_id": index}
    missing = [k for k, v in kwargs.items() if v is None]
    if not missing:
        if count < 1 or index >= count:
            raise ConfigError(f"{_WHERE}: need num_processes >= 1 and 0 <= process_id < "
                              f"num_processes; got num_processes={count} (from {n_src}), "
                              f"process_id={index} (from {i_src})")
        return dict(kwargs, cluster_detection_method="deactivate"), \
            ("k8s" if i_src == "JOB_COMPLETION_INDEX" else "explicit")
    if len(missing) == 3 and _env(_OMPI_URI) is not None:
        return kwargs, "auto"  # mpirun (Open MPI's ORTE): JAX's detection tries it first
    slurm, slurm_missing = _slurm_step()
    if slurm:
        _check_slurm(address)
        return kwargs, "slurm"
    if slurm_missing and len(missing) == 3:
        raise ConfigError(f"{_WHERE}: inside a SLURM allocation (SLURM_JOB_ID={_env('SLURM_JOB_ID')}) "
                          f"but not in an srun task: {slurm_missing} unset. Launch with "
                          f"'srun python ...' (one task per GPU), or set FUNDL_COORDINATOR, "
                          f"FUNDL_NUM_PROCESSES and FUNDL_PROCESS_ID")
    if len(missing) == 3:
        return kwargs, "auto"
    names = {"coordinator_address": "FUNDL_COORDINATOR", "num_processes": "FUNDL_NUM_PROCESSES",
             "process_id": "FUNDL_PROCESS_ID"}
    fix = (_K8S_FIX if i_src == "JOB_COMPLETION_INDEX" else
           "set the missing ones too, or none of them for JAX's cluster auto-detection")
    raise ConfigError(f"{_WHERE}: give all of coordinator_address, num_processes, process_id (or "
                      f"FUNDL_COORDINATOR, FUNDL_NUM_PROCESSES, FUNDL_PROCESS_ID), or none for "
                      f"auto-detection; missing {missing} (variables "
                      f"{[names[m] for m in missing]}); {fix}")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, cpu_collectives: str = "gloo") -> tuple[int, int]:
    """Join this process to a multi-process JAX job (thin over ``jax.distributed.initialize``).

    Call it once, first, in every process, before any other JAX computation.
    Each setting is taken from the first of these that is set:

    * coordinator (``'host:port'`` of process 0): the argument, ``FUNDL_COORDINATOR``,
      ``JAX_COORDINATOR_ADDRESS``;
    * number of processes: the argument, ``FUNDL_NUM_PROCESSES``;
    * process id: the argument, ``FUNDL_PROCESS_ID``, ``JOB_COMPLETION_INDEX`` (set by
      Kubernetes in each pod of an Indexed Job).

    All three set: they are used as given and JAX's cluster detection is off (each
    process drives all its visible devices; ``JAX_LOCAL_DEVICE_IDS`` restricts them).
    Otherwise, inside an ``srun`` task (``SLURM_JOB_ID``, ``SLURM_STEP_NODELIST``,
    ``SLURM_NTASKS``, ``SLURM_PROCID``, ``SLURM_LOCALID`` all set), JAX's SLURM
    detection fills the unset ones: ``SLURM_NTASKS`` processes, id ``SLURM_PROCID``,
    coordinator the first host of ``SLURM_STEP_NODELIST`` on port
    ``SLURM_JOB_ID % 4096 + 61440`` (or ``JAX_COORDINATOR_PORT``), and each process
    drives only GPU number ``SLURM_LOCALID`` of its node (so: one task per GPU, every
    task seeing all the node's GPUs). With none set and no SLURM task (or under Open
    MPI's ``mpirun``), JAX's detectors decide (Open MPI first, then Cloud TPU).

    Args:
      coordinator_address: ``'host:port'`` where process 0 listens, reachable by all.
      num_processes: number of processes in the job, ``>= 1``.
      process_id: this process's index in ``[0, num_processes)``.
      cpu_collectives: the CPU backend's cross-process collectives
        (``'gloo'``, or ``'mpi'``); ignored by GPU/TPU backends.

    Returns:
      ``(jax.process_index(), jax.process_count())``.

    Raises:
      ConfigError: only some of the three settings found outside an ``srun`` task (an
        Indexed Job without ``FUNDL_COORDINATOR`` / ``FUNDL_NUM_PROCESSES``), a SLURM
        allocation entered without ``srun``, a malformed value (named with the argument
        or variable it came from), or no cluster found at all.
    """
    if cpu_collectives not in ("gloo", "mpi"):
        raise ConfigError(f"{_WHERE}: cpu_collectives must be 'gloo' or "
                          f"'mpi'; got {cpu_collectives!r}")
    kwargs, source = _resolve(coordinator_address, num_processes, process_id)
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    try:
        jax.distributed.initialize(**kwargs)
    except ValueError as e:
        if source != "auto":
            raise
        raise ConfigError(f"{_WHERE}: no multi-process settings found ({e}). Set FUNDL_COORDINATOR, "
                          f"FUNDL_NUM_PROCESSES and FUNDL_PROCESS_ID, launch with srun under SLURM, "
                          f"or pass the three arguments") from e
    return jax.process_index(), jax.process_count()


def requested() -> bool:
    """Whether this process was launched as one of several: the runners then call :func:`initialize`.

    True when any of ``FUNDL_COORDINATOR``, ``FUNDL_NUM_PROCESSES``, ``FUNDL_PROCESS_ID``,
    ``JAX_COORDINATOR_ADDRESS`` is set (an incomplete set then fails loudly in
    :func:`initialize`, naming what is missing), or inside an ``srun`` task of a step with
    ``SLURM_NTASKS > 1`` (all of :data:`SLURM_VARS` set). A one-task ``srun``, the batch
    script itself, an ``salloc`` shell or an ``ssh`` session on an allocated node is not
    (their ``SLURM_NTASKS`` is 1, or ``SLURM_STEP_NODELIST``, which only ``srun`` sets, is
    unset). Also under Open MPI's ``mpirun`` with ``OMPI_COMM_WORLD_SIZE > 1``. A
    Kubernetes Indexed Job is one through the ``FUNDL_*`` variables its manifest sets.
    """
    if any(_env(v) is not None for v in ENV_VARS[:4]):
        return True
    if _env(_OMPI_URI) is not None:
        count = "OMPI_COMM_WORLD_SIZE"
    elif _slurm_step()[0]:
        count = "SLURM_NTASKS"
    else:
        return False
    try:
        return int(_env(count) or 1) > 1
    except ValueError:
        return True  # initialize (or JAX) names the malformed variable


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

"""The hidden context of fundl, in one place.

Everything a layer reads without being passed it explicitly lives here:

* per trace (a :class:`contextvars.ContextVar`, so threads and nested traces
  do not see each other's): the path of layer names being initialised or
  applied (for error messages and summaries), the summary recorder, whether
  an init is a shared use of parameters owned elsewhere, the depth of the
  outermost ``apply`` (params are checked there, once), the per-path
  train/eval modes, and how BatchNorm computes batch statistics inside a
  data-parallel step;
* process-wide: the lowering setting of convolutions and pools
  (:func:`fundl.functional.set_lowering`).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any, NamedTuple


class BatchStats(NamedTuple):
    """How BatchNorm layers without their own ``axis_name`` compute batch statistics.

    Attributes:
      axis_name: the mapped device axis (``pmap``/``shard_map``), or ``None``.
      sync: with ``axis_name``: average the statistics over the axis.
      groups: in a global-view step: per-device ("ghost") statistics over this
        many contiguous row groups.
    """

    axis_name: Any = None
    sync: bool = True
    groups: int = 1


@dataclasses.dataclass(frozen=True)
class Context:
    """The per-trace context (see the module docstring).

    Attributes:
      path: names of the layers being initialised or applied, outermost first.
      recorder: the active :class:`fundl._record.Recorder` (summaries and
        parameter checks), or ``None``.
      shared: True while initialising a use of parameters owned elsewhere.
      root: ``len(path)`` at the outermost ``apply`` (``None`` outside any
        apply): layers nested deeper are applied by a parent, whose params
        were already checked.
      modes: a :class:`fundl._modes.Modes` giving each layer path its
        train/eval mode, or ``None`` (the ``train`` argument as passed).
      batch_stats: BatchNorm's behaviour in a data-parallel step, or ``None``.
      mode: the train/eval mode of the layer whose ``forward`` is running (a
        nested ``apply`` without ``train=`` inherits it).
      expected: the outermost apply's :class:`fundl._paramcheck.Expected`
        (output shapes ``build`` promised, per path), or ``None``.
      frame: the :class:`InitFrame` of the layer being initialised, or ``None``.
      shapes_only: an abstract init that needs only the shapes of the params
        (summaries, parameter checks): fundl's layers skip their initialisers.
      symbolic_size: the size a symbolic dimension (``jax.export`` shape
        polymorphism: the batch of ``fundl.export``) stands for where fundl needs
        a number: the params check and the choice of a conv lowering (see
        :func:`concrete`).
    """

    path: tuple = ()
    recorder: Any = None
    shared: bool = False
    root: int | None = None
    modes: Any = None
    batch_stats: BatchStats | None = None
    mode: bool = False
    expected: Any = None
    frame: Any = None
    shapes_only: bool = False
    symbolic_size: int = 1


class InitFrame:
    """What the layers initialised inside one layer's ``build`` produced."""

    def __init__(self):
        self.child_state: list[str] = []  # names of nested layers that returned a state


_CONTEXT: contextvars.ContextVar[Context] = contextvars.ContextVar("fundl_context",
                                                                  default=Context())


def current() -> Context:
    """The context in force."""
    return _CONTEXT.get()


@contextlib.contextmanager
def using(**changes):
    """Run the block with some fields of the context replaced; yields the new context."""
    ctx = dataclasses.replace(_CONTEXT.get(), **changes)
    token = _CONTEXT.set(ctx)
    try:
        yield ctx
    finally:
        _CONTEXT.reset(token)


@contextlib.contextmanager
def scope(name: str):
    """Push a layer name onto the path; yields the new context."""
    ctx = _CONTEXT.get()
    with using(path=ctx.path + (name,)) as new:
        yield new


def concrete(d) -> int:
    """A dimension as an int: a symbolic one (``jax.export``) as the context's ``symbolic_size``.

    Example:
      >>> concrete(3)
      3
    """
    from jax import export  # noqa: PLC0415  (lazy: this module needs jax for nothing else)

    return _CONTEXT.get().symbolic_size if export.is_symbolic_dim(d) else int(d)


def current_path() -> str:
    """The ``/``-joined names of the layers being initialised or applied."""
    return "/".join(_CONTEXT.get().path)


# -- process-wide: the lowering setting ------------------------------------------------

class Lowering(NamedTuple):
    """The lowering setting: ``conv`` in ``('auto', 'xla', 'im2col')``,
    ``pool`` in ``('auto', 'reduce_window', 'reshape')``."""
    conv: str = "auto"
    pool: str = "auto"


_lowering = Lowering()


def get_lowering() -> Lowering:
    """The process-wide lowering setting (see :mod:`fundl._lowering`).

    Returns:
      ``Lowering(conv, pool)``.

    Example:
      >>> get_lowering()
      Lowering(conv='auto', pool='auto')
    """
    return _lowering


def put_lowering(value: Lowering) -> Lowering:
    """Replace the process-wide lowering setting; returns the previous one."""
    global _lowering
    old, _lowering = _lowering, value
    return old

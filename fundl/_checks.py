"""Validation shared by the layer modules: per-dim hyper-parameters and input shapes.

Data layout: channels last, ``x: [N, *spatial, C]`` (NHWC in 2-d), with 1 to
3 spatial dims. The hyper-parameter checks here run when a layer is
constructed and raise a ConfigError naming the layer (``where``); the shape
checks run at ``init`` and ``apply`` and raise a ShapeError naming the
layer's path (``lab``, from :func:`fundl._layer.label`).
"""
from __future__ import annotations

from ._errors import ConfigError, ShapeError
from ._util import is_seq, ntuple

# The input layout each spatial rank means, for error messages.
LAYOUTS = {1: "[N, L, C]", 2: "[N, H, W, C]", 3: "[N, D, H, W, C]"}


# -- construction time: per-dim hyper-parameters --------------------------------

def implied_rank(where: str, **args) -> int | None:
    """Spatial rank fixed by tuple-valued hyper-parameters (None: taken from the input)."""
    rank, first = None, None
    for arg, v in args.items():
        if not is_seq(v):
            continue
        if not 1 <= len(v) <= 3:
            raise ConfigError(f"{where}: {arg} must be an int or a tuple of 1 to 3 ints "
                              f"(one per spatial dim); got {arg}={v!r}")
        if rank is None:
            rank, first = len(v), arg
        elif len(v) != rank:
            raise ConfigError(f"{where}: {first} and {arg} give different numbers of spatial "
                              f"dims; got {first}={args[first]!r}, {arg}={v!r}")
    return rank


def check_spatial(value, arg: str, where: str, minimum: int, rank: int | None):
    """Validate an int-or-per-dim hyper-parameter; kept as given (int or tuple)."""
    n = rank if rank is not None else (len(value) if is_seq(value) else 1)
    ntuple(value, n, arg, where, minimum=minimum)
    return tuple(int(v) for v in value) if is_seq(value) else int(value)


# -- init/apply time: input shapes -------------------------------------------------

def input_rank(lab: str, shape, rank: int | None, what: str) -> int:
    """Spatial rank of an ``[N, *spatial, C]`` input, checked against ``rank``.

    ``what`` names what fixed ``rank`` (e.g. ``"kernel_size=(3, 3)"``); with
    ``rank=None`` any input with 1 to 3 spatial dims is accepted.
    """
    nd = len(shape)
    hint = ""
    if rank is not None and nd == rank + 1:
        hint = (" Is the batch axis missing? For one example use x[None] (input_shape "
                f"{(1, *tuple(shape))}); for data without a channel axis, x[..., None].")
    elif rank is None and nd == 2:
        hint = " Add a channel axis, e.g. x[..., None], for a 1-d signal."
    if rank is None:
        if not 3 <= nd <= 5:
            raise ShapeError(f"{lab}: input must be [N, *spatial, C] with 1 to 3 spatial dims "
                             f"(rank 3 to 5); got input shape {tuple(shape)} (rank {nd}).{hint}")
        return nd - 2
    if nd != rank + 2:
        raise ShapeError(f"{lab}: {what} means {rank} spatial dim(s), so the input must be "
                         f"{LAYOUTS[rank]} (rank {rank + 2}); got input shape {tuple(shape)} "
                         f"(rank {nd}).{hint}")
    return rank


def min_rank(lab: str, shape, minimum: int, what: str) -> None:
    """Check an input has at least ``minimum`` axes; ``what`` describes the expected layout."""
    if len(shape) < minimum:
        raise ShapeError(f"{lab}: input must be {what}; got input shape {tuple(shape)} "
                         f"(rank {len(shape)})")


def channels(lab: str, shape, what: str) -> int:
    """The channel count (last axis) of an input of layout ``what``, rank >= 2."""
    min_rank(lab, shape, 2, f"{what} with channels last (rank >= 2)")
    return shape[-1]

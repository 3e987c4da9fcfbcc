"""Small argument-normalisation helpers shared by the ops and layers.

The ``check_*`` helpers validate a layer's hyper-parameters when it is
constructed: each returns the value normalised (``int``, ``float``, ...) or
raises a ConfigError naming the layer (``where``, e.g. ``"Conv 'conv1'"``),
the argument and the value.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from ._errors import ConfigError


def is_int(value) -> bool:
    """An integer other than a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_seq(value) -> bool:
    """A sequence other than a string (a per-dim hyper-parameter)."""
    return isinstance(value, Sequence) and not isinstance(value, str)


def check_name(kind: str, name, default: str) -> str:
    """A layer's parameter key: ``default`` for None, else a non-empty string without '/'."""
    if name is None:
        return default
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"{kind}: name must be a non-empty string without '/'; got {name!r}")
    return name


def check_int(value, arg: str, where: str, minimum: int) -> int:
    """An int (not a bool) ``>= minimum``."""
    if not is_int(value) or value < minimum:
        raise ConfigError(f"{where}: {arg} must be an int >= {minimum}; got {arg}={value!r}")
    return int(value)


def check_number(value, arg: str, where: str) -> float:
    """A finite real number (not a bool), as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"{where}: {arg} must be a finite number; got {arg}={value!r}")
    return float(value)


def check_real(value, arg: str, where: str, lo: float, hi: float | None, lo_open: bool) -> float:
    """A real number (not a bool) ``> lo`` (``lo_open``) or ``>= lo``, and ``<= hi`` if given."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (v > lo if lo_open else v >= lo) and (hi is None or v <= hi)
    if not ok:
        rng = f"{'>' if lo_open else '>='} {lo}" + ("" if hi is None else f" and <= {hi}")
        raise ConfigError(f"{where}: {arg} must be a number {rng}; got {arg}={value!r}")
    return float(value)


def check_bool(value, arg: str, where: str) -> bool:
    """Exactly True or False."""
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {arg} must be True or False; got {arg}={value!r}")
    return value


def ntuple(value, n: int, arg: str, where: str = "", *, minimum: int | None = None) -> tuple:
    """Broadcast an int to an ``n``-tuple, or check a sequence has length ``n``.

    Args:
      value: an int or a sequence of ``n`` ints.
      n: the spatial rank.
      arg: the argument's name, for the error message.
      where: the function or layer name, for the error message.
      minimum: if given, every entry must be ``>= minimum``.

    Returns:
      A tuple of ``n`` Python ints.
    """
    prefix = f"{where}: " if where else ""
    if isinstance(value, bool):
        raise ConfigError(f"{prefix}{arg} must be an int or a sequence of {n} ints; got {value!r}")
    if isinstance(value, int) or (hasattr(value, "__index__") and not isinstance(value, Sequence)):
        out = (int(value),) * n
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n:
            raise ConfigError(
                f"{prefix}{arg} must have one entry per spatial dimension ({n}); got {tuple(value)!r}")
        try:
            out = tuple(int(v.__index__()) for v in value)
        except AttributeError:
            raise ConfigError(f"{prefix}{arg} entries must be ints; got {tuple(value)!r}") from None
    else:
        raise ConfigError(f"{prefix}{arg} must be an int or a sequence of {n} ints; got {value!r}")
    if minimum is not None and any(v < minimum for v in out):
        raise ConfigError(f"{prefix}{arg} entries must be >= {minimum}; got {value!r}")
    return out

"""Small argument-normalisation helpers shared by the ops and layers."""
from __future__ import annotations

from collections.abc import Sequence

from ._errors import ConfigError


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

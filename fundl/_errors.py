"""Error types raised for user mistakes (bad shapes, bad configuration).

Every message names the layer (or function), the argument, what was received
and what was expected, so that no raw XLA error reaches the user.
"""


class FundlError(ValueError):
    """Base class of fundl's user-facing errors (a ``ValueError``)."""


class ShapeError(FundlError):
    """An input or parameter has the wrong rank, size or channel count."""


class ConfigError(FundlError):
    """A layer or function was given an invalid hyper-parameter."""


def where(name):
    """Prefix for messages: ``"conv: "`` or ``"Conv 'features/conv1': "``."""
    return f"{name}: " if name else ""

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


class DataError(FundlError):
    """Data values a computation cannot use: integer labels outside ``[0, C)``, NaN or Inf in
    inputs, integer images where float ones are expected. The message names the value and
    its position (index), and says how to fix it."""


class NonFiniteError(FundlError):
    """Training produced a non-finite loss, metric or parameter (NaN or Inf). The message
    names the epoch and step, the first non-finite value and the likely causes."""


class CheckpointError(FundlError):
    """No usable checkpoint: every candidate is missing, partial, empty or fails its checksums.
    The message names each file and what is wrong with it."""


class DirectoryInUseError(FundlError):
    """A run directory is locked by another runner (its ``.lock`` file names the PID and host)."""


class CorruptFileError(FundlError):
    """A file cannot be read as a fundl.io file: empty, truncated, damaged (its structure or
    a checksum fails) or of an unknown format. The message names the file and the fault."""


class NotFundlFileError(FundlError):
    """A readable file that fundl.io did not write: a PyTorch checkpoint (zip or pickle), or a
    safetensors file without fundl.io's metadata. PyTorch state_dicts go through fundl.interop."""


def where(name):
    """Prefix for messages: ``"conv: "`` or ``"Conv 'features/conv1': "``."""
    return f"{name}: " if name else ""

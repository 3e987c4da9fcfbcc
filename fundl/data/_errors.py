"""Errors raised when a data set cannot be found or cannot be read.

Both subclass :class:`fundl.FundlError` (itself a ``ValueError``), so
``except fundl.FundlError`` catches every user-facing fundl error.
"""
from __future__ import annotations

from .._errors import DataError, FundlError


class DataUnavailableError(FundlError):
    """No source holds the requested data set.

    The message lists every source that was tried (with what was missing in
    each) and what the user can do: pass ``data_dir``, set ``FUNDL_DATA_DIR``,
    or prepare the TFDS copy once on a machine with network access.
    """


class CorruptDataError(DataError):
    """A data file exists but cannot be read as what it claims to be.

    The message names the file and what is wrong: bad gzip stream, bad magic
    number, truncated (expected N bytes, got M), images/labels count mismatch,
    label out of range (the value and its index). A :class:`fundl.DataError`.
    """

"""Shape arithmetic for convolutions and pooling (pure Python ints, no JAX).

All formulas follow PyTorch's ``torch.nn.Conv*d`` / ``MaxPool*d`` docs, so a
layer ported from PyTorch gets the same sizes. Sizes are per spatial
dimension; a function given an int returns an int, given a tuple returns a
tuple.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from ._errors import ConfigError, ShapeError
from ._util import ntuple

__all__ = [
    "ReceptiveField",
    "conv_output_size",
    "conv_transpose_output_size",
    "receptive_field",
    "resolve_padding",
]


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def _is_int(v) -> bool:
    return not isinstance(v, bool) and (isinstance(v, int) or (
        hasattr(v, "__index__") and not isinstance(v, (Sequence, Mapping))))


def _pairs(padding, n: int, where: str, arg: str = "padding") -> tuple:
    """int | per-dim ints | per-dim (lo, hi) pairs  ->  n (lo, hi) pairs (ints >= 0)."""
    p = _prefix(where)
    if _is_int(padding):
        entries = [int(padding)] * n
    elif isinstance(padding, Sequence) and not isinstance(padding, str):
        entries = list(padding)
        # With one spatial dim a flat (lo, hi) is unambiguous: a per-dim tuple
        # would have length 1.
        if n == 1 and len(entries) == 2 and all(_is_int(e) for e in entries):
            entries = [tuple(entries)]
        if len(entries) != n:
            raise ConfigError(
                f"{p}{arg} must be an int, a sequence of {n} ints or of {n} (lo, hi) pairs; "
                f"got {padding!r}")
    else:
        raise ConfigError(
            f"{p}{arg} must be an int, a sequence of {n} ints, {n} (lo, hi) pairs, "
            f"'SAME' or 'VALID'; got {padding!r}")
    out = []
    for e in entries:
        if _is_int(e):
            pair = (int(e), int(e))
        elif (isinstance(e, Sequence) and not isinstance(e, str) and len(e) == 2
              and all(_is_int(v) for v in e)):
            pair = (int(e[0]), int(e[1]))
        else:
            raise ConfigError(
                f"{p}{arg} entries must be ints or (lo, hi) pairs of ints; got {padding!r}")
        if pair[0] < 0 or pair[1] < 0:
            raise ConfigError(f"{p}{arg} must be >= 0; got {padding!r}")
        out.append(pair)
    return tuple(out)


def _spatial_rank(*args) -> int:
    """Rank implied by the first tuple-valued argument (1 if all are ints)."""
    for a in args:
        if isinstance(a, Sequence) and not isinstance(a, str):
            return len(a)
    return 1


def resolve_padding(padding, kernel_size, stride=1, dilation=1, spatial_shape=None,
                    where: str = "") -> tuple:
    """Normalise a padding spec into one ``(lo, hi)`` pair per spatial dim.

    Args:
      padding: an int (same on both sides of every dim), a sequence of one int
        per dim, a sequence of one ``(lo, hi)`` pair per dim, or the strings
        ``'SAME'`` / ``'VALID'`` (case-insensitive).  ``'SAME'`` means output
        size ``ceil(L / stride)`` exactly like ``lax``/TensorFlow: the total
        padding ``max((out - 1) * stride + d * (k - 1) + 1 - L, 0)`` is split
        with the odd pixel on the high side.
      kernel_size, stride, dilation: an int or one int per spatial dim.
      spatial_shape: the input's spatial sizes; needed only for ``'SAME'``
        with ``stride > 1`` (it also fixes the spatial rank).
      where: function or layer name for error messages.

    Returns:
      A tuple of ``(lo, hi)`` int pairs, one per spatial dim.

    Raises:
      ConfigError: negative or malformed padding, unknown string.

    >>> resolve_padding('same', 3, 2, 1, (5,))
    ((1, 1),)
    >>> resolve_padding(1, (3, 3), 1, 1, (8, 8))
    ((1, 1), (1, 1))
    """
    if spatial_shape is not None:
        n = len(spatial_shape)
    elif any(isinstance(a, Sequence) for a in (kernel_size, stride, dilation)):
        n = _spatial_rank(kernel_size, stride, dilation)
    elif isinstance(padding, Sequence) and not isinstance(padding, str):
        # Only padding tells the rank; a flat pair of ints is one (lo, hi).
        n = 1 if len(padding) == 2 and all(_is_int(e) for e in padding) else len(padding)
    else:
        n = 1
    k = ntuple(kernel_size, n, "kernel_size", where, minimum=1)
    s = ntuple(stride, n, "stride", where, minimum=1)
    d = ntuple(dilation, n, "dilation", where, minimum=1)
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0),) * n
        if mode != "SAME":
            raise ConfigError(f"{_prefix(where)}padding string must be 'SAME' or 'VALID'; "
                              f"got {padding!r}")
        if spatial_shape is None:
            if any(si != 1 for si in s):
                raise ConfigError(f"{_prefix(where)}padding='SAME' with stride {s} needs "
                                  "spatial_shape")
            spatial_shape = (1,) * n  # with stride 1 the input size cancels out
        pads = []
        for L, ki, si, di in zip(spatial_shape, k, s, d):
            out = -(-int(L) // si)
            total = max((out - 1) * si + di * (ki - 1) + 1 - int(L), 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    return _pairs(padding, n, where)


def _out_1d(L, k, s, lo, hi, d, ceil_mode, where, dim_note=""):
    """PyTorch's pooling_output_shape / conv output formula for one dim."""
    eff = d * (k - 1) + 1
    num = L + lo + hi - eff
    out = (-(-num // s) if ceil_mode else num // s) + 1
    # PyTorch: in ceil mode the last window must start inside the input or the
    # left padding, otherwise it would only see right padding.
    # (A window may still hang past the input's right edge, as in PyTorch.)
    if ceil_mode and out >= 1 and (out - 1) * s >= L + lo:
        out -= 1
    if out < 1:
        raise ShapeError(
            f"{_prefix(where)}input size {L}{dim_note} with padding {(lo, hi) if lo != hi else lo} "
            f"is smaller than the effective kernel size d*(k-1)+1 = {eff} "
            f"(kernel_size={k}, dilation={d})")
    return out


def conv_output_size(input_size, kernel_size, stride=1, padding=0, dilation=1,
                     ceil_mode=False):
    """Output spatial size of a convolution or pooling window.

    ``floor((L + lo + hi - d*(k-1) - 1) / s) + 1`` (``ceil`` with
    ``ceil_mode``), i.e. PyTorch's formula with ``lo = hi = padding`` in the
    symmetric case.  With ``ceil_mode`` PyTorch's rule applies: a last window
    that would start in the right padding is dropped.

    Args:
      input_size: an int, or a tuple of spatial sizes.
      kernel_size, stride, dilation: an int or one int per spatial dim.
      padding: an int, one int per dim, one ``(lo, hi)`` pair per dim, or
        ``'SAME'`` / ``'VALID'`` (see :func:`resolve_padding`).  For an int
        ``input_size`` a flat ``(lo, hi)`` pair is also accepted.
      ceil_mode: round up instead of down (pooling).

    Returns:
      An int for an int ``input_size``, else a tuple of ints.

    Raises:
      ShapeError: if any output size would be < 1.
      ConfigError: bad stride/dilation/kernel/padding values.

    >>> conv_output_size(32, 3, stride=2, padding=1)
    16
    >>> conv_output_size((5, 6), 2, stride=2, ceil_mode=True)
    (3, 3)
    """
    scalar = _is_int(input_size)
    sizes = (int(input_size),) if scalar else tuple(int(v) for v in input_size)
    n = len(sizes)
    if any(v < 0 for v in sizes):
        raise ShapeError(f"conv_output_size: input_size must be >= 0; got {input_size!r}")
    w = "conv_output_size"
    k = ntuple(kernel_size, n, "kernel_size", w, minimum=1)
    s = ntuple(stride, n, "stride", w, minimum=1)
    d = ntuple(dilation, n, "dilation", w, minimum=1)
    pads = resolve_padding(padding, k, s, d, sizes, w)
    out = tuple(
        _out_1d(L, ki, si, lo, hi, di, ceil_mode, w, "" if scalar else f" (dim {i})")
        for i, (L, ki, si, (lo, hi), di) in enumerate(zip(sizes, k, s, pads, d)))
    return out[0] if scalar else out


def conv_transpose_output_size(input_size, kernel_size, stride=1, padding=0,
                               output_padding=0, dilation=1):
    """Output spatial size of a transposed convolution (PyTorch formula).

    ``(L - 1) * s - 2p + d*(k-1) + output_padding + 1``; with a ``(lo, hi)``
    pair ``2p`` becomes ``lo + hi``.

    Args:
      input_size: an int, or a tuple of spatial sizes.
      kernel_size, stride, dilation: an int or one int per spatial dim.
      padding: an int, one int per dim, or one ``(lo, hi)`` pair per dim
        (amount cropped from each end of the full output).
      output_padding: int or per-dim ints, each ``< max(stride, dilation)``
        (as PyTorch requires).

    Returns:
      An int for an int ``input_size``, else a tuple of ints.

    Raises:
      ShapeError: if any output size would be < 1.
      ConfigError: bad hyper-parameters.

    >>> conv_transpose_output_size(16, 4, stride=2, padding=1)
    32
    """
    scalar = _is_int(input_size)
    sizes = (int(input_size),) if scalar else tuple(int(v) for v in input_size)
    n = len(sizes)
    w = "conv_transpose_output_size"
    k = ntuple(kernel_size, n, "kernel_size", w, minimum=1)
    s = ntuple(stride, n, "stride", w, minimum=1)
    d = ntuple(dilation, n, "dilation", w, minimum=1)
    op = ntuple(output_padding, n, "output_padding", w, minimum=0)
    pads = _pairs(padding, n, w)
    for opi, si, di in zip(op, s, d):
        if opi >= max(si, di):
            raise ConfigError(f"{w}: output_padding must be smaller than either stride or dilation; "
                              f"got output_padding={output_padding!r}, stride={stride!r}, "
                              f"dilation={dilation!r}")
    out = tuple((L - 1) * si - lo - hi + di * (ki - 1) + opi + 1
                for L, ki, si, (lo, hi), opi, di in zip(sizes, k, s, pads, op, d))
    if any(o < 1 for o in out):
        raise ShapeError(f"{w}: output size would be {out} < 1 for input size "
                         f"{input_size!r}, kernel_size={kernel_size!r}, stride={stride!r}, "
                         f"padding={padding!r}, dilation={dilation!r}")
    return out[0] if scalar else out


class ReceptiveField(NamedTuple):
    """Receptive field of a conv stack along one spatial dim.

    Attributes:
      size: input pixels seen by one output pixel.
      jump: distance in input pixels between adjacent output pixels (the
        product of the strides).
    """
    size: int
    jump: int


def receptive_field(layers) -> ReceptiveField:
    """Receptive field and total stride of a stack of convs / pools (one dim).

    Uses the standard recurrence, starting from ``r = j = 1``::

        r_out = r_in + d * (k - 1) * j_in
        j_out = j_in * s

    Args:
      layers: a sequence of ``(kernel_size, stride, dilation)`` tuples
        (``stride``/``dilation`` may be omitted, defaulting to 1) or dicts
        with keys ``kernel_size`` and optionally ``stride``, ``dilation``.

    Returns:
      ``ReceptiveField(size, jump)``.

    >>> receptive_field([(3, 1, 1)] * 3)
    ReceptiveField(size=7, jump=1)
    >>> receptive_field([(3, 2, 1), {"kernel_size": 3}])
    ReceptiveField(size=7, jump=2)
    """
    r, j = 1, 1
    for i, layer in enumerate(layers):
        if isinstance(layer, Mapping):
            unknown = set(layer) - {"kernel_size", "stride", "dilation"}
            if "kernel_size" not in layer or unknown:
                raise ConfigError(
                    f"receptive_field: layer {i} dict needs key 'kernel_size' and may have "
                    f"'stride', 'dilation'; got {dict(layer)!r}")
            k, s, d = layer["kernel_size"], layer.get("stride", 1), layer.get("dilation", 1)
        elif isinstance(layer, Sequence) and 1 <= len(layer) <= 3:
            k, s, d = (tuple(layer) + (1, 1))[:3]
        else:
            raise ConfigError(f"receptive_field: layer {i} must be a (kernel_size, stride, "
                              f"dilation) tuple or a dict; got {layer!r}")
        k, s, d = (ntuple(v, 1, name, f"receptive_field: layer {i}", minimum=1)[0]
                   for v, name in ((k, "kernel_size"), (s, "stride"), (d, "dilation")))
        r += d * (k - 1) * j
        j *= s
    return ReceptiveField(r, j)

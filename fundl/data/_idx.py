"""Reader for the IDX format of MNIST and Fashion-MNIST (gzip-compressed or raw).

An IDX file is a 4-byte magic number ``00 00 08 D`` (unsigned bytes, ``D``
dims), ``D`` big-endian uint32 sizes, then the data in C order. Images are
``idx3`` (``[N, rows, cols]``), labels ``idx1`` (``[N]``). Every check names
the file: a bad gzip stream, a bad magic number, a file shorter or longer than
its header promises, images and labels that disagree in count, a label out
of range.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .._errors import ConfigError
from ._dataset import Dataset
from ._errors import CorruptDataError, DataUnavailableError

# Stems of the four files, as distributed by LeCun et al. and Zalando.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08
_MAX_BYTES = 1 << 34  # 16 GiB: a header promising more is garbage, not a data set
_CHUNK = 1 << 24


def find_idx_file(directory, stem: str) -> Path | None:
    """``directory/stem`` or ``directory/stem.gz``, whichever exists (raw first)."""
    for name in (stem, stem + ".gz"):
        path = Path(directory) / name
        if path.is_file():
            return path
    return None


def idx_paths(directory, split: str, prefix: str = ""):
    """The (images, labels) paths of a split in ``directory``; ``None`` where absent."""
    images, labels = IDX_FILES[split]
    return find_idx_file(directory, prefix + images), find_idx_file(directory, prefix + labels)


def _read_into(f, out: np.ndarray) -> int:
    """Fill ``out`` (uint8, 1-d) from ``f``; returns the number of bytes read."""
    view, got = memoryview(out), 0
    while got < len(view):
        n = f.readinto(view[got:got + _CHUNK])
        if not n:
            break
        got += n
    return got


def read_idx(path, ndim: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes with ``ndim`` dims.

    Args:
      path: the file, gzip-compressed or raw (told apart by its content, not
        its name, so a ``.gz`` that a browser already decompressed still reads).
      ndim: dims the file must have: 3 for images, 1 for labels.

    Returns:
      ``uint8`` array with the shape in the file's header.

    Raises:
      CorruptDataError: naming ``path`` and what is wrong.
    """
    path = Path(path)
    with open(path, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        kind = "gzip-compressed IDX file" if compressed else "IDX file"
        f = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        try:
            header = f.read(4)
            if len(header) < 4:
                raise CorruptDataError(f"{path}: truncated {kind}: expected a 4-byte magic number, "
                                       f"got {len(header)} bytes")
            want = bytes([0, 0, _UBYTE, ndim])
            if header != want:
                hint = ""
                if header[:2] == b"\x00\x00" and header[2] == _UBYTE and header[3] in (1, 3):
                    hint = (f" (a {'label' if header[3] == 1 else 'image'} file where "
                            f"{'an image' if ndim == 3 else 'a label'} file was expected?)")
                elif header[:2] == b"\x00\x00" and header[2] != _UBYTE:
                    hint = f" (data type 0x{header[2]:02X}; only unsigned bytes, 0x08, are supported)"
                raise CorruptDataError(f"{path}: bad magic number 0x{header.hex().upper()}, expected "
                                       f"0x{want.hex().upper()} (IDX, unsigned bytes, {ndim} dims){hint}")
            size_bytes = f.read(4 * ndim)
            if len(size_bytes) < 4 * ndim:
                raise CorruptDataError(f"{path}: truncated {kind}: header ends after "
                                       f"{4 + len(size_bytes)} bytes, expected {4 + 4 * ndim}")
            dims = struct.unpack(f">{ndim}I", size_bytes)
            n_data = math.prod(dims)
            n_total = 4 + 4 * ndim + n_data
            if not compressed:
                actual = os.fstat(raw.fileno()).st_size
                if actual != n_total:
                    what = "truncated" if actual < n_total else "longer than its header says"
                    raise CorruptDataError(f"{path}: {what}: header gives dims {list(dims)}, so "
                                           f"expected {n_total:,} bytes, got {actual:,}")
            elif n_data > _MAX_BYTES:
                raise CorruptDataError(f"{path}: implausible header: dims {list(dims)} would be "
                                       f"{n_data:,} bytes")
            data = np.empty(n_data, np.uint8)
            got = _read_into(f, data)
            if got < n_data:
                raise CorruptDataError(f"{path}: truncated {kind}: header gives dims {list(dims)}, so "
                                       f"expected {n_total:,} bytes (decompressed), "
                                       f"got {4 + 4 * ndim + got:,}")
            if compressed and f.read(1):
                raise CorruptDataError(f"{path}: longer than its header says: dims {list(dims)} "
                                       f"give {n_total:,} bytes (decompressed), but more data follows")
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise CorruptDataError(f"{path}: bad gzip stream ({type(e).__name__}: {e}); "
                                   f"the file is truncated or damaged, fetch it again") from e
    return data.reshape(dims)


def load_idx(directory, split: str = "train", *, prefix: str = "", name: str = "mnist",
             num_classes: int = 10) -> Dataset:
    """Load one split of MNIST-style IDX files from a directory.

    Reads ``{prefix}train-images-idx3-ubyte`` and ``{prefix}train-labels-idx1-ubyte``
    (``t10k-...`` for ``split='test'``), each raw or with ``.gz``.

    Args:
      directory: folder holding the files.
      split: ``'train'`` or ``'test'``.
      prefix: prepended to the standard file names (e.g. ``'fashion-'``).
      name: recorded in the returned :class:`Dataset` (IDX files do not say
        which data set they hold).
      num_classes: labels must lie in ``[0, num_classes)``.

    Returns:
      :class:`Dataset` with ``x: [N, rows, cols, 1] uint8``, ``y: [N] int32``.

    Raises:
      DataUnavailableError: a file is missing (the message names it).
      CorruptDataError: a file is damaged (bad gzip, bad magic, truncated,
        count mismatch, label out of range); the message names the file.

    Example:
      >>> from fundl.data import load_idx
      >>> ds = load_idx("/work/shared/data/mnist", "test")  # doctest: +SKIP
      >>> ds.x.shape, ds.x.dtype, ds.y[:3]                  # doctest: +SKIP
      ((10000, 28, 28, 1), dtype('uint8'), array([7, 2, 1], dtype=int32))
    """
    if split not in IDX_FILES:
        raise ConfigError(f"load_idx: split must be 'train' or 'test'; got split={split!r}")
    directory = Path(directory)
    images_path, labels_path = idx_paths(directory, split, prefix)
    missing = [prefix + stem + "[.gz]" for stem, p in zip(IDX_FILES[split], (images_path, labels_path))
               if p is None]
    if missing:
        four = ", ".join(prefix + s + ".gz" for pair in IDX_FILES.values() for s in pair)
        raise DataUnavailableError(
            f"load_idx: {directory} lacks {' and '.join(missing)} (split={split!r}, prefix={prefix!r}). "
            f"Put the four IDX files ({four}) in one directory and pass it.")
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise CorruptDataError(f"{images_path} holds {len(images):,} images but {labels_path} holds "
                               f"{len(labels):,} labels; the files must come from the same split")
    if labels.size and labels.max() >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise CorruptDataError(f"{labels_path}: label {int(labels[bad])} at index {bad} is out of range "
                               f"[0, {num_classes - 1}] (num_classes={num_classes})")
    return Dataset(images[..., None], labels.astype(np.int32), name, num_classes)

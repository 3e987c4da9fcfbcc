"""``load(name, split)``: find a data set in local sources, in a fixed order; never download."""
from __future__ import annotations

import os
from pathlib import Path

from .._errors import ConfigError
from ._cifar_pickle import CIFAR10_DIR, load_cifar10_pickle
from ._dataset import Dataset
from ._errors import DataUnavailableError
from ._idx import IDX_FILES, idx_paths, load_idx
from ._sklearn import load_digits_split
from ._tfds import default_tfds_dir, prepare_command, try_load_tfds

ENV_VAR = "FUNDL_DATA_DIR"
# name -> (number of classes, the source name of its local file format)
DATASETS = {
    "mnist": (10, "idx"),
    "fashion_mnist": (10, "idx"),
    "cifar10": (10, "pickle"),
    "digits": (10, "sklearn"),
}
SPLITS = ("train", "test")


def _try_idx(name, split, directory):
    """IDX files in ``directory/name`` or ``directory``: a Dataset or why not."""
    reasons = []
    for d in (Path(directory) / name, Path(directory)):
        images, labels = idx_paths(d, split)
        if images and labels:
            return load_idx(d, split, name=name, num_classes=DATASETS[name][0])
        if images or labels:
            have, lack = (images, IDX_FILES[split][1]) if images else (labels, IDX_FILES[split][0])
            reasons.append(f"{d} has {have.name} but lacks {lack}[.gz]")
    stems = " and ".join(s + "[.gz]" for s in IDX_FILES[split])
    return "; ".join(reasons) or f"no {stems} in {Path(directory) / name} or {directory}"


def _locations(data_dir):
    """The user's directories, in order: ``data_dir``, then ``$FUNDL_DATA_DIR``."""
    env = os.environ.get(ENV_VAR)
    return [("data_dir", data_dir), (f"${ENV_VAR}", env)]


def _advice(name: str, split: str) -> str:
    if DATASETS[name][1] == "idx":
        files = ", ".join(s + ".gz" for pair in IDX_FILES.values() for s in pair)
        local = (f"pass data_dir=DIR (--data-dir DIR in the experiment runners) where DIR or DIR/{name} "
                 f"contains {files} (raw, un-gzipped files work too)")
    else:
        local = (f"pass data_dir=DIR (--data-dir DIR in the experiment runners) where DIR contains "
                 f"{CIFAR10_DIR}/ (data_batch_1..5, test_batch), extracted from cifar-10-python.tar.gz")
    return (
        "Nothing is downloaded at run time. Do one of:\n"
        f"  * {local};\n"
        f"  * or set {ENV_VAR}=DIR (same layout);\n"
        f"  * or, once, on a machine with network access and TensorFlow installed, prepare the TFDS copy "
        f"in array_record format:\n      {prepare_command(name)}\n"
        f"    then copy DIR here and pass data_dir=DIR or set TFDS_DATA_DIR=DIR "
        f"(reading it needs neither TensorFlow nor network).")


def load(name: str, split: str = "train", *, data_dir=None, source: str = "auto") -> Dataset:
    """Load one split of a data set from local files; nothing is ever downloaded.

    Sources, tried in this order with ``source='auto'`` (the first that has the
    data wins; a damaged file raises rather than being skipped):

    * ``mnist``, ``fashion_mnist``: IDX files (``train-images-idx3-ubyte[.gz]``,
      ...) in ``data_dir/name`` or ``data_dir``; a TFDS copy prepared under
      ``data_dir``; the same two in ``$FUNDL_DATA_DIR``; a TFDS copy under TFDS's
      default data dir (``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``).
      IDX files do not say which data set they hold: keep MNIST and
      Fashion-MNIST in ``DIR/mnist`` and ``DIR/fashion_mnist``.
    * ``cifar10``: the python-pickle ``cifar-10-batches-py`` directory in
      ``data_dir`` (or ``data_dir`` itself); a TFDS copy under ``data_dir``; the
      same two in ``$FUNDL_DATA_DIR``; TFDS's default data dir.
    * ``digits``: scikit-learn's 1,797 8x8 digits (shipped with sklearn), split
      1,437/360 with ``train_test_split(test_size=360, stratify=y, random_state=0)``,
      as in ``experiments/quickstart.py``. ``data_dir`` is ignored.

    TFDS copies are read with ``tfds.data_source(..., download=False)`` (array_record
    files, no TensorFlow needed) and keep TFDS's stored order, which differs from
    the IDX files' order; a copy prepared in TFRecord format (plain ``tfds.load``)
    cannot be read without TensorFlow and is reported as such.

    Args:
      name: ``'mnist'``, ``'fashion_mnist'``, ``'cifar10'`` or ``'digits'``.
      split: ``'train'`` or ``'test'``.
      data_dir: a directory to look in first (``str`` or ``Path``), optional.
      source: ``'auto'``, or one source only: ``'idx'`` (mnist, fashion_mnist),
        ``'pickle'`` (cifar10), ``'tfds'`` (mnist, fashion_mnist, cifar10),
        ``'sklearn'`` (digits).

    Returns:
      :class:`Dataset`: ``x: [N, H, W, C] uint8`` as stored (28x28x1 for MNIST,
      32x32x3 for CIFAR-10, 8x8x1 with values 0..16 for digits), ``y: [N] int32``.

    Raises:
      ConfigError: unknown ``name``, ``split`` or ``source``; a ``data_dir`` that is not a path.
      DataUnavailableError: no source has it; the message lists every source
        tried and what to do.
      CorruptDataError: a file was found but is damaged (the message names it).

    Example:
      >>> ds = load("digits", "test")
      >>> ds
      Dataset(name='digits', x=uint8[360, 8, 8, 1], y=int32[360], num_classes=10)
      >>> train = load("mnist", data_dir="/work/shared/data")   # doctest: +SKIP
    """
    if name not in DATASETS:
        raise ConfigError(f"load: unknown data set name={name!r}; expected one of {sorted(DATASETS)}")
    if split not in SPLITS:
        raise ConfigError(f"load: split must be 'train' or 'test'; got split={split!r}")
    num_classes, native = DATASETS[name]
    allowed = ("auto", native) if native == "sklearn" else ("auto", native, "tfds")
    if source not in allowed:
        raise ConfigError(f"load: source={source!r} is not available for {name!r}; "
                          f"expected one of {list(allowed)}")
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise ConfigError(f"load: data_dir must be a directory path (str or pathlib.Path) or "
                          f"None; got {type(data_dir).__name__} {data_dir!r}"[:200])
    if name == "digits":
        return load_digits_split(split)

    tried = []
    tfds_dirs = set()

    def attempt(what: str, result):
        if isinstance(result, Dataset):
            return result
        tried.append(f"{what}: {result}")
        return None

    for label, directory in _locations(data_dir):
        if directory is None:
            tried.append(f"{label}: not {'given' if label == 'data_dir' else 'set'}")
            continue
        directory = Path(directory).expanduser()
        if source in ("auto", native):
            reader = _try_idx if native == "idx" else (lambda n, s, d: load_cifar10_pickle(d, s))
            found = attempt(f"{'IDX files' if native == 'idx' else CIFAR10_DIR} in {label}",
                            reader(name, split, directory))
            if found is not None:
                return found._replace(name=name)
        if source in ("auto", "tfds"):
            tfds_dirs.add(directory.resolve())
            found = attempt(f"TFDS copy in {label}", try_load_tfds(name, split, directory, num_classes))
            if found is not None:
                return found
    if source in ("auto", "tfds"):
        default = default_tfds_dir()
        if default.resolve() in tfds_dirs:
            tried.append(f"TFDS default data dir {default}: already tried above")
        else:
            found = attempt("TFDS default data dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)",
                            try_load_tfds(name, split, default, num_classes))
            if found is not None:
                return found
    lines = "\n".join(f"  {i}. {t}" for i, t in enumerate(tried, 1))
    raise DataUnavailableError(f"load({name!r}, split={split!r}, source={source!r}): no local source "
                               f"has this data set. Tried, in order:\n{lines}\n{_advice(name, split)}")

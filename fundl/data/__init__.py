"""Data: local loaders (never downloading), standardisation, batching, prefetch, augmentation.

Layout: images are channels last, ``x: [N, H, W, C]``, stored as ``uint8``;
labels ``y: [N]`` ``int32``. Standardise on the fly with the training set's
statistics; shuffle on the host with an order fixed by ``(seed, epoch)``.

Public surface:
  * :func:`load` (``'mnist'``, ``'fashion_mnist'``, ``'cifar10'``, ``'digits'``)
    and :func:`load_idx`, returning a :class:`Dataset`;
  * :func:`standardizer` -> :class:`Standardizer`;
  * :func:`select_classes` (a subset by label, relabelled), :func:`parse_classes`;
  * :func:`batches`, :func:`num_batches`, :func:`prefetch_to_device`;
  * :func:`random_crop`, :func:`random_flip`, :func:`augment_cifar`;
  * errors :class:`DataUnavailableError`, :class:`CorruptDataError`
    (both :class:`fundl.FundlError`).

Example:
  >>> import fundl.data as D
  >>> train, test = D.load("digits", "train"), D.load("digits", "test")
  >>> norm = D.standardizer(train.x)
  >>> xb, yb = next(D.batches(norm(train.x), train.y, 32, seed=0, epoch=0))
  >>> xb.shape, xb.dtype, yb.dtype
  ((32, 8, 8, 1), dtype('float32'), dtype('int32'))
"""
from ._augment import augment_cifar as augment_cifar
from ._augment import random_crop as random_crop
from ._augment import random_flip as random_flip
from ._dataset import Dataset as Dataset
from ._errors import CorruptDataError as CorruptDataError
from ._errors import DataUnavailableError as DataUnavailableError
from ._idx import load_idx as load_idx
from ._iterator import batches as batches
from ._iterator import num_batches as num_batches
from ._load import load as load
from ._prefetch import prefetch_to_device as prefetch_to_device
from ._select import parse_classes as parse_classes
from ._select import select_classes as select_classes
from ._standardize import Standardizer as Standardizer
from ._standardize import standardizer as standardizer

__all__ = [
    "Dataset", "load", "load_idx", "DataUnavailableError", "CorruptDataError",
    "Standardizer", "standardizer", "batches", "num_batches", "prefetch_to_device",
    "random_crop", "random_flip", "augment_cifar", "select_classes", "parse_classes",
]

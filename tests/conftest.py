"""Fixtures shared by the data and experiment tests: local TFDS copies, no downloads."""
from __future__ import annotations

import io

import numpy as np
import pytest


@pytest.fixture
def no_download(monkeypatch):
    """Any attempt by TFDS to download or prepare fails the test."""
    import tensorflow_datasets as tfds

    def refuse(*args, **kwargs):
        raise AssertionError("fundl.data tried to download/prepare a TFDS data set")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refuse)


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(buf, format="png")
    return buf.getvalue()


def _fake_images(n, shape, offset):
    """Image i is filled with value offset + i (distinct per example), label i % 10."""
    return [np.full(shape, offset + i, np.uint8) for i in range(n)], [i % 10 for i in range(n)]


TFDS_SIZES = {"train": 12, "test": 7}


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """A TFDS data dir with real 'mnist' and 'cifar10' array_record copies of a few fake images.

    ``tfds.testing.mock_data`` does reach ``tfds.data_source`` without TensorFlow,
    but its fake source breaks the batched ``__getitems__`` (an unbound mock
    method) and has no files on disk, so it cannot exercise the reader. Instead
    TFDS's own MNIST / Cifar10 builders write genuine array_record files and
    ``dataset_info.json`` here, with their downloads replaced by generated
    images handed over already PNG-encoded (encoding is the one step that would
    need TensorFlow).
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import cifar, mnist

    def split_generators(shape, extra):
        def _split_generators(self, dl_manager):
            def gen(split, offset):
                for i, (img, label) in enumerate(zip(*_fake_images(TFDS_SIZES[split], shape, offset))):
                    yield i, {"image": _png(img), "label": label, **extra(i)}
            return {"train": gen("train", 0), "test": gen("test", 100)}
        return _split_generators

    class LocalMnist(mnist.MNIST, skip_registration=True):
        name = "mnist"
        _split_generators = split_generators((28, 28, 1), lambda i: {})

    class LocalCifar10(cifar.Cifar10, skip_registration=True):
        name = "cifar10"
        _split_generators = split_generators((32, 32, 3), lambda i: {"id": f"train_{i:05d}"})

    root = tmp_path_factory.mktemp("tfds_prepared")
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    for builder in (LocalMnist, LocalCifar10):
        builder(data_dir=str(root), file_format="array_record").download_and_prepare(download_config=config)
    return root

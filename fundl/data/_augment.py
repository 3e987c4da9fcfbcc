"""Per-example random augmentations for ``[N, H, W, C]`` batches, jitted, on device.

Each example draws its own crop offset and flip from ``key``; the same key
gives the same augmentation. ``x`` keeps its dtype (uint8 or float).
"""
from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp

from .._errors import ConfigError, ShapeError
from .._keys import as_key


def _check_nhwc(where: str, x):
    if x.ndim != 4:
        raise ShapeError(f"{where}: x must be [N, H, W, C] (rank 4); got shape {tuple(x.shape)}."
                         f"{' Add a channel axis, e.g. x[..., None].' if x.ndim == 3 else ''}")


@functools.partial(jax.jit, static_argnames="padding")
def _random_crop(key, x, padding):
    n, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    ky, kx = jax.random.split(key)
    top = jax.random.randint(ky, (n,), 0, 2 * padding + 1)
    left = jax.random.randint(kx, (n,), 0, 2 * padding + 1)
    crop = lambda img, t, l: jax.lax.dynamic_slice(img, (t, l, 0), (h, w, c))
    return jax.vmap(crop)(padded, top, left)


def random_crop(key, x, padding: int = 4):
    """Zero-pad each image by ``padding`` pixels per side, then crop it back at a random offset.

    The CIFAR recipe (pad 4, crop 32x32): every example draws its own offset,
    uniform over the ``(2 * padding + 1) ** 2`` windows of the padded image.

    Args:
      key: a ``jax.random`` key or an int seed.
      x: ``[N, H, W, C]`` images (any dtype; the padding is zeros).
      padding: non-negative int, pixels added on each side.

    Returns:
      ``[N, H, W, C]``, same dtype as ``x``.

    Raises:
      ShapeError: ``x`` is not rank 4.
      ConfigError: ``padding`` is not a non-negative int.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> random_crop(jax.random.key(0), jnp.ones((8, 32, 32, 3)), padding=4).shape
      (8, 32, 32, 3)
    """
    try:
        padding = operator.index(padding)
    except TypeError:
        raise ConfigError(f"random_crop: padding must be an int; got padding={padding!r}") from None
    if padding < 0:
        raise ConfigError(f"random_crop: padding must be >= 0; got padding={padding}")
    _check_nhwc("random_crop", x)
    return _random_crop(as_key(key, "random_crop"), x, padding)


@jax.jit
def _random_flip(key, x):
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0],))
    return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


def random_flip(key, x):
    """Mirror each image left-right (along W) with probability 1/2.

    With the same ``key`` and batch size, the same examples are flipped, so
    ``random_flip(k, random_flip(k, x)) == x``.

    Args:
      key: a ``jax.random`` key or an int seed.
      x: ``[N, H, W, C]`` images.

    Returns:
      ``[N, H, W, C]``, same dtype as ``x``.

    Raises:
      ShapeError: ``x`` is not rank 4.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jnp.arange(3.0).reshape(1, 1, 3, 1)
      >>> sorted({tuple(random_flip(jax.random.key(s), x).ravel().tolist()) for s in range(8)})
      [(0.0, 1.0, 2.0), (2.0, 1.0, 0.0)]
    """
    _check_nhwc("random_flip", x)
    return _random_flip(as_key(key, "random_flip"), x)


@jax.jit
def _augment_cifar(key, x):
    k_crop, k_flip = jax.random.split(key)
    return _random_flip(k_flip, _random_crop(k_crop, x, 4))


def augment_cifar(key, x):
    """The standard CIFAR training augmentation: :func:`random_crop` (padding 4), then :func:`random_flip`.

    ``key`` is split once: the first half drives the crops, the second the flips.

    Args:
      key: a ``jax.random`` key or an int seed.
      x: ``[N, H, W, C]`` images, e.g. ``[N, 32, 32, 3]``.

    Returns:
      ``[N, H, W, C]``, same dtype as ``x``.

    Raises:
      ShapeError: ``x`` is not rank 4.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> augment_cifar(jax.random.key(0), jnp.zeros((2, 32, 32, 3), jnp.uint8)).dtype
      dtype('uint8')
    """
    _check_nhwc("augment_cifar", x)
    return _augment_cifar(as_key(key, "augment_cifar"), x)

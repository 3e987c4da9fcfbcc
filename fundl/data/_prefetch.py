"""Overlap host-side batch preparation and host-to-device copies with computation."""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator

import jax

from .._errors import ConfigError

_POLL_S = 0.05  # how often a blocked producer checks whether the consumer has gone


class _Failure:
    """Carries an exception from the producer thread to the consumer."""

    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


def prefetch_to_device(iterator: Iterable, size: int = 2, *, sharding=None,
                       transform: Callable[[Any], Any] | None = None) -> Iterator:
    """Prepare batches ``size`` steps ahead in a background thread.

    A daemon thread pulls items from ``iterator``, applies ``transform`` (e.g.
    standardisation or augmentation on the host) and ``jax.device_put``s the
    result (to ``sharding`` if given, else the default device), keeping up to
    ``size`` items ready, so the accelerator does not wait for the host.

    The thread starts at the first ``next`` (a generator never iterated holds
    nothing). An exception raised by ``iterator`` or ``transform`` is re-raised, as the
    same exception object, by the ``next`` call that would have returned that
    item. Closing the returned generator (``break`` out of a ``for`` loop and
    let it go, or call ``.close()``) stops the thread: it finishes at most the
    item it is preparing and closes ``iterator`` if it has a ``close`` method.

    Args:
      iterator: any iterable of pytrees of arrays, e.g. :func:`batches`.
      size: how many prepared items to hold (>= 1); 2 suffices to overlap.
      sharding: a ``jax.sharding.Sharding`` (or a pytree of them matching each
        item) for ``jax.device_put``; ``None`` puts on the default device. For
        multi-process global arrays build them yourself from the local batch
        (``jax.make_array_from_process_local_data``) in ``transform``.
      transform: function applied to each item on the host before the copy;
        it receives the whole item (e.g. the ``(x, y)`` tuple).

    Returns:
      A generator of the same items as ``jax.Array`` pytrees, in order.

    Raises:
      ConfigError: ``size`` is not a positive int.

    Example:
      >>> import numpy as np
      >>> from fundl.data import batches, prefetch_to_device
      >>> x, y = np.zeros((10, 2, 2, 1), np.uint8), np.arange(10)
      >>> it = prefetch_to_device(batches(x, y, 4), transform=lambda b: (b[0] / 255.0, b[1]))
      >>> [(type(xb).__name__, xb.shape) for xb, yb in it]
      [('ArrayImpl', (4, 2, 2, 1)), ('ArrayImpl', (4, 2, 2, 1)), ('ArrayImpl', (2, 2, 2, 1))]
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"prefetch_to_device: size must be an int >= 1; got size={size!r}")
    source = iter(iterator)
    ready: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def offer(item) -> bool:
        """Put ``item`` unless the consumer has gone; False if it has."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in source:
                if stop.is_set():
                    break
                if transform is not None:
                    item = transform(item)
                item = jax.device_put(item, sharding)
                if not offer(item):
                    break
            else:
                offer(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, re-raised there
            offer(_Failure(e))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - nothing useful to do while shutting down
                    pass

    thread = threading.Thread(target=produce, name="fundl-prefetch", daemon=True)

    def consume():
        thread.start()
        try:
            while True:
                item = ready.get()
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            stop.set()
            while True:  # unblock the producer if it is waiting on a full queue
                try:
                    ready.get_nowait()
                except queue.Empty:
                    break
            thread.join()

    return consume()

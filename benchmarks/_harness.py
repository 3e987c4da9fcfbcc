"""Tiny benchmark harness: warm-up, interleaved timed rounds, a table.

Each contestant is a zero-argument callable that runs one step and returns
something to wait on (JAX arrays: ``jax.block_until_ready``; PyTorch is
synchronous on CPU). Rounds are interleaved (A, B, C, B, C, A, ...), so a
background process that steals a core for a while slows every contestant
alike and the *ratios* stay meaningful even when absolute times do not. A
short sleep before each sample lets the previous contestant's spinning
worker threads go idle.
"""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable


def machine() -> dict:
    """CPU model, core count, load average, Python and library versions, date."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        info["loadavg"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        pass
    for mod in ("jax", "jaxlib", "flax", "optax", "torch"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 (a missing peer is not an error here)
            info[mod] = "not installed"
    try:
        import jax
        info["jax_backend"] = jax.default_backend()
    except Exception:  # noqa: BLE001
        pass
    return info


def print_machine():
    """Print :func:`machine` as ``# key: value`` lines."""
    for k, v in machine().items():
        print(f"# {k}: {v}")


def _wait(out):
    try:
        import jax
        jax.block_until_ready(out)
    except ImportError:
        pass


def bench(contestants: dict[str, Callable[[], object]], *, warmup: int = 3, rounds: int = 20,
          inner: int = 1, gap: float = 0.02) -> dict[str, list[float]]:
    """Time each contestant in interleaved rounds.

    Args:
      contestants: ``{name: fn}``; ``fn()`` runs one step.
      warmup: untimed calls of each contestant first (compilation, caches).
      rounds: timed rounds; each round calls every contestant ``inner`` times
        in turn and records seconds per call. The order rotates by one
        contestant per round, so nobody always runs right after the same peer.
      inner: calls per timed sample (to average out very short steps).
      gap: seconds of sleep before each timed sample. The thread pools of
        PyTorch (OpenMP) and XLA keep spinning for a while after a step; on a
        2-core machine those spinning threads would slow whichever contestant
        runs next.

    Returns:
      ``{name: [seconds per call, one entry per round]}``.
    """
    for fn in contestants.values():
        for _ in range(warmup):
            _wait(fn())
    names = list(contestants)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = contestants[name]
            time.sleep(gap)
            t0 = time.perf_counter()
            for _ in range(inner):
                out = fn()
            _wait(out)
            times[name].append((time.perf_counter() - t0) / inner)
    return times


def table(times: dict[str, list[float]], *, title: str = "", unit: str = "ms") -> dict[str, float]:
    """Print median/min/max per contestant; return the medians (seconds)."""
    scale = {"ms": 1e3, "s": 1.0, "us": 1e6}[unit]
    if title:
        print(f"\n## {title}")
    width = max(len(n) for n in times) + 2
    print(f"{'':{width}s} {'median':>10s} {'min':>10s} {'max':>10s}   ({unit} per step, "
          f"{len(next(iter(times.values())))} interleaved rounds)")
    med = {}
    for name, ts in times.items():
        med[name] = statistics.median(ts)
        print(f"{name:{width}s} {med[name] * scale:10.2f} {min(ts) * scale:10.2f} "
              f"{max(ts) * scale:10.2f}")
    return med

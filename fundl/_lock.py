"""The run-directory lock: ``OUT/.lock`` stops a second runner writing into a directory in use.

Part of :mod:`fundl.experiment`. :func:`fundl.experiment.run` takes the lock after
validating its arguments and the directory, and removes it when it ends (however it
ends, but for ``kill -9``). The file is created atomically (``O_CREAT | O_EXCL``) and
holds JSON: ``pid``, ``host``, ``started`` (UTC, ISO 8601) and ``command``. A lock
whose process is gone is taken over with a warning when it was taken on this host
(``os.kill(pid, 0)`` tells); on another host only its owner knows, so the message says
how to check and remove it by hand.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import socket
import sys
import time
import warnings

from ._errors import DirectoryInUseError

LOCK_NAME = ".lock"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _read(path: pathlib.Path) -> dict | None:
    """The lock's JSON (retried briefly: its writer may be between create and write);
    ``None`` when it vanished; ``{}`` when it stays unreadable."""
    for _ in range(5):
        try:
            holder = json.loads(path.read_text())
            if isinstance(holder, dict) and isinstance(holder.get("pid"), int):
                return holder
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    return {}


def _in_use(out: pathlib.Path, holder: dict) -> DirectoryInUseError:
    lock = out / LOCK_NAME
    if not holder:
        return DirectoryInUseError(
            f"run: {out} is locked by {lock}, which is unreadable; if no runner writes into "
            f"{out}, delete {lock} and start again, else wait for it or choose another --out")
    pid, host = holder["pid"], holder.get("host", "?")
    return DirectoryInUseError(
        f"run: {out} is in use by another runner: PID {pid} on host {host}, started "
        f"{holder.get('started', '?')} ({holder.get('command', '?')}); wait for it, or if that "
        f"process is gone (check `ps -p {pid}` on {host}) delete {lock}; or choose another --out")


def _stale(holder: dict) -> bool:
    """A lock taken on this host by a process that no longer exists."""
    return bool(holder) and holder.get("host") == socket.gethostname() and not _alive(holder["pid"])


def check_free(out: pathlib.Path) -> None:
    """Raise :class:`DirectoryInUseError` if ``out`` is locked by a live runner (writes nothing)."""
    holder = _read(out / LOCK_NAME)
    if holder is not None and not _stale(holder):
        raise _in_use(out, holder)


def acquire(out: pathlib.Path) -> pathlib.Path:
    """Take ``out/.lock`` for this process; a stale one (dead PID, this host) is taken over
    with a warning.

    Returns:
      The lock file's path (give it to :func:`release`).

    Raises:
      DirectoryInUseError: another live runner holds it (the message names its PID and host).
    """
    lock = out / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "command": " ".join([sys.executable, *sys.argv])[:500]}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(lock)
            if holder is None:
                continue  # released meanwhile: try again
            if not _stale(holder):
                raise _in_use(out, holder) from None
            warnings.warn(f"run: taking over the stale lock {lock} of PID {holder['pid']} on "
                          f"{holder['host']} (started {holder.get('started', '?')}), which no "
                          "longer runs", stacklevel=3)
            if _read(lock) == holder:  # still that stale lock: remove it, then race for it
                lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me) + "\n")
        return lock
    raise _in_use(out, _read(lock) or {})


def release(lock: pathlib.Path | None) -> None:
    """Remove the lock taken by :func:`acquire` (if it is still this process's)."""
    if lock is None:
        return
    holder = _read(lock)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        lock.unlink(missing_ok=True)

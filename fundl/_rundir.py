"""A run's directory: its settings (``config.json``), metrics (``metrics.jsonl``) and curves.

Part of :mod:`fundl.experiment` (which re-exports the public names).

:func:`_check_run_dir` validates a directory before :func:`fundl.experiment.run` writes
anything into it (checkpoints without ``--resume``, settings that differ from
``config.json``'s, a missing or unreadable ``config.json`` on ``--resume`` without
``--force``); ``config.json`` and ``metrics.jsonl`` are written atomically (a temporary
file, then a rename), and a ``metrics.jsonl`` whose last line was cut short is read
without it (with a warning) on resume.
"""
from __future__ import annotations

import json
import os
import pathlib
import warnings
from collections.abc import Mapping
from typing import Any

from ._errors import ConfigError, CorruptFileError

# Settings that may change between a run and its --resume without changing the result.
_RESUMABLE_CHANGES = {"resume", "progress", "out", "data_dir", "stop_after", "epochs",
                      "export_params", "export_model", "force"}


def read_metrics(path, *, drop_truncated_last: bool = False) -> list[dict]:
    """The records of a ``metrics.jsonl`` file, one dict per epoch, in order (``[]`` if absent).

    Args:
      path: the file.
      drop_truncated_last: a last line that is not valid JSON (a write cut short) is
        dropped with a warning instead of raising (as a ``--resume`` does).

    Raises:
      CorruptFileError: a line that is not a JSON object (named by its number), other
        than a truncated last line with ``drop_truncated_last``.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return []
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    records = []
    for i, (n, line) in enumerate(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not an object")
        except ValueError as e:
            if drop_truncated_last and i == len(lines) - 1:
                warnings.warn(f"{path}: dropped the last line ({n}), which is not valid JSON "
                              f"(a write cut short?): {line[:80]!r}", stacklevel=2)
                break
            raise CorruptFileError(f"read_metrics: line {n} of {path} is not a JSON record "
                                   f"({e}); fix or delete that line") from None
        records.append(record)
    return records


def _write_metrics(path: pathlib.Path, records: list[dict]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)  # atomic: a reader sees the old or the new file, never half


def plot_curves(records: list[dict], path, *, title: str = "") -> pathlib.Path:
    """Training curves: loss (left) and error = 1 - accuracy (right) vs epoch, train and test.

    Args:
      records: :func:`read_metrics` output (keys ``epoch``, ``train_loss``,
        ``test_loss``, ``train_accuracy``, ``test_accuracy``; ``None`` values are skipped).
      path: the PNG to write (written to a temporary name, then renamed).
      title: the figure's title.

    Returns:
      ``path`` as a ``Path``.
    """
    # The object API without pyplot (no global figure manager, no GUI backend): a runner
    # redraws this after every epoch, and pyplot's import and tight_layout's extra layout
    # pass cost it ~2.5 s the first time and ~0.25 s each time after.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = pathlib.Path(path)
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_err = fig.subplots(1, 2)
    for ax, metric, to_y, label in ((ax_loss, "loss", lambda v: v, "cross-entropy loss"),
                                    (ax_err, "accuracy", lambda v: 1 - v, "error (1 - accuracy)")):
        for split, style in (("train", "o-"), ("test", "s--")):
            pts = [(r["epoch"], to_y(r[f"{split}_{metric}"])) for r in records
                   if r.get(f"{split}_{metric}") is not None]
            if pts:
                ax.plot(*zip(*pts), style, label=split, markersize=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if metric == "accuracy":
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.88 if title else 0.95,
                        wspace=0.25)  # fixed margins: no layout pass
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path


def _check_run_dir(out: pathlib.Path, config: Mapping[str, Any], *, resume: bool,
                   force: bool = False) -> list[dict]:
    """Check that :func:`fundl.experiment.run` may use ``out``, writing nothing; return the
    ``metrics.jsonl`` records to resume from (``[]`` unless ``resume``).

    Refused: ``out`` not a directory; checkpoints in ``out`` without ``resume``; on
    ``resume`` with checkpoints, settings other than ``config.json``'s, or a missing or
    unreadable ``config.json`` (accepted with a warning when ``force``).
    """
    from ._checkpoints import _steps

    if out.exists() and not out.is_dir():
        raise ConfigError(f"run: out={str(out)!r} is an existing file; expected a directory "
                          "(created if missing): choose another --out")
    checkpoints = _steps(out / "checkpoints")
    if checkpoints and not resume:
        raise ConfigError(f"run: {out / 'checkpoints'} already holds checkpoints; pass --resume to "
                          "continue that run, or choose another --out")
    if not resume:
        return []
    saved = _read_config(out / "config.json")
    if isinstance(saved, str) and checkpoints:
        if not force:
            raise ConfigError(f"--resume: {out / 'config.json'} {saved}, so the settings of the "
                              f"run in {out} cannot be checked; pass --force (force=True) to "
                              "resume with this invocation's settings (config.json is rewritten "
                              "with them), or use a new --out")
        warnings.warn(f"--resume --force: {out / 'config.json'} {saved}; resuming with this "
                      "invocation's settings, unchecked", stacklevel=3)
    elif isinstance(saved, dict):
        _compare_config(out, saved, config)
    return read_metrics(out / "metrics.jsonl", drop_truncated_last=True)


def _read_config(path: pathlib.Path) -> dict | str:
    """``config.json``'s settings, or what is wrong with it (``'is missing'``, ...)."""
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return "is missing"
    except (OSError, ValueError) as e:
        return f"is unreadable ({type(e).__name__}: {str(e)[:100]})"
    return saved if isinstance(saved, dict) else "is not a JSON object"


def _compare_config(out: pathlib.Path, saved: dict, config: Mapping[str, Any]) -> None:
    config = json.loads(json.dumps(dict(config), default=str))  # as it will read back
    diff = {k: (saved.get(k), config.get(k)) for k in set(saved) | set(config)
            if k not in _RESUMABLE_CHANGES and saved.get(k) != config.get(k)}
    if diff:
        lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ConfigError(f"--resume: the settings differ from the run in {out} ({lines}); "
                          "resume with the same settings or use a new --out")


def _write_config(out: pathlib.Path, config: Mapping[str, Any]) -> None:
    """Write ``out/config.json`` (atomically: a temporary file, then a rename)."""
    config = json.loads(json.dumps(dict(config), default=str))
    tmp = out / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / "config.json")

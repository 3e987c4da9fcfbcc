"""A run's directory: its settings (``config.json``), metrics (``metrics.jsonl``) and curves.

Part of :mod:`fundl.experiment` (which re-exports the public names).
"""
from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from ._errors import ConfigError

# Settings that may change between a run and its --resume without changing the result.
_RESUMABLE_CHANGES = {"resume", "progress", "out", "data_dir", "stop_after", "epochs",
                      "export_params", "export_model"}


def read_metrics(path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file, one dict per epoch, in order (``[]`` if absent)."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
    import matplotlib
    matplotlib.use("Agg", force=False)  # no display needed
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
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
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _check_config(out: pathlib.Path, config: Mapping[str, Any], resume: bool,
                  write: bool = True) -> None:
    path = out / "config.json"
    config = json.loads(json.dumps(dict(config), default=str))  # as it will read back
    if resume and path.exists():
        saved = json.loads(path.read_text())
        diff = {k: (saved.get(k), config.get(k)) for k in set(saved) | set(config)
                if k not in _RESUMABLE_CHANGES and saved.get(k) != config.get(k)}
        if diff:
            lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ConfigError(f"--resume: the settings differ from the run in {out} ({lines}); "
                              "resume with the same settings or use a new --out")
    if write:
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

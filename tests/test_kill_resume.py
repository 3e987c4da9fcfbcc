"""Fault injection on whole runs: ``kill -9`` mid-epoch and mid-checkpoint-write, then
``--resume``; NaN in the data from epoch 2 on; an infinite learning rate on the command line.

A resumed run must end bitwise equal (checkpoint arrays and metrics but the timings) to an
uninterrupted run of the same command into another directory, and take over the dead
process's ``OUT/.lock`` with a warning. The kill mid-checkpoint-write goes through
``tests/kill_resume_driver.py``, which hooks Orbax's commit of one epoch's checkpoint.
The diverging-learning-rate run (``--lr 1e30``: exit 1, message, no checkpoint of the
non-finite epoch) is ``test_nonfinite.py::test_runner_exits_1_on_a_diverging_run``.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import optax
import pytest

import fundl.data as D
from fundl import models
from fundl.experiment import load_checkpoint, run

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
TIMINGS = ("epoch_seconds", "examples_per_second")
STALE = "taking over the stale lock"


def _mnist(out, *extra):
    """The runner command: epoch 2 is long enough (~1 s or more) to be killed inside."""
    return [sys.executable, str(REPO / "experiments" / "mnist.py"), "--synthetic", "8192",
            "--model", "mlp", "--batch-size", "16", "--epochs", "2", "--limit-test", "64",
            "--no-progress", "--out", str(out), *extra]


def _metrics(out):
    """metrics.jsonl without the timings (which differ from run to run)."""
    lines = (pathlib.Path(out) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(s).items() if k not in TIMINGS} for s in lines]


def _assert_same_checkpoint(out, like, epoch):
    """``out``'s checkpoint of ``epoch`` equals ``like``'s bit for bit (every array, dtype)."""
    import jax

    (_, a), (_, b) = load_checkpoint(out, epoch), load_checkpoint(like, epoch)
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b and len(leaves_a) > 0
    for u, v in zip(leaves_a, leaves_b):
        u, v = np.asarray(u), np.asarray(v)
        assert u.dtype == v.dtype and u.shape == v.shape
        assert u.tobytes() == v.tobytes()


def _entries(out):
    return sorted(p.name for p in (pathlib.Path(out) / "checkpoints").iterdir())


# -- kill -9 in the middle of epoch 2 -----------------------------------------------------

def _kill_in_epoch_2(p, out) -> str:
    """SIGKILL the runner ``p`` writing into ``out`` early in its epoch 2; its output."""
    seen = []
    for line in p.stdout:  # "epoch 1/2 ..." comes after epoch 1's metrics and curves
        seen.append(line)
        if line.startswith("epoch 1/2"):
            break
    assert seen and seen[-1].startswith("epoch 1/2"), "".join(seen)[-2000:]
    deadline = time.monotonic() + 60
    while not (out / "checkpoints" / "1").is_dir():  # Orbax commits it in the background
        assert time.monotonic() < deadline, "epoch 1's checkpoint was never committed"
        time.sleep(0.01)
    time.sleep(0.2)  # into epoch 2's 512 steps
    os.kill(p.pid, signal.SIGKILL)
    return "".join(seen) + p.stdout.read()


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_is_bitwise_equal(tmp_path):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    reference = subprocess.Popen(_mnist(whole), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=ENV)
    p = subprocess.Popen(_mnist(killed), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=ENV)
    try:
        output = _kill_in_epoch_2(p, killed)
        assert p.wait(timeout=60) == -signal.SIGKILL
        # it died inside epoch 2: nothing of epoch 2 was written, the dead PID's lock stays
        assert "epoch 2/2" not in output, output[-2000:]
        assert _entries(killed) == ["1"] and [r["epoch"] for r in _metrics(killed)] == [1]
        assert json.loads((killed / ".lock").read_text())["pid"] == p.pid

        resumed = subprocess.run(_mnist(killed, "--resume"), capture_output=True, text=True,
                                 env=ENV, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"{STALE} {killed / '.lock'} of PID {p.pid}" in resumed.stderr
        assert f"resumed from {killed / 'checkpoints'} after epoch 1" in resumed.stdout
        assert not (killed / ".lock").exists()
        out, err = reference.communicate(timeout=300)
    finally:
        for proc in (p, reference):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert reference.returncode == 0, err[-3000:]
    assert out.splitlines()[-1] == resumed.stdout.splitlines()[-1]  # test_accuracy=...
    assert _metrics(killed) == _metrics(whole) and len(_metrics(whole)) == 2
    for epoch in (1, 2):
        _assert_same_checkpoint(killed, whole, epoch)


# -- kill -9 in the middle of epoch 2's checkpoint write -----------------------------------

def _driver(out, *extra):
    return subprocess.run([sys.executable, str(REPO / "tests" / "kill_resume_driver.py"),
                           str(out), *extra], capture_output=True, text=True, env=ENV, timeout=300)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    done = _driver(out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("epoch,at", [(2, "create"), (2, "finalize"), (1, "finalize")])
def test_kill_9_mid_checkpoint_write_then_resume_is_bitwise_equal(tmp_path, uninterrupted,
                                                                  epoch, at):
    """``create``: killed just after Orbax made the epoch's temporary directory; ``finalize``:
    every file of it written, killed before the rename that commits it. Epoch 1: there is
    no older checkpoint, the resumed run starts from scratch."""
    out = tmp_path / "run"
    killed = _driver(out, "--kill-in-save", str(epoch), "--at", at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert f"SIGKILL during the checkpoint write of epoch {epoch} ({at})" in killed.stdout
    partial = [n for n in _entries(out) if n.startswith(f"{epoch}.")]
    assert partial and not any(n.isdigit() and int(n) >= epoch for n in _entries(out))
    if at == "finalize":  # the arrays were all on disk, only the commit was missing
        assert any((out / "checkpoints" / partial[0] / "train").iterdir())

    resumed = _driver(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert STALE in resumed.stderr
    assert (f"resumed from {out / 'checkpoints'} after epoch 1" if epoch == 2 else
            f"--resume: no checkpoint in {out / 'checkpoints'}; starting from scratch"
            ) in resumed.stdout
    assert _entries(out) == _entries(uninterrupted) == ["2", "3"]  # the partial one is gone
    assert _metrics(out) == _metrics(uninterrupted)
    for e in (2, 3):
        _assert_same_checkpoint(out, uninterrupted, e)


# -- NaN in the data, reached only in epoch 2 ----------------------------------------------

N, BATCH, SEED = 100, 16, 0  # 6 steps an epoch; 4 rows left out of each epoch


def _nan_rows() -> tuple[np.ndarray, int]:
    """Rows that epoch 1 leaves out (its partial last batch) and epoch 2 visits after its
    first step, and the 1-based step of epoch 2 that first meets one."""
    def order(epoch):
        ids = np.arange(N, dtype=np.int32).reshape(N, 1)
        return np.concatenate([b[0][:, 0] for b in D.batches(
            ids, np.zeros(N, np.int32), BATCH, seed=SEED, epoch=epoch)])

    first, second = order(0), order(1)
    full = N // BATCH * BATCH
    where = {int(r): int(np.flatnonzero(second == r)[0]) for r in first[full:]}
    rows = [r for r, i in where.items() if BATCH <= i < full]
    assert rows, "no left-out row of epoch 1 is visited late in epoch 2; change SEED"
    return np.array(rows), 1 + min(where[r] for r in rows) // BATCH


@pytest.mark.slow
def test_nan_in_the_data_in_epoch_2_stops_with_the_last_good_checkpoint(tmp_path, capsys):
    rows, step = _nan_rows()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(N, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 10, N).astype(np.int32)
    bad = x.copy()
    bad[rows, 2, 1, 0] = np.nan

    def go(data, out, **kw):
        return run(models.mlp([32, 10], name="mlp"), optax.sgd(0.05), data, (x[:32], y[:32]),
                   out=out, epochs=3, batch_size=BATCH, seed=SEED, progress=False, log_every=2,
                   allow_nonfinite=True, **kw)

    go((x, y), tmp_path / "clean", stop_after=1)
    records = go((bad, y), tmp_path / "nan")
    first = 2 * ((step - 1) // 2) + 1  # log_every=2: the window of reads holding that step
    message = records[-1]["stopped"]
    assert records[-1] == {"epoch": 2, "stopped": message} and len(records) == 2
    assert message.startswith(f"run: non-finite training in epoch 2/3, steps {first}..{first + 1} "
                              "(1-based, the steps since the last good read): the metric loss is nan")
    assert "Likely causes" in message and "NaN/Inf in the data" in message
    assert f"stopped: {message}" in capsys.readouterr().err
    assert _entries(tmp_path / "nan") == ["1"]
    epoch, tree = load_checkpoint(tmp_path / "nan")  # the newest: epoch 1, finite, as if clean
    assert epoch == 1
    import jax
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(tree["params"]))
    _assert_same_checkpoint(tmp_path / "nan", tmp_path / "clean", 1)
    lines = _metrics(tmp_path / "nan")
    assert lines[0] == _metrics(tmp_path / "clean")[0]
    assert lines[-1] == {"epoch": 2, "stopped": message}


# -- lr = inf on the command line ----------------------------------------------------------

@pytest.mark.slow
def test_runner_refuses_an_infinite_learning_rate_before_writing(tmp_path):
    """``--lr inf`` is refused by the parser (exit 2, argparse's form) and nothing is written."""
    p = subprocess.run(_mnist(tmp_path / "r", "--lr", "inf"), capture_output=True, text=True,
                       env=ENV, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "error: argument --lr:" in p.stderr and "'inf'" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "r").exists()

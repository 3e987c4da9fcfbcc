"""Run directories: nothing written before validation, the OUT/.lock of a running runner,
--resume without config.json, a truncated metrics.jsonl (fundl.experiment.run, read_metrics).

Refusals happen before any training, so most tests here compile nothing; one tiny run
(2 epochs) is made per module and copied.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import optax
import pytest

import fundl
import fundl.io
import fundl.layers as L
from fundl import experiment as E

REPO = Path(__file__).resolve().parents[1]


def _data():
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (32, 4, 4, 1), dtype=np.uint8),
            rng.integers(0, 10, 32).astype(np.int32))


def _run(out, config=None, **kw):
    kw = {"epochs": 2, "batch_size": 16, **kw}
    return E.run(L.Serial(L.Flatten(), L.Dense(10, name="fc")), optax.sgd(0.01), _data(), _data(),
                 out=out, progress=False,
                 config={"lr": 0.01} if config is None else config, **kw)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    out = tmp_path_factory.mktemp("rundir") / "run"
    _run(out)
    return out


@pytest.fixture
def run_copy(template, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(template, out)
    return out


def _snapshot(out: Path) -> dict:
    """Every file under ``out`` (but checkpoints) with its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and "checkpoints" not in p.parts}


# -- nothing is written before the arguments and the directory are validated ---------------

def test_refusals_leave_the_directory_untouched(run_copy):
    before = _snapshot(run_copy)
    assert "config.json" in before and "metrics.jsonl" in before
    with pytest.raises(fundl.ConfigError, match="already holds checkpoints; pass --resume"):
        _run(run_copy, config={"lr": 0.5})  # without --resume: config.json used to be overwritten
    with pytest.raises(fundl.ConfigError, match=r"settings differ .*lr: 0\.01 -> 0\.5"):
        _run(run_copy, config={"lr": 0.5}, resume=True)
    with pytest.raises(fundl.ConfigError, match="epochs must be an int"):
        _run(run_copy, epochs=-1, resume=True)
    with pytest.raises(fundl.ConfigError, match="export_params=.*does not exist"):
        _run(run_copy, resume=True, export_params=run_copy / "no" / "such" / "p.safetensors")
    assert _snapshot(run_copy) == before
    # ...so the real settings are still accepted afterwards.
    assert [r["epoch"] for r in _run(run_copy, resume=True)] == [1, 2]


def test_refused_run_creates_no_directory(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(fundl.ConfigError, match="batch_size=64 exceeds"):
        _run(out, batch_size=64)
    assert not out.exists()


def test_out_must_not_be_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(fundl.ConfigError, match=r"out='.*file' is an existing file; expected a "
                                                r"directory"):
        _run(f)
    assert f.read_text() == "x"


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing", "garbled"])
def test_resume_without_a_readable_config_needs_force(run_copy, damage):
    config = run_copy / "config.json"
    if damage == "missing":
        config.unlink()
    else:
        config.write_text('{"lr": 0.0')
    says = "is missing" if damage == "missing" else r"is unreadable \(JSONDecodeError: .*\)"
    with pytest.raises(fundl.ConfigError, match=rf"--resume: .*config.json {says}, so the "
                                                r"settings .*cannot be checked; pass --force"):
        _run(run_copy, resume=True)
    assert config.exists() == (damage == "garbled")  # untouched
    with pytest.warns(UserWarning, match=rf"--resume --force: .*config.json {says}"):
        records = _run(run_copy, resume=True, force=True, epochs=3)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert json.loads(config.read_text()) == {"lr": 0.01}  # rewritten with this run's settings


@pytest.mark.slow
def test_resume_without_config_or_checkpoints_starts_afresh(tmp_path, capsys):
    _run(tmp_path / "run", resume=True, epochs=1)
    assert "no checkpoint" in capsys.readouterr().out


def test_the_runners_have_a_force_flag():
    import argparse
    p = argparse.ArgumentParser()
    E.add_training_flags(p, epochs=1, batch_size=1, optimizer="sgd", lr=0.1, schedule="constant",
                         momentum=0.9, weight_decay=0.0, out="runs/x")
    assert p.parse_args(["--resume", "--force"]).force is True
    assert p.parse_args([]).force is False


# -- metrics.jsonl ---------------------------------------------------------------------------

@pytest.mark.slow
def test_truncated_last_metrics_line_is_dropped_with_a_warning(run_copy):
    path = run_copy / "metrics.jsonl"
    path.write_text(path.read_text() + '{"epoch": 3, "train_lo')
    with pytest.raises(fundl.io.CorruptFileError,
                       match=r"line 3 of .*metrics.jsonl is not a JSON record"):
        E.read_metrics(path)
    with pytest.warns(UserWarning, match=r"metrics.jsonl: dropped the last line \(3\)"):
        assert [r["epoch"] for r in E.read_metrics(path, drop_truncated_last=True)] == [1, 2]
    with pytest.warns(UserWarning, match="dropped the last line"):
        records = _run(run_copy, resume=True, epochs=3)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert E.read_metrics(path) == records


def test_bad_metrics_line_in_the_middle_is_an_error_naming_it(run_copy):
    path = run_copy / "metrics.jsonl"
    first, second = path.read_text().splitlines()
    path.write_text(f"{first}\n{second[:10]}\n{second}\n")
    before = _snapshot(run_copy)
    for call in (lambda: E.read_metrics(path, drop_truncated_last=True),
                 lambda: _run(run_copy, resume=True, epochs=3)):
        with pytest.raises(fundl.io.CorruptFileError,
                           match=r"line 2 of .*metrics.jsonl is not a JSON record .*fix or "
                                 r"delete that line"):
            call()
    assert _snapshot(run_copy) == before


# -- the lock ----------------------------------------------------------------------------------

def _write_lock(out: Path, pid: int, host: str | None = None):
    out.mkdir(parents=True, exist_ok=True)
    (out / ".lock").write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                           "started": "2026-01-01T00:00:00+00:00",
                                           "command": "python experiments/mnist.py"}))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_locked_directory_is_refused_naming_pid_and_host(run_copy):
    pid = os.getppid()  # alive: the process that started pytest
    _write_lock(run_copy, pid)
    before = _snapshot(run_copy)
    host = socket.gethostname()
    with pytest.raises(fundl.DirectoryInUseError,
                       match=rf"in use by another runner: PID {pid} on host {host}, started "
                             rf"2026-01-01.*\(python experiments/mnist.py\); wait for it, or if "
                             rf"that process is gone \(check `ps -p {pid}` on {host}\) delete "
                             r".*run/\.lock"):
        _run(run_copy, resume=True)
    assert _snapshot(run_copy) == before  # the lock is not removed by the refused run


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    _write_lock(tmp_path / "run", _dead_pid(), host="elsewhere.example")
    with pytest.raises(fundl.DirectoryInUseError, match="on host elsewhere.example"):
        _run(tmp_path / "run")


def test_an_unreadable_lock_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text("")
    with pytest.raises(fundl.DirectoryInUseError, match=r"\.lock, which is unreadable; if no "
                                                        r"runner writes into .*delete"):
        _run(tmp_path / "run")


@pytest.mark.slow
def test_a_stale_lock_of_a_dead_process_is_taken_over(run_copy):
    pid = _dead_pid()
    _write_lock(run_copy, pid)
    with pytest.warns(UserWarning, match=rf"taking over the stale lock .*\.lock of PID {pid} on "):
        records = _run(run_copy, resume=True, epochs=3)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert not (run_copy / ".lock").exists()  # released at the end


@pytest.mark.slow
def test_the_lock_is_held_while_the_run_trains(tmp_path):
    """``transform`` runs during training: it sees OUT/.lock with this process's PID (the
    up-front data check also calls it once, before the directory exists)."""
    seen = []

    def transform(x):
        lock = tmp_path / "run" / ".lock"
        seen.append(json.loads(lock.read_text()) if lock.exists() else None)
        return np.asarray(x, np.float32)

    _run(tmp_path / "run", transform=transform, epochs=1)
    assert seen[0] is None, "the data check runs before the lock is taken"
    seen = seen[1:]
    assert seen and None not in seen and {(s["pid"], s["host"]) for s in seen} == {(os.getpid(), socket.gethostname())}
    assert not (tmp_path / "run" / ".lock").exists()


@pytest.mark.slow
def test_two_runners_on_one_directory_one_refused(tmp_path):
    """Two real runner processes started together into one --out: exactly one trains."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "experiments" / "mnist.py"), "--synthetic", "400",
           "--epochs", "3", "--batch-size", "20", "--no-progress", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    _, _, err = next(r for r in results if r[0] != 0)
    assert "DirectoryInUseError" in err and "in use by another runner: PID" in err, err
    assert [r["epoch"] for r in E.read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
    assert not (out / ".lock").exists()


@pytest.mark.parametrize("content, exc", [(None, FileNotFoundError),
                                          (b"abc", fundl.io.CorruptFileError),
                                          ("other model", fundl.ShapeError)])
def test_a_bad_init_from_file_is_refused_before_out_is_created(tmp_path, content, exc):
    """``init_from`` is read and checked against the model before anything in ``out`` exists."""
    path = tmp_path / "init.safetensors"
    if content == "other model":
        _, params = L.Serial(L.Flatten(), L.Dense(3, name="fc")).init(0, (1, 4, 4, 1))
        fundl.io.save(path, params)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(exc):
        _run(tmp_path / "run", init_from=path)
    assert not (tmp_path / "run").exists()

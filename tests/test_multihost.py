"""Two processes on 127.0.0.1 (CPU, Gloo collectives) train one model data parallel.

Each process runs tests/multihost_worker.py; both must end with the same
parameters, equal to a one-process run on the same global batches.
"""
from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import multihost_worker  # noqa: E402

# Subprocesses, notebooks or whole training runs: the slow tier.
pytestmark = pytest.mark.slow

TIMEOUT = 150


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: pathlib.Path, nproc: int = 2):
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "multihost_worker.py"),
                               str(port), str(i), str(nproc), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env, cwd=ROOT)
             for i in range(nproc)]
    logs = [""] * nproc
    deadline = time.monotonic() + TIMEOUT
    try:
        for i, p in enumerate(procs):
            logs[i], _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:  # never leave a worker behind (one may wait for a dead peer)
            if p.poll() is None:
                p.kill()
                p.communicate()
    return [p.returncode for p in procs], logs


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("multihost")
    codes, logs = _launch(out)
    assert codes == [0, 0], "\n".join(f"--- process {i} (rc {c}):\n{log[-3000:]}"
                                      for i, (c, log) in enumerate(zip(codes, logs)))
    return out, logs


def test_processes_saw_two_devices(two_processes):
    _, logs = two_processes
    for i, log in enumerate(logs):
        assert f"process {i}/2: 2 devices, 1 local" in log, log
        assert "data parallel: 2 devices (1 local, 2 process(es))" in log, log


def test_params_identical_across_processes_and_equal_one_process(two_processes, tmp_path):
    out, _ = two_processes
    got = [dict(np.load(out / f"params_{i}.npz")) for i in range(2)]
    assert int(got[0].pop("epoch")) == int(got[1].pop("epoch")) == 2
    for k in got[0]:
        np.testing.assert_array_equal(got[0][k], got[1][k], err_msg=k)
    from fundl.experiment import load_checkpoint
    multihost_worker.train(tmp_path / "ref", data_parallel=False)
    ref = multihost_worker.flat(load_checkpoint(tmp_path / "ref")[1]["params"])
    assert ref.keys() == got[0].keys()
    for k in ref:
        np.testing.assert_allclose(got[0][k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # The test set evaluated data parallel over both processes equals one device's evaluation.
    from fundl.experiment import read_metrics
    two, one = (read_metrics(d / "metrics.jsonl") for d in (out / "run", tmp_path / "ref"))
    for a, b in zip(two, one, strict=True):
        assert a["test_accuracy"] == b["test_accuracy"], (a, b)
        assert abs(a["test_loss"] - b["test_loss"]) < 1e-4, (a, b)


def test_fsdp_steps_split_params_and_equal_one_process(two_processes):
    out, _ = two_processes
    got = [dict(np.load(out / f"fsdp_{i}.npz")) for i in range(2)]
    for g in got:  # hidden/w [64, 32]: each process holds its 32 rows
        assert tuple(g.pop("shard")) == (32, 32)
    ref, _ = multihost_worker.fsdp_mlp(parallel=None)
    assert ref.keys() == got[0].keys()
    for k in ref:
        np.testing.assert_array_equal(got[0][k], got[1][k], err_msg=k)
        np.testing.assert_allclose(got[0][k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_primary_alone_writes_logs_and_checkpoints_are_complete(two_processes):
    out, _ = two_processes
    run = out / "run"
    from fundl.experiment import read_metrics
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
    assert (run / "config.json").exists() and (run / "curves.png").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == ["1", "2"]
    assert not list(run.rglob("*.tmp*"))  # no half-written file left by either process
    # Orbax gives every process its own files to write (OCDBT per-process stores and
    # array metadata); the shared metadata comes from the primary process only.
    for epoch in ("1", "2"):
        train = run / "checkpoints" / epoch / "train"
        assert sorted(p.name for p in train.glob("ocdbt.process_*")) == \
            ["ocdbt.process_0", "ocdbt.process_1"]
        assert sorted(p.name for p in (train / "array_metadatas").iterdir()) == \
            ["process_0", "process_1"]

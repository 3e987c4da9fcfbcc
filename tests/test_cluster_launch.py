"""Two processes started as a cluster launcher starts them, ``initialize()`` with no arguments.

* SLURM: the variables ``srun -N1 -n2`` gives its two tasks (node list ``localhost``);
  JAX's own SLURM detection derives the coordinator ``localhost:<SLURM_JOB_ID % 4096 +
  61440>``, so the job id is chosen to map to a free port.
* Kubernetes Indexed Job: ``JOB_COMPLETION_INDEX`` (the process id) with the
  ``FUNDL_COORDINATOR`` / ``FUNDL_NUM_PROCESSES`` the README's manifest sets.

Each process (tests/cluster_worker.py) trains 4 sharded steps; the SLURM pair also
records, through ``fundl.experiment``'s data pipeline, its host rows, device rows and
augmented device rows of the same 4 global batches. All must equal the parameters, or
the matching rows, of one process.
"""
from __future__ import annotations

import os
import pathlib
import random
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import cluster_worker  # noqa: E402

pytestmark = pytest.mark.slow  # subprocesses

TIMEOUT = 150
SLURM_PORTS = (65535 - 2**12 + 1, 65535)  # JAX: port = SLURM_JOB_ID % 4096 + 61440


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _free_port(lo: int, hi: int) -> int:
    for _ in range(200):
        port = random.randint(lo, hi)
        if _port_is_free(port):
            return port
    raise RuntimeError(f"no free port in {lo}-{hi}")


def _slurm_job_id() -> tuple[int, int]:
    """``(job id, port)``: a realistic job id whose derived coordinator port is free now."""
    port = _free_port(*SLURM_PORTS)
    return 1000 * 2**12 + port - SLURM_PORTS[0], port


def slurm_env(job_id: int, task: int, ntasks: int = 2) -> dict:
    """What ``srun --nodes=1 --ntasks=NTASKS`` exports to task ``task`` on node ``localhost``."""
    return {"SLURM_JOB_ID": str(job_id), "SLURM_JOBID": str(job_id), "SLURM_JOB_NAME": "fundl-test",
            "SLURM_JOB_NODELIST": "localhost", "SLURM_NODELIST": "localhost", "SLURM_NNODES": "1",
            "SLURM_JOB_NUM_NODES": "1", "SLURM_STEP_ID": "0", "SLURM_STEPID": "0",
            "SLURM_STEP_NODELIST": "localhost", "SLURM_STEP_NUM_NODES": "1",
            "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_STEP_TASKS_PER_NODE": str(ntasks),
            "SLURM_NTASKS": str(ntasks), "SLURM_NPROCS": str(ntasks),
            "SLURM_TASKS_PER_NODE": str(ntasks), "SLURM_PROCID": str(task),
            "SLURM_LOCALID": str(task), "SLURM_NODEID": "0",
            "SLURM_GTIDS": ",".join(map(str, range(ntasks)))}


def k8s_env(port: int, index: int, count: int = 2) -> dict:
    """A pod of the README's Indexed Job (service ``localhost`` stands in for the headless one)."""
    return {"JOB_COMPLETION_INDEX": str(index), "HOSTNAME": f"fundl-test-{index}",
            "KUBERNETES_SERVICE_HOST": "10.96.0.1", "FUNDL_NUM_PROCESSES": str(count),
            "FUNDL_COORDINATOR": f"127.0.0.1:{port}"}


def _launch(out: pathlib.Path, envs: list[dict], *args: str):
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "FUNDL_", "JAX_COORDINATOR", "JOB_COMPLETION"))}
    base.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    base["XLA_FLAGS"] = "--xla_backend_optimization_level=0"  # one CPU device per process
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "cluster_worker.py"), str(out), *args],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=dict(base, **env), cwd=ROOT)
             for env in envs]
    logs, start = [""] * len(procs), time.monotonic()
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
    codes = [p.returncode for p in procs]
    print(f"{out.name}: {time.monotonic() - start:.1f} s")
    assert codes == [0, 0], "\n".join(f"--- process {i} (rc {c}):\n{log[-3000:]}"
                                      for i, (c, log) in enumerate(zip(codes, logs)))
    return [dict(np.load(out / f"process_{i}.npz")) for i in range(2)], logs


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    job_id, port = _slurm_job_id()
    slurm = _launch(tmp_path_factory.mktemp("slurm"), [slurm_env(job_id, i) for i in range(2)])
    k8s_port = _free_port(20000, 30000)
    k8s = _launch(tmp_path_factory.mktemp("k8s"), [k8s_env(k8s_port, i) for i in range(2)],
                  "--train-only")  # the data path does not depend on the launcher
    return {"slurm": slurm + (f"localhost:{port}",), "k8s": k8s + (f"127.0.0.1:{k8s_port}",)}


@pytest.fixture(scope="module")
def one_process():
    return {**cluster_worker.train(parallel=False), **cluster_worker.pipeline(parallel=False)}


@pytest.mark.parametrize("launcher", ["slurm", "k8s"])
def test_initialize_without_arguments_joins_the_job(launched, launcher):
    got, logs, coordinator = launched[launcher]
    for i, (g, log) in enumerate(zip(got, logs)):
        assert (int(g["index"]), int(g["count"]), bool(g["requested"])) == (i, 2, True)
        assert f"process {i}/2: requested=True, 2 devices, 1 local, coordinator {coordinator}" in log, log


@pytest.mark.parametrize("launcher", ["slurm", "k8s"])
def test_train_steps_equal_one_process(launched, one_process, launcher):
    got, _, _ = launched[launcher]
    keys = [k for k in one_process if k.startswith("train_")]
    assert len(keys) == 8  # 2 Dense (w, b), BatchNorm scale, bias and its 2 running statistics
    for k in keys:
        np.testing.assert_array_equal(got[0][k], got[1][k], err_msg=k)  # replicated: identical
        np.testing.assert_allclose(got[0][k], one_process[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_process_data_is_its_slice_of_the_one_process_data(launched, one_process):
    """Shuffle, process split, host-to-device assembly and device augmentation (replicated
    key): process p's rows of epochs 0 and 1 are rows [8p, 8p + 8) of one process's."""
    got, _, _ = launched["slurm"]
    ref = one_process
    assert ref["host_x"].shape == (4, 16, 8, 8, 3)
    assert not np.array_equal(ref["aug_x"], ref["dev_x"])  # the augmentation did something
    assert not np.array_equal(ref["host_y"][:2], ref["host_y"][2:])  # epochs shuffled differently
    for p in range(2):
        rows = slice(8 * p, 8 * p + 8)
        for k in ("host_x", "host_y", "dev_x", "aug_x"):
            assert got[p][k].shape == ref[k][:, rows].shape, k
            np.testing.assert_array_equal(got[p][k], ref[k][:, rows], err_msg=f"process {p}: {k}")
        np.testing.assert_array_equal(got[p]["dev_x"], cluster_worker.transform(got[p]["host_x"]))

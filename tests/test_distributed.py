"""fundl.distributed in one process: argument checks and the one-process behaviour.

The two-process job itself is tests/test_multihost.py.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fundl.distributed as dist
from fundl import ConfigError


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for name in dist.ENV_VARS + tuple(k for k in os.environ if k.startswith("SLURM_")):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def jax_init(monkeypatch):
    """``jax.distributed.initialize`` replaced by a recorder: the keyword arguments of each call."""
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.config, "update", lambda *a: None)  # no collectives switch here
    return calls


def srun_env(monkeypatch, ntasks, procid=0, **extra):
    """What ``srun -N1 -n NTASKS`` exports to task PROCID (JAX reads the first five)."""
    env = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[007-008]", "SLURM_NTASKS": str(ntasks),
           "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(procid), "SLURM_STEP_NUM_NODES": "1",
           "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_NODEID": "0", **extra}
    for k, v in env.items():
        monkeypatch.setenv(k, v)


@pytest.mark.parametrize("kwargs, match", [
    ({"coordinator_address": "127.0.0.1:1234"}, r"missing \['num_processes', 'process_id'\]"),
    ({"coordinator_address": "localhost", "num_processes": 2, "process_id": 0}, "'host:port'"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, "0 <= process_id"),
    ({"coordinator_address": "h:1", "num_processes": "two", "process_id": 0}, "must be an int"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 0, "cpu_collectives": "nccl"},
     "cpu_collectives must be 'gloo' or 'mpi'"),
])
def test_initialize_rejects_bad_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        dist.initialize(**kwargs)


def test_initialize_reads_environment(monkeypatch):
    monkeypatch.setenv("FUNDL_COORDINATOR", "127.0.0.1:1234")
    monkeypatch.setenv("FUNDL_PROCESS_ID", "-1")
    monkeypatch.setenv("FUNDL_NUM_PROCESSES", "2")
    with pytest.raises(ConfigError, match="FUNDL_PROCESS_ID must be >= 0; got FUNDL_PROCESS_ID=-1"):
        dist.initialize()


def test_process_batches_one_process_is_batches():
    from fundl.data import batches
    x, y = np.arange(20).reshape(10, 2), np.arange(10)
    got = [yb.tolist() for _, yb in dist.process_batches(x, y, 4, seed=3, epoch=1)]
    assert got == [yb.tolist() for _, yb in batches(x, y, 4, seed=3, epoch=1)]
    assert dist.is_primary()


def test_to_host_gives_numpy():
    out = dist.to_host({"a": jnp.ones(3), "b": np.zeros(2)})
    assert isinstance(out["a"], np.ndarray) and out["a"].tolist() == [1, 1, 1]
    assert jax.process_count() == 1


def test_requested_follows_environment(monkeypatch):
    assert not dist.requested()
    monkeypatch.setenv("FUNDL_COORDINATOR", "127.0.0.1:1234")
    assert dist.requested()


def test_explicit_settings_switch_jax_detection_off(monkeypatch, jax_init):
    srun_env(monkeypatch, 4, 3)  # FUNDL_* (and arguments) win over SLURM
    monkeypatch.setenv("FUNDL_COORDINATOR", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.9:99")
    monkeypatch.setenv("FUNDL_NUM_PROCESSES", "2")
    monkeypatch.setenv("FUNDL_PROCESS_ID", "1")
    assert dist.initialize(process_id=0) == (0, 1)  # the (mocked) job's view: this test process
    assert jax_init == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 0,
                         "cluster_detection_method": "deactivate"}]


def test_slurm_task_defers_to_jax_detection(monkeypatch, jax_init):
    srun_env(monkeypatch, 2, 1)
    assert dist.requested()
    dist.initialize()
    assert jax_init == [{"coordinator_address": None, "num_processes": None, "process_id": None}]
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "node7:4321")  # JAX's own override of the address
    assert dist._resolve() == ({"coordinator_address": "node7:4321", "num_processes": None,
                                "process_id": None}, "slurm")


def test_slurm_one_task_or_no_srun_is_not_multiprocess(monkeypatch, jax_init):
    srun_env(monkeypatch, 1)
    assert not dist.requested()  # a one-task srun (or srun --pty bash)
    for name in ("SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID"):
        monkeypatch.delenv(name)  # the batch script, an salloc shell, ssh into an allocated node
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert not dist.requested()
    with pytest.raises(ConfigError, match=r"not in an srun task: \['SLURM_STEP_NODELIST', "
                       r"'SLURM_PROCID', 'SLURM_LOCALID'\] unset\. Launch with 'srun python"):
        dist.initialize()
    assert jax_init == []


@pytest.mark.parametrize("var, value, match", [
    ("SLURM_NTASKS", "two", "SLURM_NTASKS must be an int; got SLURM_NTASKS='two'"),
    ("SLURM_PROCID", "2", "need 0 <= SLURM_PROCID < SLURM_NTASKS; got SLURM_PROCID=2, SLURM_NTASKS=2"),
    ("SLURM_JOB_ID", "abc", "SLURM_JOB_ID must be an int"),
    ("JAX_COORDINATOR_PORT", "0", "JAX_COORDINATOR_PORT must be >= 1"),
])
def test_slurm_malformed_variable_is_named(monkeypatch, jax_init, var, value, match):
    srun_env(monkeypatch, 2)
    monkeypatch.setenv(var, value)
    assert dist.requested()
    with pytest.raises(ConfigError, match=match):
        dist.initialize()
    assert jax_init == []


def test_k8s_indexed_job(monkeypatch, jax_init):
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    monkeypatch.setenv("HOSTNAME", "cifar10-1")
    assert not dist.requested()  # an Indexed Job used as a sweep: one process per pod
    monkeypatch.setenv("FUNDL_NUM_PROCESSES", "2")
    assert dist.requested()
    with pytest.raises(ConfigError, match=r"missing \['coordinator_address'\] \(variables "
                       r"\['FUNDL_COORDINATOR'\]\); in the Job's pod template set "
                       r"FUNDL_COORDINATOR=<job-name>-0.<headless-service>:<port>"):
        dist.initialize()
    monkeypatch.setenv("FUNDL_COORDINATOR", "cifar10-0.cifar10:1234")
    dist.initialize()
    assert jax_init == [{"coordinator_address": "cifar10-0.cifar10:1234", "num_processes": 2,
                         "process_id": 1, "cluster_detection_method": "deactivate"}]
    assert dist._resolve()[1] == "k8s"
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    with pytest.raises(ConfigError, match=r"process_id=2 \(from JOB_COMPLETION_INDEX\)"):
        dist.initialize()
    monkeypatch.setenv("FUNDL_PROCESS_ID", "0")  # FUNDL_PROCESS_ID wins over the index
    assert dist._resolve()[0]["process_id"] == 0


@pytest.mark.parametrize("env, match", [
    ({"FUNDL_NUM_PROCESSES": "2"}, r"missing \['coordinator_address', 'process_id'\] \(variables "
     r"\['FUNDL_COORDINATOR', 'FUNDL_PROCESS_ID'\]\); set the missing ones"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1"}, r"missing \['num_processes', 'process_id'\]"),
    ({"FUNDL_COORDINATOR": "h:port", "FUNDL_NUM_PROCESSES": "2", "FUNDL_PROCESS_ID": "0"},
     "FUNDL_COORDINATOR must be 'host:port' .port 1-65535.; got FUNDL_COORDINATOR='h:port'"),
    ({"FUNDL_COORDINATOR": "h:1", "FUNDL_NUM_PROCESSES": "2.5", "FUNDL_PROCESS_ID": "0"},
     "FUNDL_NUM_PROCESSES must be an int; got FUNDL_NUM_PROCESSES='2.5'"),
])
def test_partial_or_malformed_environment(monkeypatch, jax_init, env, match):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert dist.requested()  # loud: initialize then says what is missing
    with pytest.raises(ConfigError, match=match):
        dist.initialize()
    assert jax_init == []


def test_nothing_set_and_no_cluster(monkeypatch):
    def jax_init(**kw):
        assert kw == {"coordinator_address": None, "num_processes": None, "process_id": None}
        raise ValueError("coordinator_address should be defined.")
    monkeypatch.setattr(jax.distributed, "initialize", jax_init)
    monkeypatch.setattr(jax.config, "update", lambda *a: None)
    with pytest.raises(ConfigError, match="no multi-process settings found .coordinator_address "
                       "should be defined.*launch with srun"):
        dist.initialize()

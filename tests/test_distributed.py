"""fundl.distributed in one process: argument checks and the one-process behaviour.

The two-process job itself is tests/test_multihost.py.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shlex

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


def resolved(jax_init):
    """What ``initialize()`` hands ``jax.distributed.initialize`` (mocked) in this environment."""
    dist.initialize()
    return jax_init.pop()


SLURM_DEFERS = {"coordinator_address": None, "num_processes": None, "process_id": None}


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
    assert resolved(jax_init) == SLURM_DEFERS
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "node7:4321")  # JAX's own override of the address
    assert resolved(jax_init) == dict(SLURM_DEFERS, coordinator_address="node7:4321")


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
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    with pytest.raises(ConfigError, match=r"process_id=2 \(from JOB_COMPLETION_INDEX\)"):
        dist.initialize()
    monkeypatch.setenv("FUNDL_PROCESS_ID", "0")  # FUNDL_PROCESS_ID wins over the index
    assert resolved(jax_init)["process_id"] == 0


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


# ----------------------------------------------------------------- the README's launch recipes
README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _readme_block(lang, marker):
    blocks = [b for b in re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)
              if marker in b]
    assert len(blocks) == 1, f"one ```{lang} block with {marker!r} in the README"
    return blocks[0]


def _training_flags(argv):
    """``--batch-size`` and whether ``--data-parallel`` is given, from a cifar10.py command."""
    assert "experiments/cifar10.py" in argv and "--data-parallel" in argv, argv
    return int(argv[argv.index("--batch-size") + 1])


def test_readme_sbatch_script_is_consistent(monkeypatch, jax_init):
    script = _readme_block("bash", "#SBATCH")
    opts = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", script, flags=re.M))
    nodes, per_node = int(opts["nodes"]), int(opts["ntasks-per-node"])
    assert int(opts["gpus-per-node"]) == per_node  # one task per GPU, each seeing all of them
    assert "gpus-per-task" not in opts and "gpu-bind" not in opts
    assert "cpus-per-task" in opts and '--cpus-per-task="$SLURM_CPUS_PER_TASK"' in script
    command = " ".join(line.rstrip("\\ ") for line in script.splitlines()
                       if not line.startswith("#") and line.strip())
    assert command.startswith("srun ")  # python straight in the batch script would train alone
    batch = _training_flags(shlex.split(command))
    assert batch % (nodes * per_node) == 0
    assert f"{batch} = {nodes * per_node} processes x {batch // (nodes * per_node)} per GPU" in script
    # The last task of that step, as srun starts it: JAX's detection takes over.
    srun_env(monkeypatch, nodes * per_node, nodes * per_node - 1)
    monkeypatch.setenv("SLURM_LOCALID", str(per_node - 1))
    assert dist.requested()
    assert resolved(jax_init) == SLURM_DEFERS


def test_readme_kubernetes_manifest_is_consistent(monkeypatch, jax_init):
    text = _readme_block("yaml", "completionMode: Indexed")
    try:
        import yaml
    except ImportError:  # key fields by pattern
        field = lambda k: re.findall(rf"^\s*-?\s*{k}: (\S+)", text, flags=re.M)  # noqa: E731
        service, job = {"name": field("name")[0]}, {"name": field("name")[1]}
        spec = {k: field(k)[0] for k in ("completionMode", "completions", "parallelism",
                                         "subdomain", "job-name", "clusterIP")}
        env = dict(zip(re.findall(r"- name: (FUNDL_\w+)", text),
                       [v.strip('"') for v in re.findall(r"value: (\S+)", text)]))
        argv = json.loads(re.search(r"command: (\[.*?\])", text, flags=re.S).group(1))
    else:
        svc_doc, job_doc = yaml.safe_load_all(text)
        assert (svc_doc["kind"], job_doc["kind"]) == ("Service", "Job")
        service, job = svc_doc["metadata"], job_doc["metadata"]
        pod = job_doc["spec"]["template"]["spec"]
        spec = {**job_doc["spec"], "subdomain": pod["subdomain"],
                "job-name": svc_doc["spec"]["selector"]["job-name"],
                "clusterIP": svc_doc["spec"]["clusterIP"]}
        (container,) = pod["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        argv = container["command"]
        gpus = container["resources"]["limits"]["nvidia.com/gpu"]
        assert _training_flags(argv) % (int(spec["parallelism"]) * gpus) == 0
    assert spec["completionMode"] == "Indexed" and spec["clusterIP"] in (None, "None")
    assert spec["job-name"] == job["name"] and spec["subdomain"] == service["name"]
    n = int(spec["completions"])
    assert n == int(spec["parallelism"]) == int(env["FUNDL_NUM_PROCESSES"]) > 1
    assert env["FUNDL_COORDINATOR"].startswith(f"{job['name']}-0.{service['name']}:")
    _training_flags(argv)
    # The last pod, as Kubernetes starts it.
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", str(n - 1))
    assert dist.requested()
    assert resolved(jax_init) == {"coordinator_address": env["FUNDL_COORDINATOR"], "num_processes": n,
                                  "process_id": n - 1, "cluster_detection_method": "deactivate"}


def test_open_mpi_is_left_to_jax(monkeypatch, jax_init):
    """mpirun inside a SLURM batch script: SLURM_JOB_ID without an srun step, Open MPI's
    variables present; JAX's detection (Open MPI first) decides, fundl does not object."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "1234.0;tcp://10.0.0.1:4567")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")
    assert not dist.requested()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "8")
    assert dist.requested()
    assert resolved(jax_init) == SLURM_DEFERS

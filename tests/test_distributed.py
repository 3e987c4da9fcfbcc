"""fundl.distributed in one process: argument checks and the one-process behaviour.

The two-process job itself is tests/test_multihost.py.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fundl.distributed as dist
from fundl import ConfigError


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for name in dist.ENV_VARS:
        monkeypatch.delenv(name, raising=False)


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
    with pytest.raises(ConfigError, match="process_id must be >= 0; got -1"):
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

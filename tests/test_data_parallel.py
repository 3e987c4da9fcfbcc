"""Data-parallel train steps on 8 simulated CPU devices, checked against one device.

The checks run in a subprocess (tests/data_parallel_worker.py) started with
``--xla_force_host_platform_device_count=8``, so this process keeps its one device.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

import fundl.layers as L
from fundl import ConfigError, ShapeError
from fundl.train import make_train_step, replicate, unreplicate

# Subprocesses, notebooks or whole training runs: the slow tier.
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOL = 2e-5


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "data_parallel_worker.py")],
                          capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_eight_devices(results):
    assert results["devices"] == 8


@pytest.mark.parametrize("check", [
    "sharded_vs_single_bn_dropout",   # same dropout masks, synchronised BN == global batch
    "pmap_vs_single_bn",              # pmap without dropout: its masks differ by design
    "per_device_pmap_vs_sharded",     # per-device BN: pmap == sharded "ghost" statistics
    "accumulate_sharded_vs_single",
    "accumulate_pmap_vs_sharded",
    "pmap_dropout_vs_per_device_keys",
    "own_axis_data_sharded_vs_single",  # BatchNorm(axis_name='data'): synchronised statistics
    "own_axis_data_pmap_vs_single",
])
def test_equivalent(results, check):
    assert results[check] < TOL, (check, results[check])


def test_per_device_batch_stats_differ_from_synchronised(results):
    assert results["per_device_vs_sync"] > 1e-3


@pytest.mark.parametrize("parallel", ["sharded", "pmap"])
def test_batch_not_divisible_by_devices(results, parallel):
    msg = results[f"error_{parallel}"]
    assert "divisible by the device count (8)" in msg and "got batch size 12" in msg, msg


# -- in this process (one device) -------------------------------------------------

def _mlp():
    return L.Serial(L.Dense(4, name="hidden"), L.ReLU(), L.Dense(3, name="head"))


@pytest.mark.parametrize("kwargs, match", [
    ({"parallel": "ddp"}, "parallel must be one of"),
    ({"accumulate": 0}, "accumulate must be an int >= 1"),
    ({"sync_batch_stats": "yes"}, "sync_batch_stats must be True or False"),
    ({"devices": jax.devices()}, "devices= needs parallel"),
    ({"parallel": "sharded", "devices": ["cpu0"]}, "devices must be a non-empty list"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_train_step(_mlp(), optax.sgd(0.1), **kwargs)


def test_accumulate_needs_divisible_batch():
    model, opt = _mlp(), optax.sgd(0.1)
    _, p = model.init(jax.random.key(0), (6, 5))
    step = make_train_step(model, opt, accumulate=4)
    with pytest.raises(ConfigError, match="times accumulate \\(4\\) = 4; got batch size 6"):
        step(p, {}, opt.init(p), (jnp.ones((6, 5)), jnp.zeros(6, jnp.int32)), None)


def test_accumulate_equals_large_batch_one_device(rng):
    model, opt = _mlp(), optax.adam(1e-2)
    _, p = model.init(jax.random.key(0), (8, 5))
    x, y = rng.normal(size=(8, 5)).astype("float32"), rng.integers(0, 3, 8).astype("int32")
    a = make_train_step(model, opt, donate=False)(p, {}, opt.init(p), (x, y), None)
    b = make_train_step(model, opt, donate=False, accumulate=4)(p, {}, opt.init(p), (x, y), None)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert jnp.allclose(u, v, atol=1e-6), (u, v)


def test_one_device_parallel_forms_match_plain(rng):
    model, opt = _mlp(), optax.sgd(0.1)
    _, p = model.init(jax.random.key(0), (4, 5))
    batch = (rng.normal(size=(4, 5)).astype("float32"), rng.integers(0, 3, 4).astype("int32"))
    plain = make_train_step(model, opt, donate=False)(p, {}, opt.init(p), batch, None)
    sharded = make_train_step(model, opt, parallel="sharded", donate=False)(
        p, {}, opt.init(p), batch, None)
    pm = make_train_step(model, opt, parallel="pmap", donate=False)(
        *replicate((p, {}, opt.init(p))), batch, None)
    for u, v in zip(jax.tree.leaves(plain[0]), jax.tree.leaves(sharded[0])):
        assert jnp.allclose(u, v, atol=1e-6)
    for u, v in zip(jax.tree.leaves(plain[0]), jax.tree.leaves(unreplicate(pm[0]))):
        assert jnp.allclose(u, v, atol=1e-6)


def test_pmap_step_rejects_unreplicated_trees(rng):
    model, opt = _mlp(), optax.adam(0.1)  # adam: a scalar step count in opt_state
    _, p = model.init(jax.random.key(0), (4, 5))
    step = make_train_step(model, opt, parallel="pmap")
    with pytest.raises(ShapeError, match="takes replicated trees"):
        step(p, {}, opt.init(p), (jnp.ones((4, 5)), jnp.zeros(4, jnp.int32)), None)


def test_runner_data_parallel_flag(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
    cmd = [sys.executable, str(ROOT / "experiments" / "mnist.py"), "--synthetic", "64", "--epochs", "1",
           "--no-progress", "--data-parallel", "--out", str(tmp_path / "run")]
    ok = subprocess.run(cmd + ["--batch-size", "32"], capture_output=True, text=True, timeout=240,
                        env=env, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "data parallel: 8 devices (8 local, 1 process(es)), 4 examples per device" in ok.stdout
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data_parallel"] is True
    bad = subprocess.run(cmd[:-1] + [str(tmp_path / "bad"), "--batch-size", "12"],
                         capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert bad.returncode != 0
    assert "batch_size must be divisible by the 8 devices; got batch_size=12" in bad.stderr

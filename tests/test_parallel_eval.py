"""Data-parallel evaluation (issue 14, item 2) on 8 simulated CPU devices, against one device.

``make_eval_step``/``evaluate``/``fit`` with ``parallel='sharded'`` (and ``'fsdp'``) split
every evaluation batch over the devices, padded to a multiple of the device count and
masked, so the sums equal the one-device evaluation for any data set and batch size. The
8-device checks run in one subprocess (tests/parallel_eval_worker.py); the runner checks
start ``experiments/mnist.py``.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fundl.layers as L
from fundl import ConfigError
from fundl.experiment import read_metrics
from fundl.train import evaluate, fit, make_eval_step

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOL = 1e-5
slow = pytest.mark.slow  # subprocesses


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "parallel_eval_worker.py")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@slow
def test_eight_devices_and_a_non_trivial_accuracy(results):
    assert results["devices"] == 8
    assert results["accuracy"] == pytest.approx(14 / 21)


@slow
@pytest.mark.parametrize("batch_size", [5, 8, 16, 21, 64])
@pytest.mark.parametrize("labels", ["", "_ignored"])  # _ignored: rows with ignore_index labels
def test_evaluate_equals_one_device(results, batch_size, labels):
    """21 examples: every batch size leaves a batch that 8 devices do not divide."""
    loss_gap, same_accuracy = results[f"evaluate_b{batch_size}{labels}"]
    assert loss_gap < TOL and same_accuracy


@slow
@pytest.mark.parametrize("n", [21, 5, 1])
def test_eval_step_sums_are_exact(results, n):
    r = results[f"step_{n}"]
    assert r["count"] == [n, n]
    assert r["correct"][0] == r["correct"][1]
    assert r["loss_sum"] < TOL * n


@slow
@pytest.mark.parametrize("check", ["hand_sharded_sharded", "hand_sharded_fsdp", "host_params",
                                   "three_devices"])
def test_params_in_any_placement(results, check):
    loss_gap, same_accuracy = results[check]
    assert loss_gap < TOL and same_accuracy


@slow
def test_sharded_params_are_kept_others_replicated(results):
    assert results["kept_sharded"] is True
    assert results["placed_replicated"] is True


@slow
@pytest.mark.parametrize("mode", ["sharded", "fsdp"])  # fsdp: needs make_train_step(parallel='fsdp')
def test_fit_equals_one_device(results, mode):
    got = results[f"fit_{mode}"]
    assert isinstance(got, list), got
    assert max(got) < TOL, got  # params/state, train loss/accuracy, test loss/accuracy


@slow
def test_fit_batches_must_divide_over_devices(results):
    msg = results["fit_last_batch_error"]
    assert msg.startswith("ConfigError: fit: with parallel='sharded'") and "8 devices" in msg
    assert "last batch of 4 of the 28 examples" in msg and "drop_last=True" in msg


@slow
def test_fit_nonfinite_stop_data_parallel(results):
    assert "non-finite training" in results["nonfinite_stopped"]
    assert results["nonfinite_params_finite"] is True


@slow
def test_loop_finiteness_check_sees_every_shard(results):
    assert results["loop_finite_clean"] is True
    assert results["loop_finite_nan_last_shard"] is False


# -- in this process (one device) -------------------------------------------------

def _mlp():
    return L.Serial(L.Dense(4, name="hidden"), L.ReLU(), L.Dense(3, name="head"))


def test_one_device_sharded_evaluate_equals_plain(rng):
    model = _mlp()
    _, p = model.init(jax.random.key(0), (4, 5))
    data = (rng.normal(size=(7, 5)).astype("float32"), rng.integers(0, 3, 7).astype("int32"))
    plain = evaluate(model, p, {}, data, batch_size=3)
    assert evaluate(model, p, {}, data, batch_size=3, parallel="sharded") == pytest.approx(plain)


@pytest.mark.parametrize("call", [
    lambda m, p: make_eval_step(m, parallel="pmap"),
    lambda m, p: evaluate(m, p, {}, (jnp.ones((2, 5)), jnp.zeros(2, jnp.int32)), parallel="pmap"),
    lambda m, p: fit(m, p, {}, optax.sgd(0.1), (np.ones((2, 5), np.float32), np.zeros(2, np.int32)),
                     epochs=1, batch_size=2, key=0, progress=False, parallel="pmap"),
])
def test_pmap_refused_with_the_alternative(call):
    model = _mlp()
    _, p = model.init(jax.random.key(0), (2, 5))
    with pytest.raises(ConfigError, match="parallel='pmap' is not supported here.*use parallel='sharded'"):
        call(model, p)


# -- the runners -------------------------------------------------------------------

_ENV = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
            XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
# 13 test examples in batches of 5: neither divides over 8 devices.
_ARGS = ["--synthetic", "64", "--limit-test", "13", "--eval-batch-size", "5", "--epochs", "1",
         "--batch-size", "32", "--model", "mlp", "--no-progress"]


def _mnist(out, *flags):
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "mnist.py"), *_ARGS,
                           "--out", str(out), *flags], capture_output=True, text=True,
                          timeout=240, env=_ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, read_metrics(out / "metrics.jsonl")[-1], \
        json.loads((out / "config.json").read_text())


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
    return _mnist(tmp_path_factory.mktemp("one") / "run")


def _same_eval(got, ref):
    assert got["test_accuracy"] == ref["test_accuracy"]
    assert got["test_loss"] == pytest.approx(ref["test_loss"], abs=1e-4)


@slow
def test_runner_data_parallel_evaluates_in_parallel(tmp_path, one_device_run):
    stdout, record, config = _mnist(tmp_path / "run", "--data-parallel")
    assert "data parallel: 8 devices (8 local, 1 process(es)), 4 examples per device; " \
           "parallel='sharded', training and evaluation" in stdout
    assert config["data_parallel"] is True and "fsdp" not in config
    _same_eval(record, one_device_run[1])
    assert "data_parallel" not in one_device_run[2] and "fsdp" not in one_device_run[2]


@slow
def test_runner_fsdp_flag(tmp_path, one_device_run):
    """Needs make_train_step(parallel='fsdp') (fails with its 'parallel must be one of' before)."""
    stdout, record, config = _mnist(tmp_path / "run", "--fsdp")
    assert "parallel='fsdp', training and evaluation" in stdout
    assert config["fsdp"] is True and "data_parallel" not in config
    _same_eval(record, one_device_run[1])

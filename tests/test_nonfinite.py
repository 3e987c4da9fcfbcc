"""Non-finite values: NaN/Inf data refused up front; a diverging run stops, raises or skips.

Detection happens at the metrics reads of the epoch loop (no per-step sync).
"""
from __future__ import annotations

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fundl
import fundl.layers as L
from fundl import DataError, NonFiniteError
from fundl.data import standardizer
from fundl.experiment import load_checkpoint, run
from fundl.train import evaluate, fit, make_train_step


def _model():
    return L.Serial(L.Flatten(), L.Dense(10))


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, n).astype(np.int32)


def _params(model):
    return model.init(jax.random.key(0), (4, 8, 8, 1))[1]


def _finite(tree):
    return all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(tree))


def _fit(opt, data, **kw):
    model = _model()
    params = _params(model)
    kw = {"epochs": 2, "batch_size": 8, "key": 0, "progress": False, "log_every": 2, **kw}
    return params, fit(model, params, {}, opt, data, **kw)


# -- data ------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_fit_and_evaluate_refuse_nonfinite_pixels(value):
    x, y = _data()
    x[7, 3, 2, 0] = value
    with pytest.raises(DataError) as e:
        _fit(optax.sgd(0.1), (x, y))
    msg = str(e.value)
    assert f"fit: train_data x holds {value}" in msg and "index (7, 3, 2, 0)" in msg
    assert "allow_nonfinite=True" in msg
    with pytest.raises(DataError, match=r"evaluate: data x holds .* at index \(7, 3, 2, 0\)"):
        evaluate(_model(), _params(_model()), {}, (x, y))


def test_allow_nonfinite_opts_in():
    x, y = _data()
    x[0, 0, 0, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _, r = _fit(optax.sgd(0.1), (x, y), allow_nonfinite=True, epochs=1)
    assert "stopped" in r.history[-1]  # the NaN reached the loss, and fit stopped
    out = evaluate(_model(), _params(_model()), {}, (x, y), allow_nonfinite=True)
    assert np.isnan(out["loss"])


def test_standardizer_refuses_nonfinite_unless_allowed():
    x = np.arange(48, dtype=np.float32).reshape(4, 2, 2, 3)
    x[2, 1, 0, 1] = np.nan
    with pytest.raises(DataError, match=r"standardizer: x_train holds nan at index \(2, 1, 0, 1\)"):
        standardizer(x)
    s = standardizer(x, allow_nonfinite=True)
    finite = np.delete(x[..., 1].ravel(), np.flatnonzero(np.isnan(x[..., 1].ravel())))
    assert np.isfinite(s.mean).all() and np.isfinite(s.std).all()
    np.testing.assert_allclose(s.mean[1], finite.mean())
    np.testing.assert_allclose(s.std[1], finite.std())
    np.testing.assert_allclose(s.mean[0], x[..., 0].mean())


# -- fit: lr = inf and friends -------------------------------------------------------------

@pytest.mark.parametrize("lr", [float("inf"), float("nan")])
def test_fit_stop_returns_last_good_params(lr):
    x, y = _data()
    with pytest.warns(RuntimeWarning, match="fit: non-finite training in epoch 1/2"):
        params, r = _fit(optax.sgd(lr), (x, y))
    assert len(r.history) == 1
    msg = r.history[-1]["stopped"]
    for fragment in ("steps 1..2", "learning rate", "NaN/Inf in the data", "float16"):
        assert fragment in msg
    assert _finite(r.params)
    # the first read (after step 2) was already bad: the last good params are the initial ones
    jax.tree.map(np.testing.assert_array_equal, r.params, params)


def test_fit_stop_keeps_params_of_last_good_read():
    """Divergence after a few good windows: the params returned are those of the last good read."""
    x, y = _data()
    sched = lambda step: jnp.where(step < 2, 0.01, jnp.inf)  # noqa: E731  steps 0, 1 fine
    with pytest.warns(RuntimeWarning, match="steps 3..4"):
        params, r = _fit(optax.sgd(sched), (x, y), shuffle=False)
    good = fit(_model(), params, {}, optax.sgd(0.01), (x[:16], y[:16]), epochs=1, batch_size=8,
               key=0, progress=False, shuffle=False)
    jax.tree.map(np.testing.assert_allclose, r.params, good.params)


def test_fit_detects_a_diverging_learning_rate():
    """A finite but far too large lr: a regression whose loss overflows after a few steps."""
    x, _ = _data()
    t = np.ones((len(x), 10), np.float32)
    with pytest.warns(RuntimeWarning, match="fit: non-finite training"):
        _, r = _fit(optax.sgd(1e6), (x, t), loss_fn=fundl.functional.mse_loss, epochs=3)
    assert "stopped" in r.history[-1] and _finite(r.params)


def test_fit_raise():
    x, y = _data()
    with pytest.raises(NonFiniteError, match=r"fit: non-finite training in epoch 1/2, steps 1..2"):
        _fit(optax.sgd(float("inf")), (x, y), on_nonfinite="raise")


def test_fit_skip_keeps_params_finite_and_counts():
    x, y = _data()
    params, r = _fit(optax.sgd(float("inf")), (x, y), on_nonfinite="skip")
    assert [h["skipped"] for h in r.history] == [4, 4]
    assert _finite(r.params)
    jax.tree.map(np.testing.assert_array_equal, r.params, params)
    # healthy training skips nothing and reports finite means
    _, r = _fit(optax.sgd(0.01), (x, y), on_nonfinite="skip")
    assert [h["skipped"] for h in r.history] == [0, 0]
    assert all(np.isfinite(h["train_loss"]) for h in r.history)


def test_fit_on_nonfinite_validated():
    with pytest.raises(fundl.ConfigError, match="on_nonfinite must be one of"):
        _fit(optax.sgd(0.1), _data(), on_nonfinite="ignore")


def test_skip_nonfinite_step_skips_only_bad_steps():
    model = _model()
    opt = optax.sgd(0.1)
    step = make_train_step(model, opt, skip_nonfinite=True, donate=False)
    x, y = _data(8)
    params = _params(model)
    p1, _, _, m = step(params, {}, opt.init(params), (x, y), None)
    assert float(m["skipped"]) == 0.0 and not np.array_equal(p1["dense"]["w"], params["dense"]["w"])
    x[0, 0, 0, 0] = np.nan
    p2, _, _, m = step(params, {}, opt.init(params), (x, y), None)
    assert float(m["skipped"]) == 1.0
    jax.tree.map(np.testing.assert_array_equal, p2, params)


# -- experiment.run --------------------------------------------------------------------

def _images(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8),
            rng.integers(0, 10, n).astype(np.int32))


def _run(tmp_path, opt, epochs, **kw):
    train = _images()
    test = (train[0][:8], train[1][:8])
    return run(_model(), opt, train, test, out=tmp_path, epochs=epochs, batch_size=8,
               progress=False, log_every=2, **kw)


@pytest.mark.slow
def test_run_lr_inf_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    _run(tmp_path, optax.sgd(1e-3), 1)
    # diverge from epoch 2 on: resume with lr = inf
    records = _run(tmp_path, optax.sgd(float("inf")), 3, resume=True)
    assert records[-1]["epoch"] == 2 and "non-finite" in records[-1]["stopped"]
    assert "stopped: run: non-finite training in epoch 2/3" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]
    epoch, tree = load_checkpoint(tmp_path)  # the newest checkpoint: the last good one
    assert epoch == 1 and _finite(tree["params"]) and _finite(tree["opt_state"])
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["stopped"] == records[-1]["stopped"]


@pytest.mark.slow
def test_run_raise_and_skip(tmp_path):
    with pytest.raises(NonFiniteError, match="run: non-finite training in epoch 1/1"):
        _run(tmp_path / "raise", optax.sgd(float("inf")), 1, on_nonfinite="raise")
    assert not (tmp_path / "raise" / "checkpoints" / "1").exists()
    records = _run(tmp_path / "skip", optax.sgd(float("inf")), 1, on_nonfinite="skip")
    assert records[-1]["skipped"] == 4


def test_run_refuses_nan_data_before_writing(tmp_path):
    x, y = _images()
    x = x.astype(np.float32)
    x[5, 1, 1, 0] = np.nan
    with pytest.raises(DataError, match=r"run: train x holds nan at index \(5, 1, 1, 0\)"):
        run(_model(), optax.sgd(0.1), (x, y), (x[:8], y[:8]), out=tmp_path / "r", epochs=1,
            batch_size=8, progress=False)
    assert not (tmp_path / "r").exists()
    with pytest.raises(fundl.ConfigError, match="on_nonfinite must be"):
        run(_model(), optax.sgd(0.1), _images(), _images(8), out=tmp_path / "r", epochs=1,
            batch_size=8, progress=False, on_nonfinite="warn")


@pytest.mark.slow
def test_runner_exits_1_on_a_diverging_run(tmp_path):
    """experiments/mnist.py with a learning rate that overflows: message, exit status 1,
    no checkpoint of the non-finite epoch."""
    import os
    import pathlib
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, str(repo / "experiments" / "mnist.py"), "--synthetic", "64",
                        "--epochs", "2", "--batch-size", "16", "--lr", "1e30", "--limit-test", "16",
                        "--no-progress", "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 1, p.stderr[-2000:]
    assert "stopped: run: non-finite training in epoch 1/2" in p.stderr
    assert "learning rate" in p.stderr
    assert not (out / "checkpoints" / "1").exists()
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["epoch"] == 1 and "non-finite" in last["stopped"]

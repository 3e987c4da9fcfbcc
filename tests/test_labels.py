"""Labels outside [0, C) and float class indices are refused, never trained on silently.

Host-side checks (fit, evaluate, experiment.run, the losses' eager calls, the data
loaders) and the compiled step's ``checks=True`` (jax.experimental.checkify).
"""
from __future__ import annotations

import functools
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fundl
import fundl.functional as F
import fundl.layers as L
from fundl import DataError
from fundl.experiment import run
from fundl.train import evaluate, fit, make_train_step

C = 10


def _model():
    return L.Serial(L.Flatten(), L.Dense(C))


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8, 8, 1)).astype(np.float32), rng.integers(0, C, n).astype(np.int32)


def _params(model):
    return model.init(jax.random.key(0), (4, 8, 8, 1))[1]


# (bad value, fragments the message must contain)
BAD_LABELS = [
    (-1, ["label -1 at index 5", "[0, 10)", "1 of 32", "unlabelled"]),
    (C, ["label 10 at index 5", "[0, 10)", "np.unique(y, return_inverse=True)"]),
    (C + 5, ["label 15 at index 5", "0..9", "16 outputs"]),
]


@pytest.mark.parametrize("bad,fragments", BAD_LABELS)
def test_fit_refuses_out_of_range_labels(bad, fragments):
    model = _model()
    x, y = _data()
    y[5] = bad
    with pytest.raises(DataError) as e:
        fit(model, _params(model), {}, optax.sgd(0.1), (x, y), epochs=1, batch_size=8, key=0,
            progress=False)
    assert "fit: train_data" in str(e.value)
    for f in fragments:
        assert f in str(e.value)


def test_fit_refuses_bad_eval_labels_before_training():
    model = _model()
    x, y = _data()
    ye = y.copy()
    ye[3] = -1
    with pytest.raises(DataError, match=r"fit: eval_data has label -1 at index 3"):
        fit(model, _params(model), {}, optax.sgd(0.1), (x, y), eval_data=(x, ye), epochs=1,
            batch_size=8, key=0, progress=False)


@pytest.mark.parametrize("bad,fragments", BAD_LABELS)
def test_evaluate_refuses_out_of_range_labels(bad, fragments):
    model = _model()
    x, y = _data()
    y[5] = bad
    with pytest.raises(DataError) as e:
        evaluate(model, _params(model), {}, (x, y))
    assert "evaluate: data" in str(e.value)
    for f in fragments:
        assert f in str(e.value)


def test_float_labels_refused_for_cross_entropy():
    model = _model()
    x, y = _data()
    with pytest.raises(DataError, match=r"fit: train_data labels y must be integer class indices"):
        fit(model, _params(model), {}, optax.sgd(0.1), (x, y.astype(np.float32)), epochs=1,
            batch_size=8, key=0, progress=False)
    with pytest.raises(DataError, match=r"evaluate: data labels y must be integer"):
        evaluate(model, _params(model), {}, (x, y.astype(np.float64)))


def test_ignore_index_and_custom_losses():
    """The loss's ignore_index (-100 by default) is allowed, as in PyTorch; a regression loss
    with float targets is not a classification and is left alone."""
    model = _model()
    x, y = _data()
    y[0] = -100
    r = fit(model, _params(model), {}, optax.sgd(0.1), (x, y), epochs=1, batch_size=8, key=0,
            progress=False)
    assert np.isfinite(r.history[0]["train_loss"])
    y[0] = -1  # with ignore_index=-1 the -1 rows are ignored
    loss = functools.partial(F.cross_entropy, ignore_index=-1)
    fit(model, _params(model), {}, optax.sgd(0.1), (x, y), epochs=1, batch_size=8, key=0,
        progress=False, loss_fn=loss)
    with pytest.raises(DataError, match="label -1 at index 0"):  # ... but not with the default
        evaluate(model, _params(model), {}, (x, y))
    mse = lambda logits, t: F.mse_loss(logits, t)  # noqa: E731
    t = np.zeros((32, C), np.float32)
    evaluate(model, _params(model), {}, (x, t), loss_fn=mse)


def test_run_refuses_bad_labels_before_writing(tmp_path):
    model = _model()
    x, y = _data()
    for arg, train_y, test_y in (("train", -1, 0), ("test", 0, C)):
        ytr, yte = y.copy(), y[:8].copy()
        ytr[2] = train_y if train_y else ytr[2]
        yte[2] = test_y if test_y else yte[2]
        out = tmp_path / arg
        with pytest.raises(DataError, match=rf"run: {arg} has label -?\d+ at index 2"):
            run(model, optax.sgd(0.1), (x, ytr), (x[:8], yte), out=out, epochs=1, batch_size=8,
                progress=False)
        assert not out.exists()


@pytest.mark.parametrize("loss", [F.cross_entropy, F.nll_loss, F.multi_margin_loss])
@pytest.mark.parametrize("bad", [-1, 3, 8])
def test_losses_refuse_out_of_range_eagerly(loss, bad):
    scores = jax.nn.log_softmax(jnp.zeros((4, 3)))
    with pytest.raises(DataError, match=rf"target class index {bad} at index \(2,\) is outside "
                                        r"\[0, 3\)"):
        loss(scores, jnp.array([0, 1, bad, 2]))


def test_loss_under_jit_is_not_checked_as_documented():
    """Without checks, a traced target is not checked: -1 wraps to class C-1, C gives NaN."""
    lp = jnp.log(jnp.array([[0.1, 0.2, 0.7]]))
    f = jax.jit(F.cross_entropy)
    assert float(f(lp, jnp.array([-1]))) == pytest.approx(float(f(lp, jnp.array([2]))))
    assert np.isnan(float(f(lp, jnp.array([3]))))
    assert "wraps to class" in F.cross_entropy.__doc__ and "checks=True" in F.nll_loss.__doc__


@pytest.mark.parametrize("bad", [-1, C, C + 5])
def test_checked_step_raises_data_error(bad):
    model = _model()
    opt = optax.sgd(0.1)
    step = make_train_step(model, opt, checks=True)
    x, y = _data(8)
    params = _params(model)
    params, state, opt_state, m = step(params, {}, opt.init(params), (x, y), None)  # fine
    assert set(m) == {"loss", "accuracy"}
    y[6] = bad
    with pytest.raises(DataError, match=rf"train step: batch label {bad} at index 6 is outside "
                                        r"the valid range \[0, 10\)"):
        step(params, state, opt_state, (x, y), None)


def test_checked_step_raises_on_nonfinite_loss():
    model = _model()
    opt = optax.sgd(0.1)
    step = make_train_step(model, opt, checks=True)
    x, y = _data(8)
    x[1, 2, 3, 0] = np.inf
    params = _params(model)
    with pytest.raises(fundl.NonFiniteError, match="train step: the loss is nan"):
        step(params, {}, opt.init(params), (x, y), None)


def test_unchecked_step_does_not_see_bad_labels_and_checks_config():
    model = _model()
    opt = optax.sgd(0.1)
    x, y = _data(8)
    y[0] = C
    params = _params(model)
    m = make_train_step(model, opt)(params, {}, opt.init(params), (x, y), None)[3]
    assert np.isnan(float(m["loss"]))  # what checks=True is for
    with pytest.raises(fundl.ConfigError, match="checks=True works on one device only"):
        make_train_step(model, opt, checks=True, parallel="sharded")
    with pytest.raises(fundl.ConfigError, match="checks must be True or False"):
        make_train_step(model, opt, checks="yes")


def test_cifar_pickle_loader_refuses_bad_labels(tmp_path):
    from fundl.data import load

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, 4).tolist()
        if name == "data_batch_1":
            labels[2] = 10
        with open(d / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                         b"labels": labels}, f)
    with pytest.raises(DataError, match=r"label 10 at index 2 is outside \[0, 9\]"):
        load("cifar10", "train", data_dir=tmp_path, source="pickle")


def test_run_refuses_float_labels(tmp_path):
    x, y = _data()
    with pytest.raises(DataError, match=r"run: train labels y must be integer class indices"):
        run(_model(), optax.sgd(0.1), (x, y.astype(np.float32)), (x[:8], y[:8]),
            out=tmp_path / "r", epochs=1, batch_size=8, progress=False)
    assert not (tmp_path / "r").exists()


def test_evaluate_check_data_false_skips_the_host_check():
    """fit and run check once up front and evaluate every epoch without re-checking."""
    model = _model()
    x, y = _data()
    y[0] = C
    out = evaluate(model, _params(model), {}, (x, y), check_data=False)
    assert np.isnan(out["loss"])  # what the check is there to prevent

"""The training utilities: compiled pure step, exact evaluation, fit, optimizer helpers."""
import doctest
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fundl.functional as F
import fundl.layers as L
import fundl.train as T
from fundl import ConfigError, ShapeError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _mlp(*extra):
    return L.Serial(L.Dense(16, name="hidden"), *extra, L.ReLU(), L.Dense(3, name="head"))


def _data(n=24, d=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)  # 3 classes
    return x, y


def _init(model, n=8, d=5, seed=0):
    _, params, state = model.init_with_state(jax.random.key(seed), (n, d))
    return params, state


def _copy(tree):
    return jax.tree_util.tree_map(np.array, tree)


def _counting(loss_fn=F.cross_entropy):
    """A loss that counts how often it is traced (a Python side effect runs only when tracing)."""
    calls = {"n": 0}

    def loss(logits, y):
        calls["n"] += 1
        return loss_fn(logits, y)

    return loss, calls


# -- the train step ------------------------------------------------------------

def test_step_is_pure_jitted_and_learns():
    model = _mlp()
    params, state = _init(model)
    x, y = _data(8)
    opt = optax.sgd(0.3)
    loss, calls = _counting()
    step = T.make_train_step(model, opt, loss_fn=loss, donate=False)
    assert hasattr(step, "lower")  # a jax.jit-compiled function
    opt_state = opt.init(params)
    a = step(params, state, opt_state, (x, y), None)
    b = step(params, state, opt_state, (x, y), None)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(u, v)  # same inputs, same outputs
    assert set(a[3]) == {"loss", "accuracy"} and a[3]["loss"].shape == ()
    losses = []
    p, s, o = params, state, opt_state
    for _ in range(15):
        p, s, o, m = step(p, s, o, (x, y), None)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.7 * losses[0] and losses[1] < losses[0]
    assert calls["n"] == 1  # traced once, then the compiled code is reused
    assert 0.0 <= float(m["accuracy"]) <= 1.0


def test_step_exposes_jit_stages_on_abstract_arguments():
    """``step.trace(...).lower().compile()`` on ShapeDtypeStructs (benchmarks/first_step.py)."""
    model = _mlp()
    params, state = _init(model)
    x, y = _data(8)
    opt = optax.sgd(0.3)
    step = T.make_train_step(model, opt)
    args = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype),
                        (params, state, opt.init(params), (x, y)))
    compiled = step.trace(*args, None).lower().compile()
    p, _, _, m = compiled(params, state, opt.init(params), (x, y), None)
    assert m["loss"].shape == () and jax.tree.structure(p) == jax.tree.structure(params)


def test_step_loss_and_accuracy_match_a_direct_computation():
    model = _mlp()
    params, state = _init(model)
    x, y = _data(8)
    step = T.make_train_step(model, optax.sgd(0.0), donate=False)
    *_, m = step(params, state, optax.sgd(0.0).init(params), (x, y), None)
    logits = model.apply(params, jnp.asarray(x))
    np.testing.assert_allclose(m["loss"], F.cross_entropy(logits, jnp.asarray(y)), rtol=1e-6)
    np.testing.assert_allclose(m["accuracy"], np.mean(np.argmax(logits, -1) == y), rtol=1e-6)


def test_step_with_batchnorm_updates_state():
    model = _mlp(L.BatchNorm(name="bn"))
    assert model.stateful
    params, state = _init(model)
    x, y = _data(8)
    opt = optax.adam(1e-2)
    step = T.make_train_step(model, opt)
    before = _copy(state)
    p, s, o, m = step(params, state, opt.init(params), (x, y), None)
    assert jax.tree_util.tree_structure(s) == jax.tree_util.tree_structure(before)
    assert not np.allclose(s["bn"]["mean"], before["bn"]["mean"])  # running stats moved
    # Evaluation uses the running statistics and leaves them alone.
    ev = T.make_eval_step(model)(p, s, (x, y))
    assert int(ev["count"]) == 8 and np.isfinite(float(ev["loss_sum"]))


def test_step_with_dropout_uses_the_key():
    model = _mlp(L.Dropout(0.5))
    params, state = _init(model)
    x, y = _data(8)
    opt = optax.sgd(0.1)
    step = T.make_train_step(model, opt, donate=False)
    o = opt.init(params)
    loss = lambda k: float(step(params, state, o, (x, y), jax.random.key(k))[3]["loss"])
    assert loss(1) == loss(1)
    assert loss(1) != loss(2)
    with pytest.raises(ConfigError, match="random key"):
        step(params, state, o, (x, y), None)


def test_donation_invalidates_inputs_but_returned_buffers_are_reusable():
    model = _mlp(L.BatchNorm(name="bn"))
    params, state = _init(model)
    x, y = _data(8)
    opt = optax.adam(1e-2)
    opt_state = opt.init(params)
    ref_p, ref_s, ref_o = (jax.tree_util.tree_map(jnp.copy, t) for t in (params, state, opt_state))
    step = T.make_train_step(model, opt)  # donate=True
    p, s, o = params, state, opt_state
    for _ in range(3):  # feed the returned trees back in, as a loop does
        p, s, o, m = step(p, s, o, (x, y), None)
    assert all(a.is_deleted() for a in jax.tree_util.tree_leaves(params))
    # The same three steps without donation give the same numbers.
    keep = T.make_train_step(model, opt, donate=False)
    q, t, r = ref_p, ref_s, ref_o
    for _ in range(3):
        q, t, r, _ = keep(q, t, r, (x, y), None)
    assert not any(a.is_deleted() for a in jax.tree_util.tree_leaves(ref_p))
    for u, v in zip(jax.tree_util.tree_leaves((p, s, o)), jax.tree_util.tree_leaves((q, t, r))):
        np.testing.assert_allclose(u, v, rtol=1e-6)


def test_step_rejects_bad_arguments():
    model = _mlp()
    with pytest.raises(ConfigError, match="optimizer"):
        T.make_train_step(model, "adam")
    with pytest.raises(ConfigError, match="Layer"):
        T.make_train_step(lambda x: x, optax.sgd(0.1))
    params, state = _init(model)
    step = T.make_train_step(model, optax.sgd(0.1), donate=False)
    x, y = _data(8)
    with pytest.raises(ShapeError, match=r"pair \(x, y\)"):
        step(params, state, optax.sgd(0.1).init(params), (x, y, y), None)


def test_regression_loss_has_no_accuracy_and_extra_metrics_are_computed():
    model = L.Serial(L.Dense(2))
    params, state = _init(model, d=3)
    x = np.ones((4, 3), np.float32)
    y = np.zeros((4, 2), np.float32)
    step = T.make_train_step(model, optax.sgd(0.1), loss_fn=F.mse_loss, donate=False,
                             metrics={"mean_pred": lambda logits, y: jnp.mean(logits)})
    *_, m = step(params, state, optax.sgd(0.1).init(params), (x, y), None)
    assert set(m) == {"loss", "mean_pred"}


# -- evaluation ----------------------------------------------------------------

def test_evaluate_is_exact_over_an_uneven_last_batch():
    model = _mlp()
    params, state = _init(model)
    x, y = _data(10)
    got = T.evaluate(model, params, state, (x, y), batch_size=4)  # batches of 4, 4, 2
    logits = model.apply(params, jnp.asarray(x))
    np.testing.assert_allclose(got["loss"], F.cross_entropy(logits, jnp.asarray(y)), rtol=1e-6)
    assert got["accuracy"] == np.mean(np.argmax(logits, -1) == y)
    # A mean of per-batch means would weight the last 2 examples double: make sure it differs
    # from the exact value here, so the test can tell the two apart.
    per = [float(F.cross_entropy(logits[i:i + 4], jnp.asarray(y[i:i + 4]))) for i in (0, 4, 8)]
    assert abs(np.mean(per) - got["loss"]) > 1e-4
    parts = [T.make_eval_step(model)(params, state, (x[i:i + 4], y[i:i + 4])) for i in (0, 4, 8)]
    assert [int(p["count"]) for p in parts] == [4, 4, 2]


# -- optimizer helpers ---------------------------------------------------------

def test_param_labels_rules():
    p = {"conv1": {"w": 1, "b": 2}, "conv10": {"w": 3}, "head": {"w": 4, "b": 5}}
    got = T.param_labels(p, {"head": "head", "conv1": "first", "*/b": "bias"}, default="rest")
    assert got == {"conv1": {"w": "first", "b": "first"}, "conv10": {"w": "rest"},
                   "head": {"w": "head", "b": "head"}}  # 'conv1' is a component prefix, not 'conv10'
    got = T.param_labels(p, {"*/w": True}, default=False)
    assert got["conv10"]["w"] is True and got["head"]["b"] is False
    assert T.param_labels(p, lambda path: path)["head"]["b"] == "head/b"
    with pytest.raises(ConfigError, match="conv10/w"):
        T.param_labels(p, {"conv1": "a", "head": "b"})


def test_param_labels_with_multi_transform_gives_each_group_its_own_rate():
    model = _mlp()
    params, state = _init(model)
    x, y = _data(8)
    opt = optax.multi_transform({"body": optax.sgd(0.0), "head": optax.sgd(0.5)},
                                lambda p: T.param_labels(p, {"head": "head", "*": "body"}))
    step = T.make_train_step(model, opt, donate=False)
    p, *_ = step(params, state, opt.init(params), (x, y), None)
    np.testing.assert_array_equal(p["hidden"]["w"], params["hidden"]["w"])  # lr 0: frozen
    assert not np.allclose(p["head"]["w"], params["head"]["w"])


def test_weight_decay_mask_from_param_labels():
    params = {"dense": {"w": jnp.ones(3), "b": jnp.ones(2)}}
    opt = optax.add_decayed_weights(0.1, mask=lambda p: T.param_labels(p, {"*/w": True}, default=False))
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    upd, _ = opt.update(zeros, opt.init(params), params)
    np.testing.assert_allclose(upd["dense"]["w"], 0.1)
    np.testing.assert_allclose(upd["dense"]["b"], 0.0)


def test_inject_hyperparams_changes_lr_without_retracing():
    model = _mlp()
    params, state = _init(model)
    x, y = _data(8)
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    loss, calls = _counting()
    step = T.make_train_step(model, opt, loss_fn=loss, donate=False)
    o = opt.init(params)
    p1, *_ = step(params, state, o, (x, y), None)
    o2 = T.set_hyperparams(o, learning_rate=0.01)
    assert float(o.hyperparams["learning_rate"]) == pytest.approx(0.1)  # not mutated
    p2, *_ = step(params, state, o2, (x, y), None)
    assert calls["n"] == 1  # same compiled step for both learning rates
    d1 = np.asarray(p1["head"]["w"] - params["head"]["w"])
    d2 = np.asarray(p2["head"]["w"] - params["head"]["w"])
    np.testing.assert_allclose(d2, 0.1 * d1, rtol=1e-4, atol=1e-8)  # SGD: update scales with lr
    with pytest.raises(ConfigError, match="momentum_typo"):
        T.set_hyperparams(o, momentum_typo=0.9)
    sched = optax.inject_hyperparams(optax.sgd)(learning_rate=optax.constant_schedule(0.1))
    with pytest.raises(ConfigError, match="schedule"):
        T.set_hyperparams(sched.init(params), learning_rate=0.5)


def test_count_params():
    model = _mlp()
    params, _ = _init(model)
    assert T.count_params(params) == 5 * 16 + 16 + 16 * 3 + 3
    assert T.count_params({}) == 0


# -- fit -----------------------------------------------------------------------

@pytest.mark.slow
def test_fit_history_and_callers_arrays_survive(capsys):
    model = _mlp()
    params, state = _init(model)
    train, test = _data(30, seed=1), _data(11, seed=2)
    seen = []
    res = T.fit(model, params, state, optax.adam(1e-2), train, epochs=3, batch_size=8,
                key=jax.random.key(0), eval_data=test, progress=True,
                callback=lambda r, *trees: seen.append(r["epoch"]) or r["epoch"] == 2)
    assert isinstance(res, T.FitResult) and seen == [1, 2]  # the callback stopped it
    assert [h["epoch"] for h in res.history] == [1, 2]
    assert set(res.history[0]) == {"epoch", "train_loss", "train_accuracy", "test_loss",
                                   "test_accuracy", "seconds"}
    assert res.history[1]["train_loss"] < res.history[0]["train_loss"]
    ev = T.evaluate(model, res.params, res.state, test)
    assert res.history[-1]["test_accuracy"] == ev["accuracy"]
    assert not any(a.is_deleted() for a in jax.tree_util.tree_leaves(params))
    assert "epoch 1/3" in capsys.readouterr().out
    # Resuming from the returned optimizer state, without eval data.
    res2 = T.fit(model, res.params, res.state, optax.adam(1e-2), train, epochs=1, batch_size=8,
                 key=1, opt_state=res.opt_state, shuffle=False, progress=False, drop_last=True)
    assert res2.history[0]["test_loss"] is None and res2.history[0]["test_accuracy"] is None


def test_fit_key_forms():
    # private on purpose: _as_key is the one normaliser behind fit(key=...); its forms are compared
    typed = T._as_key(3)
    assert jnp.issubdtype(typed.dtype, jax.dtypes.prng_key)
    legacy = T._as_key(jax.random.PRNGKey(3))
    np.testing.assert_array_equal(jax.random.key_data(legacy), jax.random.key_data(typed))
    with pytest.raises(ConfigError, match="key"):
        T._as_key("seed")
    with pytest.raises(ConfigError, match="batch_size"):
        T.fit(_mlp(), {}, {}, optax.sgd(0.1), _data(4), epochs=1, batch_size=0, key=0)


# -- docs and the quickstart ---------------------------------------------------

def test_module_docstring_examples_run():
    failures, tried = doctest.testmod(T, optionflags=doctest.ELLIPSIS)
    assert tried > 20 and failures == 0


@pytest.mark.slow
def test_quickstart_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "quickstart.py"),
                          "--epochs", "1", "--no-progress"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"test_accuracy=0\.\d{4}", last), out.stdout


def test_as_key_fast_path_keeps_every_refusal():
    # private on purpose: _as_key (the key normaliser every train step runs per call) accepts a
    # seen typed-key class at once; every other form still goes through the full checks.
    k = jax.random.key(0)
    assert T._as_key(k) is k and T._as_key(k) is k  # the second call takes the fast path
    for bad in (jax.random.split(k, 3), jnp.zeros(()), np.zeros(2, np.float32), "k"):
        with pytest.raises(ConfigError, match="key must be"):
            T._as_key(bad)
    # traced: a typed key passes as it is, an integer scalar is a seed (the tracer class is
    # never taken for a key class)
    typed, seeded = jax.jit(lambda kk, s: (jax.random.key_data(T._as_key(kk)),
                                           jax.random.key_data(T._as_key(s))))(k, 3)
    np.testing.assert_array_equal(typed, jax.random.key_data(k))
    np.testing.assert_array_equal(seeded, jax.random.key_data(jax.random.key(3)))


def test_train_step_rechecks_every_new_key_after_a_good_one():
    # the step skips the key check when it gets the very key it checked last (an epoch
    # passes one key per step); anything else is checked again.
    model = L.Serial(L.Dense(3), L.Dropout(0.5))
    _, params = model.init(jax.random.key(0), (2, 4))
    opt = optax.sgd(0.1)
    step = T.make_train_step(model, opt, donate=False)
    batch = (jnp.ones((2, 4)), jnp.array([0, 2]))
    k = jax.random.key(3)
    a = step(params, {}, opt.init(params), batch, k)[3]["loss"]
    assert step(params, {}, opt.init(params), batch, k)[3]["loss"] == a
    for bad in ("k", jax.random.split(k, 2), 1.5):
        with pytest.raises(ConfigError, match="key must be"):
            step(params, {}, opt.init(params), batch, bad)
    assert step(params, {}, opt.init(params), batch, 3)[3]["loss"] == a  # int seed 3 = key(3)
    legacy = jax.random.PRNGKey(3)
    step(params, {}, opt.init(params), batch, legacy)
    step(params, {}, opt.init(params), batch, legacy)  # converted each time, no stale key

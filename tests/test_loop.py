"""One epoch loop and one evaluator: fit and experiment.run share them; exact epoch metrics."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

# private on purpose: these tests pin that fit and experiment.run share one epoch loop
# (fundl._loop.run_epoch) and test that loop directly.
import fundl._loop as loop
import fundl.layers as L
import fundl.train as T
from fundl import ConfigError
from fundl import experiment as E


def _mlp():
    return L.Serial(L.Flatten(), L.Dense(8, name="hidden"), L.ReLU(), L.Dense(3, name="head"))


def _data(n, seed=0, shape=(4, 4, 1)):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    return x, rng.integers(0, 3, n).astype(np.int32)


def _counting(monkeypatch, module, name):
    """Replace ``module.name`` with a wrapper that counts its calls; return the counter."""
    calls = []
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(kwargs.get("desc"))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def _run(out, epochs, **kw):
    return E.run(_mlp(), optax.sgd(0.1), _data(32), _data(12, seed=1), out=out, epochs=epochs,
                 batch_size=8, progress=False, **kw)


@pytest.mark.slow
def test_fit_and_run_go_through_the_same_epoch_loop(monkeypatch, tmp_path, capsys):
    calls = _counting(monkeypatch, loop, "run_epoch")
    x, y = _data(20)
    _, params = _mlp().init(jax.random.key(0), (4, 4, 4, 1))
    T.fit(_mlp(), params, {}, optax.sgd(0.1), (x.astype(np.float32), y), epochs=2, batch_size=8,
          key=0, progress=False)
    assert calls == ["epoch 1/2", "epoch 2/2"]
    _run(tmp_path / "run", 3, stop_after=2)
    assert calls[2:] == ["epoch 1/3", "epoch 2/3"]


@pytest.mark.slow
def test_run_evaluates_with_train_evaluate(monkeypatch, tmp_path, capsys):
    calls = _counting(monkeypatch, T, "evaluate")
    records = _run(tmp_path / "a", 2, eval_batch_size=5)  # 12 test examples: batches 5, 5, 2
    assert len(calls) == 2  # once per epoch
    assert records[-1]["test_accuracy"] in {k / 12 for k in range(13)}  # exact, over all 12
    _run(tmp_path / "b", 0)  # no epoch: the untrained model is evaluated for the last line
    assert len(calls) == 3
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("test_accuracy=0.")


def test_evaluate_transform_is_applied_per_batch():
    model = _mlp()
    _, params = model.init(jax.random.key(0), (4, 4, 4, 1))
    x, y = _data(10)
    sizes = []

    def transform(a):
        sizes.append(len(a))
        return np.asarray(a, np.float32) / 255.0

    got = T.evaluate(model, params, {}, (x, y), batch_size=4, transform=transform)
    want = T.evaluate(model, params, {}, (x.astype(np.float32) / 255.0, y), batch_size=4)
    assert sizes == [4, 4, 2] and got == want


@pytest.mark.slow
def test_fit_epoch_metrics_weight_a_partial_last_batch_by_its_size():
    """10 examples, batch 4: steps of 4, 4, 2 examples; the epoch mean weights them 4:4:2."""
    model, opt = _mlp(), optax.sgd(0.5)
    x, y = _data(10)
    x = x.astype(np.float32) / 255.0
    _, params = model.init(jax.random.key(0), (4, 4, 4, 1))
    res = T.fit(model, params, {}, opt, (x, y), epochs=1, batch_size=4, key=0, shuffle=False,
                progress=False, log_every=2)  # a read after step 2, one at the end
    # By hand: the same steps, one batch at a time, metrics read after each.
    step = T.make_train_step(model, opt, donate=False)
    p, s, o, per_step = params, {}, opt.init(params), []
    for i in (0, 4, 8):
        p, s, o, m = step(p, s, o, (x[i:i + 4], y[i:i + 4]), None)
        per_step.append({k: float(v) for k, v in m.items()})
    sizes = np.array([4, 4, 2])
    for name, got in (("loss", res.history[0]["train_loss"]),
                      ("accuracy", res.history[0]["train_accuracy"])):
        values = np.array([m[name] for m in per_step])
        want = float(np.sum(values * sizes) / 10)
        assert got == pytest.approx(want, rel=1e-6, abs=1e-7), name
    losses = np.array([m["loss"] for m in per_step])
    # The plain mean of the three batch means weights the last 2 examples double:
    # make sure it differs here, so the test tells the two apart.
    assert abs(np.mean(losses) - res.history[0]["train_loss"]) > 1e-4
    assert res.history[0]["train_accuracy"] * 10 == pytest.approx(round(res.history[0]["train_accuracy"] * 10))
    for u, v in zip(jax.tree.leaves(res.params), jax.tree.leaves(p)):
        np.testing.assert_array_equal(u, v)  # the loop ran the same steps


def _fake_step(params, state, opt_state, batch, key):
    x, _ = batch
    return params, state, opt_state, {"loss": jnp.mean(x), "accuracy": jnp.float32(1.0)}


@pytest.mark.parametrize("n, steps, match", [(3, 2, "more than steps=2"), (1, 2, "yielded 1 batches; expected steps=2")])
def test_run_epoch_refuses_a_wrong_batch_count(n, steps, match):
    batches = [(np.ones((2, 1), np.float32), np.zeros(2, np.int32))] * n
    with pytest.raises(ConfigError, match=match):
        loop.run_epoch(_fake_step, ({}, {}, {}), batches, key_for_step=lambda i: None,
                       steps=steps, progress=False)


def test_run_epoch_result_and_keys():
    batches = [(np.full((b, 1), v, np.float32), np.zeros(b, np.int32)) for b, v in ((3, 1.0), (1, 5.0))]
    keys = []
    res = loop.run_epoch(_fake_step, ({"w": 1}, {}, {}), batches, key_for_step=lambda i: keys.append(i) or i,
                         steps=2, progress=True, desc="epoch 1/1", log_every=1)
    assert keys == [0, 1] and res.steps == 2 and res.examples == 4 and res.seconds > 0
    assert res.metrics == {"loss": pytest.approx((3 * 1.0 + 1 * 5.0) / 4), "accuracy": 1.0}
    assert res.trees == ({"w": 1}, {}, {})


# -- the per-step fast paths (benchmarks/overhead.py): same results as the slow paths ------

def _dropout_mlp():
    return L.Serial(L.Flatten(), L.Dense(8, name="hidden"), L.Dropout(0.5), L.ReLU(),
                    L.Dense(3, name="head"))


def _epoch(step, key_for_step, params, batches):
    opt_state = optax.sgd(0.1).init(params)
    trees = jax.tree.map(jnp.copy, (params, {}, opt_state))
    return loop.run_epoch(step, trees, batches, key_for_step=key_for_step, steps=len(batches),
                          progress=False, log_every=2)


def test_step_keys_fast_path_equals_folding_on_the_host():
    # StepKeys(key, offset) on a make_train_step step derives fold_in(key, offset + i) inside
    # the compiled step (fold_in_step); the dropout masks, hence the results, must be those of
    # the host-side key_for_step. A step without fold_in_step folds on the host.
    x, y = _data(24)
    batches = [(x[i:i + 8].astype(np.float32), y[i:i + 8]) for i in range(0, 24, 8)]
    _, params = _dropout_mlp().init(jax.random.key(0), (8, 4, 4, 1))
    step = T.make_train_step(_dropout_mlp(), optax.sgd(0.1))
    assert hasattr(step, "fold_in_step")
    key = jax.random.key(7)
    slow = _epoch(step, lambda i: jax.random.fold_in(key, 5 + i), params, batches)
    fast = _epoch(step, loop.StepKeys(key, 5), params, batches)
    plain = lambda *a: step(*a)  # no fold_in_step: the host fallback
    host = _epoch(plain, loop.StepKeys(key, 5), params, batches)
    other = _epoch(step, loop.StepKeys(key, 6), params, batches)
    for res in (fast, host):
        assert res.metrics == pytest.approx(slow.metrics, rel=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), res.trees,
                     slow.trees)
    assert other.metrics["loss"] != pytest.approx(slow.metrics["loss"], rel=1e-6)  # keys matter


def test_fold_in_step_refuses_what_the_step_refuses():
    # the fast path compiles the same step: a model mismatch is the same ConfigError/ShapeError
    _, params = _mlp().init(jax.random.key(0), (8, 4, 4, 1))
    step = T.make_train_step(_mlp(), optax.sgd(0.1))
    bad = (np.ones((8, 5, 4, 1), np.float32), np.zeros(8, np.int32))
    with pytest.raises(Exception) as slow:
        step(params, {}, optax.sgd(0.1).init(params), bad, jax.random.key(0))
    with pytest.raises(type(slow.value)) as fast:
        step.fold_in_step(params, {}, optax.sgd(0.1).init(params), bad, jax.random.key(0),
                          np.uint32(0))
    assert str(fast.value) == str(slow.value)


def test_fit_reuses_its_compiled_step_and_copies_the_callers_trees():
    # private on purpose: fit's step cache (_cached_fit_step); a second fit compiles nothing new; an unhashable
    # argument (frozen as a list) still trains, without the cache.
    x, y = _data(16)
    data = (x.astype(np.float32), y)
    model, opt = _mlp(), optax.sgd(0.1)
    _, params = model.init(jax.random.key(0), (8, 4, 4, 1))
    T._cached_fit_step.cache_clear()
    first = T.fit(model, params, {}, opt, data, epochs=1, batch_size=8, key=0, progress=False)
    again = T.fit(model, params, {}, opt, data, epochs=1, batch_size=8, key=0, progress=False)
    assert T._cached_fit_step.cache_info().hits == 1
    assert first.history[0]["train_loss"] == again.history[0]["train_loss"]
    jax.tree.map(np.testing.assert_array_equal, first.params, again.params)
    np.asarray(params["hidden"]["w"])  # the caller's params were copied, not donated
    frozen = T.fit(model, params, {}, opt, data, epochs=1, batch_size=8, key=0, progress=False,
                   frozen=["hidden"])
    np.testing.assert_array_equal(frozen.params["hidden"]["w"], params["hidden"]["w"])

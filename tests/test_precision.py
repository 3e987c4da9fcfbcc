"""Mixed precision in the train step: compute dtype, float32 parameters/statistics/loss, float16 loss scaling."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fundl
import fundl.layers as L
from fundl.train import Policy, make_train_step


def _setup():
    model = L.Serial(L.Conv(4, 3, name="conv"), L.BatchNorm(name="bn"), L.ReLU(), L.Flatten(),
                     L.Dense(3, name="fc"))
    _, params, state = model.init(jax.random.key(0), (8, 6, 6, 2))
    rng = np.random.default_rng(0)
    batch = (jnp.asarray(rng.normal(size=(8, 6, 6, 2)), jnp.float32), jnp.asarray(rng.integers(0, 3, 8)))
    return model, params, state, batch


def _run(precision, steps=1, opt=None):
    model, params, state, batch = _setup()
    opt = opt or optax.sgd(0.1)
    step = make_train_step(model, opt, precision=precision, donate=False)
    opt_state = opt.init(params)
    for _ in range(steps):
        params, state, opt_state, m = step(params, state, opt_state, batch, None)
    return params, state, m, step, (params, state, opt_state, batch)


def test_bfloat16_computes_in_bf16_and_keeps_float32_params_and_stats():
    params, state, m, step, args = _run("bfloat16")
    text = str(jax.make_jaxpr(step)(*args, None))
    assert "bf16[8,4,4,4]" in text  # the convolution's output: computed in bfloat16
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    assert state["bn"]["mean"].dtype == jnp.float32 and m["loss"].dtype == jnp.float32
    ref_params, ref_state, ref_m, _, _ = _run(None)
    np.testing.assert_allclose(m["loss"], ref_m["loss"], rtol=2e-2)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(a, b, rtol=5e-2, atol=5e-3)


def test_bfloat16_training_reduces_the_loss():
    first = _run("bfloat16", steps=1)[2]["loss"]
    last = _run("bfloat16", steps=15)[2]["loss"]
    assert float(last) < 0.7 * float(first)


def test_float16_loss_scaling_matches_float32_gradients():
    params, _, m, _, _ = _run("float16")
    ref_params, _, _, _, _ = _run(None)
    assert float(m["grads_finite"]) == 1.0
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-3)


def test_float16_overflow_skips_the_step():
    model, params0, state0, _ = _setup()
    params, state, m, _, _ = _run(Policy(compute_dtype=jnp.float16, loss_scale=1e30),
                                  opt=optax.sgd(0.1, momentum=0.9))
    assert float(m["grads_finite"]) == 0.0
    for a, b in zip(jax.tree.leaves((params, state)), jax.tree.leaves((params0, state0))):
        np.testing.assert_array_equal(a, b)  # nothing moved, batch-norm statistics included


def test_param_dtype_is_kept():
    params, _, _, _, _ = _run(Policy(param_dtype=jnp.bfloat16, compute_dtype=jnp.bfloat16))
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}


def test_bad_policies():
    model, *_ = _setup()
    with pytest.raises(fundl.ConfigError, match="precision must be None, 'float32'.*got precision='int8'"):
        make_train_step(model, optax.sgd(0.1), precision="int8")
    with pytest.raises(fundl.ConfigError, match="loss_scale must be > 0"):
        make_train_step(model, optax.sgd(0.1), precision=Policy(loss_scale=0.0))
    with pytest.raises(fundl.ConfigError, match="compute_dtype must be a floating dtype"):
        make_train_step(model, optax.sgd(0.1), precision=Policy(compute_dtype=jnp.int8))

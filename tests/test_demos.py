"""experiments/maml_sinusoid.py, gradient_penalty_mnist.py, dp_sgd_mnist.py with small settings."""
import importlib.util
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fundl import autodiff as AD
from fundl import models

# Subprocesses, notebooks or whole training runs: the slow tier.
pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def maml():
    return load("maml_sinusoid")


def last_line(capsys):
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_maml_meta_loss_decreases_and_adaptation_halves_the_error(maml, capsys):
    out = maml.main(["--iterations", "800", "--log-every", "200", "--meta-batch", "10",
                     "--test-tasks", "100", "--test-query", "50"])
    line = last_line(capsys)
    m = re.fullmatch(r"meta_test_mse_before=(\d+\.\d+) meta_test_mse_after=(\d+\.\d+)", line)
    assert m, line
    before, after = float(m.group(1)), float(m.group(2))
    assert (before, after) == (round(out["before"], 4), round(out["after"], 4))
    assert after <= before / 2
    assert out["history"][-1] < 0.8 * out["history"][0]     # the meta-loss went down
    assert out["after"] < out["init_after"]                  # meta-training helped adaptation


def test_maml_meta_gradient_is_the_hvp_corrected_query_gradient(maml):
    # One inner step: theta' = theta - a g_s(theta). Second-order MAML's meta-gradient is
    # (I - a H_s) g_q(theta') = g_q - a * hvp(L_s, theta, g_q); first-order MAML's is g_q(theta').
    model = models.mlp((8, 1), activation="tanh", flatten=False)
    (xs, ys), (xq, yq) = maml.sample_tasks(np.random.default_rng(0), 1, 5, 5)
    a = 0.1
    mse = lambda p, x, y: jnp.mean((model.apply(p, x) - y) ** 2)
    second = maml.make_fns(model, inner_lr=a, first_order=False)[1]
    first = maml.make_fns(model, inner_lr=a, first_order=True)[1]

    @jax.jit
    def run(key):
        theta = model.init(key, (5, 1))[1]
        g_s = jax.grad(mse)(theta, xs[0], ys[0])
        adapted = jax.tree_util.tree_map(lambda p, g: p - a * g, theta, g_s)
        g_q = jax.grad(mse)(adapted, xq[0], yq[0])
        h = AD.hvp(mse, theta, g_q, xs[0], ys[0])
        expect_2nd = jax.tree_util.tree_map(lambda g, hv: g - a * hv, g_q, h)
        got_2nd = jax.grad(second)(theta, (xs, ys), (xq, yq), 1)
        got_1st = jax.grad(first)(theta, (xs, ys), (xq, yq), 1)
        return (got_2nd, expect_2nd), (got_1st, g_q)

    results = run(jax.random.key(0))
    (_, expect_2nd), (_, expect_1st) = results
    assert not np.allclose(expect_2nd["dense1"]["w"], expect_1st["dense1"]["w"], rtol=1e-3)
    for got, expect in results:
        for u, v in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expect)):
            np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6)


def test_maml_help_lists_the_flags(maml, capsys):
    with pytest.raises(SystemExit) as e:
        maml.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--iterations", "--inner-lr", "--inner-steps", "--first-order", "--test-steps"):
        assert flag in out
    with pytest.raises(SystemExit):
        maml.main(["--iterations", "0"])


@pytest.mark.parametrize("name", ["gradient_penalty_mnist", "dp_sgd_mnist"])
def test_mnist_scripts_fall_back_to_digits_and_parse_flags(name, tmp_path, capsys):
    # The full training runs are executed by notebooks/05_gradient_penalty and 06_dp_sgd.
    mod = load(name)
    (x, y), (xt, yt), source = mod.load_subset(tmp_path / "absent", 300, 100, seed=0)
    assert "sklearn digits" in source
    assert x.shape == (300, 8, 8, 1) and xt.shape == (100, 8, 8, 1) and x.dtype == np.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and len(y) == 300
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0 and "--data-dir" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        mod.main(["--epochs", "0"])


def test_rdp_epsilon_matches_the_published_dp_sgd_mnist_figure():
    dp = load("dp_sgd_mnist")
    # TF Privacy's MNIST tutorial: N=60000, batch 256, sigma=1.1, 60 epochs, delta=1e-5 -> eps ~ 3.0
    eps = dp.rdp_epsilon(256 / 60000, 1.1, 60 * 60000 // 256, 1e-5)
    assert 2.9 < eps < 3.1
    assert dp.rdp_epsilon(0.01, 2.0, 1000, 1e-5) < dp.rdp_epsilon(0.01, 1.0, 1000, 1e-5)
    assert dp.rdp_epsilon(0.01, 0.0, 10, 1e-5) == float("inf")

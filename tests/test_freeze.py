"""Freezing parts of a model: no update, no optimizer state, eval mode; per-path train modes."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import fundl
import fundl.layers as L
from fundl import ConfigError
from fundl.train import fit, make_train_step, trainable

KEY = jax.random.key(0)


def net():
    backbone = L.Serial(L.Dense(8, name="fc"), L.BatchNorm(name="bn"), L.ReLU(),
                        L.Dropout(0.5), name="backbone")
    head = L.Serial(L.Dense(6, name="fc"), L.BatchNorm(name="bn"), L.ReLU(),
                    L.Dense(3, name="out"), name="head")
    return L.Serial(backbone, head, name="net")


def data(n=16):
    x = jax.random.normal(jax.random.key(1), (n, 5))
    return x, jnp.arange(n) % 3


def leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(u, v) for u, v in zip(la, lb))


def test_frozen_params_and_statistics_stay_bit_identical_and_the_rest_trains():
    model = net()
    _, p, s = model.init(KEY, (16, 5))
    opt = optax.adam(1e-2)
    step = make_train_step(model, opt, frozen="backbone", donate=False)
    o = step.init_opt_state(p)
    # no optimizer state for frozen leaves: adam's mu holds only the head's arrays
    assert len(jax.tree.leaves(o)) == 1 + 2 * len(jax.tree.leaves(p["head"]))
    p1, s1, o1 = p, s, o
    for i in range(5):
        p1, s1, o1, m = step(p1, s1, o1, data(), jax.random.key(i))
    assert leaves_equal(p1["backbone"], p["backbone"])
    assert leaves_equal(s1["backbone"], s["backbone"])          # running stats untouched
    assert not np.array_equal(p1["head"]["out"]["w"], p["head"]["out"]["w"])
    assert not np.array_equal(s1["head"]["bn"]["mean"], s["head"]["bn"]["mean"])
    assert np.isfinite(float(m["loss"]))


def test_frozen_layers_run_in_eval_mode_dropout_off():
    # With the backbone frozen its dropout is off: the step's loss does not depend on the key.
    model = net()
    _, p, s = model.init(KEY, (16, 5))
    opt = optax.sgd(0.0)
    step = make_train_step(model, opt, frozen="backbone", donate=False)
    o = step.init_opt_state(p)
    losses = {float(step(p, s, o, data(), jax.random.key(i))[3]["loss"]) for i in range(3)}
    assert len(losses) == 1
    unfrozen = make_train_step(model, opt, donate=False)
    o2 = opt.init(p)
    losses = {float(unfrozen(p, s, o2, data(), jax.random.key(i))[3]["loss"]) for i in range(3)}
    assert len(losses) == 3


def test_apply_with_a_train_mapping():
    model = net()
    _, p, s = model.init(KEY, (16, 5))
    x, _ = data()
    y, s1 = model.apply(p, x, state=s, train={"backbone": False, "*": True}, key=KEY)
    assert leaves_equal(s1["backbone"], s["backbone"])
    assert not np.array_equal(s1["head"]["bn"]["mean"], s["head"]["bn"]["mean"])
    y_eval, s_eval = model.apply(p, x, state=s, train=False)
    y_map, _ = model.apply(p, x, state=s, train={"*": False}, key=KEY)
    np.testing.assert_array_equal(y_map, y_eval)
    assert leaves_equal(s_eval, s)
    # unmatched paths evaluate; the first matching pattern wins
    _, s2 = model.apply(p, x, state=s, train={"head/bn": True}, key=KEY)
    assert leaves_equal(s2["backbone"], s["backbone"])
    assert not np.array_equal(s2["head"]["bn"]["mean"], s["head"]["bn"]["mean"])
    for bad in ({"backbone": 1}, {3: True}, "yes", jnp.array(True)):
        with pytest.raises(ConfigError, match="train"):
            model.apply(p, x, state=s, train=bad)


def test_scan_runs_unrolled_under_a_train_mapping():
    block = lambda: L.Residual(L.Serial(L.Dense(4), L.BatchNorm(), L.ReLU()))  # noqa: E731
    model = L.Serial(*[block() for _ in range(3)], scan=2, name="s")
    _, p, s = model.init(KEY, (8, 4))
    x = jax.random.normal(KEY, (8, 4))
    _, s1 = model.apply(p, x, state=s, train={"residual2": False, "*": True})
    assert leaves_equal(s1["residual2"], s["residual2"])
    assert not leaves_equal(s1["residual1"], s["residual1"])
    plain = L.Serial(*[block() for _ in range(3)], name="s")
    _, s2 = plain.apply(p, x, state=s, train={"residual2": False, "*": True})
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_fit_with_frozen_and_errors():
    model = net()
    _, p, s = model.init(KEY, (16, 5))
    x, y = (np.asarray(a) for a in data(32))
    res = fit(model, p, s, optax.sgd(0.1), (x, y), epochs=2, batch_size=8, key=0,
              progress=False, frozen=["backbone/fc", "backbone/bn"])
    assert leaves_equal(res.params["backbone"], p["backbone"])
    assert leaves_equal(res.state["backbone"], s["backbone"])
    assert not leaves_equal(res.params["head"], p["head"])
    with pytest.raises(ConfigError, match="frozen pattern 'backbon/x' matches no parameter"):
        fit(model, p, s, optax.sgd(0.1), (x, y), epochs=1, batch_size=8, key=0,
            progress=False, frozen="backbon/x")
    with pytest.raises(ConfigError, match="frozen"):
        make_train_step(model, optax.sgd(0.1), frozen=[""])
    step = make_train_step(model, optax.sgd(0.1, momentum=0.9), frozen="backbone")
    with pytest.raises(ConfigError, match="init_opt_state"):
        step(p, s, optax.sgd(0.1, momentum=0.9).init(p), (x[:8], y[:8]), None)


def test_trainable_marks_frozen_leaves_none():
    p = {"a": {"w": jnp.ones(2), "b": jnp.ones(1)}, "b": {"w": jnp.ones(3)}}
    t = trainable(p, ("a/w",))
    assert t["a"]["w"] is None and t["a"]["b"] is not None and t["b"]["w"] is not None


@pytest.mark.slow
def test_frozen_backbone_matches_pytorch_eval_and_requires_grad_false():
    """fundl's frozen= against torch: backbone.eval() + requires_grad_(False), 3 SGD steps."""
    model = net()
    _, p, s = model.init(KEY, (16, 5))
    rng = np.random.default_rng(0)
    s = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape), jnp.float32), s)
    tb = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                             torch.nn.Dropout(0.5))
    th = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(),
                             torch.nn.Linear(6, 3))
    t = lambda a: torch.tensor(np.asarray(a))  # noqa: E731
    with torch.no_grad():
        for tm, fp, fs in ((tb, p["backbone"], s["backbone"]), (th, p["head"], s["head"])):
            tm[0].weight.copy_(t(fp["fc"]["w"]).T)
            tm[0].bias.copy_(t(fp["fc"]["b"]))
            tm[1].weight.copy_(t(fp["bn"]["scale"]))
            tm[1].bias.copy_(t(fp["bn"]["bias"]))
            tm[1].running_mean.copy_(t(fs["bn"]["mean"]))
            tm[1].running_var.copy_(t(fs["bn"]["var"]))
        th[3].weight.copy_(t(p["head"]["out"]["w"]).T)
        th[3].bias.copy_(t(p["head"]["out"]["b"]))
    tb.eval()
    tb.requires_grad_(False)
    th.train()
    topt = torch.optim.SGD(th.parameters(), lr=0.1)
    step = make_train_step(model, optax.sgd(0.1), frozen="backbone", donate=False)
    o = step.init_opt_state(p)
    x, y = data()
    for i in range(3):
        p, s, o, m = step(p, s, o, (x, y), jax.random.key(i))
        topt.zero_grad()
        loss = torch.nn.functional.cross_entropy(th(tb(t(x))), t(y).long())
        loss.backward()
        topt.step()
    np.testing.assert_allclose(p["head"]["out"]["w"], th[3].weight.detach().numpy().T,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s["head"]["bn"]["var"], th[1].running_var.numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(s["backbone"]["bn"]["mean"], tb[1].running_mean.numpy())


def test_param_labels_and_frozen_share_one_matching_rule():
    p = {"conv1": {"w": jnp.ones(1)}, "conv10": {"w": jnp.ones(1)}}
    labels = fundl.train.param_labels(p, {"conv1": "x"}, default="y")
    assert labels == {"conv1": {"w": "x"}, "conv10": {"w": "y"}}
    t = trainable(p, "conv1")
    assert t["conv1"]["w"] is None and t["conv10"]["w"] is not None

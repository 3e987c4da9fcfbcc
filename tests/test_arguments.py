"""Arguments (issue 13, item 5): runner flags checked at parse time like argparse's own errors,
integer images refused by float layers and ops, int seeds accepted wherever a key is taken (bad
keys refused with one message), the optimizer of ``fit``, a non-scalar ``loss_fn``, and calling
a layer object.
"""
from __future__ import annotations

import importlib.util
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fundl
import fundl.autodiff as A
import fundl.data as D
import fundl.functional as F
import fundl.initializers
import fundl.layers as L
import fundl.train as T
from fundl import experiment as E

REPO = pathlib.Path(__file__).resolve().parents[1]
RUNNERS = ("quickstart", "mnist", "cifar10", "finetune", "dp_sgd_mnist", "gradient_penalty_mnist",
           "maml_sinusoid", "visualize_filters")
_LOADED: dict = {}


def _runner(name: str):
    if name not in _LOADED:
        spec = importlib.util.spec_from_file_location(f"args_{name}", REPO / "experiments" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _LOADED[name] = mod
    return _LOADED[name]


# -- runner flags ----------------------------------------------------------------------------

# Bad values of the flags every add_training_flags runner shares: (argv, flag named in stderr).
_SHARED_BAD = [
    (["--batch-size", "0"], "--batch-size"), (["--batch-size", "-3"], "--batch-size"),
    (["--batch-size", "1.5"], "--batch-size"), (["--epochs", "-1"], "--epochs"),
    (["--epochs", "x"], "--epochs"), (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"),
    (["--lr", "-1"], "--lr"), (["--lr", "0"], "--lr"), (["--lr", "fast"], "--lr"),
    (["--momentum", "-1"], "--momentum"), (["--momentum", "1"], "--momentum"),
    (["--momentum", "1.5"], "--momentum"), (["--momentum", "nan"], "--momentum"),
    (["--weight-decay", "-1e-4"], "--weight-decay"), (["--weight-decay", "inf"], "--weight-decay"),
    (["--seed", "-1"], "--seed"), (["--stop-after", "-1"], "--stop-after"),
    (["--epochs", "2", "--stop-after", "3"], "--stop-after"),
    (["--limit-train", "-100"], "--limit-train"), (["--limit-train", "0"], "--limit-train"),
    (["--limit-test", "-1"], "--limit-test"), (["--eval-batch-size", "0"], "--eval-batch-size"),
    (["--optimizer", "adagrad"], "--optimizer"), (["--schedule", "linear"], "--schedule"),
    (["--init-from", "/nonexistent/w.safetensors"], "--init-from"),
    (["--export-params", "/nonexistent/dir/p.safetensors"], "--export-params"),
    (["--export-model", "/nonexistent/dir/m.bin"], "--export-model"),
    (["--fsdp", "--data-parallel"], "--data-parallel"), (["--data-parallel", "--fsdp"], "--fsdp"),
]

# Each runner's own flags.
_OWN_BAD = {
    "quickstart": [(["--epochs", "0"], "--epochs"), (["--batch-size", "0"], "--batch-size"),
                   (["--lr", "nan"], "--lr"), (["--lr", "-1"], "--lr"), (["--seed", "-2"], "--seed")],
    "mnist": [(["--synthetic", "0"], "--synthetic"), (["--synthetic", "-5"], "--synthetic"),
              (["--classes", "a-b"], "--classes"), (["--classes", "3,3"], "--classes"),
              (["--dataset", "svhn"], "--dataset")],
    "cifar10": [(["--synthetic", "0"], "--synthetic"), (["--model", "vgg"], "--model")],
    "finetune": [(["--lr", "inf"], "--lr"), (["--lr", "0"], "--lr"), (["--epochs", "0"], "--epochs"),
                 (["--batch-size", "0"], "--batch-size"), (["--train-size", "-1"], "--train-size"),
                 (["--pretrain-epochs", "0"], "--pretrain-epochs"),
                 (["--pretrained-classes", "0"], "--pretrained-classes"),
                 (["--synthetic", "0"], "--synthetic"), (["--classes", "x"], "--classes"),
                 (["--pretrain-classes", ""], "--pretrain-classes"),
                 (["--init-from", "/nonexistent.pt"], "--init-from"), (["--seed", "-1"], "--seed")],
    "dp_sgd_mnist": [(["--train-size", "0"], "--train-size"), (["--test-size", "0"], "--test-size"),
                     (["--epochs", "0"], "--epochs"), (["--batch-size", "0"], "--batch-size"),
                     (["--lr", "nan"], "--lr"), (["--max-norm", "0"], "--max-norm"),
                     (["--noise-multiplier", "-1"], "--noise-multiplier"),
                     (["--delta", "0"], "--delta"), (["--delta", "1"], "--delta"),
                     (["--hidden", "0"], "--hidden"), (["--seed", "-1"], "--seed"),
                     (["--train-size", "100", "--batch-size", "200"], "--batch-size")],
    "gradient_penalty_mnist": [(["--epochs", "0"], "--epochs"), (["--batch-size", "0"], "--batch-size"),
                               (["--lr", "inf"], "--lr"), (["--lam", "-1"], "--lam"),
                               (["--fgsm-eps", "-0.1"], "--fgsm-eps"), (["--hidden", "0"], "--hidden"),
                               (["--train-size", "-5"], "--train-size"),
                               (["--train-size", "10", "--batch-size", "128"], "--batch-size")],
    "maml_sinusoid": [(["--iterations", "0"], "--iterations"), (["--meta-batch", "0"], "--meta-batch"),
                      (["--k-shot", "0"], "--k-shot"), (["--k-query", "-1"], "--k-query"),
                      (["--inner-steps", "-1"], "--inner-steps"), (["--test-steps", "-1"], "--test-steps"),
                      (["--inner-lr", "-0.1"], "--inner-lr"), (["--meta-lr", "0"], "--meta-lr"),
                      (["--meta-lr", "nan"], "--meta-lr"), (["--hidden", "0"], "--hidden"),
                      (["--log-every", "0"], "--log-every"), (["--test-tasks", "0"], "--test-tasks")],
    "visualize_filters": [(["--epochs", "-1"], "--epochs"), (["--limit-train", "-100"], "--limit-train"),
                          (["--index", "-1"], "--index"), (["--seed", "-1"], "--seed"),
                          (["--from-run", "/nonexistent/run"], "--from-run")],
}

_CASES = [(name, argv, flag) for name in ("mnist", "cifar10") for argv, flag in _SHARED_BAD]
_CASES += [(name, argv, flag) for name, cases in _OWN_BAD.items() for argv, flag in cases]


@pytest.mark.parametrize("name,argv,flag", _CASES,
                         ids=[f"{n}:{' '.join(a)}" for n, a, _ in _CASES])
def test_bad_runner_flag_is_an_argparse_error(name, argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        _runner(name).parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err or f"argument {flag}/" in err, err


@pytest.mark.parametrize("name", ["mnist", "cifar10", "finetune", "visualize_filters"])
def test_out_must_not_be_an_existing_file(name, tmp_path, capsys):
    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(SystemExit) as e:
        _runner(name).parse_args(["--out", str(f)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --out" in err and "existing file" in err


def test_export_into_the_run_directory_and_existing_paths_parse(tmp_path):
    init = tmp_path / "w.safetensors"
    init.write_bytes(b"")
    args = _runner("mnist").parse_args(["--out", str(tmp_path / "run"), "--export-params",
                                        str(tmp_path / "run" / "p.safetensors"), "--init-from", str(init),
                                        "--epochs", "2", "--stop-after", "2"])
    assert args.stop_after == 2 and args.init_from == init


_DEFAULTS = {
    "quickstart": {"epochs": 20, "batch_size": 32, "lr": 2e-3, "seed": 0},
    "mnist": {"epochs": 10, "batch_size": 100, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0,
              "limit_train": None, "stop_after": None, "eval_batch_size": 1000, "classes": None},
    "cifar10": {"epochs": 30, "batch_size": 128, "lr": 0.1, "weight_decay": 5e-4, "synthetic": None},
    "finetune": {"epochs": 20, "batch_size": 50, "lr": 0.05, "classes": "5-9", "pretrain_classes": "0-4"},
    "dp_sgd_mnist": {"train_size": 6000, "batch_size": 200, "delta": 1e-5, "noise_multiplier": 1.1},
    "gradient_penalty_mnist": {"train_size": 6000, "lam": 1.0, "fgsm_eps": 0.1},
    "maml_sinusoid": {"iterations": 5000, "inner_steps": 1, "inner_lr": 0.01, "meta_lr": 1e-3},
    "visualize_filters": {"epochs": 1, "limit_train": None, "index": 0, "from_run": None},
}


@pytest.mark.parametrize("name", RUNNERS)
def test_defaults_and_good_flags_still_parse(name):
    args = vars(_runner(name).parse_args([]))
    for k, v in _DEFAULTS[name].items():
        assert args[k] == v and type(args[k]) is type(v), (k, args[k])


def test_good_shared_flags_parse_to_their_types():
    a = _runner("mnist").parse_args(["--batch-size", "7", "--lr", "1e-3", "--momentum", "0",
                                     "--weight-decay", "0", "--epochs", "0", "--limit-train", "5",
                                     "--classes", "0-2,7", "--seed", "3"])
    assert (a.batch_size, a.lr, a.momentum, a.weight_decay, a.epochs, a.limit_train) == (7, 1e-3, 0.0, 0.0, 0, 5)
    assert a.classes == "0-2,7" and a.seed == 3


def test_flag_types_directly():
    import argparse

    assert E.positive_int("3") == 3 and E.non_negative_int("0") == 0
    assert E.momentum_float("0.99") == 0.99 and E.open_unit_float("0.5") == 0.5
    for fn, text in [(E.positive_int, "0"), (E.non_negative_int, "-1"), (E.positive_float, "-inf"),
                     (E.non_negative_float, "nan"), (E.momentum_float, "1"),
                     (E.open_unit_float, "0"), (E.class_spec, "1-x")]:
        with pytest.raises(argparse.ArgumentTypeError):
            fn(text)


@pytest.mark.parametrize("kw,fragment", [
    ({"learning_rate": float("nan")}, "learning rate must be a finite number > 0"),
    ({"learning_rate": float("inf")}, "learning rate must be a finite number > 0"),
    ({"learning_rate": -1.0}, "got -1.0"), ({"learning_rate": 0}, "got 0"),
    ({"momentum": -1.0}, "momentum must be in [0, 1)"), ({"momentum": 1.5}, "momentum=1.5"),
    ({"weight_decay": -1e-4}, "weight_decay must be a finite number >= 0"),
    ({"weight_decay": float("inf")}, "weight_decay=inf")])
def test_make_optimizer_and_schedule_refuse_meaningless_numbers(kw, fragment):
    kw = {"learning_rate": 0.1, **kw}
    lr = kw.pop("learning_rate")
    with pytest.raises(fundl.ConfigError, match=f"make_optimizer: .*{re.escape(fragment)}"):
        E.make_optimizer("momentum", lr, **kw)
    if not kw:  # a bad learning rate: the schedule refuses it too
        with pytest.raises(fundl.ConfigError, match="make_schedule: learning rate must be"):
            E.make_schedule("cosine", lr, epochs=1, steps_per_epoch=1)
    E.make_optimizer("sgd", E.make_schedule("cosine", 0.1, epochs=1, steps_per_epoch=1))  # schedules pass


# -- integer images --------------------------------------------------------------------------

_FLOAT_LAYERS = [L.Conv(2, 3), L.ConvTranspose(2, 3), L.Dense(3), L.BatchNorm(), L.LayerNorm(),
                 L.AvgPool(2), L.AdaptiveAvgPool(2), L.GlobalAvgPool()]


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.bool_])
@pytest.mark.parametrize("layer", _FLOAT_LAYERS, ids=lambda l: type(l).__name__)
def test_integer_images_refused_by_float_layers(layer, dtype):
    net = L.Serial(L.Identity(), layer, name="net")
    x = np.full((2, 6, 6, 1), 1, dtype)
    out = net.init(0, x.shape)
    kw = {"state": out[2]} if net.stateful else {}
    with pytest.raises(fundl.DataError) as e:
        net.apply(out[1], x, **kw)
    msg = str(e.value)
    assert f"{type(layer).__name__} 'net/" in msg and np.dtype(dtype).name in msg
    assert "x.astype(np.float32) / 255" in msg and "standardizer" in msg
    with pytest.raises(fundl.DataError):  # at trace time under jit too
        jax.jit(lambda p, x: net.apply(p, x, **kw))(out[1], x)
    net.apply(out[1], x.astype(np.float32) / 255, **kw)  # the fix works


def test_max_pool_and_a_casting_first_layer_keep_integers():
    x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
    net = L.MaxPool(2)
    assert net.apply(net.init(0, x.shape)[1], x).dtype == np.uint8
    cast = L.Serial(L.Lambda(lambda v: v.astype(jnp.float32) / 255), L.Conv(1, 3))
    assert cast.apply(cast.init(0, x.shape)[1], x).dtype == jnp.float32


def test_integer_functional_ops_refused():
    xi = np.full((1, 5, 5, 1), 255, np.int32)
    wi = np.ones((3, 3, 1, 1), np.int32)
    for call, arg in [(lambda: F.conv(xi, wi), "x"), (lambda: F.conv(xi.astype(np.float32), wi), "w"),
                      (lambda: F.conv_transpose(xi, wi.astype(np.float32)), "x"),
                      (lambda: F.linear(np.ones((2, 3), np.uint8), np.ones((3, 2), np.float32)), "x"),
                      (lambda: F.linear(np.ones((2, 3), np.float32), np.ones((3, 2), np.int8)), "w")]:
        with pytest.raises(fundl.DataError, match=f"{arg} has dtype int|{arg} has dtype uint"):
            call()
    # 255 * 255 * 9 no longer wraps: the float result is exact
    assert float(F.conv(xi.astype(np.float32), wi.astype(np.float32))[0, 0, 0, 0]) == 255 * 9
    assert F.avg_pool(xi, 2).dtype == jnp.float32  # averaging promotes, as documented


# -- keys ------------------------------------------------------------------------------------

def _same(a, b):
    return all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda u, v: bool(jnp.array_equal(u, v)), a, b)))


_X = jnp.ones((4, 8, 8, 3))
_NET = L.Serial(L.Flatten(), L.Dense(5), L.Dropout(0.5), name="net")
_P = _NET.init(jax.random.key(0), (4, 8, 8, 3))[1]

# name -> f(key): every public entry point that takes a key.
_KEY_TAKERS = {
    "Layer.init": lambda k: _NET.init(k, (4, 8, 8, 3)),
    "BatchNorm init_with_state": lambda k: L.Serial(L.Conv(2, 3), L.BatchNorm()).init_with_state(k, (2, 6, 6, 1)),
    "Layer.apply(key=)": lambda k: _NET.apply(_P, _X, key=k, train=True),
    "F.dropout": lambda k: F.dropout(_X, 0.5, key=k),
    "random_crop": lambda k: D.random_crop(k, _X),
    "random_flip": lambda k: D.random_flip(k, _X),
    "augment_cifar": lambda k: D.augment_cifar(k, _X),
    "jacobians": lambda k: A.jacobians(_NET, _P, _X[:2], key=k, train=True),
    "add_noise": lambda k: A.add_noise({"w": jnp.ones(3)}, key=k, noise_multiplier=1.0, max_norm=1.0,
                                       batch_size=2),
    "initializers.torch_conv_init": lambda k: fundl.initializers.torch_conv_init(k, (3, 3, 2, 4)),
    "surgery.adapt": lambda k: fundl.surgery.adapt(L.Serial(L.Flatten(), L.Dense(7), name="net"), _P, {},
                                                   key=k, input_shape=(4, 8, 8, 3))[0],
}


@pytest.mark.parametrize("name", list(_KEY_TAKERS))
def test_int_seed_is_jax_random_key_of_it(name):
    f = _KEY_TAKERS[name]
    typed = f(jax.random.key(3))
    assert _same(f(3), typed) and _same(f(np.int64(3)), typed)
    assert _same(f(jax.random.PRNGKey(3)), typed)  # a legacy key is the same key


_BAD_KEYS = [("seed", "str 'seed'"), (1.5, "float 1.5"), (True, "bool True"), (None, "NoneType"),
             (jax.random.split(jax.random.key(0), 3), "shape (3,)"),
             (np.zeros(3, np.uint32), "uint32 and shape (3,)"), (np.zeros(2, np.float32), "float32")]


@pytest.mark.parametrize("name", [n for n in _KEY_TAKERS if n not in ("Layer.apply(key=)", "jacobians")])
@pytest.mark.parametrize("bad,fragment", _BAD_KEYS, ids=[f for _, f in _BAD_KEYS])
def test_bad_key_refused_with_the_shared_message(name, bad, fragment):
    with pytest.raises(fundl.ConfigError) as e:
        _KEY_TAKERS[name](bad)
    msg = str(e.value)
    if bad is None and name == "F.dropout":  # an optional key: its own message says when it is needed
        assert "needs randomness; pass key=" in msg
        return
    assert "key must be a jax.random.key(seed), a legacy jax.random.PRNGKey(seed)" in msg
    assert "or an int seed" in msg and fragment in msg


def test_bad_key_in_apply_names_the_model():
    with pytest.raises(fundl.ConfigError, match=r"Serial 'net'.apply: key must be .* got str 'k'"):
        _NET.apply(_P, _X, key="k", train=True)


def test_int_seed_in_fit_and_a_key_under_jit():
    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    y = np.arange(16) % 3
    net = L.Serial(L.Dense(3), L.Dropout(0.2))
    p = net.init(0, (16, 4))[1]
    runs = [T.fit(net, p, {}, optax.sgd(0.1), (x, y), epochs=1, batch_size=8, key=k, progress=False)
            for k in (5, jax.random.key(5))]
    assert _same(runs[0].params, runs[1].params)
    # a traced int seed (jit) works as a key too
    f = jax.jit(lambda k: F.dropout(jnp.ones(8), 0.5, key=k))
    assert _same(f(3), F.dropout(jnp.ones(8), 0.5, key=jax.random.key(3)))


# -- optimizer, loss, calling a layer --------------------------------------------------------

def _data(n=8):
    return np.ones((n, 4), np.float32), np.arange(n) % 3


@pytest.mark.parametrize("opt", ["adam", None, 0.1, optax.adam], ids=["str", "None", "float", "factory"])
def test_fit_refuses_a_non_optimizer_like_make_train_step(opt):
    net = L.Dense(3)
    p = net.init(0, (8, 4))[1]
    with pytest.raises(fundl.ConfigError, match="fit: optimizer must be an optax GradientTransformation"):
        T.fit(net, p, {}, opt, _data(), epochs=1, batch_size=4, key=0, progress=False)
    with pytest.raises(fundl.ConfigError, match="make_train_step: optimizer must be an optax"):
        T.make_train_step(net, opt)


def test_optimizer_name_gets_a_hint():
    with pytest.raises(fundl.ConfigError, match=r"optax.adam\(1e-3\) or fundl.experiment.make_optimizer"):
        T.fit(L.Dense(3), {}, {}, "adam", _data(), epochs=1, batch_size=4, key=0)


def _per_example(logits, y):
    return F.cross_entropy(logits, y, reduction="none")


def test_non_scalar_loss_fn_is_explained():
    net = L.Dense(3)
    p = net.init(0, (8, 4))[1]
    want = (r"loss_fn must return a scalar \(the batch mean\); got shape \(4,\): reduce it, "
            r"e.g. jnp.mean\(...\) or reduction='mean'")
    with pytest.raises(fundl.ConfigError, match=want):
        T.fit(net, p, {}, optax.sgd(0.1), _data(), epochs=1, batch_size=4, key=0, progress=False,
              loss_fn=_per_example)
    opt = optax.sgd(0.1)
    step = T.make_train_step(net, opt, loss_fn=_per_example)
    with pytest.raises(fundl.ConfigError, match=want):
        step(p, {}, opt.init(p), tuple(a[:4] for a in _data()), None)
    with pytest.raises(fundl.ConfigError, match="evaluate: loss_fn must return a scalar"):
        T.evaluate(net, p, {}, _data(), batch_size=4, loss_fn=_per_example)


@pytest.mark.parametrize("model", [L.Dense(3), L.Serial(L.Conv(2, 3), L.BatchNorm(), name="net")],
                         ids=["Dense", "Serial"])
def test_calling_a_layer_says_use_apply(model):
    x = jnp.ones((2, 6, 6, 4))
    for call in (lambda: model(x), lambda: model({}, x), lambda: model.init(0, x.shape)[1] and model(x=x)):
        with pytest.raises(TypeError, match=r"fundl layers are not callable: use layer.apply\(params, x\)") as e:
            call()
        assert not isinstance(e.value, fundl.FundlError)


def test_a_layer_where_a_function_is_expected_is_refused_early():
    with pytest.raises(fundl.ConfigError, match="activation must be a function"):
        L.Residual(L.Dense(3), activation=L.ReLU())
    with pytest.raises(fundl.ConfigError, match=r"hvp: loss must be a function; got the layer Dense"):
        A.hvp(L.Dense(3), {}, {})

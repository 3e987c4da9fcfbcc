"""Experiment runners: flags, outputs, resume bit for bit, and the CIFAR-10 pipeline without data.

The runners are imported from ``experiments/`` and their ``main(argv)`` called in
process (one JAX start for the whole file). Real MNIST comes from the shared
data dir (tests that need it skip with the reason when it is absent); the rest
uses ``--synthetic`` arrays or a tiny local TFDS copy (``tfds_dir``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fundl
import fundl.data as D
import fundl.layers as L
from fundl import experiment as E

from .conftest import TFDS_SIZES

# Subprocesses, notebooks or whole training runs: the slow tier.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"real MNIST not found at {MNIST_DIR} (the shared data dir next to the repo)")
EPOCH_KEYS = {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
              "epoch_seconds", "examples_per_second", "lr"}
TIMING_KEYS = {"epoch_seconds", "examples_per_second"}


def _script(name):
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mnist_runner = _script("mnist")
cifar_runner = _script("cifar10")


def _last_line(capsys):
    return capsys.readouterr().out.strip().splitlines()[-1]


def _restore_params(out: Path, epoch: int):
    got_epoch, tree = E.load_checkpoint(out, epoch)
    assert got_epoch == epoch
    return tree


def _assert_trees_identical(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bit for bit, not allclose


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


# -- --help ---------------------------------------------------------------------------

@pytest.mark.parametrize("runner", [mnist_runner, cifar_runner], ids=["mnist", "cifar10"])
def test_help_documents_every_flag(runner, capsys, monkeypatch):
    captured = {}
    real_parse = argparse.ArgumentParser.parse_args

    def spy(self, *args, **kwargs):
        captured["parser"] = self
        return real_parse(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", spy)
    with pytest.raises(SystemExit) as info:
        runner.parse_args(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    actions = [a for a in captured["parser"]._actions if a.option_strings and a.dest != "help"]
    assert len(actions) >= 18
    for action in actions:
        assert action.help and len(action.help) > 3, action.option_strings
        assert action.option_strings[-1] in text
    for flag in ("--optimizer", "--lr", "--schedule", "--batch-size", "--epochs", "--seed", "--model",
                 "--resume", "--out", "--data-dir"):
        assert flag in text


# -- MNIST --------------------------------------------------------------------------------

@needs_mnist
def test_mnist_smoke_real_data(tmp_path, capsys):
    out = tmp_path / "run"
    records = mnist_runner.main(["--data-dir", str(MNIST_DIR), "--epochs", "1", "--limit-train", "500",
                                 "--limit-test", "300", "--out", str(out), "--no-progress"])
    assert re.fullmatch(r"test_accuracy=0\.\d{4}", _last_line(capsys))
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = E.read_metrics(out / "metrics.jsonl")
    assert lines == records and len(lines) == 1 and set(lines[0]) == EPOCH_KEYS
    assert lines[0]["epoch"] == 1 and lines[0]["lr"] == 0.1
    assert 0.2 < lines[0]["test_accuracy"] <= 1.0  # 5 SGD steps on real digits beat chance (0.1)
    assert (out / "checkpoints" / "1").is_dir()
    epoch, tree = E.load_checkpoint(out)
    assert epoch == 1 and tree["params"]["conv1"]["w"].shape == (5, 5, 1, 32)
    with pytest.raises(fundl.ConfigError, match=r"no checkpoint of epoch 7 .* have epochs \[1\]"):
        E.load_checkpoint(out, 7)
    with pytest.raises(fundl.ConfigError, match="no checkpoints/ in"):
        E.load_checkpoint(tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert config["limit_train"] == 500 and config["model"] == "convnet_mnist"


def _mnist_args(out, *extra):
    return ["--synthetic", "240", "--batch-size", "40", "--out", str(out), "--no-progress",
            "--optimizer", "momentum", "--schedule", "cosine", "--weight-decay", "1e-4", *extra]


def test_continue_training_from_a_checkpoint_with_its_optax_state(tmp_path):
    out = tmp_path / "run"
    mnist_runner.main(_mnist_args(out, "--epochs", "1"))
    lr = E.make_schedule("cosine", 0.1, epochs=1, steps_per_epoch=6)   # as the run's
    opt = E.make_optimizer("momentum", lr, momentum=0.9, weight_decay=1e-4)
    epoch, tree = E.load_checkpoint(out, optimizer=opt)
    params, state, opt_state = tree["params"], tree["state"], tree["opt_state"]
    want = jax.eval_shape(opt.init, params)
    assert jax.tree.structure(opt_state) == jax.tree.structure(want)
    model = fundl.models.convnet_mnist()
    step = fundl.train.make_train_step(model, opt)
    x = np.random.default_rng(0).normal(size=(40, 28, 28, 1)).astype(np.float32)
    params, state, opt_state, m = step(params, state, opt_state, (x, np.zeros(40, np.int32)), None)
    assert np.isfinite(float(m["loss"]))
    with pytest.raises(fundl.ConfigError, match="was the run trained with this optimizer"):
        E.load_checkpoint(out, optimizer=optax.adam(1e-3))


def test_mnist_resume_equals_uninterrupted(tmp_path, capsys):
    """2 epochs in one go == 1 epoch, stop, --resume 1 epoch: parameter for parameter."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    full = mnist_runner.main(_mnist_args(straight, "--epochs", "2"))
    first = mnist_runner.main(_mnist_args(split, "--epochs", "2", "--stop-after", "1"))
    assert len(first) == 1 and not (split / "checkpoints" / "2").exists()
    resumed = mnist_runner.main(_mnist_args(split, "--epochs", "2", "--resume"))
    assert "resumed from" in capsys.readouterr().out
    _assert_trees_identical(_restore_params(straight, 2), _restore_params(split, 2))
    assert _without_timing(resumed) == _without_timing(full)
    assert E.read_metrics(split / "metrics.jsonl") == resumed  # no duplicated epoch lines
    # A resume of a finished run trains nothing and reports the last accuracy.
    again = mnist_runner.main(_mnist_args(split, "--epochs", "2", "--resume"))
    assert again == resumed
    assert _last_line(capsys) == f"test_accuracy={resumed[-1]['test_accuracy']:.4f}"


def test_resume_refuses_other_settings(tmp_path):
    out = tmp_path / "run"
    mnist_runner.main(_mnist_args(out, "--epochs", "1", "--limit-train", "80"))
    with pytest.raises(fundl.ConfigError, match=r"settings differ.*lr: 0\.1 -> 0\.05"):
        mnist_runner.main(_mnist_args(out, "--epochs", "2", "--limit-train", "80", "--lr", "0.05", "--resume"))
    with pytest.raises(fundl.ConfigError, match="already holds checkpoints; pass --resume"):
        mnist_runner.main(_mnist_args(out, "--epochs", "2", "--limit-train", "80"))


def test_mnist_missing_data_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("FUNDL_DATA_DIR", raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    with pytest.raises(D.DataUnavailableError, match="Tried, in order"):
        mnist_runner.main(["--data-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])


# -- the generic loop: batch norm, dropout, augmentation, schedule ---------------------------

def _small_model():
    return L.Serial(L.Conv(4, 3, padding=1, name="conv"), L.BatchNorm(name="bn"), L.ReLU(),
                    L.Flatten(), L.Dropout(0.3), L.Dense(10, name="fc"))


def _tiny_data(seed, n):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32)


def test_run_resume_with_state_dropout_augmentation(tmp_path, capsys):
    train, test = _tiny_data(0, 64), _tiny_data(1, 16)
    norm = D.standardizer(train[0], per_channel=True)

    def go(out, **kw):
        lr = E.make_schedule("step", 0.05, epochs=3, steps_per_epoch=4)
        opt = E.make_optimizer("nesterov", lr, weight_decay=5e-4)
        return E.run(_small_model(), opt, train, test, out=out, epochs=3, batch_size=16, seed=3,
                     transform=norm, augment=D.augment_cifar, progress=False, learning_rate=lr,
                     config={"recipe": "tiny"}, **kw)

    full = go(tmp_path / "a")
    go(tmp_path / "b", stop_after=1)
    go(tmp_path / "b", stop_after=2, resume=True)
    resumed = go(tmp_path / "b", resume=True)
    a, b = _restore_params(tmp_path / "a", 3), _restore_params(tmp_path / "b", 3)
    assert set(a) == {"params", "state", "opt_state"} and a["state"]  # batch-norm statistics saved
    _assert_trees_identical(a, b)
    assert _without_timing(resumed) == _without_timing(full)
    assert [r["lr"] for r in full] == pytest.approx([0.05, 0.005, 0.0005], rel=1e-6)
    # Only the two newest checkpoints are kept.
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "3"]


def test_run_rejects_bad_arguments(tmp_path):
    train = _tiny_data(0, 8)
    opt = optax.sgd(0.1)
    with pytest.raises(fundl.ConfigError, match="batch_size=16 exceeds the 8 training examples"):
        E.run(_small_model(), opt, train, train, out=tmp_path, epochs=1, batch_size=16)
    with pytest.raises(fundl.ConfigError, match="epochs must be an int >= 0; got epochs=-1"):
        E.run(_small_model(), opt, train, train, out=tmp_path, epochs=-1, batch_size=4)
    with pytest.raises(fundl.ConfigError, match="model must be a fundl Layer"):
        E.run(lambda x: x, opt, train, train, out=tmp_path, epochs=1, batch_size=4)
    with pytest.raises(fundl.ShapeError, match="len\\(x\\)=8, len\\(y\\)=7"):
        E.run(_small_model(), opt, (train[0], train[1][:7]), train, out=tmp_path, epochs=1, batch_size=4)


def test_make_optimizer_decays_weights_only():
    params = {"fc": {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}}
    zero = jax.tree.map(jnp.zeros_like, params)
    opt = E.make_optimizer("sgd", 0.5, weight_decay=0.1)
    updates, _ = opt.update(zero, opt.init(params), params)
    np.testing.assert_allclose(updates["fc"]["w"], -0.5 * 0.1 * np.ones((2, 2)))
    np.testing.assert_array_equal(updates["fc"]["b"], 0.0)
    with pytest.raises(fundl.ConfigError, match="unknown optimizer name='lbfgs'"):
        E.make_optimizer("lbfgs", 0.1)
    with pytest.raises(fundl.ConfigError, match="unknown schedule name='linear'"):
        E.make_schedule("linear", 0.1, epochs=1, steps_per_epoch=1)


def test_cosine_schedule_spans_the_run():
    s = E.make_schedule("cosine", 0.1, epochs=2, steps_per_epoch=5)
    assert float(s(0)) == pytest.approx(0.1)
    assert float(s(5)) == pytest.approx(0.05)
    assert float(s(10)) == pytest.approx(0.0, abs=1e-9)


def test_plot_curves_writes_png(tmp_path):
    records = [{"epoch": 1, "train_loss": 1.0, "test_loss": 0.9, "train_accuracy": 0.6, "test_accuracy": 0.7},
               {"epoch": 2, "train_loss": 0.5, "test_loss": 0.6, "train_accuracy": 0.8, "test_accuracy": None}]
    path = E.plot_curves(records, tmp_path / "c.png", title="t")
    from PIL import Image

    assert Image.open(path).size == (1000, 400)
    assert not list(tmp_path.glob("*.tmp*"))


# -- CIFAR-10: the whole pipeline (ResNet-18, augmentation, cosine) without the data -------------

@pytest.mark.slow
def test_cifar10_on_tfds_copy_and_synthetic(tfds_dir, no_download, tmp_path, capsys):
    out = tmp_path / "tfds"
    records = cifar_runner.main(["--data-dir", str(tfds_dir), "--source", "tfds", "--epochs", "1",
                                 "--batch-size", "4", "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert f"{TFDS_SIZES['train']} train / {TFDS_SIZES['test']} test" in text and "crop + flip" in text
    assert re.fullmatch(r"test_accuracy=0\.\d{4}", text.strip().splitlines()[-1])
    assert len(records) == 1 and set(records[0]) == EPOCH_KEYS
    assert (out / "curves.png").is_file() and (out / "checkpoints" / "1").is_dir()
    restored = _restore_params(out, 1)
    assert restored["params"]["conv1"]["w"].shape == (3, 3, 3, 64)  # the CIFAR stem
    assert restored["state"]  # batch-norm running statistics

    synthetic = cifar_runner.main(["--synthetic", "16", "--epochs", "1", "--batch-size", "8",
                                   "--out", str(tmp_path / "syn"), "--no-progress", "--no-augment"])
    assert len(synthetic) == 1 and np.isfinite(synthetic[0]["train_loss"])
    assert "no augmentation" in capsys.readouterr().out


def test_load_splits_synthetic_and_limits():
    train, test, text = E.load_splits("cifar10", image_shape=(4, 5, 3), synthetic=40, seed=1,
                                      limit_train=30, limit_test=None)
    assert train[0].shape == (30, 4, 5, 3) and train[0].dtype == np.uint8
    assert test[0].shape == (10, 4, 5, 3) and test[1].dtype == np.int32
    assert 0 <= train[1].min() and train[1].max() < 10 and text == "40 synthetic 4x5x3 images"
    again = E.load_splits("cifar10", image_shape=(4, 5, 3), synthetic=40, seed=1)
    np.testing.assert_array_equal(again[0][0][:30], train[0])  # the seed fixes the arrays


@pytest.mark.parametrize("name, shape", [("convnet_mnist", (4, 28, 28, 1)), ("lenet5", (4, 28, 28, 1))])
def test_fast_compiled_init_is_bit_identical(name, shape):
    # private on purpose: run() compiles its one-off init at XLA CPU optimisation level 1
    # (E._compile_fast, ~3x less compile time); the params must equal model.init's bit for bit.
    model = getattr(fundl.models, name)(10)
    key = jax.random.key(3)
    _, params, state = E._compile_fast(lambda k: model.init_with_state(k, shape), key)
    _, ref_params, ref_state = model.init_with_state(key, shape)
    jax.tree.map(np.testing.assert_array_equal, (params, state), (ref_params, ref_state))


def test_background_compile_is_reused(tmp_path):
    # private on purpose: run() compiles the train step in a thread while it initialises
    # (E._compile_in_background); the first step must find that executable (no XLA compile).
    x, y = _tiny_data(0, 16)
    x = x.astype(np.float32)
    model, opt = _small_model(), optax.sgd(0.1)
    step = E._train_step_with_augment(fundl.train.make_train_step(model, opt), None, False)
    E._compile_in_background(step, model, opt, jax.random.key(0), lambda: (x, y),
                             lambda: (x[:5], y[:5])).join()
    _, params, state = model.init_with_state(jax.random.key(0), x.shape)
    trees = (params, state, opt.init(params))
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **kw: compiles.append(event)
        if event == "/jax/core/compile/backend_compile_duration" else None)
    out = step.fold_in_step(*trees, (x, y), jax.random.key(0), np.uint32(0))
    jax.block_until_ready(out)
    assert compiles == []
    # the evaluation of a test set in batches of 5 (the shape compiled above) compiles nothing
    ev = fundl.train.evaluate(model, out[0], out[1], (x[:10], y[:10]), batch_size=5,
                              check_data=False)
    assert compiles == [] and 0 <= ev["accuracy"] <= 1

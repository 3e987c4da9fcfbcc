"""experiments/finetune.py end to end (synthetic data), and fundl.data.select_classes."""
import importlib.util
import pathlib

import jax
import numpy as np
import pytest

import fundl
from fundl import ConfigError, ShapeError
from fundl.data import parse_classes, select_classes

REPO = pathlib.Path(__file__).resolve().parents[1]


def _finetune():
    spec = importlib.util.spec_from_file_location("finetune_script", REPO / "experiments" / "finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TINY = ["--synthetic", "256", "--train-size", "64", "--epochs", "2", "--batch-size", "32",
         "--pretrain-epochs", "1", "--no-progress"]


@pytest.mark.slow
def test_demo_pretrains_once_replaces_the_head_freezes_and_reports(tmp_path, capsys):
    ft = _finetune()
    tuned, scratch = ft.main([*_TINY, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "head 'fc2' replaced by Dense(5)" in out and "initialised ['fc2']" in out
    assert "frozen: ['conv1', 'conv2', 'fc1']" in out
    assert out.strip().splitlines()[-1] == f"test_accuracy={tuned:.4f}"
    assert 0 <= scratch <= 1 and "from scratch: test_accuracy=" in out
    assert (tmp_path / "pretrained_convnet_mnist_0-4.safetensors").exists()
    ft.main([*_TINY, "--out", str(tmp_path), "--no-compare", "--freeze", "none"])
    out = capsys.readouterr().out
    assert "(reused; delete it to pretrain again)" in out and "frozen: nothing" in out
    assert "from scratch" not in out


@pytest.mark.slow
def test_finetune_from_a_pytorch_state_dict(tmp_path, capsys):
    import torch

    net = fundl.models.convnet_mnist(10)
    _, params = net.init(jax.random.key(0), (1, 28, 28, 1))
    sd = fundl.interop.to_torch(net, params, {})
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "net.pth")
    ft = _finetune()
    ft.main([*_TINY, "--init-from", str(tmp_path / "net.pth"), "--pretrained-classes", "10",
             "--classes", "0-9", "--no-compare", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "head 'fc2' replaced by Dense(10)" in out and "test_accuracy=" in out
    with pytest.raises(SystemExit, match="--pretrained-classes"):
        ft.main([*_TINY, "--init-from", str(tmp_path / "net.pth"), "--out", str(tmp_path)])


def test_frozen_patterns_cover_every_layer_but_the_head():
    ft = _finetune()
    _, p = jax.eval_shape(lambda: fundl.models.convnet_mnist(5).init(jax.random.key(0),
                                                                      (1, 28, 28, 1)))
    assert ft.frozen_patterns(p, "fc2", "all-but-head") == ("conv1", "conv2", "fc1")
    assert ft.frozen_patterns(p, "fc2", "none") is None
    assert ft.frozen_patterns(p, "fc2", "conv1, conv2") == ("conv1", "conv2")
    nested = {"features": {"c1": {"w": 1}}, "classifier": {"fc1": {"w": 1}, "fc3": {"w": 1}}}
    assert ft.frozen_patterns(nested, "classifier/fc3", "all-but-head") == (
        "features/c1", "classifier/fc1")


def test_select_classes_keeps_order_and_renumbers():
    x = np.arange(8)[:, None]
    y = np.array([3, 5, 9, 5, 1, 7, 0, 9])
    xs, ys = select_classes(x, y, (9, 5))
    np.testing.assert_array_equal(xs[:, 0], [1, 2, 3, 7])
    np.testing.assert_array_equal(ys, [0, 1, 0, 1])          # 5 -> 0, 9 -> 1 (sorted)
    assert ys.dtype == np.int32
    xs, ys = select_classes(x, y, "0-4", limit=2, allow_missing=True)  # y holds no 2
    np.testing.assert_array_equal(xs[:, 0], [0, 4])
    np.testing.assert_array_equal(ys, [3, 1])
    assert parse_classes("0-2,7") == (0, 1, 2, 7) and parse_classes([4, 2]) == (2, 4)


@pytest.mark.parametrize("call, exc, fragment", [
    (lambda: parse_classes("a-b"), ConfigError, "'0-4'"),
    (lambda: parse_classes("1,1"), ConfigError, "appears twice"),
    (lambda: parse_classes([]), ConfigError, "non-empty"),
    (lambda: parse_classes([-1]), ConfigError, ">= 0"),
    (lambda: select_classes(np.zeros((3, 2)), np.array([0, 1]), "0"), ShapeError, "x [N, ...]"),
    (lambda: select_classes(np.zeros((2, 2)), np.array([0.0, 1.0]), "0"), ShapeError, "integer"),
    (lambda: select_classes(np.zeros((2, 2)), np.array([0, 1]), "5-9"), ShapeError,
     "no example has a label in [5, 6, 7, 8, 9]"),
    (lambda: select_classes(np.zeros((2, 2)), np.array([0, 1]), "0", limit=0), ConfigError,
     "limit"),
])
def test_select_classes_errors(call, exc, fragment):
    with pytest.raises(exc) as info:
        call()
    assert fragment in str(info.value), str(info.value)

"""fundl.io: bit-exact round trips, the file format, model checks, damage and interrupted writes.

Fault injection: every single-bit flip anywhere in a small file, truncation at many points,
empty, foreign and appended-to files are refused with CorruptFileError / NotFundlFileError;
a write that fails (disk full, an exception, a killed process) never leaves a partial file
under the final name.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

import fundl
import fundl.io as fio
import fundl.layers as L
import fundl.models as M

REPO = Path(__file__).resolve().parents[1]


def _bits(a) -> bytes:
    """The exact bytes of an array (so NaN payloads and -0.0 compare too)."""
    a = np.ascontiguousarray(a)
    return a.reshape(-1).view(np.uint8).tobytes() if a.size else b""


def _assert_same_trees(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert _bits(x) == _bits(y)


def _zeros_like_init(model, input_shape):
    """Params and state of ``model`` as zeros, from shapes alone (no initialiser runs)."""
    _, p, s = jax.eval_shape(lambda: model.init_with_state(jax.random.key(0), input_shape))
    return jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), (p, s))


def _small_file(tmp_path) -> Path:
    path = tmp_path / "small.safetensors"
    params = {"fc": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, jnp.bfloat16)}}
    fio.save(path, params, {"bn": {"mean": np.full(3, 0.5, np.float16)}}, metadata={"note": "x"})
    return path


def _temp_files(directory: Path):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# -- round trips --------------------------------------------------------------------------

def test_round_trip_is_bit_exact_for_every_dtype(tmp_path):
    special = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, 3.4e38], np.float32)
    special[0] = np.frombuffer(b"\x01\x00\xc0\x7f", np.float32)[0]  # a NaN with a payload
    params = {
        "layer1": {"block1": {"body": {"conv1": {"w": np.random.default_rng(0).standard_normal(
            (3, 3, 2, 4)).astype(np.float32)}}}},
        "f32": {"special": special},
        "bf16": {"w": jnp.asarray([1.5, -2.25, np.nan, 3e38], jnp.bfloat16)},  # a jax array
        "f16": {"w": np.array([65504, -0.0, 6e-8, np.inf], np.float16)},
        "f64": {"w": np.array([np.pi, -1e-300])},
        "ints": {"i8": np.array([-128, 127], np.int8), "u8": np.array([0, 255], np.uint8),
                 "i32": np.array([-2**31, 2**31 - 1], np.int32), "i64": np.array([-2**63], np.int64)},
        "flags": {"mask": np.array([True, False, True])},
        "c64": {"z": np.array([1 + 2j], np.complex64)},
        "scalar": {"t": np.float32(0.25)},
        "empty": {"w": np.zeros((0, 4), np.float32)},
    }
    state = {"bn": {"mean": np.array([0.1, 0.2], np.float32), "count": np.array(7, np.int32)}}
    fio.save(tmp_path / "all.safetensors", params, state)
    got_params, got_state = fio.load(tmp_path / "all.safetensors")
    _assert_same_trees(got_params, jax.tree.map(np.asarray, params))
    _assert_same_trees(got_state, state)
    assert got_params["bf16"]["w"].dtype == jnp.bfloat16
    got_params["f32"]["special"][0] = 1.0  # the arrays are writable, owned NumPy arrays


def test_empty_state_and_empty_subtrees_round_trip(tmp_path):
    params = {"enc": {"fc": {"w": np.ones((2, 2), np.float32)}, "relu": {}}, "head": {}}
    fio.save(tmp_path / "a.safetensors", params)
    p, s = fio.load(tmp_path / "a.safetensors")
    assert s == {} and p["enc"]["relu"] == {} and p["head"] == {}
    _assert_same_trees(p, params)
    fio.save(tmp_path / "b.safetensors", {}, {})
    assert fio.load(tmp_path / "b.safetensors") == ({}, {})


def test_the_file_is_plain_safetensors_with_the_documented_keys_and_metadata(tmp_path):
    net = L.Serial(L.Conv(4, 3), L.BatchNorm(), L.ReLU(), L.Flatten(), L.Dense(3, name="fc"), name="net")
    params, state = _zeros_like_init(net, (1, 6, 6, 2))
    path = tmp_path / "net.safetensors"
    fio.save(path, params, state, model=net, metadata={"note": "hello", "epochs": json.dumps(3)})
    raw = safetensors.numpy.load_file(path)  # any safetensors reader opens it
    assert sorted(raw) == sorted(fio.flatten(params, state)) == [
        "params/batch_norm/bias", "params/batch_norm/scale", "params/conv/b", "params/conv/w",
        "params/fc/b", "params/fc/w", "state/batch_norm/mean", "state/batch_norm/var"]
    meta = fio.metadata(path)
    assert meta["fundl.format"] == "fundl.io" and meta["fundl.format_version"] == "1"
    assert meta["fundl.version"] == fundl.__version__ and meta["fundl.model"] == repr(net)
    assert meta["note"] == "hello" and json.loads(meta["epochs"]) == 3
    assert set(json.loads(meta["fundl.crc32"])) == set(raw)
    assert meta["fundl.empty"] == "[]" and len(meta["fundl.header_crc32"]) == 8


def test_flatten_unflatten_are_inverse_and_check_keys():
    params = {"a": {"b": {"w": 1.0}}, "c": {"w": 2.0}}
    flat = fio.flatten(params, {"bn": {"mean": 3.0}})
    assert list(flat) == ["params/a/b/w", "params/c/w", "state/bn/mean"]
    assert fio.unflatten(flat) == (params, {"bn": {"mean": 3.0}})
    with pytest.raises(fundl.ConfigError, match="non-empty string without '/'.*'a/b'"):
        fio.flatten({"a/b": {"w": 1.0}})
    with pytest.raises(fundl.ConfigError, match="params must be a dict"):
        fio.flatten([np.ones(2)])
    with pytest.raises(fundl.ConfigError, match="'params/<path>' or 'state/<path>'"):
        fio.unflatten({"weights/w": 1.0})
    with pytest.raises(fundl.ConfigError, match="both a leaf and a prefix"):
        fio.unflatten({"params/a": 1.0, "params/a/b": 2.0})


def test_save_refuses_what_it_cannot_store(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(fundl.ConfigError, match=r"params/fc/w has dtype <U3.*Cast it"):
        fio.save(path, {"fc": {"w": np.array(["abc"])}})
    with pytest.raises(fundl.ConfigError, match=r"must be an array; got"):
        fio.save(path, {"fc": {"key": jax.random.key(0)}})
    with pytest.raises(fundl.ConfigError, match=r"metadata values must be strings.*'epoch': int 3.*json.dumps"):
        fio.save(path, {}, metadata={"epoch": 3})
    with pytest.raises(fundl.ConfigError, match="reserved for fundl"):
        fio.save(path, {}, metadata={"fundl.model": "mine"})
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        fio.save(tmp_path / "no" / "dir" / "x.safetensors", {})
    with pytest.raises(IsADirectoryError, match="is a directory"):
        fio.save(tmp_path, {})
    assert not path.exists() and _temp_files(tmp_path) == []


# -- checked against a model ------------------------------------------------------------------

def test_load_checks_against_the_model_with_apply_s_message(tmp_path):
    net10, net5 = M.convnet_mnist(10), M.convnet_mnist(5)
    params, _ = _zeros_like_init(net10, (1, 28, 28, 1))
    path = tmp_path / "mnist.safetensors"
    fio.save(path, params, model=net10)
    p, s = fio.load(path, model=net10, input_shape=(1, 28, 28, 1))
    _assert_same_trees(p, params)
    with pytest.raises(fundl.ShapeError) as from_apply:
        net5.apply(params, np.zeros((1, 28, 28, 1), np.float32))
    with pytest.raises(fundl.ShapeError) as from_load:
        fio.load(path, model=net5, input_shape=(1, 28, 28, 1))
    message = str(from_load.value)
    assert message.startswith(str(from_apply.value))  # the same text, then the file
    assert "Dense 'convnet_mnist/fc2': params 'w' has shape (200, 10), expected (200, 5)" in message
    assert f"read from {path}" in message and "saved from Serial(layers=(Conv(" in message


def test_load_model_arguments_are_checked(tmp_path):
    path = _small_file(tmp_path)
    with pytest.raises(fundl.ConfigError, match="model= needs input_shape="):
        fio.load(path, model=L.Dense(3))
    with pytest.raises(fundl.ConfigError, match="input_shape= is only used with model="):
        fio.load(path, input_shape=(1, 2))
    with pytest.raises(fundl.ConfigError, match="model must be a fundl Layer"):
        fio.load(path, model="dense", input_shape=(1, 2))


# -- damaged, foreign and missing files ---------------------------------------------------------

def test_every_single_bit_flip_anywhere_is_detected(tmp_path):
    path = _small_file(tmp_path)
    good = path.read_bytes()
    header_end = 8 + int.from_bytes(good[:8], "little")
    missed = []
    for i in range(len(good)):
        for bit in range(8):
            bad = bytearray(good)
            bad[i] ^= 1 << bit
            path.write_bytes(bad)
            try:
                fio.load(path)
            except fio.CorruptFileError as e:
                assert str(path) in str(e)
            else:
                missed.append((i, bit))
    assert not missed, f"undetected flips (byte, bit); header ends at {header_end}: {missed[:10]}"
    path.write_bytes(good)
    assert fio.load(path)[1]["bn"]["mean"].dtype == np.float16


def test_flipped_bits_are_named(tmp_path):
    path = _small_file(tmp_path)
    good = path.read_bytes()
    header_end = 8 + int.from_bytes(good[:8], "little")
    data = bytearray(good)
    data[-1] ^= 0x10  # the last tensor's last byte
    path.write_bytes(data)
    with pytest.raises(fio.CorruptFileError, match=r"tensor '.*' fails its checksum .*flipped bit"):
        fio.load(path)
    data = bytearray(good)
    data[good.index(b'"shape":[2,3]') + 9] ^= 0x01  # [2,3] -> [3,3]
    path.write_bytes(data)
    with pytest.raises(fio.CorruptFileError, match="damaged|checksum"):
        fio.load(path)
    data = bytearray(good)
    data[good.index(b"note") + 1] ^= 0x20  # a metadata key: 'note' -> 'nOte'
    path.write_bytes(data)
    with pytest.raises(fio.CorruptFileError, match="the header fails its checksum"):
        fio.load(path)
    with pytest.raises(fio.CorruptFileError, match="the header fails its checksum"):
        fio.metadata(path)
    assert header_end < len(good)


@pytest.mark.parametrize("where", ["0", "4", "8", "20", "header-1", "header", "header+1", "end-1"])
def test_truncated_files_are_refused(tmp_path, where):
    path = _small_file(tmp_path)
    good = path.read_bytes()
    header_end = 8 + int.from_bytes(good[:8], "little")
    base, _, delta = where.replace("-", "+-").partition("+")
    cut = {"header": header_end, "end": len(good)}.get(base, None)
    cut = (int(base) if cut is None else cut) + (int(delta) if delta else 0)
    path.write_bytes(good[:cut])
    with pytest.raises(fio.CorruptFileError) as info:
        fio.load(path)
    text = str(info.value)
    assert str(path) in text
    assert ("empty" in text or "only" in text or "truncated" in text), text


def test_zero_length_text_and_appended_files_are_refused(tmp_path):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(fio.CorruptFileError, match=r"empty \(0 bytes\)"):
        fio.load(empty)
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights, just some text in a file\n" * 3)
    with pytest.raises(fio.CorruptFileError, match="not a safetensors file"):
        fio.load(text)
    path = _small_file(tmp_path)
    path.write_bytes(path.read_bytes() + b"\0" * 8)
    with pytest.raises(fio.CorruptFileError, match="8 unexpected bytes after the last tensor"):
        fio.load(path)


def test_files_fundl_did_not_write_are_named(tmp_path):
    foreign = tmp_path / "torch.safetensors"
    safetensors.numpy.save_file({"fc.weight": np.ones((2, 3), np.float32)}, foreign)
    with pytest.raises(fio.NotFundlFileError, match="without fundl.io's metadata.*fundl.interop"):
        fio.load(foreign)
    pt = tmp_path / "model.pt"  # torch.save's format is a zip archive
    with zipfile.ZipFile(pt, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(fio.NotFundlFileError, match="zip archive.*PyTorch state_dicts need fundl.interop"):
        fio.load(pt)
    old = tmp_path / "old.pth"
    old.write_bytes(pickle.dumps({"fc.weight": [1.0, 2.0]}, protocol=2))
    with pytest.raises(fio.NotFundlFileError, match="a Python pickle"):
        fio.load(old)
    assert issubclass(fio.NotFundlFileError, fundl.FundlError)
    assert issubclass(fio.CorruptFileError, fundl.FundlError)


def test_missing_file_and_directory_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="fundl.io.load: no such file.*nope.safetensors"):
        fio.load(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="no such file"):
        fio.metadata(tmp_path / "nope.safetensors")
    with pytest.raises(IsADirectoryError, match="directory.*export_checkpoint"):
        fio.load(tmp_path)


# -- atomic writes ----------------------------------------------------------------------------

def _fail_halfway(monkeypatch, exc):
    """os.write writes half of what it is given, then raises ``exc``."""
    real = os.write

    def write(fd, data):
        real(fd, bytes(data[: len(data) // 2]))
        raise exc

    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk-full", "interrupt"])
def test_interrupted_save_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch, exc):
    path = _small_file(tmp_path)
    old = path.read_bytes()
    fresh = tmp_path / "fresh.safetensors"
    _fail_halfway(monkeypatch, exc)
    for target in (path, fresh):
        with pytest.raises(type(exc)) as info:
            fio.save(target, {"fc": {"w": np.zeros((100, 100), np.float32)}})
        if isinstance(exc, OSError):
            assert info.value.errno == errno.ENOSPC and "nothing was written under that name" in str(info.value)
    monkeypatch.undo()
    assert path.read_bytes() == old and not fresh.exists()
    assert _temp_files(tmp_path) == []
    fio.load(path)


def test_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = _small_file(tmp_path)
    old = path.read_bytes()

    def refuse(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError, match="writing .* failed"):
        fio.save(path, {"w": np.zeros(3, np.float32)})
    monkeypatch.undo()
    assert path.read_bytes() == old and _temp_files(tmp_path) == []


@pytest.mark.slow
def test_process_killed_mid_save_never_leaves_a_partial_file(tmp_path):
    """A real SIGKILL halfway through the write: the final name keeps the old file."""
    path = _small_file(tmp_path)
    old = path.read_bytes()
    script = textwrap.dedent(f"""
        import os, signal, numpy as np, fundl.io as fio
        real = os.write
        def write(fd, data):
            real(fd, bytes(data[: len(data) // 2]))
            os.kill(os.getpid(), signal.SIGKILL)
        os.write = write
        fio.save({str(path)!r}, {{"fc": {{"w": np.zeros((256, 256), np.float32)}}}})
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert path.read_bytes() == old
    leftovers = _temp_files(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith(".small.safetensors.")  # documented
    assert fio.load(path)[0]["fc"]["w"].shape == (2, 3)


@pytest.mark.slow
def test_pytorch_reads_the_file(tmp_path):
    """Interop: safetensors' PyTorch reader opens fundl.io files, bfloat16 included."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    path = _small_file(tmp_path)
    got = load_file(path)
    assert got["params/fc/b"].dtype == torch.bfloat16
    np.testing.assert_array_equal(got["params/fc/w"].numpy(), np.arange(6).reshape(2, 3))


# -- the runners' flags ---------------------------------------------------------------------

def _runner(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"experiments_{name}", REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TINY = ["--synthetic", "64", "--batch-size", "32", "--no-progress"]


@pytest.mark.slow
def test_mnist_runner_exports_params_and_model_and_starts_from_them(tmp_path, capsys):
    from fundl import experiment as E

    mnist, net = _runner("mnist"), M.convnet_mnist(10)
    out, p1, m1 = tmp_path / "run", tmp_path / "p1.safetensors", tmp_path / "m1.safetensors"
    mnist.main([*_TINY, "--epochs", "2", "--stop-after", "1", "--out", str(out), "--eval-batch-size",
                "16", "--export-params", str(p1), "--export-model", str(m1)])
    assert "wrote params and state after epoch 1" in capsys.readouterr().out
    params, state = fio.load(p1, model=net, input_shape=(1, 28, 28, 1))
    _assert_same_trees(params, E.load_checkpoint(out, 1)[1]["params"])
    assert state == {}
    meta = fio.metadata(p1)
    assert meta["epoch"] == "1" and meta["fundl.model"] == repr(net)
    assert json.loads(meta["config"])["model"] == "convnet_mnist" and float(meta["test_accuracy"]) >= 0
    # traced for a batch of --eval-batch-size: on CPU the same conv lowering as apply at that batch
    x = np.asarray(jax.random.normal(jax.random.key(0), (16, 28, 28, 1)))
    f = fundl.load_exported(m1)
    np.testing.assert_array_equal(np.asarray(f(x)), np.asarray(jax.jit(net.apply)(params, x)))
    # "last epoch": a resume that finishes the run exports epoch 2 (export paths may change)
    p2 = tmp_path / "p2.safetensors"
    mnist.main([*_TINY, "--epochs", "2", "--resume", "--out", str(out), "--eval-batch-size", "16",
                "--export-params", str(p2)])
    assert fio.metadata(p2)["epoch"] == "2"
    _assert_same_trees(fio.load(p2)[0], E.load_checkpoint(out, 2)[1]["params"])
    # any checkpoint becomes a params file
    assert E.export_checkpoint(out, tmp_path / "ck1.safetensors", epoch=1, model=net) == 1
    _assert_same_trees(fio.load(tmp_path / "ck1.safetensors")[0], params)
    assert json.loads(fio.metadata(tmp_path / "ck1.safetensors")["config"])["epochs"] == 2
    # --init-from: with no epoch to train, the exported params are the file's, bit for bit
    q = tmp_path / "q.safetensors"
    mnist.main([*_TINY, "--epochs", "0", "--out", str(tmp_path / "zero"), "--init-from", str(p1),
                "--export-params", str(q)])
    assert f"initialised from {p1}" in capsys.readouterr().out
    _assert_same_trees(fio.load(q)[0], params)
    assert fio.metadata(q)["epoch"] == "0"


@pytest.mark.slow
def test_runner_init_from_a_pytorch_state_dict(tmp_path, capsys):
    # a torch.save'd state_dict in the names of the equivalent nn.Sequential (fundl.interop)
    import torch

    mnist = _runner("mnist")
    net = M.convnet_mnist(10)
    _, params = net.init(jax.random.key(3), (1, 28, 28, 1))
    sd = fundl.interop.to_torch(net, params, {})
    pt = tmp_path / "convnet.pt"
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, pt)
    q = tmp_path / "q.safetensors"
    mnist.main([*_TINY, "--epochs", "0", "--out", str(tmp_path / "z"), "--init-from", str(pt),
                "--export-params", str(q)])
    assert f"initialised from {pt}" in capsys.readouterr().out
    _assert_same_trees(fio.load(q)[0], params)
    del sd["9.bias"]                                    # strict: a missing key is an error
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, pt)
    with pytest.raises(fundl.interop.StateDictError, match="9.bias"):
        mnist.main([*_TINY, "--epochs", "0", "--out", str(tmp_path / "y"), "--init-from", str(pt)])


@pytest.mark.slow
def test_runner_init_from_refuses_other_files_and_models(tmp_path):
    mnist = _runner("mnist")
    bad = tmp_path / "weights.npz"
    bad.write_bytes(b"PK\x03\x04 not a params file")
    with pytest.raises(fundl.ConfigError, match="neither a fundl.io file nor a PyTorch state_dict"):
        mnist.main([*_TINY, "--epochs", "1", "--out", str(tmp_path / "a"), "--init-from", str(bad)])
    params, _ = _zeros_like_init(M.convnet_mnist(10), (1, 28, 28, 1))
    fio.save(tmp_path / "convnet.safetensors", params)
    with pytest.raises(fundl.ShapeError, match=r"Conv 'lenet5/conv1': params 'w' has shape \(5, 5, 1, 32\)"):
        mnist.main([*_TINY, "--epochs", "1", "--model", "lenet5", "--out", str(tmp_path / "b"),
                    "--init-from", str(tmp_path / "convnet.safetensors")])
    # a missing --init-from and an --export-model in a missing directory: argparse errors (exit 2)
    # at parse time, before anything is written (messages: tests/test_arguments.py)
    with pytest.raises(SystemExit) as e:
        mnist.main([*_TINY, "--epochs", "1", "--out", str(tmp_path / "c"), "--init-from",
                    str(tmp_path / "missing.safetensors")])
    assert e.value.code == 2 and not (tmp_path / "c").exists()
    with pytest.raises(SystemExit) as e:
        mnist.main([*_TINY, "--epochs", "1", "--out", str(tmp_path / "d"), "--export-model",
                    str(tmp_path / "nodir" / "m.safetensors")])
    assert e.value.code == 2 and not (tmp_path / "d").exists()


@pytest.mark.slow
def test_cifar10_runner_export_flags(tmp_path):
    cifar = _runner("cifar10")
    p, m = tmp_path / "p.safetensors", tmp_path / "m.safetensors"
    cifar.main([*_TINY, "--epochs", "1", "--eval-batch-size", "16", "--out", str(tmp_path / "run"),
                "--export-params", str(p), "--export-model", str(m)])
    net = M.resnet18(10, stem="cifar")
    params, state = fio.load(p, model=net, input_shape=(1, 32, 32, 3))
    assert state["bn1"]["mean"].shape == (64,)
    x = np.asarray(jax.random.normal(jax.random.key(0), (16, 32, 32, 3)))  # the traced batch: same lowering
    np.testing.assert_array_equal(np.asarray(fundl.load_exported(m)(x)),
                                  np.asarray(jax.jit(net.apply)(params, x, state=state)[0]))

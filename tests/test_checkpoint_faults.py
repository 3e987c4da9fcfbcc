"""Checkpoints you can trust: checksums verified on restore, fallback to the newest verified
checkpoint, rotation that keeps finite ones (fundl.experiment.run and load_checkpoint).

One tiny run (3 epochs of a Dense layer on 8x8x3 random images) is made once per module;
each test damages a copy of it the way disks and killed processes do.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import fundl
import fundl.layers as L
from fundl import experiment as E

pytestmark = pytest.mark.slow  # every test trains runs and writes Orbax checkpoints (3-12 s each)


def _data():
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8),
            rng.integers(0, 10, 64).astype(np.int32))


def _run(out, **kw):
    kw = {"epochs": 3, **kw}
    return E.run(L.Serial(L.Flatten(), L.Dense(10, name="fc")), optax.sgd(0.01, momentum=0.9),
                 _data(), _data(), out=out, batch_size=16, progress=False,
                 config={"recipe": "tiny"}, **kw)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    records = _run(out)
    return out, records


@pytest.fixture
def run_copy(template, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(template[0], out)
    return out


def _largest_array_file(step_dir: Path) -> Path:
    """The biggest OCDBT data file of the checkpoint's train item (the weights ``fc/w`` or their
    momentum, the two biggest arrays: which one depends on Orbax's hashed file names)."""
    files = [p for p in (step_dir / "train").rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


def _flip(step_dir):
    f = _largest_array_file(step_dir)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x04
    f.write_bytes(bytes(data))


def _truncate(step_dir):
    f = _largest_array_file(step_dir)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _empty(step_dir):
    shutil.rmtree(step_dir)
    step_dir.mkdir()


def _drop_meta(step_dir):
    (step_dir / "meta" / "metadata").unlink()


def _garble_meta(step_dir):
    (step_dir / "meta" / "metadata").write_text('{"epoch": 3, "fini')


def _garble_array_metadata(step_dir):
    (step_dir / "train" / "_METADATA").write_text("{not json")


FC_W = r"\((params|opt_state/0/trace)/fc/w\)"  # the weights or their momentum
FAULTS = {  # how to damage a checkpoint -> what the warning must say
    "bit flip": (_flip, r"/train has 1 array\(s\) that fail their checksum " + FC_W),
    "truncated array file": (_truncate, r"/train cannot be read \(ValueError: OUT_OF_RANGE: "
                                         r"Error reading \"(params|opt_state\.0\.trace)\.fc\.w"),
    "empty directory": (_empty, r" is empty"),
    "missing meta": (_drop_meta, r"/meta/metadata is missing"),
    "unreadable meta": (_garble_meta, r"/meta/metadata is unreadable \(JSONDecodeError"),
    "unreadable array metadata": (_garble_array_metadata, r"/train cannot be read"),
}


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_each_checkpoint_records_checksums_and_finiteness(template):
    out, records = template
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["2", "3"]
    meta = json.loads((out / "checkpoints" / "3" / "meta" / "metadata").read_text())
    assert meta["epoch"] == 3 and meta["finite"] is True
    crc, shape, dtype = meta["arrays"]["params/fc/w"]
    assert isinstance(crc, int) and shape == [192, 10] and dtype == "float32"
    assert "opt_state/0/trace/fc/w" in meta["arrays"]  # the optimizer state is covered too
    assert not (out / ".lock").exists()  # released at the end


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
def test_damaged_newest_checkpoint_falls_back_to_the_previous(template, run_copy, fault, capsys):
    damage, says = FAULTS[fault]
    damage(run_copy / "checkpoints" / "3")
    with pytest.warns(UserWarning,
                      match=r"checkpoint of epoch 3 is unusable: .*checkpoints/3" + says):
        records = _run(run_copy, resume=True)
    out = capsys.readouterr().out
    assert "resumed from" in out and "after epoch 2" in out and "3.unusable" in out
    # Epoch 3 was trained again from epoch 2's checkpoint: as in the undamaged run, bit for bit.
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[-1]["train_loss"] == template[1][-1]["train_loss"]
    assert _leaves_equal(E.load_checkpoint(run_copy, 3)[1], E.load_checkpoint(template[0], 3)[1])
    assert (run_copy / "checkpoints" / "3.unusable").is_dir()  # kept for inspection
    assert [r["epoch"] for r in E.read_metrics(run_copy / "metrics.jsonl")] == [1, 2, 3]


def test_metrics_after_the_restored_epoch_are_dropped(run_copy):
    _flip(run_copy / "checkpoints" / "3")
    with pytest.warns(UserWarning, match="is unusable"):
        records = _run(run_copy, resume=True, stop_after=2)  # nothing to train after epoch 2
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["epoch"] for r in E.read_metrics(run_copy / "metrics.jsonl")] == [1, 2]


def test_no_usable_checkpoint_is_a_checkpoint_error_naming_each(run_copy):
    _flip(run_copy / "checkpoints" / "3")
    _truncate(run_copy / "checkpoints" / "2")
    config = (run_copy / "config.json").read_bytes()
    with pytest.warns(UserWarning, match="is unusable"), \
            pytest.raises(fundl.CheckpointError,
                          match=r"no usable checkpoint in .*checkpoints \(epoch 3: .*fail their "
                                r"checksum.*; epoch 2: .*train cannot be read.*Start afresh") as e:
        _run(run_copy, resume=True)
    assert e.value.__cause__ is None and e.value.__suppress_context__  # no Orbax traceback
    assert len(str(e.value)) < 1500
    assert (run_copy / "config.json").read_bytes() == config
    assert not (run_copy / ".lock").exists()  # released when the run fails


def test_load_checkpoint_verifies(run_copy):
    _flip(run_copy / "checkpoints" / "3")
    with pytest.raises(fundl.CheckpointError, match=r"load_checkpoint: .*checkpoints \(epoch 3: "
                                                    r".*that fail their checksum " + FC_W):
        E.load_checkpoint(run_copy, 3)
    with pytest.warns(UserWarning, match="checkpoint of epoch 3 is unusable"):
        epoch, tree = E.load_checkpoint(run_copy)
    assert epoch == 2 and tree["params"]["fc"]["w"].shape == (192, 10)
    # With the optimizer: Optax's structure back, matched to the checkpoint by array path.
    epoch, tree = E.load_checkpoint(run_copy, 2, optimizer=optax.sgd(0.01, momentum=0.9))
    assert isinstance(tree["opt_state"][0], optax.TraceState)
    with pytest.raises(fundl.ConfigError, match="was the run trained with this optimizer"):
        E.load_checkpoint(run_copy, 2, optimizer=optax.adam(1e-3))
    with pytest.raises(fundl.ConfigError, match=r"no checkpoint of epoch 1 .*have epochs \[2, 3\]"):
        E.load_checkpoint(run_copy, 1)


def _set_finite(step_dir, finite):
    path = step_dir / "meta" / "metadata"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "finite": finite}))


def _kept(out):
    return sorted((p.name for p in (out / "checkpoints").iterdir()), key=int)


def test_rotation_keeps_the_newest_finite_checkpoints(run_copy):
    # Epoch 3's params recorded as non-finite: it does not count among the two kept.
    _set_finite(run_copy / "checkpoints" / "3", False)
    _run(run_copy, resume=True, epochs=9, stop_after=4)
    assert _kept(run_copy) == ["2", "4"]  # Orbax's max_to_keep=2 would keep 3 and 4
    # A non-finite newest checkpoint is kept, but only beside the newest finite ones: the
    # last good epoch 2 survives while non-finite epochs come and go.
    _set_finite(run_copy / "checkpoints" / "4", False)
    _run(run_copy, resume=True, epochs=9, stop_after=5)
    assert _kept(run_copy) == ["2", "5"]
    _set_finite(run_copy / "checkpoints" / "5", False)
    _run(run_copy, resume=True, epochs=9, stop_after=6)
    assert _kept(run_copy) == ["2", "6"]
    _run(run_copy, resume=True, epochs=9, stop_after=7)
    assert _kept(run_copy) == ["6", "7"]


def test_finite_flag_is_computed_on_the_params():
    # private on purpose: a run stops before saving NaN params, so no public way writes them
    from fundl._checkpoints import _checksums
    good = {"params": {"fc": {"w": np.ones((2, 2), np.float32)}}, "state": {},
            "opt_state": ({"trace": {"fc": {"w": np.full((2, 2), np.nan, np.float32)}}},)}
    assert _checksums(good)["finite"] is True  # NaN outside params does not count
    bad = {**good, "params": {"fc": {"w": np.array([[1.0, np.inf]], np.float32)}}}
    record = _checksums(bad)
    assert record["finite"] is False
    assert record["arrays"]["params/fc/w"][1:] == [[1, 2], "float32"]
    import jax.numpy as jnp
    half = {"params": {"w": jnp.array([1.0, jnp.nan], jnp.bfloat16), "s": jnp.float16(2)}}
    record = _checksums(half)  # bfloat16 is not a NumPy float type, but is checked too
    assert record["finite"] is False
    assert record["arrays"]["params/s"][1:] == [[], "float16"]  # a scalar stays a scalar


@pytest.mark.slow
def test_runner_with_no_usable_checkpoint_exits_non_zero_without_orbax_traceback(tmp_path):
    import os
    import subprocess
    import sys
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    cmd = [sys.executable, str(repo / "experiments" / "mnist.py"), "--synthetic", "120",
           "--epochs", "2", "--batch-size", "40", "--no-progress", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    _truncate(out / "checkpoints" / "2")
    _empty(out / "checkpoints" / "1")
    got = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True)
    assert got.returncode != 0
    assert "fundl._errors.CheckpointError: run: --resume: no usable checkpoint" in got.stderr
    assert "epoch 2: " in got.stderr and "epoch 1: " in got.stderr
    assert got.stderr.count("Traceback") == 1 and "orbax" not in got.stderr.split("Traceback")[1]
    assert "Exception ignored" not in got.stderr  # Orbax's abandoned reads, collected quietly
    assert not (out / ".lock").exists()

"""fundl.export / fundl.load_exported: bytes that compute exactly what model.apply computes.

Equality is exact (not allclose) on CPU: the exported program is the jitted apply, with the
weights as arguments; for the zoo's layers it equals the op-by-op apply too. Batch
polymorphism: one export runs every batch size.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fundl
import fundl.io as fio
import fundl.layers as L
import fundl.models as M

REPO = Path(__file__).resolve().parents[1]


def _init(model, input_shape, seed=0):
    _, params, state = jax.jit(model.init_with_state, static_argnums=1)(jax.random.key(seed), input_shape)
    return params, state


def _x(shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.slow
def test_convnet_mnist_exported_equals_apply_for_other_batch_sizes():
    net = M.convnet_mnist(10)
    params, _ = _init(net, (8, 28, 28, 1))
    f = fundl.load_exported(fundl.export(net, params, None, (8, 28, 28, 1)))
    for n in (8, 3):  # the traced batch and another one
        x = _x((n, 28, 28, 1), seed=n)
        got = f(x)
        assert got.shape == (n, 10)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(net.apply(params, x)))
        np.testing.assert_array_equal(np.asarray(got), np.asarray(jax.jit(net.apply)(params, x)))


def _stateful_net():
    return L.Serial(L.Conv(6, 3), L.BatchNorm(), L.ReLU(), L.MaxPool(2), L.Flatten(),
                    L.Dropout(0.5), L.Dense(4, name="head"), name="small")


@pytest.mark.slow
def test_stateful_model_exported_equals_eval_apply():
    net = _stateful_net()
    params, state = _init(net, (4, 8, 8, 3))
    state = jax.tree.map(lambda a: a + 0.5, state)  # statistics that change the result
    f = fundl.load_exported(fundl.export(net, params, state, (4, 8, 8, 3)))
    for n in (4, 1, 5):
        x = _x((n, 8, 8, 3), seed=n)
        want, _ = net.apply(params, x, state=state)  # train=False: dropout off, running stats
        np.testing.assert_array_equal(np.asarray(f(x)), np.asarray(want))
    assert f.metadata["fundl.model"] == repr(net) and f.metadata["fundl.input_shape"] == "[null, 8, 8, 3]"


def test_fixed_batch_and_input_checks():
    net = L.Serial(L.Dense(5), L.ReLU(), L.Dense(2), name="tiny")
    params, _ = _init(net, (3, 4))
    fixed = fundl.load_exported(fundl.export(net, params, {}, (3, 4), batch_polymorphic=False))
    np.testing.assert_array_equal(np.asarray(fixed(jnp.ones((3, 4)))), np.asarray(net.apply(params, jnp.ones((3, 4)))))
    with pytest.raises(fundl.ShapeError, match=r"exported Serial 'tiny': x has shape \(2, 4\), expected \(3, 4\)"):
        fixed(jnp.ones((2, 4)))
    poly = fundl.load_exported(fundl.export(net, params, {}, (3, 4)))
    with pytest.raises(fundl.ShapeError, match=r"x has shape \(2, 5\), expected \(N, 4\) \(any batch N >= 1\)"):
        poly(jnp.ones((2, 5)))
    with pytest.raises(fundl.ShapeError, match=r"x has dtype int32, expected float32; convert it"):
        poly(jnp.ones((2, 4), jnp.int32))


def test_export_checks_params_with_apply_s_message():
    params, _ = _init(M.mlp([8, 10], name="net"), (1, 4))
    with pytest.raises(fundl.ShapeError, match=r"Dense 'net/dense2': params 'w' has shape \(8, 10\), expected \(8, 5\)"):
        fundl.export(M.mlp([8, 5], name="net"), params, {}, (1, 4))


def test_exported_bytes_are_checked_and_hold_readable_weights(tmp_path):
    net = L.Serial(L.Dense(3), L.BatchNorm(), name="n")
    params, state = _init(net, (2, 4))
    data = fundl.export(net, params, state, (2, 4), metadata={"note": "v1"})
    path = tmp_path / "n_model.safetensors"
    path.write_bytes(data)
    p, s = fio.load(path, model=net, input_shape=(2, 4))  # the weights, as fundl.io reads them
    for a, b in zip(jax.tree.leaves((p, s)), jax.tree.leaves((params, state))):
        np.testing.assert_array_equal(a, np.asarray(b))
    f = fundl.load_exported(path)  # a path works too
    assert f.metadata["note"] == "v1" and fio.metadata(path)["fundl.format"] == "fundl.export"
    bad = bytearray(data)
    bad[-100] ^= 0x04  # inside the exported program or a weight
    with pytest.raises(fio.CorruptFileError, match="fails its checksum"):
        fundl.load_exported(bytes(bad))
    with pytest.raises(fio.CorruptFileError, match="truncated"):
        fundl.load_exported(data[:-10])
    fio.save(tmp_path / "params.safetensors", params, state)
    with pytest.raises(fundl.ConfigError, match="holds params and state .* expected an exported model"):
        fundl.load_exported(tmp_path / "params.safetensors")
    with pytest.raises(fundl.ConfigError, match="data must be the bytes fundl.export returned"):
        fundl.load_exported(123)


@pytest.mark.slow
def test_exported_model_runs_without_the_model_code(tmp_path):
    """A custom layer defined here only: a fresh process runs its export without this file."""

    class Affine(L.Layer):
        """x * a + b per feature: [N, D] -> [N, D]."""

        def build(self, key, input_shape):
            d = input_shape[-1]
            return input_shape, {"a": jnp.arange(1.0, d + 1), "b": jnp.full((d,), 0.5)}

        def forward(self, params, x, *, key, train):
            return x * params["a"][None] + params["b"][None]  # [N, D] * [1, D]

    net = L.Serial(Affine(), L.Dense(3), name="custom")
    params, _ = _init(net, (2, 4))
    x = np.asarray(_x((6, 4)))
    (tmp_path / "m.bin").write_bytes(fundl.export(net, params, {}, (2, 4)))
    # exactly a jitted apply (op-by-op apply may differ by an ulp: XLA fuses x * a + b into an FMA)
    np.save(tmp_path / "want.npy", np.asarray(jax.jit(net.apply)(params, x)))
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import numpy as np, fundl
        f = fundl.load_exported({str(tmp_path / "m.bin")!r})
        got = np.asarray(f(np.load({str(tmp_path / "x.npy")!r})))
        np.testing.assert_array_equal(got, np.load({str(tmp_path / "want.npy")!r}))
        print("ok", got.shape)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok (6, 3)"


@pytest.mark.slow
def test_resnet18_with_batch_norm_exported_equals_apply():
    net = M.resnet18(10, stem="cifar")
    params, state = _init(net, (2, 32, 32, 3))
    state = jax.tree.map(lambda a: a + 0.25, state)
    f = fundl.load_exported(fundl.export(net, params, state, (2, 32, 32, 3)))
    x = _x((3, 32, 32, 3))
    np.testing.assert_array_equal(np.asarray(f(x)), np.asarray(net.apply(params, x, state=state)[0]))


@pytest.mark.slow
def test_two_input_model_exports():
    enc = L.Serial(L.Dense(6), L.ReLU())
    net = L.Graph(inputs=("a", "b"), outputs="pair", name="siamese", nodes=[
        L.Node("left", enc, "a"), L.Node("right", enc, "b", share="left"),
        L.Node("pair", L.Concat(), ("left", "right"))])
    params, _ = _init(net, ((2, 5), (2, 5)))
    f = fundl.load_exported(fundl.export(net, params, {}, ((2, 5), (2, 5))))
    xa, xb = _x((3, 5), 1), _x((3, 5), 2)
    np.testing.assert_array_equal(np.asarray(f((xa, xb))), np.asarray(net.apply(params, (xa, xb))))
    with pytest.raises(fundl.ShapeError, match=r"\(input 1\): x has shape \(3, 4\)"):
        f((xa, jnp.ones((3, 4))))

"""L.Remat and remat=True on the zoo: jax.checkpoint applied, same params, values, state, grads."""
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fundl
import fundl.layers as L
from fundl import ConfigError, models
# private on purpose: RematSerial is built only by the zoo (VGG remat=True); tested directly
from fundl._remat import POLICY_NAMES, RematSerial
from fundl.train import make_train_step

KEY = jax.random.key(0)


def eqns(fn, *args, name="remat"):
    """The equations whose primitive name contains ``name`` (nested jaxprs included);
    ``jax.checkpoint`` is the primitive 'remat2' in this JAX."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if name in eqn.primitive.name:
                found.append(eqn)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def remat_eqns(fn, *args):
    return eqns(fn, *args, name="remat")


def inside(eqn, name):
    """Whether an equation with ``name`` in its primitive name is nested in ``eqn``."""
    subs = list(jax.extend.core.jaxprs_in_params(eqn.params))
    return any(name in e.primitive.name or inside(e, name) for sub in subs for e in sub.eqns)


def close(a, b, tol=1e-6):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u, np.float32), np.asarray(v, np.float32),
                                   rtol=tol, atol=tol)


def loss_and_grads(model, params, state, x, *, key=None, train=True):
    """``(loss, (y, new_state)), grads`` of ``sum(y ** 2)`` (jitted: one compile beats the
    op-by-op dispatch of the unjitted backward pass)."""
    def f(p):
        if model.stateful:
            y, s = model.apply(p, x, state=state, key=key, train=train)
        else:
            y, s = model.apply(p, x, key=key, train=train), {}
        return jnp.sum(y ** 2), (y, s)

    return jax.jit(jax.value_and_grad(f, has_aux=True))(params)


# -- the layer --------------------------------------------------------------------------------

def test_remat_dense_same_values_and_grads_and_checkpoint_is_applied():
    dense = L.Dense(3, name="fc")
    r = L.Remat(dense)
    assert r.name == "fc" and r.layer == dense and not r.stateful
    _, p = dense.init(KEY, (2, 4))
    assert jax.tree_util.tree_structure(r.init(KEY, (2, 4))[1]) == \
        jax.tree_util.tree_structure(p)
    x = jax.random.normal(KEY, (2, 4))
    close(r.apply(p, x), dense.apply(p, x))
    (la, _), ga = loss_and_grads(dense, p, {}, x)
    (lb, _), gb = loss_and_grads(r, p, {}, x)
    close((la, ga), (lb, gb))
    # the backward pass goes through a checkpoint: a remat equation in the grad's jaxpr
    grad = lambda m: lambda p: loss_and_grads(m, p, {}, x)[1]  # noqa: E731
    assert len(remat_eqns(grad(r), p)) == 1
    assert remat_eqns(grad(dense), p) == []


@pytest.mark.slow  # compiles a few small grads: 2-8 s on the shared 2-core CPU
def test_remat_serial_with_batch_norm_and_dropout_same_outputs_state_and_grads():
    net = L.Serial(L.Dense(8), L.BatchNorm(), L.ReLU(), L.Dropout(0.5), L.Dense(3), name="mlp")
    r = L.Remat(net)
    assert r.stateful and r.name == "mlp"
    _, p, s = net.init(KEY, (6, 4))
    x = jax.random.normal(jax.random.key(1), (6, 4))
    k = jax.random.key(2)
    for train in (True, False):
        (la, (ya, sa)), ga = loss_and_grads(net, p, s, x, key=k, train=train)
        (lb, (yb, sb)), gb = loss_and_grads(r, p, s, x, key=k, train=train)
        close((la, ya, sa, ga), (lb, yb, sb, gb))
    # dropout is active (some outputs differ between keys) and the masks match the bare layer's
    y1 = r.apply(p, x, state=s, key=jax.random.key(3), train=True)[0]
    assert not np.allclose(y1, yb)
    close(y1, net.apply(p, x, state=s, key=jax.random.key(3), train=True)[0])
    # an int seed works as a key, as for any layer
    close(r.apply(p, x, state=s, key=3, train=True)[0], y1)
    # jit and a per-path train mapping work through the checkpoint
    f = jax.jit(lambda p, s, x: r.apply(p, x, state=s, key=k, train={"batch_norm": False,
                                                                   "*": True}))
    g = net.apply(p, x, state=s, key=k, train={"batch_norm": False, "*": True})
    close(f(p, s, x), g)


def test_policy_is_passed_to_jax_checkpoint():
    dense = L.Dense(3)
    _, p = dense.init(KEY, (2, 4))
    x = jnp.ones((2, 4))
    for policy in (None, *POLICY_NAMES):
        r = L.Remat(dense, policy)
        assert r.policy == policy
        (eqn,) = remat_eqns(lambda p: jax.grad(lambda p: jnp.sum(r.apply(p, x)))(p), p)
        want = None if policy is None else getattr(jax.checkpoint_policies, policy)
        assert eqn.params["policy"] is want
    # a named policy given as the function is stored (and printed) by its name
    r = L.Remat(dense, jax.checkpoint_policies.dots_saveable)
    assert r == L.Remat(dense, "dots_saveable") and "policy='dots_saveable'" in repr(r)
    # a built policy is kept as is, compared by identity
    built = jax.checkpoint_policies.save_only_these_names("a")
    assert L.Remat(dense, built).policy is built
    (eqn,) = remat_eqns(lambda p: jax.grad(lambda p: jnp.sum(L.Remat(dense, built).apply(p, x)))(p),
                        p)
    assert eqn.params["policy"] is built


@pytest.mark.parametrize("bad", ["dots", "save_only_these_names", 1, L.ReLU(), True])
def test_bad_policy_is_refused_naming_the_choices(bad):
    with pytest.raises(ConfigError, match="policy must be") as e:
        L.Remat(L.Dense(3), bad)
    assert "dots_with_no_batch_dims_saveable" in str(e.value)
    assert "Remat 'dense'" in str(e.value)


def test_non_layer_is_refused():
    with pytest.raises(ConfigError, match="layer must be a fundl Layer"):
        L.Remat(jax.nn.relu)


def test_names_paths_surgery_and_summary_see_through_remat():
    net = L.Serial(L.Dense(4, name="a"), L.Remat(L.Residual(L.Serial(L.Dense(4), L.Tanh()),
                                                            name="block")), name="net")
    plain = L.Serial(L.Dense(4, name="a"), L.Residual(L.Serial(L.Dense(4), L.Tanh()),
                                                      name="block"), name="net")
    assert fundl.surgery.paths(net) == fundl.surgery.paths(plain)
    assert isinstance(fundl.surgery.get(net, "block"), L.Remat)
    # renaming the Remat renames the wrapped layer (the key of the params)
    assert L.Remat(L.Dense(3)).rename("head").layer.name == "head"
    assert L.Remat(L.Dense(3), name="head").layer.name == "head"
    # duplicate names inside a Serial are made unique on the Remat and its layer alike
    s = L.Serial(L.Remat(L.Dense(3)), L.Remat(L.Dense(3)))
    assert [(c.name, c.layer.name) for c in s.layers] == [("dense1", "dense1"),
                                                          ("dense2", "dense2")]
    # editing a layer inside the Remat keeps the Remat
    edited = fundl.surgery.replace(net, "block/body/dense", L.Dense(4, name="x"))
    assert isinstance(fundl.surgery.get(edited, "block"), L.Remat)
    assert fundl.surgery.get(edited, "block/body/dense") == L.Dense(4, name="dense")
    # summary: the same rows, parameters and MACs as the bare model
    a, b = fundl.summary(net, (2, 4)), fundl.summary(plain, (2, 4))
    assert [r.path for r in a.rows] == [r.path for r in b.rows]
    assert (a.total_params, a.total_macs) == (b.total_params, b.total_macs)
    assert fundl.summary(L.Remat(L.Dense(3)), (2, 4)).total_macs == 2 * 4 * 3


@pytest.mark.slow  # compiles a few small grads: 2-8 s on the shared 2-core CPU
def test_weights_interchange_with_the_unwrapped_model(tmp_path):
    plain = models.resnet("basic", (2,), 5, stem="cifar", width=4, name="net")
    remat = models.resnet("basic", (2,), 5, stem="cifar", width=4, remat=True, name="net")
    _, p, s = plain.init(KEY, (2, 8, 8, 3))
    _, p2, s2 = remat.init(KEY, (2, 8, 8, 3))
    close((p, s), (p2, s2), tol=0)  # the same trees, and the same values from the same key
    fundl.io.save(tmp_path / "w.safetensors", p, s, model=plain)
    lp, ls = fundl.io.load(tmp_path / "w.safetensors", model=remat, input_shape=(2, 8, 8, 3))
    x = jax.random.normal(KEY, (2, 8, 8, 3))
    apply = lambda m: jax.jit(lambda p, s: m.apply(p, x, state=s))  # noqa: E731
    close(apply(remat)(lp, ls), apply(plain)(p, s))


@pytest.mark.slow  # compiles a few small grads: 2-8 s on the shared 2-core CPU
def test_scan_recognises_wrapped_copies_and_checkpoints_inside_the_body():
    def block(i):
        return L.Remat(L.Residual(L.Serial(L.Dense(6), L.BatchNorm(), L.Tanh()), name=f"b{i}"))

    plain = L.Serial(*[block(i).layer for i in range(4)])
    scanned = L.Serial(*[block(i) for i in range(4)], scan=2)
    _, p, s = plain.init(KEY, (5, 6))
    x = jax.random.normal(KEY, (5, 6))
    (la, (ya, sa)), ga = loss_and_grads(plain, p, s, x)
    f = lambda p: loss_and_grads(scanned, p, s, x)  # noqa: E731
    (lb, (yb, sb)), gb = f(p)
    close((la, ya, sa, ga), (lb, yb, sb, gb), tol=1e-5)
    scans = eqns(f, p, name="scan")
    assert scans, "the four wrapped copies were not scanned"
    inner = [sc for sc in scans if inside(sc, "remat")]
    assert inner, "no checkpoint inside the scan body"


@pytest.mark.slow  # compiles a few small grads: 2-8 s on the shared 2-core CPU
def test_remat_serial_segments():
    net = RematSerial(L.Dense(4), L.ReLU(), L.Dense(4), L.Tanh(), L.Dense(2),
                      segments=(("dense1", "relu"), ("dense2", "tanh"), ("gone",)), name="net")
    assert net.segments == (("dense1", "relu"), ("dense2", "tanh"))  # unknown names dropped
    plain = L.Serial(*net.layers, name="net")
    _, p = plain.init(KEY, (3, 5))
    x = jax.random.normal(KEY, (3, 5))
    close(loss_and_grads(net, p, {}, x), loss_and_grads(plain, p, {}, x))
    assert len(remat_eqns(lambda p: loss_and_grads(net, p, {}, x)[1], p)) == 2
    with pytest.raises(ConfigError, match="scan must be False"):
        net.replace(scan=2)
    with pytest.raises(ConfigError, match="segments must be tuples of child names"):
        RematSerial(L.Dense(4), segments=("dense",))


# -- the zoo ----------------------------------------------------------------------------------

def _grads_of(model, x, y):
    _, p, s = model.init(KEY, x.shape)

    @jax.jit
    def f(p, s):
        def loss(p):
            logits, ns = model.apply(p, x, state=s, train=True)
            return fundl.functional.cross_entropy(logits, y), ns
        return jax.value_and_grad(loss, has_aux=True)(p)

    return p, f(p, s)


@pytest.mark.slow
def test_resnet18_remat_same_params_loss_and_grads_with_and_without_scan():
    x = jax.random.normal(KEY, (2, 32, 32, 3))
    y = jnp.array([1, 7])
    base = models.resnet18(10, stem="cifar")
    p0, ((l0, s0), g0) = _grads_of(base, x, y)
    for kw in ({"remat": True}, {"remat": True, "scan": 2}):
        model = models.resnet18(10, stem="cifar", **kw)
        assert fundl.surgery.paths(model) == fundl.surgery.paths(base)
        p, ((l1, s1), g1) = _grads_of(model, x, y)
        close(p, p0, tol=0)
        close((l1, s1, g1), (l0, s0, g0), tol=1e-5)
    blocks = [c for st in models.resnet18(remat=True).layers if isinstance(st, L.Serial)
              for c in st.layers]
    assert len(blocks) == 8 and all(isinstance(b, L.Remat) for b in blocks)


@pytest.mark.slow
def test_vgg11_remat_same_params_and_one_checkpoint_per_stage():
    plain, remat = models.vgg11(10, batch_norm=True), models.vgg11(10, batch_norm=True, remat=True)
    shapes = lambda m: jax.eval_shape(lambda k: m.init(k, (1, 32, 32, 3))[1:], KEY)  # noqa: E731
    assert jax.tree_util.tree_structure(shapes(plain)) == jax.tree_util.tree_structure(shapes(remat))
    assert fundl.interop.torch_names(remat, input_shape=(1, 32, 32, 3)) == \
        fundl.interop.torch_names(plain, input_shape=(1, 32, 32, 3))
    # the features (the convolutions: where the activation memory is), exactly
    fp, fr = plain.layers[0], remat.layers[0]
    assert isinstance(fr, RematSerial) and len(fr.segments) == 5
    x = jax.random.normal(KEY, (2, 32, 32, 3))
    _, p, s = fp.init(KEY, x.shape)
    grads = lambda m: jax.jit(lambda p: loss_and_grads(m, p, s, x))(p)  # noqa: E731
    close(grads(fr), grads(fp), tol=1e-5)
    assert len(remat_eqns(lambda p: loss_and_grads(fr, p, s, x)[1], p)) == 5


def _train(model, precision=None, parallel=None, steps=2):
    opt = optax.sgd(0.1, momentum=0.9)
    x = jax.random.normal(KEY, (4, 16, 16, 3))
    y = jnp.array([0, 1, 2, 3])
    _, p, s = model.init(KEY, x.shape)
    o = opt.init(p)
    step = make_train_step(model, opt, precision=precision, parallel=parallel, donate=False)
    losses = []
    for i in range(steps):
        p, s, o, m = step(p, s, o, (x, y), jax.random.key(i))
        losses.append(m["loss"])
    return jax.device_get((p, s, losses))


@pytest.mark.slow
def test_bfloat16_train_steps_match_the_plain_model():
    def small(**kw):
        return models.resnet("basic", (2, 2), 4, stem="cifar", width=8, scan=2, name="r", **kw)

    close(_train(small(remat=True), precision="bfloat16"), _train(small(), precision="bfloat16"),
          tol=2e-2)


@pytest.mark.slow
def test_remat_inside_scan_lowers_the_compiled_steps_scratch_memory():
    """The point of remat, measured on the compiled program (nothing runs): a scanned stage of
    wrapped blocks keeps less than a third of the scratch memory of the scanned plain stage.
    (On XLA:CPU only inside a scan: outside loops the CPU compiler drops jax.checkpoint's
    optimization barriers and merges the recomputation back; see BENCHMARKS.md.)"""
    def temp(remat):
        net = models.resnet("basic", (4,), 10, stem="cifar", width=16, scan=2, remat=remat)
        _, p, s = jax.eval_shape(lambda k: net.init(k, (8, 32, 32, 3)), KEY)
        x = jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.float32)
        loss = lambda p, s, x: jnp.sum(net.apply(p, x, state=s, train=True)[0] ** 2)  # noqa: E731
        return jax.jit(jax.grad(loss)).lower(p, s, x).compile().memory_analysis().temp_size_in_bytes

    assert temp(True) < 0.5 * temp(False)


_SHARDED = """
import os
os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=4"
                           " --xla_backend_optimization_level=0")
import json, jax, numpy as np, optax
from fundl import models
from fundl.train import make_train_step

def run(remat, parallel, width=8):
    m = models.resnet("basic", (2, 2), 4, stem="cifar", width=width, scan=2, name="r", remat=remat)
    opt = optax.sgd(0.1, momentum=0.9)
    x = np.asarray(jax.random.normal(jax.random.key(0), (8, 16, 16, 3)))
    y = np.array([0, 1, 2, 3, 0, 1, 2, 3], np.int32)
    _, p, s = m.init(0, x.shape)
    o = opt.init(p)
    step = make_train_step(m, opt, parallel=parallel, donate=False)
    for _ in range(2):
        p, s, o, met = step(p, s, o, (x, y), None)
    run.split = sum(a.addressable_shards[0].data.size < a.size for a in jax.tree.leaves(p))
    return jax.device_get((p, s, met["loss"]))

def diff(u, v):
    return max(float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))
               for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v), strict=True))

remat = run(True, "sharded")
# fsdp at width 16: its 3x3x16x16 convolutions (2304 elements) are split over the 4 devices
# (leaves under 1024 elements stay replicated, so width 8 would not exercise the gathers)
fsdp = run(True, "fsdp", 16)
split = run.split  # params split over the devices by the fsdp step
print(json.dumps({"devices": len(jax.devices()), "vs_plain_sharded": diff(remat, run(False, "sharded")),
                  "vs_one_device": diff(remat, run(False, None)),
                  "fsdp_vs_one_device": diff(fsdp, run(False, None, 16)),
                  "fsdp_split_leaves": split}))
"""


@pytest.mark.slow
def test_sharded_and_fsdp_steps_on_four_devices_match_the_plain_model():
    import json
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True, text=True,
                          timeout=600, env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["devices"] == 4
    assert r["vs_plain_sharded"] < 1e-5 and r["vs_one_device"] < 1e-5, r
    assert r["fsdp_split_leaves"] >= 4 and r["fsdp_vs_one_device"] < 1e-5, r

"""Fast lowerings (fundl._lowering) against the reference lowerings.

Every fast path (im2col convolution and transposed convolution,
reshape-and-reduce max/avg pooling) is compared with XLA's convolution /
``reduce_window`` on random inputs: values and gradients (``jax.vjp`` with a
random cotangent), over strides, paddings, dilations, groups and 1-d/2-d/3-d.
Then: 'auto' really picks the fast paths on CPU for the course convnet,
forcing works, bad settings raise.
"""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

# private on purpose: the lowering policy (pool_reshape_ok) and the backend probe (_on_cpu, patched
# to simulate a GPU) are implementation details the auto lowering is checked against.
import fundl._lowering as lowering_mod
import fundl.functional as F
from fundl import ConfigError, models

FAST = {"conv": "im2col", "pool": "reshape"}
REF = {"conv": "xla", "pool": "reduce_window"}


def _vjp_under(setting, fn, args, seed=0):
    """(outputs, input cotangents) of ``fn`` traced with the given lowering."""
    with F.lowering(**setting):
        @jax.jit
        def run(args, ct):
            y, vjp = jax.vjp(fn, *args)
            return y, vjp(ct)

        y_shape = jax.eval_shape(fn, *args)
        ct = jnp.asarray(np.random.default_rng(seed).standard_normal(y_shape.shape),
                         y_shape.dtype)
        return run(args, ct)


def _compare(fn, args, rtol=2e-5, atol=2e-5, exact=False):
    y_fast, g_fast = _vjp_under(FAST, fn, args)
    y_ref, g_ref = _vjp_under(REF, fn, args)
    check = np.testing.assert_array_equal if exact else (
        lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol))
    check(np.asarray(y_fast), np.asarray(y_ref))
    for a, b in zip(g_fast, g_ref):
        check(np.asarray(a), np.asarray(b))


def _jaxpr(fn, *args, **setting):
    with F.lowering(**setting):
        return str(jax.make_jaxpr(fn)(*args))


# --------------------------------------------------------------------------- conv
# (spatial, kernel, C_in, C_out, kwargs)
CONV_CASES = [
    ((11,), (3,), 3, 4, {}),
    ((12,), (4,), 2, 6, dict(stride=3, padding=(2, 1), dilation=2)),
    ((9,), (1,), 4, 5, dict(stride=2)),                                # 1x1, strided
    ((10,), (3,), 4, 6, dict(groups=2, padding="SAME")),
    ((8, 9), (3, 3), 3, 4, {}),
    ((8, 9), (1, 1), 5, 3, {}),                                        # 1x1: patches = x
    ((9, 10), (3, 2), 2, 5, dict(stride=(2, 1), padding=((1, 2), (0, 1)))),
    ((10, 10), (3, 3), 3, 4, dict(dilation=(2, 1), padding=2)),
    ((9, 9), (3, 3), 4, 4, dict(stride=2, padding="SAME")),
    ((7, 8), (3, 3), 6, 4, dict(groups=2, padding=1)),
    ((7, 7), (3, 3), 4, 8, dict(groups=4, stride=2, padding=1)),      # depthwise x2
    ((12, 12), (5, 5), 1, 8, {}),                                      # course conv1
    ((8, 8), (5, 5), 8, 6, {}),                                        # course conv2
    ((5, 6, 5), (2, 3, 2), 2, 3, {}),
    ((6, 5, 7), (3, 2, 3), 2, 4, dict(stride=(1, 2, 2), padding=1, dilation=(2, 1, 1))),
    ((5, 5, 5), (3, 3, 3), 4, 4, dict(groups=2, padding="VALID")),
]


@pytest.mark.slow
@pytest.mark.parametrize("i", range(len(CONV_CASES)),
                         ids=[f"{c[0]}-k{c[1]}-{c[4]}" for c in CONV_CASES])
def test_conv_im2col_matches_xla(i, rng):
    spatial, kernel, c_in, c_out, kw = CONV_CASES[i]
    bias = i % 2 == 1  # half the cases with a bias
    groups = kw.get("groups", 1)
    x = jnp.asarray(rng.standard_normal((2, *spatial, c_in)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((*kernel, c_in // groups, c_out)), jnp.float32)
    args = (x, w, jnp.asarray(rng.standard_normal(c_out), jnp.float32)) if bias else (x, w)
    _compare(lambda *a: F.conv(*a, **kw), args)


# (spatial, kernel, C_in, C_out, kwargs); w is [*kernel, C_in, C_out // groups]
CONV_T_CASES = [
    ((6,), (3,), 3, 4, dict(stride=2, padding=1, output_padding=1)),
    ((5, 6), (4, 4), 3, 2, dict(stride=2, padding=1)),
    ((5, 5), (3, 3), 4, 4, dict(stride=2, padding="SAME", dilation=2, groups=2)),
    ((4, 3, 4), (2, 3, 2), 2, 3, dict(stride=(2, 1, 2), padding=((0, 1), 1, 0))),
]


@pytest.mark.parametrize("case", CONV_T_CASES, ids=lambda c: f"{c[0]}-k{c[1]}-{c[4]}")
def test_conv_transpose_im2col_matches_xla(case, rng):
    spatial, kernel, c_in, c_out, kw = case
    groups = kw.get("groups", 1)
    x = jnp.asarray(rng.standard_normal((2, *spatial, c_in)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((*kernel, c_in, c_out // groups)), jnp.float32)
    _compare(lambda x, w: F.conv_transpose(x, w, **kw), (x, w))


def test_conv_im2col_float64_agrees_to_rounding(rng):
    # Float64 removes most summation-order noise: the two lowerings agree to 1e-12.
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal((2, 9, 8, 3)))
        w = jnp.asarray(rng.standard_normal((3, 3, 3, 5)))
        _compare(lambda x, w: F.conv(x, w, stride=2, padding=1, dilation=(1, 2)), (x, w),
                 rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_conv_im2col_forward_mode_second_order_and_vmap(rng):
    # Plain JAX ops (gather, dot): jvp, jacfwd-style and grad-of-grad work.
    x = jnp.asarray(rng.standard_normal((2, 7, 6, 3)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 2, 3, 4)), jnp.float32)
    tx, tw = (jnp.asarray(rng.standard_normal(a.shape), jnp.float32) for a in (x, w))
    kw = dict(stride=(2, 1), padding=1)
    outs = {}
    for name, setting in (("fast", FAST), ("ref", REF)):
        with F.lowering(**setting):
            outs[name] = jax.jvp(lambda x, w: F.conv(x, w, **kw), (x, w), (tx, tw))
            outs[name + "vmap"] = jax.vmap(lambda xi: F.conv(xi[None], w, **kw)[0])(x)
    for a, b in zip(outs["fast"], outs["ref"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(outs["fastvmap"]), np.asarray(outs["refvmap"]),
                               rtol=2e-5, atol=2e-5)
    with jax.enable_x64(True), F.lowering(conv="im2col"):
        args = (jnp.asarray(np.asarray(x)[:1], jnp.float64),
                jnp.asarray(np.asarray(w), jnp.float64))
        check_grads(lambda x, w: F.conv(x, w, **kw), args, order=2, modes=["fwd", "rev"])


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the policy is for CPU")
@pytest.mark.parametrize("x_shape, w_shape, kw, expected", [
    ((100, 28, 28, 1), (5, 5, 1, 32), {}, "im2col"),          # course conv1: one channel
    ((100, 8, 8, 32), (5, 5, 32, 64), {}, "im2col"),          # course conv2: 5 MB of patches
    ((32, 32, 32, 64), (1, 1, 64, 128), {"stride": 2}, "im2col"),   # 1x1: a matrix product
    ((32, 32, 32, 64), (3, 3, 64, 64), {}, "xla"),            # 75 MB of patches
    ((8, 32, 32, 3), (3, 3, 3, 64), {}, "xla"),               # 3 channels: rows too short
    ((8, 8, 8, 16), (3, 3, 8, 16), {"groups": 2}, "xla"),     # grouped
    ((4, 28, 28, 1), (28, 28, 1, 64), {}, "xla"),             # 784 taps (a convolutionized dense layer)
])
def test_auto_conv_policy(x_shape, w_shape, kw, expected):
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    w = jax.ShapeDtypeStruct(w_shape, jnp.float32)
    text = _jaxpr(lambda x, w: F.conv(x, w, **kw), x, w, conv="auto")
    assert ("conv_general_dilated" in text) == (expected == "xla")


def test_auto_conv_transpose_strided_uses_xla():
    x = jax.ShapeDtypeStruct((2, 8, 8, 16), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 16, 16), jnp.float32)
    text = _jaxpr(lambda x, w: F.conv_transpose(x, w, stride=2), x, w, conv="auto")
    assert "conv_general_dilated" in text  # im2col would multiply the interleaved zeros


# --------------------------------------------------------------------------- pooling
# (spatial, kwargs): every one non-overlapping (stride >= kernel, no dilation).
POOL_CASES = [
    ((12,), dict(kernel_size=3)),
    ((13,), dict(kernel_size=3, padding=1, ceil_mode=True)),
    ((11,), dict(kernel_size=2, stride=3, padding=1)),                 # gaps between windows
    ((24, 24), dict(kernel_size=3)),                                   # course pool1
    ((4, 4), dict(kernel_size=2)),                                     # course pool2
    ((7, 9), dict(kernel_size=2)),                                     # floor crops the tail
    ((7, 9), dict(kernel_size=(2, 3), ceil_mode=True)),                # ceil overhang
    ((8, 10), dict(kernel_size=(3, 2), stride=(3, 4), padding=(1, 1), ceil_mode=True)),
    ((6, 5, 7), dict(kernel_size=2)),
    ((7, 6, 8), dict(kernel_size=(3, 2, 2), stride=(3, 2, 3), padding=(1, 0, 1))),
]


def _distinct(rng, shape):
    """Distinct values (no ties), so every window has a unique maximum."""
    return jnp.asarray((rng.permutation(math.prod(shape)).reshape(shape) / math.prod(shape)) - 0.5,
                       jnp.float32)


def test_pool_cases_take_the_fast_path():
    # Guards the sweep: each case must be one the reshape lowering applies to.
    for spatial, kw in POOL_CASES:
        n = len(spatial)
        k = kw["kernel_size"]
        k = (k,) * n if isinstance(k, int) else k
        s = kw.get("stride", k)
        s = (s,) * n if isinstance(s, int) else s
        assert lowering_mod.pool_reshape_ok(k, s, (1,) * n), kw


@pytest.mark.slow
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_max_pool_reshape_matches_reduce_window(case, rng):
    spatial, kw = case
    x = _distinct(rng, (2, *spatial, 3))
    # Same element chosen => bit-identical values and gradients.
    _compare(lambda x: F.max_pool(x, **kw), (x,), exact=True)


@pytest.mark.slow
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_reshape_matches_reduce_window(case, count_include_pad, rng):
    spatial, kw = case
    x = jnp.asarray(rng.standard_normal((2, *spatial, 3)), jnp.float32)
    _compare(lambda x: F.avg_pool(x, **kw, count_include_pad=count_include_pad), (x,))


def test_avg_pool_reshape_divisor_override_and_bf16(rng):
    x = jnp.asarray(rng.standard_normal((2, 9, 8, 3)), jnp.float32)
    _compare(lambda x: F.avg_pool(x, 2, ceil_mode=True, divisor_override=3), (x,))
    xb = x.astype(jnp.bfloat16)
    with F.lowering(pool="reshape"):
        a = F.avg_pool(xb, 3, ceil_mode=True)
    with F.lowering(pool="reduce_window"):
        b = F.avg_pool(xb, 3, ceil_mode=True)
    assert a.dtype == b.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-2)


def test_max_pool_ties_gradient_goes_to_first_max_in_row_major_order():
    # Ties: the whole cotangent of a window goes to its first maximal element
    # in row-major window order (as reduce_window's select_and_scatter(>=) and
    # torch do), not split between the tied elements.
    x = jnp.array([[1., 1.], [1., 0.]]).reshape(1, 2, 2, 1)
    with F.lowering(pool="reshape"):
        g = jax.grad(lambda x: F.max_pool(x, 2).sum())(x)
    np.testing.assert_array_equal(np.asarray(g)[0, :, :, 0], [[1., 0.], [0., 0.]])
    x = jnp.array([[0., 2.], [2., 2.]]).reshape(1, 2, 2, 1)
    with F.lowering(pool="reshape"):
        g = jax.grad(lambda x: F.max_pool(x, 2).sum())(x)
    np.testing.assert_array_equal(np.asarray(g)[0, :, :, 0], [[0., 1.], [0., 0.]])


@pytest.mark.parametrize("case", [POOL_CASES[1], POOL_CASES[7], POOL_CASES[9]],
                         ids=lambda c: f"{c[0]}")
def test_max_pool_reshape_ties_match_reduce_window(case, rng):
    spatial, kw = case
    x = jnp.asarray(rng.integers(0, 3, (2, *spatial, 3)), jnp.float32)  # many ties
    _compare(lambda x: F.max_pool(x, **kw), (x,), exact=True)


def test_max_pool_reshape_forward_mode_and_second_order(rng):
    x = _distinct(rng, (1, 7, 9, 2))
    t = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    outs = {}
    for name, setting in (("fast", FAST), ("ref", REF)):
        with F.lowering(**setting):
            outs[name] = jax.jvp(lambda x: F.max_pool(x, 2, ceil_mode=True), (x,), (t,))
    for a, b in zip(outs["fast"], outs["ref"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with jax.enable_x64(True), F.lowering(pool="reshape"):
        x64 = jnp.asarray(np.asarray(x)[..., :1], jnp.float64)
        check_grads(lambda x: F.max_pool(x, (2, 3), padding=1) ** 2, (x64,), order=2,
                    modes=["rev"])  # forward mode: the jvp equality above


def test_max_pool_reshape_integer_dtype():
    x = jnp.arange(35, dtype=jnp.int32).reshape(1, 5, 7, 1)
    with F.lowering(pool="reshape"):
        a = F.max_pool(x, 2, padding=1, ceil_mode=True)
    with F.lowering(pool="reduce_window"):
        b = F.max_pool(x, 2, padding=1, ceil_mode=True)
    assert a.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------------- selection
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="'auto' prefers the fast paths on CPU")
def test_auto_selects_fast_paths_for_the_course_convnet():
    model = models.convnet_mnist()
    # Abstract parameters: tracing needs only shapes (eager init is slow).
    params = jax.eval_shape(lambda k: model.init(k, (4, 28, 28, 1))[1], jax.random.key(0))
    x = jnp.zeros((4, 28, 28, 1))

    def loss(p):
        return model.apply(p, x).sum()

    assert F.get_lowering() == F.Lowering("auto", "auto")
    auto = _jaxpr(jax.grad(loss), params, conv="auto", pool="auto")
    assert "conv_general_dilated" not in auto and "reduce_window" not in auto
    assert "select_and_scatter" not in auto and "dot_general" in auto
    ref = _jaxpr(jax.grad(loss), params, **REF)
    assert "conv_general_dilated" in ref and "reduce_window_max" in ref


def test_auto_uses_xla_off_cpu_and_for_grouped_conv(monkeypatch, rng):
    x = jnp.ones((1, 8, 8, 4))
    w = jnp.ones((3, 3, 2, 4))
    assert "conv_general_dilated" in _jaxpr(lambda x: F.conv(x, w, groups=2), x, conv="auto")
    monkeypatch.setattr(lowering_mod, "_on_cpu", lambda: False)
    w1 = jnp.ones((3, 3, 4, 4))
    assert "conv_general_dilated" in _jaxpr(lambda x: F.conv(x, w1), x, conv="auto")
    assert "reduce_window" in _jaxpr(lambda x: F.max_pool(x, 2), x, pool="auto")
    # Forcing works on any backend.
    assert "conv_general_dilated" not in _jaxpr(lambda x: F.conv(x, w1), x, conv="im2col")
    assert "reduce_window" not in _jaxpr(lambda x: F.max_pool(x, 2), x, pool="reshape")


def test_forcing_and_overlapping_pools():
    x = jnp.ones((1, 8, 8, 4))
    w = jnp.ones((3, 3, 4, 4))
    assert "conv_general_dilated" in _jaxpr(lambda x: F.conv(x, w), x, conv="xla")
    assert "conv_general_dilated" not in _jaxpr(lambda x: F.conv(x, w), x, conv="im2col")
    assert "reduce_window" in _jaxpr(lambda x: F.avg_pool(x, 2), x, pool="reduce_window")
    assert "reduce_window" not in _jaxpr(lambda x: F.avg_pool(x, 2), x, pool="reshape")
    # Overlapping or dilated windows have no reshape form: reduce_window even when forced.
    assert "reduce_window" in _jaxpr(lambda x: F.max_pool(x, 3, 2), x, pool="reshape")
    assert "reduce_window" in _jaxpr(lambda x: F.max_pool(x, 2, dilation=2), x, pool="reshape")


def test_eager_jit_cache_respects_the_setting():
    # max_pool caches one jitted executable per config; the lowering is part of
    # the key, so switching the setting in one process switches the lowering.
    x = jnp.ones((1, 4, 4, 1))
    for setting in ("reshape", "reduce_window", "reshape"):
        with F.lowering(pool=setting):
            text = str(jax.make_jaxpr(lambda x: F.max_pool(x, 2))(x))
        assert ("reduce_window" in text) == (setting == "reduce_window")


def test_set_lowering_returns_previous_and_validates():
    old = F.set_lowering(conv="xla")
    try:
        assert old == F.Lowering("auto", "auto")
        assert F.get_lowering() == F.Lowering("xla", "auto")
        assert F.set_lowering(pool="reshape") == F.Lowering("xla", "auto")
        assert F.get_lowering() == F.Lowering("xla", "reshape")
    finally:
        F.set_lowering(*old)
    assert F.get_lowering() == F.Lowering("auto", "auto")
    with pytest.raises(ConfigError, match=r"set_lowering: conv must be one of 'auto', 'xla', "
                                          r"'im2col'.*got conv='fast'"):
        F.set_lowering(conv="fast")
    with pytest.raises(ConfigError, match=r"pool must be one of .*got pool=3"):
        F.set_lowering(pool=3)
    with pytest.raises(ConfigError, match="conv must be one of"):
        with F.lowering(conv="XLA"):
            pass
    assert F.get_lowering() == F.Lowering("auto", "auto")


def test_context_manager_restores_on_error():
    with pytest.raises(RuntimeError):
        with F.lowering(conv="im2col", pool="reduce_window") as inside:
            assert inside == F.Lowering("im2col", "reduce_window") == F.get_lowering()
            raise RuntimeError
    assert F.get_lowering() == F.Lowering("auto", "auto")


def test_sweep_covers_every_dimension_and_feature():
    conv_ranks = {len(c[0]) for c in CONV_CASES}
    pool_ranks = {len(c[0]) for c in POOL_CASES}
    feats = set(itertools.chain.from_iterable(c[4] for c in CONV_CASES))
    assert conv_ranks == pool_ranks == {1, 2, 3}
    assert {"stride", "padding", "dilation", "groups"} <= feats

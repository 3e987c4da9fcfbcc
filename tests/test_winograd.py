"""The Winograd weight gradient of 3x3 convolutions (fundl._winograd) against references.

Values and input gradients must be XLA's exactly (the primal and the input
tangent are XLA's convolution); the weight gradient must agree with XLA's
and PyTorch's to float rounding (the documented bound: 1e-5 of the largest
entry in float32, 1e-12 in float64). Then forward mode, second order, vmap,
symbolic zeros (no Winograd work for a frozen kernel), and the 'auto' policy.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

# private on purpose: the lowering policy and the Winograd form are checked directly
import fundl._lowering as lowering_mod
import fundl._winograd as wino_mod
import fundl.functional as F
from fundl import ConfigError

BOUND32 = 1e-5

# (x shape NHWC, C_out, padding): even and odd sizes, 1/3/16 input channels,
# 'SAME', VALID and asymmetric pads.
CASES = [
    ((2, 8, 8, 16), 8, 1),
    ((3, 7, 9, 3), 5, 1),
    ((1, 5, 6, 1), 4, "VALID"),
    ((2, 6, 7, 4), 6, "SAME"),
    ((2, 9, 8, 5), 3, ((2, 1), (0, 3))),
    ((2, 8, 8, 4), 4, ((0, 2), (1, 0))),
    ((4, 32, 32, 64), 64, 1),                        # a ResNet-18 (CIFAR) layer-1 conv
]


def _arrays(rng, xs, c_out, dtype=jnp.float32):
    x = jnp.asarray(rng.standard_normal(xs), dtype)
    w = jnp.asarray(rng.standard_normal((3, 3, xs[-1], c_out)) / np.sqrt(9 * xs[-1]), dtype)
    return x, w


def _vjp(mode, x, w, pad, ct):
    with F.lowering(conv=mode):
        return jax.jit(lambda x, w, ct: jax.vjp(lambda x, w: F.conv(x, w, padding=pad),
                                                x, w)[1](ct))(x, w, ct)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.parametrize("xs, c_out, pad", CASES, ids=lambda c: str(c))
def test_values_and_input_gradient_are_xla_weight_gradient_within_bound(xs, c_out, pad, rng):
    x, w = _arrays(rng, xs, c_out)
    with F.lowering(conv="winograd"):
        y = jax.jit(lambda x, w: F.conv(x, w, padding=pad))(x, w)
    with F.lowering(conv="xla"):
        y_ref = jax.jit(lambda x, w: F.conv(x, w, padding=pad))(x, w)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
    ct = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    (dx, dw), (dx_ref, dw_ref) = _vjp("winograd", x, w, pad, ct), _vjp("xla", x, w, pad, ct)
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(dx_ref))
    assert _rel(dw, dw_ref) <= BOUND32
    assert _rel(dw, dw_ref) > 0 or xs[-1] == 1  # really a different computation


def test_the_winograd_form_itself_matches_the_convolution(rng):
    # winograd_conv is what reverse mode transposes; its values must be the convolution's.
    # (F.conv refuses negative pads; the lowering still crops, e.g. in conv_transpose)
    for xs, c_out, pad in CASES[:6] + [((2, 8, 8, 4), 4, ((-1, 1), (1, -2)))]:
        x, w = _arrays(rng, xs, c_out)
        pads = _pads(pad, xs)
        ref = jax.lax.conv_general_dilated(
            x, w, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        assert _rel(wino_mod.winograd_conv(x, w, pads), ref) <= BOUND32


def _pads(pad, xs):
    if pad == "VALID":
        return ((0, 0), (0, 0))
    if pad == "SAME":
        return ((1, 1), (1, 1))
    if isinstance(pad, int):
        return ((pad, pad), (pad, pad))
    return pad


def test_float64_agrees_to_rounding(rng):
    with jax.enable_x64(True):
        x, w = _arrays(rng, (2, 7, 8, 3), 4, jnp.float64)
        ct = jnp.asarray(rng.standard_normal((2, 7, 8, 4)))
        (_, dw), (_, dw_ref) = _vjp("winograd", x, w, 1, ct), _vjp("xla", x, w, 1, ct)
        assert dw.dtype == jnp.float64
        assert _rel(dw, dw_ref) <= 1e-12


def test_weight_gradient_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x, w = _arrays(rng, (3, 10, 9, 6), 5)
    ct = rng.standard_normal((3, 10, 9, 5)).astype(np.float32)
    _, dw = _vjp("winograd", x, w, 1, jnp.asarray(ct))
    tx = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)
    tw = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1).requires_grad_(True)
    out = torch.nn.functional.conv2d(tx, tw, padding=1)
    out.backward(torch.from_numpy(ct).permute(0, 3, 1, 2))
    assert _rel(dw, tw.grad.permute(2, 3, 1, 0).numpy()) <= BOUND32


def test_forward_mode_second_order_and_vmap(rng):
    x, w = _arrays(rng, (2, 6, 5, 3), 4)
    tx, tw = (jnp.asarray(rng.standard_normal(a.shape), jnp.float32) for a in (x, w))
    out = {}
    for mode in ("winograd", "xla"):
        with F.lowering(conv=mode):
            out[mode] = (jax.jvp(lambda x, w: F.conv(x, w, padding=1), (x, w), (tx, tw)),
                         jax.vmap(jax.grad(lambda w, xi: F.conv(xi[None], w, padding=1).sum() ** 2),
                                  (None, 0))(w, x),
                         jax.hessian(lambda w: jnp.sum(F.conv(x, w, padding=1) ** 3))(w))
    (yp, tp), per_ex, hess = out["winograd"]
    (yp_ref, tp_ref), per_ex_ref, hess_ref = out["xla"]
    np.testing.assert_array_equal(np.asarray(yp), np.asarray(yp_ref))
    assert _rel(tp, tp_ref) <= BOUND32
    assert _rel(per_ex, per_ex_ref) <= BOUND32
    assert _rel(hess, hess_ref) <= BOUND32
    with jax.enable_x64(True), F.lowering(conv="winograd"):
        args = (jnp.asarray(np.asarray(x)[:1], jnp.float64), jnp.asarray(np.asarray(w), jnp.float64))
        check_grads(lambda x, w: F.conv(x, w, padding=1), args, order=2, modes=["fwd", "rev"])


def _count(fn, *args, **setting):
    with F.lowering(**setting):
        text = str(jax.make_jaxpr(fn)(*args))
    return text.count("conv_general_dilated"), text.count("dot_general")


def test_frozen_kernel_or_data_input_costs_no_extra_work(rng):
    x, w = _arrays(rng, (2, 8, 8, 4), 4)
    loss = lambda x, w: F.conv(x, w, padding=1).sum()  # noqa: E731
    # gradient in w only (x is data): the forward convolution, 16 Winograd products
    # and 2 small ones for the kernel transform G^T dU G
    assert _count(jax.grad(loss, argnums=1), x, w, conv="winograd") == (1, 18)
    # gradient in x only (frozen kernel): XLA's forward and input-gradient convolutions
    assert _count(jax.grad(loss, argnums=0), x, w, conv="winograd") == (2, 0)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the policy is for CPU")
@pytest.mark.parametrize("xs, ws, kw, dtype, expected", [
    ((32, 32, 32, 64), (3, 3, 64, 64), {"padding": 1}, jnp.float32, "winograd"),   # ResNet layer 1
    ((8, 32, 32, 3), (3, 3, 3, 64), {"padding": 1}, jnp.float32, "winograd"),      # CIFAR stem
    ((8, 4, 4, 512), (3, 3, 512, 512), {"padding": 1}, jnp.float32, "im2col"),     # small: im2col
    ((32, 32, 32, 64), (3, 3, 64, 64), {"padding": 1, "stride": 2}, jnp.float32, "xla"),
    ((32, 32, 32, 64), (3, 3, 64, 64), {"padding": 2, "dilation": 2}, jnp.float32, "xla"),
    ((32, 32, 32, 64), (3, 3, 32, 64), {"padding": 1, "groups": 2}, jnp.float32, "xla"),
    ((32, 32, 32, 64), (3, 3, 64, 64), {"padding": 1}, jnp.bfloat16, "xla"),
    ((4, 16, 16, 16, 16), (3, 3, 3, 16, 16), {"padding": 1}, jnp.float32, "xla"),   # 3-d, 64 MiB of patches
])
def test_auto_policy(xs, ws, kw, dtype, expected):
    n = len(ws) - 2
    s, d, g = kw.get("stride", 1), kw.get("dilation", 1), kw.get("groups", 1)
    pads = ((kw["padding"],) * 2,) * n
    got = lowering_mod.choose_conv(xs, ws, (s,) * n, pads, (1,) * n, (d,) * n, g, dtype)
    assert got == expected


def test_forcing_winograd_falls_back_to_xla_where_it_does_not_apply(monkeypatch):
    args = ((2, 8, 8, 4), (3, 3, 4, 4), (2, 2), ((1, 1), (1, 1)), (1, 1), (1, 1), 1, jnp.float32)
    with F.lowering(conv="winograd"):
        assert lowering_mod.choose_conv(*args) == "xla"                     # stride 2
        assert lowering_mod.choose_conv(*args[:2], (1, 1), *args[3:]) == "winograd"
    monkeypatch.setattr(lowering_mod, "_on_cpu", lambda: False)
    assert lowering_mod.choose_conv(*args[:2], (1, 1), *args[3:]) == "xla"  # auto off CPU


def test_set_lowering_names_winograd_among_the_choices():
    with pytest.raises(ConfigError, match="'winograd'"):
        F.set_lowering(conv="winograd2")

"""Shape arithmetic: hand-computed sizes, PyTorch / lax cross-checks, errors."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fundl import ConfigError, ShapeError
# private on purpose: resolve_padding is the one normaliser of every padding spelling behind the
# public ops; its (lo, hi) pairs are checked directly here.
from fundl._shapes import resolve_padding
from fundl.functional import (ReceptiveField, conv_output_size, conv_transpose_output_size,
                              receptive_field)


# --------------------------------------------------------------------------- conv_output_size

@pytest.mark.parametrize("args, kwargs, expected", [
    ((32, 3), dict(padding=1), 32),
    ((32, 3), dict(stride=2, padding=1), 16),
    ((7, 3), dict(), 5),
    ((7, 3), dict(dilation=2), 3),                      # effective kernel 5
    ((7, 3), dict(stride=2, dilation=3), 1),            # effective kernel 7
    ((5, 2), dict(stride=2), 2),
    ((5, 2), dict(stride=2, ceil_mode=True), 3),
    ((5, 3), dict(padding=(0, 1)), 4),                  # flat (lo, hi) for an int input
    ((5, 3), dict(padding="same"), 5),
    ((5, 3), dict(stride=2, padding="SAME"), 3),
    ((5, 3), dict(padding="VALID"), 3),
    (((8, 9), (3, 2)), dict(stride=(2, 3), padding=((1, 0), (0, 2))), (4, 4)),
    (((8, 9), 3), dict(padding=(1, 0)), (8, 7)),         # per-dim ints for a tuple input
    (((4, 4, 4), 1), dict(stride=2), (2, 2, 2)),
])
def test_conv_output_size_known(args, kwargs, expected):
    out = conv_output_size(*args, **kwargs)
    assert out == expected
    assert type(out) is type(expected)


def test_conv_output_size_ceil_mode_drops_window_starting_in_right_padding():
    # L=5, k=2, s=2, p=1: ceil((5+2-2)/2)+1 = 4, but window 4 would start at
    # 6 >= L + p_left = 6, i.e. entirely in the padding -> 3 (PyTorch rule).
    assert conv_output_size(5, 2, stride=2, padding=1, ceil_mode=True) == 3
    assert conv_output_size(6, 2, stride=2, padding=1, ceil_mode=True) == 4
    assert conv_output_size(6, 2, stride=2, padding=1) == 4


def _torch_pool_cases():
    for L, k, s, d in itertools.product(range(1, 9), range(1, 5), range(1, 4), range(1, 3)):
        for p in range(0, k // 2 + 1):           # torch: pad <= kernel_size / 2
            for ceil_mode in (False, True):
                yield L, k, s, p, d, ceil_mode


def test_ceil_mode_matches_torch_max_pool2d():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    checked = errors = 0
    for L, k, s, p, d, ceil_mode in _torch_pool_cases():
        # H varies, W is a fixed second dim: both go through the tuple path.
        x = torch.zeros(1, 1, L, 6)
        kw = dict(kernel_size=(k, 2), stride=(s, 2), padding=(p, 1), dilation=(d, 1),
                  ceil_mode=ceil_mode)
        try:
            expected = tuple(F.max_pool2d(x, **kw).shape[2:])
        except RuntimeError:
            errors += 1
            with pytest.raises(ShapeError):
                conv_output_size((L, 6), **kw)
            continue
        assert conv_output_size((L, 6), **kw) == expected, (L, kw)
        checked += 1
    assert checked > 300 and errors > 10


def test_conv_output_size_matches_torch_conv_shapes():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    w = torch.zeros(1, 1, 3)
    for L, s, p, d in itertools.product(range(1, 10), range(1, 4), range(0, 3), range(1, 4)):
        x = torch.zeros(1, 1, L)
        try:
            expected = F.conv1d(x, w, stride=s, padding=p, dilation=d).shape[-1]
        except RuntimeError:
            with pytest.raises(ShapeError):
                conv_output_size(L, 3, s, p, d)
            continue
        assert conv_output_size(L, 3, s, p, d) == expected


def test_conv_output_size_error_message():
    with pytest.raises(ShapeError) as e:
        conv_output_size(4, 3, dilation=2)
    msg = str(e.value)
    assert "input size 4" in msg and "= 5" in msg and "padding 0" in msg
    with pytest.raises(ShapeError, match=r"dim 1"):
        conv_output_size((8, 2), 3)
    with pytest.raises(ShapeError):
        conv_output_size(1, 3, padding=(0, 1), ceil_mode=True)


@pytest.mark.parametrize("kwargs, arg", [
    (dict(stride=0), "stride"),
    (dict(dilation=0), "dilation"),
    (dict(padding=-1), "padding"),
    (dict(padding=((0, -1),)), "padding"),
    (dict(padding="full"), "padding"),
])
def test_conv_output_size_config_errors(kwargs, arg):
    with pytest.raises(ConfigError) as e:
        conv_output_size(8, 3, **kwargs)
    assert arg in str(e.value) and repr(next(iter(kwargs.values()))) in str(e.value)


# --------------------------------------------------------------------------- conv_transpose_output_size

@pytest.mark.parametrize("args, kwargs, expected", [
    ((16, 4), dict(stride=2, padding=1), 32),
    ((5, 3), dict(), 7),
    ((5, 3), dict(stride=2), 11),
    ((5, 3), dict(stride=2, padding=1, output_padding=1), 10),
    ((5, 3), dict(dilation=2), 9),
    ((5, 3), dict(padding=(0, 2)), 5),
    (((4, 5), (3, 2)), dict(stride=(2, 1), padding=((1, 0), (0, 0))), (8, 6)),
])
def test_conv_transpose_output_size_known(args, kwargs, expected):
    assert conv_transpose_output_size(*args, **kwargs) == expected


def test_conv_transpose_output_size_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    w = torch.zeros(1, 1, 3)
    for L, s, p, op, d in itertools.product(range(1, 5), range(1, 4), range(0, 3), range(0, 3),
                                            range(1, 3)):
        x = torch.zeros(1, 1, L)
        try:
            expected = F.conv_transpose1d(x, w, stride=s, padding=p, output_padding=op,
                                          dilation=d).shape[-1]
        except RuntimeError:
            with pytest.raises((ShapeError, ConfigError)):
                conv_transpose_output_size(L, 3, s, p, op, d)
            continue
        assert conv_transpose_output_size(L, 3, s, p, op, d) == expected


def test_conv_transpose_output_size_errors():
    with pytest.raises(ConfigError, match="output_padding"):
        conv_transpose_output_size(4, 3, stride=2, output_padding=2)
    with pytest.raises(ShapeError, match="output size"):
        conv_transpose_output_size(1, 1, padding=1)


# --------------------------------------------------------------------------- resolve_padding

@pytest.mark.parametrize("padding, n, expected", [
    (1, 2, ((1, 1), (1, 1))),
    ((1, 2), 2, ((1, 1), (2, 2))),
    (((0, 1), (2, 3)), 2, ((0, 1), (2, 3))),
    (((0, 1), 2), 2, ((0, 1), (2, 2))),          # mixed entries
    ((0, 2), 1, ((0, 2),)),                       # flat pair for 1 spatial dim
    ([3], 1, ((3, 3),)),
    ("valid", 3, ((0, 0),) * 3),
])
def test_resolve_padding_forms(padding, n, expected):
    assert resolve_padding(padding, 3, 1, 1, (9,) * n, "conv") == expected


@pytest.mark.parametrize("L", range(1, 12))
@pytest.mark.parametrize("k, s, d", [(1, 1, 1), (2, 1, 1), (3, 1, 1), (3, 2, 1), (4, 3, 1),
                                     (3, 1, 2), (2, 2, 3), (5, 4, 1), (1, 3, 1)])
def test_same_padding_matches_lax(L, k, s, d):
    pads = resolve_padding("SAME", k, s, d, (L,))
    eff = d * (k - 1) + 1
    assert pads == tuple(tuple(p) for p in lax.padtype_to_pads((L,), (eff,), (s,), "SAME"))
    assert conv_output_size(L, k, s, pads, d) == math.ceil(L / s)
    lo, hi = pads[0]
    assert hi - lo in (0, 1)                      # odd pixel goes on the high side


def test_same_padding_output_shape_matches_lax_conv():
    x = jnp.zeros((1, 7, 10, 1))
    for k, s, d in [((3, 4), (2, 3), (1, 2)), ((2, 5), (1, 2), (3, 1))]:
        w = jnp.zeros(k + (1, 1))
        got = lax.conv_general_dilated(x, w, s, "SAME", rhs_dilation=d,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
        pads = resolve_padding("same", k, s, d, (7, 10))
        assert conv_output_size((7, 10), k, s, pads, d) == got.shape[1:3]


def test_resolve_padding_without_spatial_shape():
    assert resolve_padding("SAME", (3, 4), 1, 1) == ((1, 1), (1, 2))
    assert resolve_padding(((1, 0), (0, 2)), 3) == ((1, 0), (0, 2))
    with pytest.raises(ConfigError, match="spatial_shape"):
        resolve_padding("SAME", 3, 2)


@pytest.mark.parametrize("padding, fragment", [
    (-1, "-1"),
    ((1, -2), "(1, -2)"),
    (((0, 1), (-1, 0)), "-1"),
    ((1, 2, 3), "(1, 2, 3)"),
    ("FULL", "'FULL'"),
    (1.5, "1.5"),
    (((1, 2, 3), 0), "(1, 2, 3)"),
])
def test_resolve_padding_errors(padding, fragment):
    with pytest.raises(ConfigError) as e:
        resolve_padding(padding, 3, 1, 1, (8, 8), "conv")
    msg = str(e.value)
    assert msg.startswith("conv: ") and "padding" in msg and fragment in msg


# --------------------------------------------------------------------------- receptive_field

@pytest.mark.parametrize("layers, expected", [
    ([], (1, 1)),
    ([(3, 1, 1)] * 3, (7, 1)),
    ([(3, 2, 1), (3, 1, 1)], (7, 2)),
    ([(3, 1, 1), (3, 1, 2), (3, 1, 4)], (15, 1)),              # WaveNet-style dilations
    ([(7, 2, 1), (3, 2, 1), (3, 1, 1), (3, 1, 1)], (27, 4)),   # ResNet stem, pool, 2 convs
    ([{"kernel_size": 3, "stride": 2}, {"kernel_size": 3, "dilation": 2}], (11, 2)),
    ([(2, 2), (3,)], (6, 2)),                                  # stride/dilation default to 1
])
def test_receptive_field_known(layers, expected):
    rf = receptive_field(layers)
    assert isinstance(rf, ReceptiveField)
    assert rf == expected and (rf.size, rf.jump) == expected


@pytest.mark.parametrize("layers", [
    [(3, 1, 1)] * 3,
    [(3, 2, 1), (3, 1, 1)],
    [(2, 1, 1), (3, 2, 2), (3, 3, 1)],
])
def test_receptive_field_matches_gradient_support(layers):
    # Independent check: the input pixels that influence one output pixel of a
    # real conv stack are exactly the receptive field.
    def stack(x):
        for k, s, d in layers:
            x = lax.conv_general_dilated(x, jnp.ones((k, 1, 1)), (s,), "VALID", rhs_dilation=(d,),
                                         dimension_numbers=("NHC", "HIO", "NHC"))
        return x[0, 1, 0]
    g = jax.grad(stack)(jnp.ones((1, 64, 1)))
    nz = np.nonzero(np.asarray(g[0, :, 0]))[0]
    rf = receptive_field(layers)
    assert nz[-1] - nz[0] + 1 == rf.size
    assert nz[0] == rf.jump                        # output pixel 1 starts one jump in


@pytest.mark.parametrize("layers, fragment", [
    ([(0, 1, 1)], "kernel_size"),
    ([(3, 0, 1)], "stride"),
    ([{"kernel": 3}], "'kernel'"),
    ([(3, 1, 1, 1)], "(3, 1, 1, 1)"),
    ([5], "5"),
])
def test_receptive_field_errors(layers, fragment):
    with pytest.raises(ConfigError) as e:
        receptive_field(layers)
    assert "receptive_field" in str(e.value) and fragment in str(e.value)

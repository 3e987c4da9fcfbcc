"""The bad-input suite: a table of mistakes a user can make, and the error each one must get.

Each row is ``row(id, call, exc, *fragments)``: ``call`` is a zero-argument callable making one
bad call; it must raise ``exc`` (a :class:`fundl.FundlError` subclass; :class:`ArgparseExit` for
a runner flag argparse refuses, its message being argparse's stderr; or ``FileNotFoundError`` /
``IsADirectoryError`` for a path, as ``open`` raises) whose message contains every fragment
(case-insensitive). One parametrized test, :func:`test_bad_input`, runs them all. A row with
``slow=True`` needs a finished run (made once per session, a few seconds) and is marked ``slow``.

Rows marked ``xfail(strict=True)`` are *known gaps*, kept in the table so they cannot be
forgotten: reason ``"SILENT: ..."`` means the bad call is accepted without any error (a wrong
or meaningless result), ``"RAW: ..."`` means it ends in a non-fundl traceback (``TypeError``,
``IndexError``, an XLA error...). Being strict, such a row fails the suite as soon as the library
is fixed: then drop the mark (and check the fragments).

The table has one section per public module (``SECTIONS``); :func:`test_row_counts` pins how
many rows each section holds, so rows cannot silently disappear (raise a pin when you add rows).
Shapes are tiny and almost every error is raised at trace or init time (big zoo models are
initialised under ``jax.eval_shape``), so the whole file runs in seconds.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import importlib.util
import io
import json
import os
import pathlib
import shutil
import socket
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fundl
import fundl.autodiff as AD
import fundl.data as D
import fundl.distributed as DIST
import fundl.experiment as E
import fundl.functional as F
import fundl.initializers as IN
import fundl.interop as I
import fundl.layers as L
import fundl.models as M
import fundl.surgery as S
import fundl.train as T
import fundl.viz as V
from fundl import (CheckpointError, ConfigError, DataError, DirectoryInUseError, FundlError,
                   ShapeError)

REPO = pathlib.Path(__file__).resolve().parent.parent
KEY = jax.random.key(0)


def row(id, call, exc, *fragments, silent=None, raw=None, slow=False):
    """One table row; ``silent=``/``raw=`` (a short description) mark a known gap (strict xfail);
    ``slow=True`` for a row that needs a finished run (a few seconds, once per session)."""
    marks = [pytest.mark.slow] if slow else []
    if silent is not None:
        marks.append(pytest.mark.xfail(strict=True, reason=f"SILENT: {silent}"))
    elif raw is not None:
        marks.append(pytest.mark.xfail(strict=True, reason=f"RAW: {raw}"))
    return pytest.param(call, exc, fragments, id=id, marks=marks)


def x(*shape, dtype=jnp.float32):
    """A float array of ``shape`` (ones)."""
    return jnp.ones(shape, dtype)


class ArgparseExit(Exception):
    """A runner's ``parse_args`` exited (argparse refused a flag); ``stderr`` is what it printed."""

    def __init__(self, code, stderr):
        super().__init__(stderr)
        self.code, self.stderr = code, stderr


_RUNNERS = {}


def runner(name):
    """The module ``experiments/<name>.py`` (imported once)."""
    if name not in _RUNNERS:
        spec = importlib.util.spec_from_file_location(f"bad_inputs_{name}",
                                                      REPO / "experiments" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _RUNNERS[name] = mod
    return _RUNNERS[name]


def parse(name, *argv):
    """Call ``experiments/<name>.py``'s ``parse_args(argv)``; argparse's exit -> ArgparseExit."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            runner(name).parse_args(list(argv))
    except SystemExit as e:
        raise ArgparseExit(e.code, err.getvalue()) from None


SECTIONS: dict[str, list] = {}


# =========================================================================== functional
SECTIONS["functional"] = [
    # ---- conv: ranks, channels, groups, padding, stride, dilation
    row("conv-x-rank-too-low", lambda: F.conv(x(8, 3), x(3, 3, 3, 4)), ShapeError, "conv", "x.shape", "for a 2-d kernel"),
    row("conv-w-rank-2", lambda: F.conv(x(1, 8, 8, 3), x(3, 4)), ShapeError, "conv", "w.shape", "rank"),
    row("conv-x-w-rank-mismatch", lambda: F.conv(x(1, 8, 8, 3), x(3, 3, 3, 3, 4)), ShapeError, "conv", "x.shape", "for a 3-d kernel"),
    row("conv-cin-mismatch", lambda: F.conv(x(1, 8, 8, 3), x(3, 3, 5, 4)), ShapeError, "conv", "c_in", "5"),
    row("conv-bias-shape", lambda: F.conv(x(1, 8, 8, 3), x(3, 3, 3, 4), x(5)), ShapeError, "conv", "b.shape", "(4,)"),
    row("conv-groups-zero", lambda: F.conv(x(1, 8, 8, 4), x(3, 3, 4, 4), groups=0), ConfigError, "groups", ">= 1", "groups must be an int >= 1"),
    row("conv-groups-float", lambda: F.conv(x(1, 8, 8, 4), x(3, 3, 2, 4), groups=2.0), ConfigError, "groups", "2.0"),
    row("conv-groups-cin-not-divisible", lambda: F.conv(x(1, 8, 8, 3), x(3, 3, 1, 4), groups=2), ShapeError, "conv", "divisible", "must be divisible by groups=2"),
    row("conv-groups-cout-not-divisible", lambda: F.conv(x(1, 8, 8, 4), x(3, 3, 2, 3), groups=2), ShapeError, "conv", "c_out", "divisible"),
    row("conv-kernel-zero", lambda: F.conv(x(1, 8, 8, 3), x(0, 3, 3, 4)), ShapeError, "conv", "kernel", ">= 1"),
    row("conv-padding-bad-string", lambda: F.conv(x(1, 8, 8, 3), x(3, 3, 3, 4), padding="FULL"), ConfigError, "padding", "'SAME' or 'VALID'"),
    row("conv-padding-negative", lambda: F.conv(x(1, 8, 8, 3), x(3, 3, 3, 4), padding=-1), ConfigError, "padding", ">= 0"),
    row("conv-padding-wrong-length", lambda: F.conv(x(1, 8, 8, 3), x(3, 3, 3, 4), padding=(1, 1, 1)), ConfigError, "padding", "(lo, hi) pairs"),
    row("conv-stride-zero", lambda: F.conv(x(1, 8, 8, 3), x(3, 3, 3, 4), stride=0), ConfigError, "stride", ">= 1"),
    row("conv-stride-negative", lambda: F.conv(x(1, 8, 8, 3), x(3, 3, 3, 4), stride=-2), ConfigError, "stride", "got -2"),
    row("conv-stride-wrong-length", lambda: F.conv(x(1, 8, 8, 3), x(3, 3, 3, 4), stride=(1, 1, 1)), ConfigError, "stride", "one entry per spatial dimension"),
    row("conv-stride-float", lambda: F.conv(x(1, 8, 8, 3), x(3, 3, 3, 4), stride=1.5), ConfigError, "stride", "an int or a sequence of 2 ints"),
    row("conv-dilation-zero", lambda: F.conv(x(1, 8, 8, 3), x(3, 3, 3, 4), dilation=0), ConfigError, "dilation", "dilation entries must be >= 1"),
    row("conv-kernel-larger-than-input", lambda: F.conv(x(1, 2, 2, 3), x(3, 3, 3, 4)), ShapeError, "conv", "smaller than the effective kernel size"),
    row("conv-dilated-kernel-too-large", lambda: F.conv(x(1, 5, 5, 3), x(3, 3, 3, 4), dilation=3), ShapeError, "conv", "effective kernel size"),
    row("conv1d-x-rank", lambda: F.conv(x(1, 8), x(3, 1, 4)), ShapeError, "conv", "x.shape", "for a 1-d kernel"),
    row("conv1d-cin-mismatch", lambda: F.conv(x(1, 8, 2), x(3, 1, 4)), ShapeError, "conv", "c_in"),
    row("conv1d-kernel-too-long", lambda: F.conv(x(1, 2, 1), x(5, 1, 4)), ShapeError, "conv", "effective kernel size"),
    row("conv3d-cin-mismatch", lambda: F.conv(x(1, 4, 4, 4, 2), x(3, 3, 3, 3, 4)), ShapeError, "conv", "c_in"),
    row("conv3d-kernel-too-large", lambda: F.conv(x(1, 2, 4, 4, 2), x(3, 3, 3, 2, 4)), ShapeError, "conv", "effective kernel size"),
    row("conv3d-stride-wrong-length", lambda: F.conv(x(1, 4, 4, 4, 2), x(3, 3, 3, 2, 4), stride=(1, 1)), ConfigError, "stride", "one entry per spatial dimension (3)"),
    # ---- conv_transpose
    row("convT-cin-mismatch", lambda: F.conv_transpose(x(1, 4, 4, 3), x(3, 3, 5, 4)), ShapeError, "conv_transpose", "c_in"),
    row("convT-output-padding-too-big", lambda: F.conv_transpose(x(1, 4, 4, 3), x(3, 3, 3, 4), stride=2, output_padding=2), ConfigError, "output_padding"),
    row("convT-bias-shape", lambda: F.conv_transpose(x(1, 4, 4, 3), x(3, 3, 3, 4), x(3)), ShapeError, "conv_transpose", "b.shape"),
    row("convT-groups-not-divisible", lambda: F.conv_transpose(x(1, 4, 4, 3), x(3, 3, 3, 4), groups=2), ShapeError, "conv_transpose", "divisible"),
    row("convT-stride-zero", lambda: F.conv_transpose(x(1, 4, 4, 3), x(3, 3, 3, 4), stride=0), ConfigError, "stride", "stride entries must be >= 1"),
    row("convT-padding-crops-everything", lambda: F.conv_transpose(x(1, 1, 1, 3), x(1, 1, 3, 4), padding=2), ShapeError, "conv_transpose", "output spatial size"),
    row("convT-x-rank", lambda: F.conv_transpose(x(4, 3), x(3, 3, 3, 4)), ShapeError, "conv_transpose", "x.shape"),
    row("convT-padding-bad-string", lambda: F.conv_transpose(x(1, 4, 4, 3), x(3, 3, 3, 4), padding="same-ish"), ConfigError, "padding", "'SAME' or 'VALID'"),
    row("convT1d-cin-mismatch", lambda: F.conv_transpose(x(1, 4, 2), x(3, 3, 4)), ShapeError, "conv_transpose"),
    row("convT3d-cin-mismatch", lambda: F.conv_transpose(x(1, 2, 2, 2, 2), x(2, 2, 2, 3, 4)), ShapeError, "conv_transpose"),
    # ---- shape helpers
    row("conv_output_size-negative-input", lambda: F.conv_output_size(-1, 3), ShapeError, "input_size", ">= 0"),
    row("conv_output_size-stride-zero", lambda: F.conv_output_size(8, 3, stride=0), ConfigError, "stride", "stride entries must be >= 1"),
    row("conv_output_size-too-small", lambda: F.conv_output_size(2, 5), ShapeError, "conv_output_size"),
    row("convT_output_size-output-padding", lambda: F.conv_transpose_output_size(4, 3, stride=1, output_padding=1), ConfigError, "output_padding"),
    row("pool_output_size-kernel-zero", lambda: F.pool_output_size(8, 0), ConfigError, "kernel_size", "kernel_size entries must be >= 1"),
    row("pool_output_size-bad-input", lambda: F.pool_output_size("8", 2), ConfigError, "input_size", "ints"),
    row("receptive_field-dict-without-kernel", lambda: F.receptive_field([{"stride": 2}]), ConfigError, "receptive_field", "kernel_size"),
    row("receptive_field-four-tuple", lambda: F.receptive_field([(3, 1, 1, 1)]), ConfigError, "receptive_field", "layer 0"),
    row("set_lowering-bad-conv", lambda: F.set_lowering(conv="cudnn"), ConfigError, "conv", "im2col"),
    row("lowering-bad-pool", lambda: F.lowering(pool="fast").__enter__(), ConfigError, "pool", "reduce_window"),
    # ---- pools
    row("max_pool-kernel-zero", lambda: F.max_pool(x(1, 8, 8, 3), 0), ConfigError, "max_pool", "kernel_size"),
    row("max_pool-kernel-larger-than-input", lambda: F.max_pool(x(1, 2, 2, 3), 3), ShapeError, "max_pool", "does not fit the padded input"),
    row("max_pool-padding-more-than-half", lambda: F.max_pool(x(1, 8, 8, 3), 2, padding=2), ConfigError, "max_pool", "padding", "kernel_size // 2"),
    row("max_pool-stride-zero", lambda: F.max_pool(x(1, 8, 8, 3), 2, stride=0), ConfigError, "max_pool", "stride"),
    row("max_pool-dilation-zero", lambda: F.max_pool(x(1, 8, 8, 3), 2, dilation=0), ConfigError, "max_pool", "dilation"),
    row("max_pool-x-rank-too-low", lambda: F.max_pool(x(8, 3), 2), ShapeError, "max_pool", "at least one spatial dim"),
    row("max_pool-kernel-wrong-length", lambda: F.max_pool(x(1, 8, 8, 3), (2, 2, 2)), ShapeError, "max_pool", "kernel_size", "for a 3-d kernel_size"),
    row("max_pool-ceil_mode-not-bool", lambda: F.max_pool(x(1, 8, 8, 3), 2, ceil_mode="yes"), ConfigError, "ceil_mode", "bool"),
    row("max_pool-complex", lambda: F.max_pool(x(1, 8, 8, 3, dtype=jnp.complex64), 2), ConfigError, "max_pool", "dtype"),
    row("max_pool-empty-spatial", lambda: F.max_pool(x(1, 0, 8, 3), 2), ShapeError, "max_pool", ">= 1"),
    row("avg_pool-kernel-zero", lambda: F.avg_pool(x(1, 8, 8, 3), 0), ConfigError, "avg_pool", "kernel_size"),
    row("avg_pool-divisor-zero", lambda: F.avg_pool(x(1, 8, 8, 3), 2, divisor_override=0), ConfigError, "divisor_override"),
    row("avg_pool-padding-more-than-half", lambda: F.avg_pool(x(1, 8, 8, 3), 2, padding=3), ConfigError, "avg_pool", "padding"),
    row("avg_pool-kernel-larger-than-input", lambda: F.avg_pool(x(1, 2, 2, 3), 4), ShapeError, "avg_pool", "does not fit the padded input"),
    row("avg_pool-count_include_pad-not-bool", lambda: F.avg_pool(x(1, 8, 8, 3), 2, count_include_pad=None), ConfigError, "count_include_pad", "bool"),
    row("avg_pool-complex", lambda: F.avg_pool(x(1, 8, 8, 3, dtype=jnp.complex64), 2), ConfigError, "avg_pool", "real"),
    row("avg_pool1d-kernel-too-large", lambda: F.avg_pool(x(1, 2, 3), 3), ShapeError, "avg_pool", "does not fit the padded input"),
    row("max_pool3d-kernel-too-large", lambda: F.max_pool(x(1, 2, 4, 4, 3), 3), ShapeError, "max_pool", "does not fit the padded input"),
    row("adaptive_avg_pool-zero-output", lambda: F.adaptive_avg_pool(x(1, 8, 8, 3), 0), ConfigError, "adaptive_avg_pool", "output_size", ">= 1"),
    row("adaptive_avg_pool-wrong-length", lambda: F.adaptive_avg_pool(x(1, 8, 8, 3), (2, 2, 2)), ShapeError, "adaptive_avg_pool", "output_size"),
    row("adaptive_avg_pool-empty-output", lambda: F.adaptive_avg_pool(x(1, 8, 8, 3), ()), ConfigError, "adaptive_avg_pool", "output_size"),
    row("adaptive_avg_pool-empty-spatial", lambda: F.adaptive_avg_pool(x(1, 0, 8, 3), 2), ShapeError, "adaptive_avg_pool", ">= 1"),
    row("global_avg_pool-rank-2", lambda: F.global_avg_pool(x(8, 3)), ShapeError, "global_avg_pool"),
    # ---- linear / activations / dropout
    row("linear-in-mismatch", lambda: F.linear(x(2, 5), x(4, 3)), ShapeError, "linear", "x.shape[-1]", "5"),
    row("linear-w-rank-3", lambda: F.linear(x(2, 4), x(4, 3, 1)), ShapeError, "linear", "2-d"),
    row("linear-x-scalar", lambda: F.linear(jnp.float32(1.0), x(4, 3)), ShapeError, "linear", "at least 1 dim"),
    row("linear-bias-shape", lambda: F.linear(x(2, 4), x(4, 3), x(4)), ShapeError, "linear", "b must have shape"),
    row("gelu-bad-approximate", lambda: F.gelu(x(3), approximate="fast"), ConfigError, "gelu", "'none' or 'tanh'"),
    row("softmax-axis-out-of-range", lambda: F.softmax(x(2, 3), axis=2), ShapeError, "softmax", "axis 2"),
    row("log_softmax-axis-out-of-range", lambda: F.log_softmax(x(2, 3), axis=-3), ShapeError, "log_softmax", "axis"),
    row("dropout-no-key", lambda: F.dropout(x(4), 0.5), ConfigError, "dropout", "key="),
    row("dropout-rate-one", lambda: F.dropout(x(4), 1.0, key=KEY), ConfigError, "dropout", "rate", "[0, 1)"),
    row("dropout-rate-negative", lambda: F.dropout(x(4), -0.1, key=KEY), ConfigError, "dropout", "rate"),
    row("dropout-rate-array", lambda: F.dropout(x(4), jnp.float32(0.5), key=KEY), ConfigError, "dropout", "rate"),
    # ---- losses
    row("cross_entropy-target-shape", lambda: F.cross_entropy(x(4, 3), jnp.zeros((4, 2), jnp.int32)), ShapeError, "cross_entropy", "target"),
    row("cross_entropy-prob-target-shape", lambda: F.cross_entropy(x(4, 3), x(4, 2)), ShapeError, "cross_entropy", "target", "probabilities"),
    row("cross_entropy-weight-shape", lambda: F.cross_entropy(x(4, 3), jnp.zeros(4, jnp.int32), weight=x(2)), ShapeError, "weight must have shape (C,) = (3,)"),
    row("cross_entropy-bad-reduction", lambda: F.cross_entropy(x(4, 3), jnp.zeros(4, jnp.int32), reduction="avg"), ConfigError, "cross_entropy", "reduction", "'mean'"),
    row("cross_entropy-label-smoothing-2", lambda: F.cross_entropy(x(4, 3), jnp.zeros(4, jnp.int32), label_smoothing=2.0), ConfigError, "label_smoothing", "[0, 1]"),
    row("cross_entropy-ignore-index-with-probs", lambda: F.cross_entropy(x(4, 3), x(4, 3) / 3, ignore_index=0), ConfigError, "ignore_index", "not supported"),
    row("cross_entropy-bool-target", lambda: F.cross_entropy(x(4, 3), jnp.zeros(4, bool)), ConfigError, "integer class indices or floating"),
    row("cross_entropy-logits-scalar", lambda: F.cross_entropy(jnp.float32(1.0), jnp.int32(0)), ShapeError, "cross_entropy", "logits must have shape"),
    row("cross_entropy-int-logits", lambda: F.cross_entropy(jnp.ones((4, 3), jnp.int32), jnp.zeros(4, jnp.int32)), ConfigError, "cross_entropy", "floating"),
    row("nll_loss-float-target", lambda: F.nll_loss(x(4, 3), x(4)), ConfigError, "nll_loss", "target must be integer"),
    row("nll_loss-target-shape", lambda: F.nll_loss(x(4, 3), jnp.zeros(5, jnp.int32)), ShapeError, "nll_loss", "target"),
    row("nll_loss-bad-reduction", lambda: F.nll_loss(x(4, 3), jnp.zeros(4, jnp.int32), reduction="total"), ConfigError, "nll_loss", "reduction"),
    row("mse_loss-shape-mismatch", lambda: F.mse_loss(x(4, 3), x(4, 2)), ShapeError, "mse_loss", "target shape must equal input shape"),
    row("mse_loss-bad-reduction", lambda: F.mse_loss(x(4), x(4), reduction=None), ConfigError, "mse_loss", "reduction"),
    row("l1_loss-shape-mismatch", lambda: F.l1_loss(x(4), x(5)), ShapeError, "l1_loss", "target shape"),
    row("l1_loss-bad-reduction", lambda: F.l1_loss(x(4), x(4), reduction="Mean"), ConfigError, "l1_loss", "reduction"),
    row("smooth_l1-beta-negative", lambda: F.smooth_l1_loss(x(4), x(4), beta=-1.0), ConfigError, "smooth_l1_loss", "beta must be a number >= 0"),
    row("smooth_l1-shape-mismatch", lambda: F.smooth_l1_loss(x(4, 1), x(4)), ShapeError, "smooth_l1_loss", "target shape"),
    row("bce-target-shape", lambda: F.binary_cross_entropy_with_logits(x(4, 2), x(4)), ShapeError, "binary_cross_entropy_with_logits", "target shape"),
    row("bce-pos-weight-shape", lambda: F.binary_cross_entropy_with_logits(x(4, 2), x(4, 2), pos_weight=x(3)), ShapeError, "pos_weight", "must broadcast"),
    row("bce-bad-reduction", lambda: F.binary_cross_entropy_with_logits(x(4), x(4), reduction="max"), ConfigError, "reduction", "'mean', 'sum', 'none'"),
    row("multi_margin-p-3", lambda: F.multi_margin_loss(x(4, 3), jnp.zeros(4, jnp.int32), p=3), ConfigError, "multi_margin_loss", "p must be 1 or 2", "3"),
    row("multi_margin-target-2d", lambda: F.multi_margin_loss(x(2, 3), jnp.zeros((2, 3), jnp.int32)), ShapeError, "multi_margin_loss", "(2, 3)"),
    row("multi_margin-float-target", lambda: F.multi_margin_loss(x(4, 3), x(4)), ConfigError, "multi_margin_loss", "target must be integer"),
    row("mse_loss-int-input", lambda: F.mse_loss(jnp.ones(4, jnp.int32), jnp.ones(4, jnp.int32)), ConfigError, "mse_loss", "floating-point"),
    # ---- more spellings of conv/pool arguments
    row("conv-stride-one-zero", lambda: F.conv(x(1, 8, 8, 3), x(3, 3, 3, 4), stride=(1, 0)), ConfigError, "stride entries must be >= 1", "(1, 0)"),
    row("conv-padding-pair-negative", lambda: F.conv(x(1, 8, 8, 3), x(3, 3, 3, 4), padding=((1, -1), (0, 0))), ConfigError, "padding must be >= 0"),
    row("conv-padding-bad-nesting", lambda: F.conv(x(1, 8, 8, 3), x(3, 3, 3, 4), padding=((1, 2, 3), (1, 2))), ConfigError, "padding entries must be ints or (lo, hi) pairs"),
    row("conv-bias-2d", lambda: F.conv(x(1, 8, 8, 3), x(3, 3, 3, 4), x(1, 4)), ShapeError, "b.shape=(1, 4)"),
    row("convT-output-padding-negative", lambda: F.conv_transpose(x(1, 4, 4, 3), x(3, 3, 3, 4), stride=2, output_padding=-1), ConfigError, "output_padding entries must be >= 0"),
    row("global_avg_pool-keepdims-string", lambda: F.global_avg_pool(x(1, 4, 4, 3), keepdims="yes"), ConfigError, "keepdims must be a bool"),
    row("adaptive_avg_pool-float-size", lambda: F.adaptive_avg_pool(x(1, 8, 8, 3), 2.5), ConfigError, "output_size must be an int or a sequence of 2 ints"),
    row("gelu-approximate-bool", lambda: F.gelu(x(3), approximate=True), ConfigError, "approximate must be 'none' or 'tanh'"),
    row("set_lowering-conv-int", lambda: F.set_lowering(conv=3), ConfigError, "set_lowering", "conv=3"),
    # ---- known gaps
    row("dropout-train-string", lambda: F.dropout(x(4), 0.5, key=KEY, train="no"), ConfigError, "dropout", "train must be True or False", "'no'"),
    row("leaky_relu-slope-string", lambda: F.leaky_relu(x(3), "a"), ConfigError, "leaky_relu", "negative_slope must be a finite number", "'a'"),
    row("elu-alpha-string", lambda: F.elu(x(3), "a"), ConfigError, "elu", "alpha must be a finite number", "'a'"),
    row("softplus-beta-zero", lambda: F.softplus(x(3), beta=0.0), ConfigError, "softplus", "beta must be > 0", "beta=0.0"),
    row("softmax-axis-float", lambda: F.softmax(x(2, 3), axis=1.0), ConfigError, "softmax", "axis must be an int", "axis=1.0"),
]


# =========================================================================== layers
def init(layer, shape, key=KEY):
    """``layer.init(key, shape)``: the params (and state, if any) of a tiny layer."""
    return layer.init(key, shape)


def shape_init(layer, shape):
    """Init traced with ``jax.eval_shape`` (no arrays allocated): shape errors of big models."""
    return jax.eval_shape(lambda: layer.init(KEY, shape))


_DENSE = L.Dense(3, name="fc")
_DENSE_P = init(_DENSE, (2, 4))[1]
_BN = L.BatchNorm(name="bn")
_BN_P, _BN_S = init(_BN, (4, 3))[1:]
_NET = L.Serial(L.Dense(3, name="fc1"), L.ReLU(), L.Dense(2, name="fc2"))
_NET_P = init(_NET, (2, 4))[1]


class _BadBuild(L.Layer):
    """A custom layer whose build returns params only (no output shape)."""

    def build(self, key, input_shape):
        return {"w": jnp.zeros(3)}

    def forward(self, params, x, *, key, train):
        return x


def _apply_fn_layer(apply_fn):
    """Init and apply an ``L.layer`` leaf built from ``apply_fn`` on a [2, 4] input."""
    lay = L.layer("mine", None, lambda k, shape: (shape, {}), apply_fn)
    return lay.apply(init(lay, (2, 4))[1], x(2, 4))


def _without(d, k):
    return {a: b for a, b in d.items() if a != k}


SECTIONS["layers"] = [
    # ---- construction hyper-parameters
    row("Dense-features-zero", lambda: L.Dense(0), ConfigError, "dense", "features"),
    row("Dense-features-negative", lambda: L.Dense(-3), ConfigError, "dense", "features", "-3"),
    row("Dense-features-float", lambda: L.Dense(2.5), ConfigError, "features", "2.5"),
    row("Dense-features-string", lambda: L.Dense("10"), ConfigError, "features", "features must be an int >= 1"),
    row("Conv-out-channels-zero", lambda: L.Conv(0, 3), ConfigError, "conv", "out_channels"),
    row("Conv-kernel-zero", lambda: L.Conv(8, 0), ConfigError, "conv", "kernel_size"),
    row("Conv-stride-zero", lambda: L.Conv(8, 3, stride=0), ConfigError, "conv", "stride"),
    row("Conv-padding-bad-string", lambda: L.Conv(8, 3, padding="FULL"), ConfigError, "conv", "padding", "'SAME' or 'VALID'"),
    row("Conv-padding-negative", lambda: L.Conv(8, 3, padding=-1), ConfigError, "conv", "padding"),
    row("Conv-padding-float", lambda: L.Conv(8, 3, padding=1.5), ConfigError, "conv", "padding"),
    row("Conv-dilation-zero", lambda: L.Conv(8, 3, dilation=0), ConfigError, "conv", "dilation"),
    row("Conv-groups-not-dividing-out", lambda: L.Conv(8, 3, groups=3), ConfigError, "conv", "groups=3", "divide out_channels"),
    row("Conv-groups-zero", lambda: L.Conv(8, 3, groups=0), ConfigError, "conv", "groups"),
    row("ConvTranspose-out-channels-zero", lambda: L.ConvTranspose(0, 3), ConfigError, "out_channels"),
    row("ConvTranspose-stride-zero", lambda: L.ConvTranspose(8, 3, stride=0), ConfigError, "stride", "stride entries must be >= 1"),
    row("MaxPool-kernel-zero", lambda: L.MaxPool(0), ConfigError, "max_pool", "kernel_size"),
    row("MaxPool-stride-zero", lambda: L.MaxPool(2, stride=0), ConfigError, "max_pool", "stride"),
    row("AvgPool-kernel-zero", lambda: L.AvgPool(0), ConfigError, "avg_pool", "kernel_size"),
    row("AdaptiveAvgPool-zero", lambda: L.AdaptiveAvgPool(0), ConfigError, "output_size", ">= 1"),
    row("AdaptiveAvgPool-too-many-dims", lambda: L.AdaptiveAvgPool((1, 1, 1, 1)), ConfigError, "output_size", "tuple of 1 to 3"),
    row("Reshape-zero", lambda: L.Reshape((0,)), ConfigError, "reshape", "positive ints"),
    row("Reshape-string", lambda: L.Reshape("abc"), ConfigError, "reshape", "shape must be a tuple"),
    row("Lambda-not-callable", lambda: L.Lambda(3), ConfigError, "Lambda", "fn must be a function"),
    row("Dropout-rate-one", lambda: L.Dropout(1.0), ConfigError, "dropout", "rate"),
    row("Dropout-rate-negative", lambda: L.Dropout(-0.5), ConfigError, "dropout", "rate"),
    row("Dropout-rate-string", lambda: L.Dropout("half"), ConfigError, "dropout", "rate"),
    row("GELU-bad-approximate", lambda: L.GELU("fast"), ConfigError, "gelu", "'none' or 'tanh'"),
    row("Softplus-beta-zero", lambda: L.Softplus(beta=0), ConfigError, "softplus", "beta must be > 0"),
    row("Softmax-axis-string", lambda: L.Softmax(axis="last"), ConfigError, "softmax", "axis must be an int"),
    row("LogSoftmax-axis-float", lambda: L.LogSoftmax(axis=1.0), ConfigError, "axis must be an int"),
    row("BatchNorm-momentum-two", lambda: L.BatchNorm(momentum=2.0), ConfigError, "batch_norm", "momentum"),
    row("BatchNorm-eps-negative", lambda: L.BatchNorm(eps=-1.0), ConfigError, "batch_norm", "eps"),
    row("BatchNorm-axis-name-int", lambda: L.BatchNorm(axis_name=3), ConfigError, "axis_name", "None, a str or a tuple of str"),
    row("BatchNorm-axis-name-unbound-train",
        lambda: L.BatchNorm(axis_name="b").apply(*L.BatchNorm(axis_name="b").init(KEY, (4, 3))[1:2],
                                                  jnp.ones((4, 3)), state={"mean": jnp.zeros(3), "var": jnp.ones(3)},
                                                  train=True),
        ConfigError, "axis_name='b' is not a mapped axis here", "jax.vmap"),
    row("LayerNorm-eps-negative", lambda: L.LayerNorm(eps=-1.0), ConfigError, "layer_norm", "eps"),
    row("name-empty", lambda: L.Dense(3, name=""), ConfigError, "Dense", "name must be a non-empty string"),
    row("name-with-slash", lambda: L.Dense(3, name="a/b"), ConfigError, "Dense", "without '/'"),
    row("name-not-string", lambda: L.Dense(3, name=3), ConfigError, "Dense", "name"),
    row("replace-unknown-field", lambda: L.Dense(3).replace(feature=4), ConfigError, "replace got unknown field", "feature"),
    row("BasicBlock-zero-channels", lambda: L.BasicBlock(0), ConfigError, "out_channels", "positive int"),
    row("BasicBlock-stride-zero", lambda: L.BasicBlock(8, stride=0), ConfigError, "stride", "positive int"),
    row("Bottleneck-zero-width", lambda: L.Bottleneck(0), ConfigError, "width", "positive int"),
    row("Bottleneck-expansion-zero", lambda: L.Bottleneck(4, expansion=0), ConfigError, "expansion", "positive int"),
    row("layer-empty-kind", lambda: L.layer("", None, lambda k, s: (s, {}), lambda p, x: x), ConfigError, "kind must be a non-empty string"),
    row("layer-init-not-callable", lambda: L.layer("mine", None, 3, lambda p, x: x), ConfigError, "'mine'", "init_fn must be callable"),
    # ---- init: keys and input shapes
    row("Dense-init-key-none", lambda: init(L.Dense(3), (2, 4), key=None), ConfigError, "key must be a jax.random.key", "got NoneType"),
    row("Dense-init-rank-1", lambda: init(L.Dense(3), (4,)), ShapeError, "dense", "rank >= 2"),
    row("Dense-init-zero-batch", lambda: init(L.Dense(3), (0, 4)), ShapeError, "input_shape", "positive ints"),
    row("Dense-init-float-shape", lambda: init(L.Dense(3), (2.0, 4)), ShapeError, "input_shape", "tuple of ints including the batch"),
    row("Dense-init-shape-string", lambda: init(L.Dense(3), "2x4"), ShapeError, "input_shape must be a tuple"),
    row("Conv-init-input-too-small", lambda: init(L.Conv(4, 3), (1, 2, 2, 3)), ShapeError, "conv", "too"),
    row("Conv-init-groups-not-dividing-input", lambda: init(L.Conv(4, 3, groups=2), (1, 8, 8, 3)), ConfigError, "conv", "groups=2", "input channels"),
    row("Conv-init-rank-mismatch", lambda: init(L.Conv(4, (3, 3)), (1, 8, 3)), ShapeError, "conv", "means 2 spatial dim(s)"),
    row("ConvTranspose-init-output-too-small", lambda: init(L.ConvTranspose(4, 1, padding=2), (1, 1, 1, 3)), ShapeError, "output spatial size"),
    row("ConvTranspose-init-zero-spatial", lambda: init(L.ConvTranspose(4, 3, stride=2), (1, 0, 4, 3)), ShapeError, "input_shape", "positive ints"),
    row("ConvTranspose-output-padding-too-big", lambda: init(L.ConvTranspose(4, 3, stride=2, output_padding=2), (1, 4, 4, 3)), ConfigError, "output_padding"),
    row("MaxPool-init-too-small", lambda: init(L.MaxPool(3), (1, 2, 2, 3)), ShapeError, "max_pool", "too small"),
    row("MaxPool-init-padding-over-half", lambda: init(L.MaxPool(2, padding=2), (1, 8, 8, 3)), ConfigError, "max_pool", "kernel_size // 2"),
    row("AvgPool-init-too-small", lambda: init(L.AvgPool(4), (1, 2, 2, 3)), ShapeError, "avg_pool", "too small"),
    row("Reshape-init-wrong-size", lambda: init(L.Reshape((5,)), (2, 4)), ShapeError, "reshape", "cannot reshape"),
    row("Softmax-init-axis-out-of-range", lambda: init(L.Softmax(axis=3), (2, 4)), ShapeError, "softmax", "out of range"),
    row("LayerNorm-init-scalar", lambda: init(L.LayerNorm(), ()), ShapeError, "layer_norm", "channel axis"),
    row("custom-build-wrong-return", lambda: init(_BadBuild(), (2, 3)), ConfigError, "build must return"),
    # ---- apply: params of another architecture, missing/extra keys, wrong leaf shapes
    row("Dense-apply-conv-params", lambda: L.Dense(3).apply(init(L.Conv(3, 1), (1, 2, 2, 4))[1], x(2, 4)), ShapeError, "dense", "parameters were initialised for"),
    row("Dense-apply-wrong-features", lambda: _DENSE.apply(_DENSE_P, x(2, 5)), ShapeError, "fc", "5 features"),
    row("Dense-apply-missing-bias", lambda: _DENSE.apply(_without(_DENSE_P, "b"), x(2, 4)), ShapeError, "fc", "b"),
    row("Dense-apply-extra-key", lambda: _DENSE.apply({**_DENSE_P, "g": x(3)}, x(2, 4)), ShapeError, "fc", "g"),
    row("Dense-apply-wrong-w-shape", lambda: _DENSE.apply({**_DENSE_P, "w": x(4, 5)}, x(2, 4)), ShapeError, "fc", "w"),
    row("Dense-apply-params-list", lambda: _DENSE.apply([x(4, 3), x(3)], x(2, 4)), ShapeError, "fc", "dict"),
    row("Serial-apply-missing-layer", lambda: _NET.apply(_without(_NET_P, "fc2"), x(2, 4)), ShapeError, "fc2", "params is missing 'fc2'"),
    row("Serial-apply-extra-layer", lambda: _NET.apply({**_NET_P, "fc3": _DENSE_P}, x(2, 4)), ShapeError, "fc3", "unexpected entry 'fc3'"),
    row("Serial-apply-params-of-other-net", lambda: _NET.apply(init(L.Serial(L.Dense(5, name="fc1"), L.Dense(2, name="fc2")), (2, 4))[1], x(2, 4)), ShapeError, "fc1", "has shape (5,), expected (3,)"),
    row("Serial-apply-wrong-input-features", lambda: _NET.apply(_NET_P, x(2, 6)), ShapeError, "fc1", "6 features"),
    row("Serial-apply-params-none", lambda: _NET.apply(None, x(2, 4)), ShapeError, "dict", "params must be a dict keyed by layer name"),
    row("Conv-apply-channel-mismatch", lambda: L.Conv(4, 3, name="c").apply(init(L.Conv(4, 3, name="c"), (1, 8, 8, 3))[1], x(1, 8, 8, 2)), ShapeError, "c", "2 channels"),
    row("BatchNorm-apply-other-channels", lambda: _BN.apply(_BN_P, x(4, 5), state=_BN_S), ShapeError, "bn", "5 channels"),
    row("BatchNorm-apply-state-missing-var", lambda: _BN.apply(_BN_P, x(4, 3), state={"mean": jnp.zeros(3)}), ShapeError, "bn", "var"),
    row("BatchNorm-apply-bad-params", lambda: _BN.apply({"scale": x(3)}, x(4, 3), state=_BN_S), ShapeError, "bn", "bias"),
    row("BatchNorm-train-one-value", lambda: _BN.apply(_BN_P, x(1, 3), state=_BN_S, train=True), ShapeError, "bn", "more than 1 value per channel"),
    row("stateless-given-state", lambda: _DENSE.apply(_DENSE_P, x(2, 4), state={"x": 1}), ConfigError, "state was given but this model is stateless"),
    # ---- train/eval mode mistakes, keys
    row("train-string", lambda: _NET.apply(_NET_P, x(2, 4), train="yes"), ConfigError, "train must be True, False or a mapping"),
    row("train-mapping-bad-value", lambda: _NET.apply(_NET_P, x(2, 4), train={"fc1": "no"}), ConfigError, "train['fc1'] must be True or False"),
    row("train-mapping-bad-key", lambda: _NET.apply(_NET_P, x(2, 4), train={3: True}), ConfigError, "train mapping keys must be path patterns"),
    row("Dropout-train-without-key", lambda: L.Dropout(0.5).apply({}, x(2, 4), train=True), ConfigError, "dropout", "needs a random key"),
    row("Dense-bias-string", lambda: L.Dense(3, bias="no"), ConfigError, "bias must be True or False"),
    row("Dense-w_init-not-callable", lambda: L.Dense(3, w_init=3), ConfigError, "w_init must be a callable (key, shape, dtype)"),
    row("Conv-kernel-4d", lambda: L.Conv(8, (3, 3, 3, 3)), ConfigError, "kernel_size must be an int or a tuple of 1 to 3 ints"),
    row("Conv-stride-dims-differ", lambda: L.Conv(8, (3, 3), stride=(1, 1, 1)), ConfigError, "kernel_size and stride give different numbers of spatial dims"),
    row("MaxPool-ceil-mode-string", lambda: L.MaxPool(2, ceil_mode="yes"), ConfigError, "ceil_mode must be True or False"),
    row("AvgPool-count-include-pad-string", lambda: L.AvgPool(2, count_include_pad="no"), ConfigError, "count_include_pad must be True or False"),
    row("GlobalAvgPool-keepdims-string", lambda: L.GlobalAvgPool(keepdims="yes"), ConfigError, "keepdims must be True or False"),
    row("LeakyReLU-slope-string", lambda: L.LeakyReLU("x"), ConfigError, "negative_slope must be a finite number"),
    row("ELU-alpha-string", lambda: L.ELU("x"), ConfigError, "alpha must be a finite number"),
    row("BatchNorm-affine-string", lambda: L.BatchNorm(affine="yes"), ConfigError, "affine must be True or False"),
    row("LayerNorm-affine-string", lambda: L.LayerNorm(elementwise_affine="yes"), ConfigError, "elementwise_affine must be True or False"),
    row("Flatten-init-rank-1", lambda: init(L.Flatten(), (4,)), ShapeError, "flatten", "at least 2 axes"),
    row("Serial-apply-rank-1", lambda: _NET.apply(_NET_P, x(4)), ShapeError, "serial/fc1", "rank >= 2", "x[None]"),
    row("Dense-apply-int-params", lambda: _DENSE.apply({"w": jnp.ones((4, 3), jnp.int32), "b": jnp.ones(3, jnp.int32)}, x(2, 4)), ShapeError, "dtype int32", "floating"),
    row("BatchNorm-apply-without-state", lambda: _BN.apply(_BN_P, x(4, 3)), ConfigError, "bn", "pass state="),
    row("BatchNorm-apply-state-none-train", lambda: _BN.apply(_BN_P, x(4, 3), state=None, train=True), ConfigError, "batch-norm statistics"),
    row("train-mapping-matches-nothing", lambda: _NET.apply(_NET_P, x(2, 4), train={"fc9/*": False}), ConfigError, "train pattern 'fc9/*' matches no layer", "'fc1'"),
    row("Dropout-key-array", lambda: L.Dropout(0.5).apply({}, x(2, 4), train=True, key=jax.random.split(KEY, 2)), ConfigError, "dropout", "key"),
    row("Dropout-key-string", lambda: L.Dropout(0.5).apply({}, x(2, 4), train=True, key="abc"), ConfigError, "dropout", "key"),
    row("Dense-w_init-wrong-shape", lambda: init(L.Dense(3, w_init=lambda k, shape, dtype=jnp.float32: jnp.zeros((2, 2))), (2, 4)), ConfigError, "w_init returned shape (2, 2)", "(4, 3)"),
    row("Lambda-changes-shape", lambda: init(L.Lambda(lambda a: a[:, :2]), (2, 4)), ShapeError, "lambda", "fn must keep the input's shape", "Reshape"),
    row("layer-init-returns-dict", lambda: init(L.layer("mine", None, lambda k, shape: {"w": 1}, lambda p, a: a), (2, 4)), ConfigError, "'mine'", "init must return (output_shape, params)"),
    row("stateful_layer-init-returns-pair", lambda: init(L.stateful_layer("st", None, lambda k, shape: (shape, {}), lambda p, st, a, *, key, train: (a, st)), (2, 4)), ConfigError, "'st'", "(output_shape, params, state)", "a tuple of 2"),
    row("BasicBlock-init-flat-input", lambda: init(L.BasicBlock(8), (2, 4)), ShapeError, "basic_block/body/conv1", "rank 4"),
    row("Bottleneck-init-missing-batch", lambda: init(L.Bottleneck(4), (2, 4, 4)), ShapeError, "bottleneck/body/conv1", "x[None]"),
    row("Dense-w_init-wrong-signature", lambda: init(L.Dense(3, w_init=lambda: 0), (2, 4)), ConfigError, "Dense 'dense'", "w_init must accept (key, shape, dtype)", "signature ()"),
    row("layer-apply-one-argument", lambda: _apply_fn_layer(lambda p: p), ConfigError, "'mine'", "apply must have the signature (params, x, *, key, train)", "signature (p)"),
    row("Serial-dropout-train-without-key", lambda: L.Serial(L.Dense(3, name="fc"), L.Dropout(0.2, name="drop")).apply({"fc": _DENSE_P}, x(2, 4), train=True), ConfigError, "drop", "random key"),
]


# =========================================================================== combinators
def _siamese(share="left", right_layer=None):
    """A two-input Graph whose 'right' node shares (or not) the parameters of 'left'."""
    enc = L.Dense(4)
    return L.Graph(inputs=("a", "b"), outputs="d", nodes=[
        L.Node("left", enc, "a"),
        L.Node("right", right_layer or enc, "b", share=share),
        L.Node("d", L.Concat(), ("left", "right"))])


class _Pair(L.Layer):
    """A custom composite holding two child layers in fields."""
    a: L.Layer
    b: L.Layer

    def build(self, key, input_shape):
        return input_shape, {}

    def forward(self, params, x, *, key, train):
        return x


SECTIONS["combinators"] = [
    row("Serial-empty", lambda: L.Serial(), ConfigError, "serial", "at least one layer"),
    row("Serial-non-layer", lambda: L.Serial(L.Dense(3), 3), ConfigError, "argument 1 must be a fundl Layer"),
    row("Serial-function-not-layer", lambda: L.Serial(L.Dense(3), jax.nn.relu), ConfigError, "must be a fundl Layer"),
    row("composite-duplicate-child-names", lambda: _Pair(L.Dense(3), L.Dense(4)), ConfigError, "_pair", "distinct names", "dense"),
    row("Serial-scan-one", lambda: L.Serial(L.Dense(3), scan=1), ConfigError, "scan must be True, False or an int >= 2"),
    row("Serial-scan-string", lambda: L.Serial(L.Dense(3), scan="yes"), ConfigError, "scan must be"),
    row("Remat-non-layer", lambda: L.Remat(3), ConfigError, "Remat", "layer must be a fundl Layer", "got int 3"),
    row("Remat-function-not-layer", lambda: L.Remat(jax.nn.relu), ConfigError, "Remat", "must be a fundl Layer"),
    row("Remat-policy-unknown-name", lambda: L.Remat(L.Dense(3), "dots"), ConfigError, "Remat 'dense'", "policy must be", "'dots_saveable'", "got 'dots'"),
    row("Remat-policy-factory-name", lambda: L.Remat(L.Dense(3), "save_only_these_names"), ConfigError, "policy must be", "save_only_these_names(...)"),
    row("Remat-policy-int", lambda: L.Remat(L.Dense(3), policy=1), ConfigError, "Remat 'dense'", "policy must be", "got 1"),
    row("Remat-policy-layer", lambda: L.Remat(L.Dense(3), policy=L.ReLU()), ConfigError, "policy must be"),
    row("Serial-init-shape-mismatch-inside", lambda: init(L.Serial(L.Conv(4, 3, name="c"), L.Dense(2)), (1, 2, 2, 3)), ShapeError, "c", "too small"),
    row("Serial-with_child-unknown", lambda: _NET.with_child("fc9", L.Dense(3)), ConfigError, "no child 'fc9'", "fc1"),
    row("Serial-with_child-non-layer", lambda: _NET.with_child("fc1", 3), ConfigError, "a child must be a fundl Layer"),
    row("Parallel-empty", lambda: L.Parallel(), ConfigError, "parallel", "at least one branch"),
    row("Parallel-bad-merge", lambda: L.Parallel(L.Dense(3), L.Dense(3, name="b"), merge="mean"), ConfigError, "merge must be 'sum', 'concat' or None", "mean"),
    row("Parallel-non-layer", lambda: L.Parallel(L.Dense(3), "relu"), ConfigError, "must be a fundl Layer"),
    row("composite-child-not-layer-replace", lambda: _Pair(L.Dense(3), L.Dense(4, name="b")).with_child("b", "dense"), ConfigError, "a child must be a fundl Layer"),
    row("Parallel-sum-unequal", lambda: init(L.Parallel(L.Dense(3, name="a"), L.Dense(4, name="b"), merge="sum"), (2, 4)), ShapeError, "merge='sum'", "equal"),
    row("Parallel-concat-unequal-spatial", lambda: init(L.Parallel(L.Conv(2, 3, name="a"), L.Conv(2, 1, name="b")), (1, 8, 8, 3)), ShapeError, "merge='concat'", "channels"),
    row("Residual-body-not-layer", lambda: L.Residual(3), ConfigError, "body must be a fundl Layer"),
    row("Residual-shortcut-not-layer", lambda: L.Residual(L.Dense(3), shortcut=3), ConfigError, "shortcut must be a fundl Layer or None"),
    row("Residual-bad-projection", lambda: L.Residual(L.Dense(3), projection="never"), ConfigError, "projection must be 'always' or 'auto'"),
    row("Residual-auto-without-shortcut", lambda: L.Residual(L.Dense(3), projection="auto"), ConfigError, "projection='auto' needs a shortcut"),
    row("Residual-activation-string", lambda: L.Residual(L.Dense(3), activation="relu"), ConfigError, "activation must be a function"),
    row("Residual-shape-mismatch", lambda: init(L.Residual(L.Dense(3)), (2, 4)), ShapeError, "body output shape", "shortcut"),
    row("Residual-shortcut-mismatch", lambda: init(L.Residual(L.Dense(3), L.Dense(5, name="proj")), (2, 4)), ShapeError, "body output shape"),
    row("Sum-single-input", lambda: init(L.Sum(), (2, 3)), ShapeError, "sum", "expects a tuple of inputs"),
    row("Concat-single-input", lambda: init(L.Concat(), (2, 3)), ShapeError, "concat", "expects a tuple of inputs"),
    row("Multiply-unequal", lambda: init(L.Multiply(), ((2, 3), (2, 4))), ShapeError, "multiply", "needs equal input shapes"),
    row("Graph-duplicate-inputs", lambda: L.Graph(("a", "a"), [L.Node("n", L.Dense(3), "a")], "n"), ConfigError, "input names must be unique"),
    row("Graph-unknown-output", lambda: L.Graph("a", [L.Node("n", L.Dense(3), "a")], "z"), ConfigError, "output 'z' is not a graph input or node"),
    row("Graph-node-not-Node", lambda: L.Graph("a", [L.Dense(3)], "a"), ConfigError, "nodes[0] must be a Node"),
    row("Graph-node-name-twice", lambda: L.Graph("a", [L.Node("n", L.Dense(3), "a"), L.Node("n", L.Dense(3), "a")], "n"), ConfigError, "node name 'n' is used twice"),
    row("Graph-node-reads-unknown", lambda: L.Graph("a", [L.Node("n", L.Dense(3), "q")], "n"), ConfigError, "node 'n' reads 'q'"),
    row("Graph-node-reads-later-node", lambda: L.Graph("a", [L.Node("n", L.Dense(3), "m"), L.Node("m", L.Dense(3), "a")], "n"), ConfigError, "node 'n' reads 'm'"),
    row("Graph-share-unknown", lambda: _siamese(share="ghost"), ConfigError, "node 'right' shares parameters with 'ghost'", "not an earlier node"),
    row("Graph-node-layer-not-layer", lambda: L.Graph("a", [L.Node("n", jnp.tanh, "a")], "n"), ConfigError, "node 'n' needs a Layer"),
    row("Graph-apply-wrong-input-count", lambda: _siamese().apply(init(_siamese(), ((4, 3), (4, 3)))[1], x(4, 3)), ShapeError, "input_shape must be a tuple", "tuple of such shapes"),
    row("Graph-init-wrong-input-count", lambda: init(_siamese(), (4, 3)), ShapeError, "input_shape must be a tuple", "tuple of such shapes"),
    row("Graph-shared-weights-other-shapes", lambda: init(_siamese(), ((4, 3), (4, 5))), ShapeError, "node 'right' shares parameters with"),
    row("Graph-share-with-different-layer", lambda: init(_siamese(right_layer=L.Dense(6)), ((4, 3), (4, 3))), ShapeError, "right", "shares parameters with 'left'"),
    row("Sum-three-inputs-unequal", lambda: init(L.Sum(), ((2, 3), (2, 3), (2, 4))), ShapeError, "merge='sum' needs equal input shapes", "input 2 gives (2, 4)"),
    row("Concat-rank-mismatch", lambda: init(L.Concat(), ((2, 3), (2, 3, 1))), ShapeError, "merge='concat'", "equal leading dims"),
    row("Residual-activation-int", lambda: L.Residual(L.Dense(3), activation=3), ConfigError, "activation must be a function", "got 3"),
    row("Graph-no-outputs", lambda: L.Graph("a", [L.Node("n", L.Dense(3), "a")], ()), ConfigError, "Graph 'graph'", "outputs must be a name or a non-empty sequence of names", "got ()"),
    row("Graph-inputs-int", lambda: L.Graph(3, [L.Node("n", L.Dense(3), "a")], "n"), ConfigError, "Graph 'graph'", "inputs must be a name or a non-empty sequence of names", "got 3"),
    row("Graph-node-inputs-int", lambda: L.Graph("a", [L.Node("n", L.Dense(3), 3)], "n"), ConfigError, "node 'n'", "inputs must be a name or a non-empty sequence of names", "got 3"),
    row("Graph-no-child", lambda: _siamese().with_child("zzz", L.Dense(3)), ConfigError, "no node 'zzz'"),
]


# =========================================================================== models
SECTIONS["models"] = [
    row("mlp-empty-features", lambda: M.mlp([]), ConfigError, "mlp", "features must be a non-empty sequence"),
    row("resnet-remat-unknown-policy", lambda: M.resnet18(remat="dots"), ConfigError, "resnet 'resnet18'", "remat must be False, True", "'dots_saveable'", "got remat='dots'"),
    row("resnet-remat-int", lambda: M.resnet18(remat=1), ConfigError, "remat must be", "remat=1"),
    row("vgg-remat-unknown-policy", lambda: M.vgg11(remat="all"), ConfigError, "vgg 'vgg11'", "remat must be", "remat='all'"),
    row("mlp-zero-width", lambda: M.mlp((256, 0)), ConfigError, "mlp", "features"),
    row("mlp-features-int", lambda: M.mlp(10), ConfigError, "mlp", "features must be a non-empty sequence"),
    row("mlp-dropout-one", lambda: M.mlp((8, 2), dropout=1.0), ConfigError, "mlp", "dropout must be a probability in [0, 1)"),
    row("mlp-dropout-negative", lambda: M.mlp((8, 2), dropout=-0.1), ConfigError, "dropout", "probability in [0, 1)"),
    row("mlp-flatten-string", lambda: M.mlp((8, 2), flatten="yes"), ConfigError, "flatten must be True or False"),
    row("mlp-unknown-activation", lambda: M.mlp((8, 2), activation="swishy"), ConfigError, "activation must be one of", "swishy"),
    row("mlp-activation-int", lambda: M.mlp((8, 2), activation=3), ConfigError, "activation must be a name"),
    row("convnet_mnist-zero-classes", lambda: M.convnet_mnist(0), ConfigError, "convnet_mnist", "num_classes must be a positive int"),
    row("convnet_mnist-negative-classes", lambda: M.convnet_mnist(-1), ConfigError, "num_classes", "-1"),
    row("convnet_mnist-float-classes", lambda: M.convnet_mnist(2.5), ConfigError, "num_classes", "2.5"),
    row("convnet_mnist-image-too-small", lambda: init(M.convnet_mnist(), (1, 10, 10, 1)), ShapeError, "convnet_mnist"),
    row("convnet_mnist-rgb-ok-but-1d", lambda: init(M.convnet_mnist(), (1, 28, 1)), ShapeError, "convnet_mnist"),
    row("lenet5-zero-classes", lambda: M.lenet5(0), ConfigError, "lenet5", "num_classes"),
    row("lenet5-bad-activation", lambda: M.lenet5(activation="foo"), ConfigError, "lenet5", "activation must be one of"),
    row("lenet5-activation-none", lambda: M.lenet5(activation=None), ConfigError, "lenet5", "activation must not be None"),
    row("lenet5-image-too-small", lambda: init(M.lenet5(), (1, 8, 8, 1)), ShapeError, "lenet5", "lenet5/conv2"),
    row("alexnet-zero-classes", lambda: M.alexnet(0), ConfigError, "alexnet", "num_classes"),
    row("alexnet-dropout-too-big", lambda: M.alexnet(dropout=1.5), ConfigError, "alexnet", "dropout"),
    row("alexnet-image-too-small", lambda: shape_init(M.alexnet(10), (1, 32, 32, 3)), ShapeError, "alexnet", "alexnet/features/pool3"),
    row("vgg-unknown-config", lambda: M.vgg("VGG99"), ConfigError, "vgg", "config must be one of"),
    row("vgg11-batch-norm-string", lambda: M.vgg11(batch_norm="yes"), ConfigError, "batch_norm must be True or False"),
    row("vgg16-zero-classes", lambda: M.vgg16(0), ConfigError, "num_classes", "positive int"),
    row("vgg11-dropout-negative", lambda: M.vgg11(dropout=-1.0), ConfigError, "dropout", "probability in [0, 1)"),
    row("vgg11-image-too-small", lambda: shape_init(M.vgg11(10), (1, 16, 16, 3)), ShapeError, "vgg", "vgg11/features/pool5"),
    row("resnet-unknown-block", lambda: M.resnet("wide", [2, 2]), ConfigError, "block must be 'basic', 'bottleneck'"),
    row("resnet-block-int", lambda: M.resnet(3, [2, 2]), ConfigError, "block must be"),
    row("resnet-empty-layers", lambda: M.resnet("basic", []), ConfigError, "layers must be a non-empty sequence"),
    row("resnet-zero-width", lambda: M.resnet("basic", [1, 1], width=0), ConfigError, "width", "positive int"),
    row("resnet18-bad-stem", lambda: M.resnet18(stem="tiny"), ConfigError, "stem must be 'imagenet' or 'cifar'"),
    row("resnet18-zero-classes", lambda: M.resnet18(0), ConfigError, "num_classes", "positive int"),
    row("resnet18-scan-one", lambda: M.resnet18(scan=1), ConfigError, "scan must be"),
    row("resnet-zero-blocks", lambda: M.resnet("basic", [0, 2]), ConfigError, "layers[0] must be a positive int"),
    row("resnet-negative-blocks", lambda: M.resnet("basic", [2, -1]), ConfigError, "layers[1]", "-1"),
    row("resnet18-cifar-grayscale-1d", lambda: shape_init(M.resnet18(10, stem="cifar"), (1, 32, 3)), ShapeError, "resnet", "resnet18/conv1"),
    row("context_module-zero-channels", lambda: M.context_module(0), ConfigError, "context", "channels"),
    row("context_module-empty-dilations", lambda: M.context_module(4, dilations=[]), ConfigError, "dilations must be a non-empty sequence"),
    row("context_module-bad-init", lambda: M.context_module(4, init="zeros"), ConfigError, "init must be 'identity', 'random'"),
    row("context_module-wrong-channels", lambda: init(M.context_module(4), (1, 8, 8, 3)), ShapeError, "context", "[N, H, W, 4]"),
    row("resnet-width-string", lambda: M.resnet("basic", [1, 1], width="64"), ConfigError, "width must be a positive int", "'64'"),
    row("resnet-scan-string", lambda: M.resnet("basic", [1, 1], scan="x"), ConfigError, "scan must be True, False or an int >= 2"),
    row("resnet18-classes-string", lambda: M.resnet18("10"), ConfigError, "num_classes must be a positive int", "'10'"),
    row("convnet_mnist-classes-bool", lambda: M.convnet_mnist(True), ConfigError, "num_classes must be a positive int", "True"),
    row("mlp-width-bool", lambda: M.mlp((8, True)), ConfigError, "features[1] must be a positive int"),
    row("mlp-name-with-slash", lambda: M.mlp((8, 2), name="a/b"), ConfigError, "name must be a non-empty string without '/'"),
    row("vgg-bad-config-entry", lambda: M.vgg([64, "X"]), ConfigError, "config must be one of", "sequence of positive ints and 'M'", "'X'"),
    row("vgg-empty-config", lambda: M.vgg([]), ConfigError, "config must be one of"),
    row("context_module-dilation-zero", lambda: M.context_module(4, dilations=[0]), ConfigError, "dilations[0] must be a positive int"),
    row("context_module-dilation-float", lambda: M.context_module(4, dilations=[1.5]), ConfigError, "dilations[0]", "1.5"),
    row("convolutionize-image-too-small", lambda: M.convolutionize(M.lenet5(), (1, 8, 8, 1)), ShapeError, "conv2", "too small"),
    row("convolutionize-shape-string", lambda: M.convolutionize(M.lenet5(), "28x28"), ShapeError, "input_shape must be a tuple of ints"),
    row("convolutionize-not-layer", lambda: M.convolutionize(3, (1, 4)), ConfigError, "convolutionize", "model must be a fundl Layer"),
    row("convolutionize-no-head", lambda: M.convolutionize(L.Serial(L.Conv(2, 3)), (1, 8, 8, 3)), ConfigError, "convolutionize"),
    row("convolutionize-dense-only", lambda: M.convolutionize(L.Serial(L.Dense(3)), (1, 4)), ConfigError, "convolutionize"),
]


# =========================================================================== summary
SECTIONS["summary"] = [
    row("summary-not-a-layer", lambda: fundl.summary(3, (1, 4)), ConfigError, "summary", "model must be a fundl Layer"),
    row("summary-function-not-layer", lambda: fundl.summary(jax.nn.relu, (1, 4)), ConfigError, "summary", "fundl Layer"),
    row("summary-rank-1-input", lambda: fundl.summary(L.Dense(3), (4,)), ShapeError, "dense", "rank >= 2"),
    row("summary-shape-string", lambda: fundl.summary(L.Dense(3), "1x4"), ShapeError, "input_shape", "tuple of ints including the batch"),
    row("summary-zero-batch", lambda: fundl.summary(L.Dense(3), (0, 4)), ShapeError, "input_shape", "positive ints"),
    row("summary-image-too-small", lambda: fundl.summary(M.lenet5(), (1, 8, 8, 1)), ShapeError, "lenet5", "lenet5/conv2"),
    row("summary-conv-on-flat", lambda: fundl.summary(L.Conv(4, 3), (1, 8)), ShapeError, "conv", "1 to 3 spatial dims"),
    row("summary-graph-single-input", lambda: fundl.summary(_siamese(), (4, 3)), ShapeError, "input_shape", "tuple of such shapes"),
    row("summary-batchnorm-rank-1", lambda: fundl.summary(L.Serial(L.BatchNorm()), (1,)), ShapeError, "batch_norm", "rank >= 2"),
    row("summary-shape-nested-once-too-often", lambda: fundl.summary(_NET, ((2, 4),)), ShapeError, "serial/fc1", "rank >= 2"),
    row("count_params-not-a-tree-of-arrays", lambda: fundl.count_params({"w": "abc"}), ConfigError, "count_params"),
]


# =========================================================================== train
_SGD = optax.sgd(0.1)
_XS, _YS = np.ones((8, 4), np.float32), np.zeros(8, np.int32)
_NET_S = {}


def _step(batch, *, opt_state=None, params=None, **kw):
    """One call of a fresh, undonated train step of ``_NET`` with sgd on ``batch``."""
    step = T.make_train_step(_NET, _SGD, donate=False, **kw)
    params = _NET_P if params is None else params
    opt_state = _SGD.init(params) if opt_state is None else opt_state
    return step(params, _NET_S, opt_state, batch, KEY)


def _fit(train=(_XS, _YS), **kw):
    """``fit`` of ``_NET`` for one epoch, quiet; ``kw`` overrides any argument."""
    args = dict(epochs=1, batch_size=4, key=KEY, progress=False)
    args.update(kw)
    model, params, opt = args.pop("model", _NET), args.pop("params", _NET_P), args.pop("optimizer", _SGD)
    return T.fit(model, params, _NET_S, opt, train, **args)


_DROP_NET = L.Serial(L.Dense(3, name="fc"), L.Dropout(0.5, name="d"))
_DROP_P = {"fc": _DENSE_P}
_BN_NET = L.Serial(L.Dense(3, name="fc1"), L.BatchNorm(name="bn"))
_BN_NET_P = init(_BN_NET, (2, 4))[1]


def _evaluate(data=(_XS, _YS), **kw):
    return T.evaluate(kw.pop("model", _NET), kw.pop("params", _NET_P), _NET_S, data, **kw)


SECTIONS["train"] = [
    # ---- make_train_step / make_eval_step arguments
    row("train_step-model-not-layer", lambda: T.make_train_step(3, _SGD), ConfigError, "make_train_step", "model must be a fundl Layer"),
    row("train_step-model-function", lambda: T.make_train_step(jax.nn.relu, _SGD), ConfigError, "model must be a fundl Layer"),
    row("train_step-optimizer-string", lambda: T.make_train_step(_NET, "adam"), ConfigError, "make_train_step", "optimizer must be an optax GradientTransformation"),
    row("train_step-optimizer-uncalled", lambda: T.make_train_step(_NET, optax.sgd), ConfigError, "optimizer must be an optax GradientTransformation"),
    row("train_step-bad-parallel", lambda: T.make_train_step(_NET, _SGD, parallel="ddp"), ConfigError, "parallel must be one of", "ddp"),
    row("train_step-accumulate-zero", lambda: T.make_train_step(_NET, _SGD, accumulate=0), ConfigError, "accumulate must be an int >= 1"),
    row("train_step-accumulate-float", lambda: T.make_train_step(_NET, _SGD, accumulate=2.0), ConfigError, "accumulate", "int >= 1"),
    row("train_step-sync-batch-stats-string", lambda: T.make_train_step(_NET, _SGD, sync_batch_stats="yes"), ConfigError, "sync_batch_stats must be True or False"),
    row("train_step-fsdp-with-checks", lambda: T.make_train_step(_NET, _SGD, parallel="fsdp", checks=True), ConfigError, "checks=True works on one device only", "'fsdp'"),
    row("train_step-fsdp-devices-empty", lambda: T.make_train_step(_NET, _SGD, parallel="fsdp", devices=[]), ConfigError, "devices must be a non-empty list", "[]"),
    row("train_step-devices-without-parallel", lambda: T.make_train_step(_NET, _SGD, devices=jax.devices()), ConfigError, "devices= needs parallel="),
    row("train_step-bad-precision", lambda: T.make_train_step(_NET, _SGD, precision="float8"), ConfigError, "precision must be None, 'float32'"),
    row("train_step-loss-scale-zero", lambda: T.make_train_step(_NET, _SGD, precision=T.Policy(loss_scale=0.0)), ConfigError, "loss_scale must be > 0"),
    row("train_step-int-param-dtype", lambda: T.make_train_step(_NET, _SGD, precision=T.Policy(param_dtype=jnp.int32)), ConfigError, "param_dtype must be a floating dtype"),
    row("train_step-batch-not-pair", lambda: _step(_XS), ShapeError, "batch must be a pair (x, y)"),
    row("train_step-batch-triple", lambda: _step((_XS, _YS, _YS)), ShapeError, "batch must be a pair"),
    row("train_step-x-y-rows-differ", lambda: _step((_XS, _YS[:5])), ShapeError, "target", "(8,)", "got (5,)"),
    row("train_step-wrong-features", lambda: _step((np.ones((8, 5), np.float32), _YS)), ShapeError, "fc1", "5 features"),
    row("train_step-params-of-other-model", lambda: _step((_XS, _YS), params={"fc": _DENSE_P}), ShapeError, "fc1", "params is missing"),
    row("train_step-frozen-typo", lambda: _step((_XS, _YS), frozen=["fc9/*"]), ConfigError, "frozen pattern 'fc9/*' matches no parameter"),
    row("eval_step-model-not-layer", lambda: T.make_eval_step("net"), ConfigError, "make_eval_step", "model must be a fundl Layer"),
    row("eval_step-bad-parallel", lambda: T.make_eval_step(_NET, parallel="ddp"), ConfigError, "make_eval_step", "parallel must be one of [None, 'sharded', 'fsdp']", "'ddp'"),
    row("eval_step-pmap", lambda: T.make_eval_step(_NET, parallel="pmap"), ConfigError, "make_eval_step", "parallel='pmap' is not supported", "use parallel='sharded'"),
    row("eval_step-devices-without-parallel", lambda: T.make_eval_step(_NET, devices=jax.devices()), ConfigError, "make_eval_step", "devices= needs parallel="),
    row("eval_step-devices-not-devices", lambda: T.make_eval_step(_NET, parallel="sharded", devices=["cpu0"]), ConfigError, "devices must be a non-empty list of jax.Device"),
    row("eval_step-batch-not-pair", lambda: T.make_eval_step(_NET)(_NET_P, _NET_S, _XS), ShapeError, "eval step", "pair"),
    row("eval_step-x-y-rows-differ", lambda: T.make_eval_step(_NET)(_NET_P, _NET_S, (_XS, _YS[:3])), ShapeError, "target", "(8,)", "got (3,)"),
    # ---- evaluate
    row("evaluate-data-not-pair", lambda: _evaluate(_XS), ShapeError, "evaluate", "must be a pair of arrays (x, y)"),
    row("evaluate-x-y-lengths", lambda: _evaluate((_XS, _YS[:5])), ShapeError, "evaluate", "same number of examples"),
    row("evaluate-empty", lambda: _evaluate((_XS[:0], _YS[:0])), ShapeError, "evaluate", "is empty"),
    row("evaluate-batch-size-zero", lambda: _evaluate(batch_size=0), ConfigError, "evaluate", "batch_size must be a positive int"),
    row("evaluate-batch-size-negative", lambda: _evaluate(batch_size=-4), ConfigError, "batch_size", "-4"),
    row("evaluate-batch-size-float", lambda: _evaluate(batch_size=2.5), ConfigError, "batch_size", "2.5"),
    row("evaluate-model-not-layer", lambda: _evaluate(model="net"), ConfigError, "evaluate: model must be a fundl Layer", "got str"),
    row("evaluate-params-of-other-model", lambda: _evaluate(params={"fc": _DENSE_P}), ShapeError, "fc1", "params is missing"),
    row("evaluate-wrong-features", lambda: _evaluate((np.ones((8, 6), np.float32), _YS)), ShapeError, "6 features"),
    row("evaluate-bad-parallel", lambda: _evaluate(parallel="ddp"), ConfigError, "evaluate: parallel must be one of", "'ddp'"),
    row("evaluate-pmap", lambda: _evaluate(parallel="pmap"), ConfigError, "evaluate: parallel='pmap' is not supported", "'sharded'"),
    row("evaluate-devices-without-parallel", lambda: _evaluate(devices=jax.devices()), ConfigError, "evaluate: devices= needs parallel="),
    # ---- fit
    row("fit-epochs-negative", lambda: _fit(epochs=-1), ConfigError, "fit: epochs must be a non-negative int", "-1"),
    row("fit-epochs-float", lambda: _fit(epochs=1.5), ConfigError, "epochs", "1.5"),
    row("fit-batch-size-zero", lambda: _fit(batch_size=0), ConfigError, "fit", "batch_size must be a positive int"),
    row("fit-batch-size-negative", lambda: _fit(batch_size=-2), ConfigError, "batch_size", "-2"),
    row("fit-batch-size-string", lambda: _fit(batch_size="32"), ConfigError, "batch_size", "positive int"),
    row("fit-log-every-zero", lambda: _fit(log_every=0), ConfigError, "log_every must be a positive int"),
    row("fit-drop-last-batch-too-big", lambda: _fit(batch_size=16, drop_last=True), ConfigError, "drop_last=True with batch_size=16 > 8 examples"),
    row("fit-key-array", lambda: _fit(key=jax.random.split(KEY, 2)), ConfigError, "one key is needed"),
    row("fit-key-string", lambda: _fit(key="seed"), ConfigError, "key must be a jax.random.key"),
    row("fit-data-not-pair", lambda: _fit(train=_XS), ShapeError, "fit", "pair of arrays (x, y)"),
    row("fit-x-y-lengths", lambda: _fit(train=(_XS, _YS[:7])), ShapeError, "fit", "same number of examples"),
    row("fit-empty-data", lambda: _fit(train=(_XS[:0], _YS[:0])), ShapeError, "fit", "empty"),
    row("fit-eval-data-lengths", lambda: _fit(eval_data=(_XS, _YS[:3])), ShapeError, "eval_data", "same number"),
    row("fit-eval-data-not-pair", lambda: _fit(eval_data=_XS), ShapeError, "eval_data", "pair"),
    row("fit-model-not-layer", lambda: _fit(model=3), ConfigError, "fit", "model must be a fundl Layer"),
    row("fit-frozen-typo", lambda: _fit(frozen=["fc9/*"]), ConfigError, "frozen pattern", "matches no parameter"),
    row("fit-bad-parallel", lambda: _fit(parallel="ddp"), ConfigError, "fit: parallel must be one of", "'ddp'"),
    row("fit-pmap", lambda: _fit(parallel="pmap"), ConfigError, "fit: parallel='pmap' is not supported", "'sharded'"),
    row("fit-devices-without-parallel", lambda: _fit(devices=jax.devices()), ConfigError, "fit: devices= needs parallel="),
    row("fit-opt-state-of-another-optimizer", lambda: _fit(opt_state=optax.adam(1e-3).init(_NET_P)), ConfigError, "opt_state", "optimizer.init(params)"),
    row("fit-optimizer-string", lambda: _fit(optimizer="adam"), ConfigError, "optimizer must be an optax GradientTransformation"),
    row("fit-batch-size-bool", lambda: _fit(batch_size=True), ConfigError, "batch_size must be a positive int", "True"),
    row("fit-epochs-bool", lambda: _fit(epochs=True), ConfigError, "epochs must be a non-negative int", "True"),
    row("fit-opt-state-garbage", lambda: _fit(opt_state={"a": 1}), ConfigError, "opt_state does not have the structure optimizer.init gives"),
    row("fit-labels-column", lambda: _fit(train=(_XS, _YS[:, None])), ShapeError, "target", "(4, 1)"),
    row("evaluate-batch-size-bool", lambda: _evaluate(batch_size=True), ConfigError, "batch_size must be a positive int"),
    row("replicate-no-devices", lambda: T.replicate(_NET_P, devices=[]), ConfigError, "replicate", "non-empty list of jax.Device"),
    row("fit-shuffle-string", lambda: _fit(shuffle="no"), ConfigError, "shuffle"),
    row("fit-callback-not-callable", lambda: _fit(callback=3), ConfigError, "callback"),
    row("evaluate-transform-not-callable", lambda: _evaluate(transform=3), ConfigError, "transform"),
    row("train_step-metrics-list", lambda: T.make_train_step(_NET, _SGD, metrics=[lambda lo, y: 0.0]), ConfigError, "metrics"),
    row("train_step-loss-fn-string", lambda: _step((_XS, _YS), loss_fn="ce"), ConfigError, "loss_fn"),
    row("eval_step-loss-fn-int", lambda: T.make_eval_step(_NET, loss_fn=3)(_NET_P, _NET_S, (_XS, _YS)), ConfigError, "loss_fn"),
    row("train_step-donate-string", lambda: T.make_train_step(_NET, _SGD, donate="no"), ConfigError, "donate"),
    row("trainable-pattern-matches-nothing", lambda: T.trainable(_NET_P, ["fc9/*"]), ConfigError, "fc9"),
    row("unreplicate-not-replicated", lambda: T.unreplicate(_NET_P), ShapeError, "unreplicate"),
    row("train_step-int-compute-dtype", lambda: T.make_train_step(_NET, _SGD, precision=T.Policy(compute_dtype=jnp.int8)), ConfigError, "compute_dtype must be a floating dtype"),
    row("train_step-precision-abbreviation", lambda: T.make_train_step(_NET, _SGD, precision="bf16"), ConfigError, "precision must be None", "'bf16'"),
    row("fit-params-none", lambda: _fit(params=None), ShapeError, "params must be a dict keyed by layer name", "NoneType"),
    row("fit-batchnorm-state-none", lambda: T.fit(_BN_NET, _BN_NET_P, None, _SGD, (_XS, _YS), epochs=1, batch_size=4, key=KEY, progress=False), ShapeError, "state must be a dict keyed by layer name"),
    row("evaluate-batchnorm-state-missing", lambda: T.evaluate(_BN_NET, _BN_NET_P, {}, (_XS, _YS)), ShapeError, "serial/bn", "state is missing 'bn'"),
    row("fit-drop-last-string", lambda: _fit(drop_last="yes"), ConfigError, "drop_last"),
    row("fit-progress-string", lambda: _fit(progress="no"), ConfigError, "progress"),
    row("train_step-opt-state-of-adam", lambda: _step((_XS, _YS), opt_state=optax.adam(1e-3).init(_NET_P)), ConfigError, "opt_state does not have the structure optimizer.init gives", "9 leaves vs 0"),
    row("train_step-state-of-another-model", lambda: T.make_train_step(_NET, _SGD, donate=False)(_NET_P, {"bn": {}}, _SGD.init(_NET_P), (_XS, _YS), KEY), ShapeError, "unexpected entry 'bn'"),
    row("train_step-batch-not-divisible-by-accumulate", lambda: _step((_XS, _YS), accumulate=3), ConfigError, "divisible by", "accumulate (3)", "batch size 8"),
    row("train_step-dropout-without-key", lambda: T.make_train_step(_DROP_NET, _SGD, donate=False)(_DROP_P, {}, _SGD.init(_DROP_P), (_XS, _YS), None), ConfigError, "serial/d", "needs a random key"),
    row("train_step-frozen-int", lambda: _step((_XS, _YS), frozen=3), ConfigError, "frozen must be a path pattern or a sequence of them"),
    row("evaluate-float-labels-1d", lambda: _evaluate((_XS, np.zeros(8, np.float32))), DataError, "evaluate: data labels y must be integer class indices", "float32"),
    row("evaluate-data-dict", lambda: _evaluate({"x": _XS, "y": _YS}), ShapeError, "evaluate: data must be a pair of arrays (x, y)", "dict"),
    row("fit-x-1d", lambda: _fit(train=(np.ones(8, np.float32), _YS)), ShapeError, "serial/fc1", "rank >= 2"),
    # ---- parameter labels, hyper-parameters
    row("param_labels-rules-not-mapping", lambda: T.param_labels(_NET_P, 3), ConfigError, "param_labels: rules must be a dict"),
    row("param_labels-no-rule-matches", lambda: T.param_labels(_NET_P, {"fc1/*": "a"}), ConfigError, "no rule matches parameter", "fc2"),
    row("set_hyperparams-plain-state", lambda: T.set_hyperparams(_SGD.init(_NET_P), learning_rate=0.1), ConfigError, "set_hyperparams", "inject_hyperparams"),
    row("set_hyperparams-wrong-shape", lambda: T.set_hyperparams(optax.inject_hyperparams(optax.sgd)(0.1).init(_NET_P), learning_rate=jnp.ones(3)), ShapeError, "set_hyperparams", "learning_rate must have shape"),
    row("set_hyperparams-unknown-name", lambda: T.set_hyperparams(optax.inject_hyperparams(optax.sgd)(0.1).init(_NET_P), lr=0.1), ConfigError, "set_hyperparams", "lr"),
    row("Policy-string-dtype", lambda: T.make_train_step(_NET, _SGD, precision=T.Policy(compute_dtype="float7")), ConfigError, "compute_dtype"),
]


# =========================================================================== data
_TMP = tempfile.TemporaryDirectory(prefix="fundl_bad_inputs_")  # removed at exit


def tmpdir() -> pathlib.Path:
    """A fresh empty directory under ``_TMP``."""
    return pathlib.Path(tempfile.mkdtemp(dir=_TMP.name))


_IMGS = np.zeros((6, 8, 8, 1), np.uint8)
_LABELS = np.arange(6, dtype=np.int32) % 3


def _load_without_env(name, **kw):
    """``D.load`` with ``$FUNDL_DATA_DIR`` unset, so only ``data_dir`` is searched."""
    saved = os.environ.pop("FUNDL_DATA_DIR", None)
    try:
        return D.load(name, **kw)
    finally:
        if saved is not None:
            os.environ["FUNDL_DATA_DIR"] = saved


def _idx_dir(images: bytes | None, labels: bytes | None) -> pathlib.Path:
    """A fresh directory holding the MNIST test-split IDX files with these bytes."""
    d = tmpdir()
    if images is not None:
        (d / "t10k-images-idx3-ubyte").write_bytes(images)
    if labels is not None:
        (d / "t10k-labels-idx1-ubyte").write_bytes(labels)
    return d


def _idx(magic: int, dims, payload: bytes) -> bytes:
    """An IDX file: magic number (0x08 = uint8, rank in the low byte), dims, data."""
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + payload


def _idx_gz_dir() -> pathlib.Path:
    """A directory whose gzipped images file is cut short (a broken gzip stream)."""
    d = _idx_dir(None, _GOOD_LABELS)
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_GOOD_IMAGES)[:-6])
    return d


_GOOD_IMAGES = _idx(0x0803, (2, 2, 2), bytes(8))
_GOOD_LABELS = _idx(0x0801, (2,), bytes(2))

SECTIONS["data"] = [
    # ---- load / load_idx: names, splits, directories, damaged files
    row("load-unknown-name", lambda: D.load("imagenet"), ConfigError, "load", "unknown data set name='imagenet'", "mnist"),
    row("load-name-case", lambda: D.load("MNIST"), ConfigError, "unknown data set name='MNIST'"),
    row("load-bad-split", lambda: D.load("mnist", "val"), ConfigError, "split must be 'train' or 'test'", "'val'"),
    row("load-split-validation", lambda: D.load("digits", "validation"), ConfigError, "split must be 'train' or 'test'"),
    row("load-source-unavailable", lambda: D.load("digits", source="tfds"), ConfigError, "source='tfds' is not available for 'digits'"),
    row("load-source-unknown", lambda: D.load("mnist", source="web"), ConfigError, "source='web'"),
    row("load-source-of-other-dataset", lambda: D.load("cifar10", source="idx"), ConfigError, "source='idx' is not available for 'cifar10'"),
    row("load-empty-data-dir", lambda: _load_without_env("mnist", data_dir=tmpdir(), source="idx"), D.DataUnavailableError, "load('mnist'", "no local source", "nothing is downloaded"),
    row("load-missing-data-dir", lambda: _load_without_env("fashion_mnist", data_dir="/nonexistent/fundl", source="idx"), D.DataUnavailableError, "fashion_mnist", "--data-dir"),
    row("load-cifar-empty-dir", lambda: _load_without_env("cifar10", split="test", data_dir=tmpdir(), source="pickle"), D.DataUnavailableError, "cifar10", "cifar-10-batches-py"),
    row("load_idx-empty-dir", lambda: D.load_idx(tmpdir(), "test"), D.DataUnavailableError, "load_idx", "lacks", "t10k-images-idx3-ubyte"),
    row("load_idx-labels-missing", lambda: D.load_idx(_idx_dir(_GOOD_IMAGES, None), "test"), D.DataUnavailableError, "t10k-labels-idx1-ubyte"),
    row("load_idx-bad-split", lambda: D.load_idx(tmpdir(), "val"), ConfigError, "load_idx: split must be 'train' or 'test'"),
    row("load_idx-wrong-prefix", lambda: D.load_idx(_idx_dir(_GOOD_IMAGES, _GOOD_LABELS), "test", prefix="fashion-"), D.DataUnavailableError, "prefix='fashion-'"),
    row("load_idx-bad-magic", lambda: D.load_idx(_idx_dir(b"PK\x03\x04" + bytes(20), _GOOD_LABELS), "test"), D.CorruptDataError, "bad magic number", "t10k-images"),
    row("load_idx-empty-file", lambda: D.load_idx(_idx_dir(b"", _GOOD_LABELS), "test"), D.CorruptDataError, "truncated", "t10k-images"),
    row("load_idx-truncated-header", lambda: D.load_idx(_idx_dir(_GOOD_IMAGES[:9], _GOOD_LABELS), "test"), D.CorruptDataError, "truncated", "header"),
    row("load_idx-truncated-data", lambda: D.load_idx(_idx_dir(_GOOD_IMAGES[:-3], _GOOD_LABELS), "test"), D.CorruptDataError, "truncated", "t10k-images"),
    row("load_idx-longer-than-header", lambda: D.load_idx(_idx_dir(_GOOD_IMAGES + bytes(4), _GOOD_LABELS), "test"), D.CorruptDataError, "longer than its header says"),
    row("load_idx-wrong-rank", lambda: D.load_idx(_idx_dir(_idx(0x0801, (8,), bytes(8)), _GOOD_LABELS), "test"), D.CorruptDataError, "t10k-images", "bad magic number"),
    row("load_idx-count-mismatch", lambda: D.load_idx(_idx_dir(_GOOD_IMAGES, _idx(0x0801, (3,), bytes(3))), "test"), D.CorruptDataError, "2 images", "3 labels"),
    row("load_idx-bad-gzip", lambda: D.load_idx(_idx_gz_dir(), "test"), D.CorruptDataError, "bad gzip stream"),
    # ---- batches / num_batches / prefetch
    row("batches-size-zero", lambda: next(D.batches(_IMGS, _LABELS, 0)), ConfigError, "batches", "batch_size must be >= 1"),
    row("batches-size-string", lambda: next(D.batches(_IMGS, _LABELS, "4")), ConfigError, "batch_size must be an int"),
    row("batches-size-float", lambda: next(D.batches(_IMGS, _LABELS, 2.5)), ConfigError, "batch_size must be an int"),
    row("batches-x-y-lengths", lambda: next(D.batches(_IMGS, _LABELS[:4], 2)), ShapeError, "x and y must have the same length", "len(y)=4"),
    row("batches-process-index-out-of-range", lambda: next(D.batches(_IMGS, _LABELS, 2, process_index=2, process_count=2)), ConfigError, "process_index must be in [0, 2)"),
    row("batches-global-batch-not-divisible", lambda: next(D.batches(_IMGS, _LABELS, 3, process_count=2)), ConfigError, "must be divisible by"),
    row("batches-process-count-zero", lambda: next(D.batches(_IMGS, _LABELS, 2, process_count=0)), ConfigError, "process_count"),
    row("batches-epoch-negative", lambda: next(D.batches(_IMGS, _LABELS, 2, epoch=-1)), ConfigError, "epoch must be >= 0"),
    row("num_batches-size-zero", lambda: D.num_batches(10, 0), ConfigError, "num_batches", "batch_size"),
    row("num_batches-n-negative", lambda: D.num_batches(-1, 2), ConfigError, "num_batches", "n must be >= 0"),
    row("prefetch-size-zero", lambda: next(D.prefetch_to_device(iter([(_IMGS, _LABELS)]), size=0)), ConfigError, "prefetch_to_device: size must be an int >= 1"),
    row("prefetch-size-float", lambda: next(D.prefetch_to_device(iter([(_IMGS, _LABELS)]), size=2.5)), ConfigError, "size must be an int >= 1", "2.5"),
    row("load-data-dir-is-a-file", lambda: _load_without_env("mnist", data_dir=__file__, source="idx"), D.DataUnavailableError, "no local source", "test_bad_inputs.py"),
    row("load_idx-path-is-a-file", lambda: D.load_idx(__file__, "test"), D.DataUnavailableError, "load_idx", "lacks"),
    row("batches-shuffle-string", lambda: next(D.batches(_IMGS, _LABELS, 2, shuffle="no")), ConfigError, "shuffle"),
    row("batches-x-list", lambda: next(D.batches(_IMGS.tolist(), _LABELS, 2)), ShapeError, "batches", "x"),
    row("batches-y-none", lambda: next(D.batches(_IMGS, None, 2)), ShapeError, "batches", "y"),
    row("num_batches-drop-remainder-string", lambda: D.num_batches(10, 3, drop_remainder="yes"), ConfigError, "drop_remainder"),
    row("batches-seed-string", lambda: next(D.batches(_IMGS, _LABELS, 2, seed="a")), ConfigError, "batches: seed must be an int"),
    row("select_classes-class-twice", lambda: D.select_classes(_IMGS, _LABELS, [1, 1]), ConfigError, "a label appears twice in [1, 1]"),
    row("load-data-dir-int", lambda: _load_without_env("mnist", data_dir=3, source="idx"), ConfigError, "data_dir"),
    row("standardizer-per-channel-string", lambda: D.standardizer(np.random.default_rng(0).random((4, 2, 2, 3)), per_channel="yes"), ConfigError, "per_channel"),
    row("random_crop-key-none", lambda: D.random_crop(None, jnp.zeros((2, 8, 8, 1))), ConfigError, "random_crop", "key"),
    # ---- augmentation
    row("random_crop-rank-3", lambda: D.random_crop(KEY, jnp.zeros((8, 8, 1))), ShapeError, "random_crop", "rank 4"),
    row("random_crop-padding-negative", lambda: D.random_crop(KEY, jnp.zeros((2, 8, 8, 1)), padding=-1), ConfigError, "random_crop: padding must be >= 0"),
    row("random_crop-padding-float", lambda: D.random_crop(KEY, jnp.zeros((2, 8, 8, 1)), padding=1.5), ConfigError, "random_crop: padding must be an int"),
    row("random_flip-rank-2", lambda: D.random_flip(KEY, jnp.zeros((2, 8))), ShapeError, "random_flip", "rank 4"),
    row("augment_cifar-rank-3", lambda: D.augment_cifar(KEY, jnp.zeros((32, 32, 3))), ShapeError, "rank 4", "augment_cifar"),
    # ---- select_classes / parse_classes
    row("parse_classes-letters", lambda: D.parse_classes("a-b"), ConfigError, "classes", "expected class labels such as '0-4'"),
    row("parse_classes-empty", lambda: D.parse_classes(""), ConfigError, "classes", "expected class labels"),
    row("parse_classes-twice", lambda: D.parse_classes("1,1"), ConfigError, "a label appears twice"),
    row("parse_classes-overlapping-ranges", lambda: D.parse_classes("0-4,3"), ConfigError, "appears twice"),
    row("parse_classes-negative", lambda: D.parse_classes([-1, 2]), ConfigError, "labels >= 0"),
    row("parse_classes-reversed-range", lambda: D.parse_classes("5-3"), ConfigError, "classes", "'5-3'"),
    row("parse_classes-flag-name", lambda: D.parse_classes("x", "--classes"), ConfigError, "--classes"),
    row("select_classes-none-present", lambda: D.select_classes(_IMGS, _LABELS, [7, 8]), ShapeError, "select_classes: no example has a label in [7, 8]"),
    row("select_classes-limit-zero", lambda: D.select_classes(_IMGS, _LABELS, [0], limit=0), ConfigError, "limit must be a positive int or None"),
    row("select_classes-float-labels", lambda: D.select_classes(_IMGS, _LABELS.astype(np.float32), [0]), ShapeError, "integer labels y [N]"),
    row("select_classes-lengths", lambda: D.select_classes(_IMGS, _LABELS[:3], [0]), ShapeError, "select_classes"),
    row("select_classes-bad-spec", lambda: D.select_classes(_IMGS, _LABELS, "zero"), ConfigError, "expected class labels"),
    # ---- standardizer
    row("standardizer-empty", lambda: D.standardizer(np.zeros((0, 8, 8, 1), np.uint8)), ShapeError, "standardizer: x_train must be a non-empty"),
    row("standardizer-per-channel-1d", lambda: D.standardizer(np.arange(8.0), per_channel=True), ShapeError, "per_channel=True needs [N, ..., C] data"),
    row("standardizer-constant-data", lambda: D.standardizer(np.full((4, 2, 2, 1), 7, np.uint8)), ConfigError, "zero standard deviation"),
    row("standardizer-channels-mismatch", lambda: D.standardizer(np.random.default_rng(0).random((4, 2, 2, 3)), per_channel=True)(np.ones((4, 2, 2, 1))), ShapeError, "channel"),
    row("standardizer-apply-list", lambda: D.standardizer(np.random.default_rng(0).random((4, 2, 2, 3)))([1, 2]), ShapeError, "standardizer"),
    row("select_classes-one-class-absent", lambda: D.select_classes(_IMGS, _LABELS, [0, 7]), DataError, "select_classes", "label(s) [7]"),
    row("standardizer-constant-channel", lambda: D.standardizer(np.stack([np.arange(16.0).reshape(4, 2, 2), np.ones((4, 2, 2))], -1), per_channel=True), ConfigError, "zero standard deviation"),
]


# =========================================================================== autodiff
_X4 = x(2, 4)


@jax.custom_jvp
def _wrong_grad(a):
    """sum(a**2) with a deliberately wrong derivative (a instead of 2a)."""
    return jnp.sum(a ** 2)


@_wrong_grad.defjvp
def _wrong_grad_jvp(primals, tangents):
    (a,), (t,) = primals, tangents
    return jnp.sum(a ** 2), jnp.sum(a * t)


def _loss(p, xb):
    """A scalar loss of ``_NET``: ``sum(net(x))``."""
    return jnp.sum(_NET.apply(p, xb))


def _vector_loss(p, xb):
    """Not a scalar: one value per example."""
    return jnp.sum(_NET.apply(p, xb), axis=1)


def _per_example_loss(p, xb):
    """Loss of one example ``xb: [4]`` (per_example_grads maps it over the batch)."""
    return jnp.sum(_NET.apply(p, xb[None]))


_LIKE_P = jax.tree_util.tree_map(jnp.ones_like, _NET_P)
_PEG = jax.tree_util.tree_map(lambda a: jnp.ones((2, *a.shape)), _NET_P)   # per-example grads, N=2

SECTIONS["autodiff"] = [
    # ---- gradcheck
    row("check_grads-not-function", lambda: AD.check_grads(3, (_NET_P, _X4)), ConfigError, "check_grads", "f must be a function"),
    row("check_grads-args-not-tuple", lambda: AD.check_grads(_loss, _NET_P), ConfigError, "args must be a tuple of f's arguments"),
    row("check_grads-order-3", lambda: AD.check_grads(_loss, (_NET_P, _X4), order=3), ConfigError, "order must be 1 or 2", "3"),
    row("check_grads-bad-mode", lambda: AD.check_grads(_loss, (_NET_P, _X4), modes=("bwd",)), ConfigError, "modes must be a non-empty subset of ('fwd', 'rev')"),
    row("check_grads-no-modes", lambda: AD.check_grads(_loss, (_NET_P, _X4), modes=()), ConfigError, "modes must be a non-empty subset"),
    row("check_grads-eps-zero", lambda: AD.check_grads(_loss, (_NET_P, _X4), eps=0.0), ConfigError, "eps must be a number > 0"),
    row("check_grads-rtol-negative", lambda: AD.check_grads(_loss, (_NET_P, _X4), rtol=-1.0), ConfigError, "rtol must be a number >= 0"),
    row("check_grads-directions-zero", lambda: AD.check_grads(_loss, (_NET_P, _X4), num_directions=0), ConfigError, "num_directions must be a positive int"),
    row("check_grads-no-float-args", lambda: AD.check_grads(lambda i: i * 2, (jnp.arange(3),)), ConfigError, "args hold no floating-point arrays"),
    row("check_grads-int-output", lambda: AD.check_grads(lambda a: jnp.round(a).astype(jnp.int32), (x(3),)), ConfigError, "f must return floating-point arrays"),
    row("check_grads-wrong-gradient", lambda: AD.check_grads(_wrong_grad, (x(3),), order=1), AD.GradientCheckError, "checks failed", "finite difference"),
    # ---- hvp / hessian / newton / cg
    row("hvp-loss-not-function", lambda: AD.hvp("loss", _NET_P, _LIKE_P, _X4), ConfigError, "hvp", "loss must be a function"),
    row("hvp-v-structure", lambda: AD.hvp(_loss, _NET_P, {"fc1": _LIKE_P["fc1"]}, _X4), ShapeError, "hvp", "v must have the structure of params"),
    row("hvp-v-leaf-shape", lambda: AD.hvp(_loss, _NET_P, {**_LIKE_P, "fc2": {"b": x(7), "w": x(3, 2)}}, _X4), ShapeError, "hvp", "v['fc2/b'] must have shape (2,)"),
    row("hvp-non-scalar-loss", lambda: AD.hvp(_vector_loss, _NET_P, _LIKE_P, _X4), ShapeError, "hvp", "loss must return a scalar", "got (2,)"),
    row("hvp-has-aux-scalar", lambda: AD.hvp(_loss, _NET_P, _LIKE_P, _X4, has_aux=True), ShapeError, "hvp", "has_aux=True", "(scalar, aux)"),
    row("hessian-bad-wrt", lambda: AD.hessian(_loss, _NET_P, _X4, wrt="fc9"), ConfigError, "hessian", "wrt='fc9' selects no parameter", "fc1"),
    row("hessian-wrt-int", lambda: AD.hessian(_loss, _NET_P, _X4, wrt=3), ConfigError, "wrt must be None (all parameters)"),
    row("hessian-non-scalar-loss", lambda: AD.hessian(_vector_loss, _NET_P, _X4), ShapeError, "hessian", "scalar"),
    row("param_layout-bad-wrt", lambda: AD.param_layout(_NET_P, wrt="fc3/w"), ConfigError, "param_layout", "selects no parameter"),
    row("newton_step-damping-negative", lambda: AD.newton_step(_loss, _NET_P, _X4, damping=-1.0), ConfigError, "newton_step", "damping must be a finite number"),
    row("newton_step-lr-nan", lambda: jax.jit(lambda p: AD.newton_step(_loss, p, _X4, lr=float("nan")))(_NET_P), ConfigError, "newton_step", "lr must be a finite number > 0", "lr=nan"),
    row("cg_solve-maxiter-zero", lambda: AD.cg_solve(lambda v: v, x(3), maxiter=0), ConfigError, "cg_solve", "maxiter must be a positive int"),
    row("cg_solve-matvec-not-function", lambda: AD.cg_solve(x(3), x(3)), ConfigError, "cg_solve", "matvec must be a function"),
    row("cg_solve-x0-shape", lambda: AD.cg_solve(lambda v: v, x(3), x0=x(4)), ShapeError, "cg_solve", "x0"),
    row("cg_solve-tol-negative", lambda: AD.cg_solve(lambda v: v, x(3), tol=-1.0), ConfigError, "tol", "finite number >= 0"),
    row("hessian_free-maxiter-zero", lambda: AD.hessian_free_step(_loss, _NET_P, _X4, maxiter=0), ConfigError, "maxiter must be a positive int", "maxiter=0"),
    # ---- per-example gradients, DP-SGD
    row("per_example_grads-empty-batch", lambda: AD.per_example_grads(_per_example_loss, _NET_P, ()), ShapeError, "per_example_grads", "batch holds no arrays"),
    row("per_example_grads-batch-axes-differ", lambda: AD.per_example_grads(lambda p, b: _per_example_loss(p, b[0]), _NET_P, (x(2, 4), x(3))), ShapeError, "same leading (batch) axis"),
    row("per_example_grads-loss-not-function", lambda: AD.per_example_grads(None, _NET_P, _X4), ConfigError, "loss must be a function"),
    row("per_example_grads-non-scalar-loss", lambda: AD.per_example_grads(lambda p, b: _NET.apply(p, b[None])[0], _NET_P, _X4), ShapeError, "per_example_grads", "batch of one example", "loss must return a scalar", "(1, 2)"),
    row("per_example_norms-not-per-example", lambda: AD.per_example_norms({"a": x(3), "b": x(4)}), ShapeError, "per_example_norms", "grads must be per-example gradients"),
    row("clip_per_example-max-norm-zero", lambda: AD.clip_per_example(_PEG, 0.0), ConfigError, "clip_per_example", "max_norm"),
    row("clip_per_example-max-norm-inf", lambda: AD.clip_per_example(_PEG, float("inf")), ConfigError, "max_norm must be a finite number"),
    row("add_noise-batch-size-zero", lambda: AD.add_noise(_LIKE_P, key=KEY, noise_multiplier=1.0, max_norm=1.0, batch_size=0), ConfigError, "add_noise", "batch_size must be a positive int"),
    row("add_noise-noise-negative", lambda: AD.add_noise(_LIKE_P, key=KEY, noise_multiplier=-1.0, max_norm=1.0, batch_size=4), ConfigError, "noise_multiplier"),
    row("dp_sgd-max-norm-negative", lambda: AD.dp_sgd_grads(_per_example_loss, _NET_P, _X4, key=KEY, max_norm=-1.0, noise_multiplier=1.0), ConfigError, "dp_sgd_grads", "max_norm"),
    row("cg_solve-damping-negative", lambda: AD.cg_solve(lambda v: v, x(3), damping=-1.0), ConfigError, "cg_solve", "damping must be a finite number >= 0"),
    row("hessian-has-aux-bare-scalar", lambda: AD.hessian(_loss, _NET_P, _X4, has_aux=True), ShapeError, "hessian", "with has_aux=True, loss must return (scalar, aux)"),
    row("per_example_norms-empty", lambda: AD.per_example_norms({}), ShapeError, "per_example_norms", "got shapes []"),
    row("dp_sgd-key-none", lambda: AD.dp_sgd_grads(_per_example_loss, _NET_P, _X4, key=None, max_norm=1.0, noise_multiplier=1.0), ConfigError, "dp_sgd_grads", "key", "None"),
    row("add_noise-key-none", lambda: AD.add_noise(_LIKE_P, key=None, noise_multiplier=1.0, max_norm=1.0, batch_size=4), ConfigError, "add_noise", "key"),
    row("jacobians-key-string", lambda: AD.jacobians(_NET, _NET_P, _X4, key="k"), ConfigError, "jacobians", "key"),
    # ---- jacobians, gradient penalty
    row("jacobians-not-layer", lambda: AD.jacobians(_loss, _NET_P, _X4), ConfigError, "jacobians", "layer must be a fundl Layer"),
    row("jacobians-bad-mode", lambda: AD.jacobians(_NET, _NET_P, _X4, mode="central"), ConfigError, "mode must be 'auto', 'fwd' or 'rev'"),
    row("jacobians-stateful-without-state", lambda: AD.jacobians(_BN, _BN_P, x(4, 3)), ConfigError, "holds batch-norm statistics"),
    row("jacobians-stateless-with-state", lambda: AD.jacobians(_NET, _NET_P, _X4, state={"bn": 1}), ConfigError, "state was given", "stateless"),
    row("jacobians-per-example-train-stateful", lambda: AD.jacobians(_BN, _BN_P, x(4, 3), state=_BN_S, train=True, per_example=True), ConfigError, "per_example=True with train=True"),
    row("jacobians-params-of-other-model", lambda: AD.jacobians(_NET, {"fc": _DENSE_P}, _X4), ShapeError, "fc1", "params is missing"),
    row("gradient_penalty-x-not-array", lambda: AD.gradient_penalty(lambda a: jnp.sum(a), [1.0, 2.0]), ShapeError, "gradient_penalty", "x must be an array [N, ...]"),
    row("gradient_penalty-f-not-function", lambda: AD.gradient_penalty(3, _X4), ConfigError, "gradient_penalty", "f must be a function"),
    row("gradient_penalty-x-scalar", lambda: AD.gradient_penalty(lambda a: a, jnp.float32(1.0)), ShapeError, "gradient_penalty"),
]


# =========================================================================== surgery
_TREE = L.Serial(L.Conv(4, 3, name="conv1"), L.ReLU(name="relu"),
                 L.Serial(L.Dense(3, name="fc"), name="head"), name="net")

SECTIONS["surgery"] = [
    row("get-not-a-model", lambda: S.get("net", "conv1"), ConfigError, "get", "model must be a fundl Layer"),
    row("get-path-not-string", lambda: S.get(_TREE, 3), ConfigError, "get", "path must be a string of '/'-joined layer names"),
    row("get-path-empty-component", lambda: S.get(_TREE, "head//fc"), ConfigError, "has an empty component"),
    row("get-unknown-path", lambda: S.get(_TREE, "conv2"), ConfigError, "get", "no layer at path 'conv2'", "conv1"),
    row("get-unknown-nested-path", lambda: S.get(_TREE, "head/fc2"), ConfigError, "no layer at path 'head/fc2'", "deepest valid prefix", "head"),
    row("get-path-into-leaf", lambda: S.get(_TREE, "conv1/w"), ConfigError, "no layer at path 'conv1/w'"),
    row("paths-not-a-model", lambda: S.paths({"conv1": 1}), ConfigError, "paths", "model must be a fundl Layer"),
    row("replace-with-non-layer", lambda: S.replace(_TREE, "conv1", "conv"), ConfigError, "replace", "must be a fundl Layer"),
    row("replace-unknown-path", lambda: S.replace(_TREE, "conv9", L.Conv(2, 3)), ConfigError, "replace", "no layer at path 'conv9'"),
    row("remove-root", lambda: S.remove(_TREE, ""), ConfigError, "remove", "path '' is the model itself"),
    row("remove-unknown-path", lambda: S.remove(_TREE, "relu2"), ConfigError, "remove", "no layer at path 'relu2'"),
    row("remove-only-child", lambda: S.remove(_TREE, "head/fc"), ConfigError, "remove", "head"),
    row("remove-residual-body", lambda: S.remove(L.Serial(L.Residual(L.Dense(3, name="fc"), name="res")), "res/body"), ConfigError, "remove", "not a Serial"),
    row("insert-after-not-bool", lambda: S.insert(_TREE, "relu", L.ReLU(), after="yes"), ConfigError, "insert", "after must be True or False"),
    row("insert-non-layer", lambda: S.insert(_TREE, "relu", jax.nn.relu), ConfigError, "insert", "must be a fundl Layer"),
    row("insert-unknown-path", lambda: S.insert(_TREE, "pool", L.ReLU()), ConfigError, "insert", "no layer at path 'pool'"),
    row("insert-into-residual", lambda: S.insert(L.Serial(L.Residual(L.Dense(3, name="fc"), name="res")), "res/body", L.ReLU()), ConfigError, "insert", "not a Serial"),
    row("insert-root", lambda: S.insert(_TREE, "", L.ReLU()), ConfigError, "insert", "path '' is the model itself"),
    row("adapt-state-list", lambda: S.adapt(_NET, _NET_P, [1], key=KEY, input_shape=(2, 4)), ConfigError, "adapt", "state must be a dict of dicts of arrays"),
    row("adapt-input-shape-string", lambda: S.adapt(_NET, _NET_P, {}, key=KEY, input_shape="2x4"), ShapeError, "input_shape must be a tuple of ints"),
    row("get-trailing-slash", lambda: S.get(_TREE, "head/"), ConfigError, "path 'head/' has an empty component"),
    row("adapt-after-replacing-dense-by-conv", lambda: S.adapt(S.replace(_NET, "fc1", L.Conv(3, 3)), _NET_P, {}, key=KEY, input_shape=(2, 4)), ShapeError, "serial/fc1", "spatial"),
    row("adapt-params-not-dict", lambda: S.adapt(_NET, [1, 2], {}, key=KEY, input_shape=(2, 4)), ConfigError, "adapt", "params must be a dict of dicts of arrays"),
    row("adapt-params-non-string-key", lambda: S.adapt(_NET, {1: _DENSE_P}, {}, key=KEY, input_shape=(2, 4)), ConfigError, "adapt", "keys must be strings"),
    row("adapt-params-leaf-not-array", lambda: S.adapt(_NET, {"fc1": {"w": "abc"}}, {}, key=KEY, input_shape=(2, 4)), ConfigError, "adapt", "must be an array"),
    row("adapt-key-none", lambda: S.adapt(_NET, _NET_P, {}, key=None, input_shape=(2, 4)), ConfigError, "adapt", "key must be a jax.random.key"),
    row("adapt-params-of-another-model", lambda: S.adapt(_NET, {"net": _NET_P}, {}, key=KEY, input_shape=(2, 4)), ConfigError, "adapt", "no path of the old params"),
    row("adapt-not-a-model", lambda: S.adapt("net", _NET_P, {}, key=KEY, input_shape=(2, 4)), ConfigError, "adapt", "must be a fundl Layer"),
    row("adapt-bad-input-shape", lambda: S.adapt(_NET, _NET_P, {}, key=KEY, input_shape=(2, 5, 0)), ShapeError, "input_shape", "positive ints"),
]


# =========================================================================== io
_IO = fundl.io


def _saved(model=_NET, params=_NET_P) -> pathlib.Path:
    """A fresh fundl.io file of ``params`` (with the model's repr)."""
    path = tmpdir() / "net.safetensors"
    _IO.save(path, params, model=model)
    return path


def _file(data: bytes, name="f.safetensors") -> pathlib.Path:
    path = tmpdir() / name
    path.write_bytes(data)
    return path


@functools.cache
def _exported():
    """``_NET`` exported and loaded back (compiled once)."""
    return fundl.load_exported(fundl.export(_NET, _NET_P, {}, (2, 4)))


SECTIONS["io"] = [
    row("save-missing-directory", lambda: _IO.save(tmpdir() / "no" / "net.safetensors", _NET_P), FileNotFoundError, "save", "does not exist"),
    row("save-to-directory", lambda: _IO.save(tmpdir(), _NET_P), IsADirectoryError, "save", "is a directory"),
    row("save-path-int", lambda: _IO.save(3, _NET_P), ConfigError, "save", "path must be a str or path-like"),
    row("save-params-list", lambda: _IO.save(tmpdir() / "a.safetensors", [x(3)]), ConfigError, "save", "must be a dict of arrays nested by layer name"),
    row("save-key-with-slash", lambda: _IO.save(tmpdir() / "a.safetensors", {"a/b": {"w": x(3)}}), ConfigError, "save", "without '/'"),
    row("save-leaf-string", lambda: _IO.save(tmpdir() / "a.safetensors", {"fc": {"w": "abc"}}), ConfigError, "save", "fc/w", "cannot store"),
    row("save-object-dtype", lambda: _IO.save(tmpdir() / "a.safetensors", {"fc": {"w": np.array([None])}}), ConfigError, "save", "dtype object"),
    row("save-model-not-layer", lambda: _IO.save(tmpdir() / "a.safetensors", _NET_P, model="net"), ConfigError, "save", "model must be a fundl Layer (or None)"),
    row("save-metadata-not-dict", lambda: _IO.save(tmpdir() / "a.safetensors", _NET_P, metadata=["a"]), ConfigError, "metadata must be a dict of str -> str"),
    row("save-metadata-value-int", lambda: _IO.save(tmpdir() / "a.safetensors", _NET_P, metadata={"epochs": 3}), ConfigError, "metadata values must be strings"),
    row("save-metadata-reserved-key", lambda: _IO.save(tmpdir() / "a.safetensors", _NET_P, metadata={"fundl.crc32": "x"}), ConfigError, "metadata keys must be non-empty strings not starting with"),
    row("load-missing-file", lambda: _IO.load(tmpdir() / "none.safetensors"), FileNotFoundError, "load", "no such file"),
    row("load-directory", lambda: _IO.load(tmpdir()), IsADirectoryError, "load", "is a directory"),
    row("load-empty-file", lambda: _IO.load(_file(b"")), _IO.CorruptFileError, "empty"),
    row("load-garbage", lambda: _IO.load(_file(b"hello world, not a tensor file")), _IO.CorruptFileError, "f.safetensors"),
    row("load-truncated", lambda: _IO.load(_file(_saved().read_bytes()[:-10])), _IO.CorruptFileError, "truncated"),
    row("load-torch-zip", lambda: _IO.load(_file(b"PK\x03\x04" + bytes(60), "m.pt")), _IO.NotFundlFileError, "not a fundl.io", "fundl.interop"),
    row("load-model-of-another-architecture", lambda: _IO.load(_saved(), model=L.Serial(L.Dense(5, name="fc1"), L.Dense(2, name="fc2")), input_shape=(2, 4)), ShapeError, "fc1", "has shape (3,), expected (5,)"),
    row("load-model-without-input-shape", lambda: _IO.load(_saved(), model=_NET), ConfigError, "model= needs input_shape="),
    row("load-input-shape-without-model", lambda: _IO.load(_saved(), input_shape=(2, 4)), ConfigError, "input_shape= is only used with model="),
    row("load-model-not-layer", lambda: _IO.load(_saved(), model="net", input_shape=(2, 4)), ConfigError, "model must be a fundl Layer (or None)"),
    row("load-model-wrong-input-shape", lambda: _IO.load(_saved(), model=_NET, input_shape=(2, 5)), ShapeError, "fc1", "5 features"),
    row("metadata-missing-file", lambda: _IO.metadata(tmpdir() / "none.safetensors"), FileNotFoundError, "no such file"),
    row("unflatten-bad-key", lambda: _IO.unflatten({"weights/fc/w": np.ones(3)}), ConfigError, "unflatten", "'params/<path>' or 'state/<path>'"),
    row("unflatten-clashing-keys", lambda: _IO.unflatten({"params/fc": np.ones(3), "params/fc/w": np.ones(3)}), ConfigError, "clashes with another key"),
    row("flatten-params-not-dict", lambda: _IO.flatten([x(3)]), ConfigError, "flatten", "must be a dict of arrays nested by layer name"),
    row("save-state-list", lambda: _IO.save(tmpdir() / "a.safetensors", _NET_P, [1]), ConfigError, "save", "state must be a dict of arrays"),
    row("save-prng-key-leaf", lambda: _IO.save(tmpdir() / "a.safetensors", {"a": {"k": KEY}}), ConfigError, "params/a/k must be an array", "key_data"),
    row("save-empty-key", lambda: _IO.save(tmpdir() / "a.safetensors", {"": {"w": x(3)}}), ConfigError, "non-empty string without '/'", "got the key ''"),
    row("metadata-not-safetensors", lambda: _IO.metadata(__file__), _IO.CorruptFileError, "test_bad_inputs.py", "not a safetensors file"),
    row("load_exported-garbage-bytes", lambda: fundl.load_exported(b"garbage bytes"), _IO.CorruptFileError, "the exported bytes", "truncated"),
    row("load-model-with-batchnorm-file-without", lambda: _IO.load(_saved(), model=_BN_NET, input_shape=(2, 4)), ShapeError, "serial/bn", "missing"),
    row("export-input-shape-string", lambda: fundl.export(_NET, _NET_P, {}, "2x4"), ShapeError, "input_shape must be a tuple of ints"),
    row("export-params-of-another-model", lambda: fundl.export(_NET, {"fc": _DENSE_P}, {}, (2, 4)), ShapeError, "params is missing 'fc1'"),
    row("export-metadata-int", lambda: fundl.export(_NET, _NET_P, {}, (2, 4), metadata={"a": 1}), ConfigError, "export", "metadata values must be strings"),
    row("exported-call-wrong-shape", lambda: _exported()(x(2, 5)), ShapeError, "exported", "x has shape (2, 5), expected (N, 4)"),
    row("exported-call-int-input", lambda: _exported()(jnp.ones((2, 4), jnp.int32)), ShapeError, "x has dtype int32, expected float32", "astype"),
    row("exported-call-tuple", lambda: _exported()((x(2, 4), x(2, 4))), ShapeError, "exported", "expected (N, 4)"),
    row("export-unknown-platform", lambda: fundl.export(_NET, _NET_P, {}, (2, 4), platforms=["quantum"]), ConfigError, "fundl.export", "platforms must be a non-empty sequence of ['cpu', 'cuda', 'rocm', 'tpu']", "quantum"),
    row("load_exported-not-bytes", lambda: fundl.load_exported(3), ConfigError, "load_exported", "data must be the bytes fundl.export returned"),
    row("load_exported-io-file", lambda: fundl.load_exported(_saved()), ConfigError, "load_exported"),
    row("export-not-layer", lambda: fundl.export("net", _NET_P, {}, (2, 4)), ConfigError, "export", "model must be a fundl Layer"),
    row("export-batch-polymorphic-string", lambda: fundl.export(_NET, _NET_P, {}, (2, 4), batch_polymorphic="yes"), ConfigError, "batch_polymorphic must be True or False"),
]


# =========================================================================== interop
_TORCH_SD = {"0.weight": np.ones((3, 4), np.float32), "0.bias": np.ones(3, np.float32),
             "2.weight": np.ones((2, 3), np.float32), "2.bias": np.ones(2, np.float32)}


def _sd(changes):
    """``_TORCH_SD`` (the torch names and layouts of ``_NET``, an ``nn.Sequential``) with keys
    replaced, or removed (value None)."""
    out = dict(_TORCH_SD)
    for k, v in changes.items():
        if v is None:
            out.pop(k)
        else:
            out[k] = v
    return out


SECTIONS["interop"] = [
    row("from_torch-missing-key", lambda: I.from_torch(_NET, _sd({"2.bias": None}), input_shape=(2, 4)), I.StateDictError, "missing", "'2.bias'", "serial/fc2"),
    row("from_torch-unexpected-key", lambda: I.from_torch(_NET, _sd({"4.weight": np.ones((2, 2), np.float32)}), input_shape=(2, 4)), I.StateDictError, "unexpected", "'4.weight'"),
    row("from_torch-wrong-shape", lambda: I.from_torch(_NET, _sd({"0.weight": np.ones((4, 3), np.float32)}), input_shape=(2, 4)), I.StateDictError, "'0.weight'", "(3, 4)"),
    row("from_torch-strict-string", lambda: I.from_torch(_NET, _TORCH_SD, input_shape=(2, 4), strict="no"), ConfigError, "strict must be True or False"),
    row("from_torch-not-layer", lambda: I.from_torch("net", _TORCH_SD, input_shape=(2, 4)), ConfigError, "from_torch", "model must be a fundl Layer"),
    row("from_torch-state-dict-list", lambda: I.from_torch(_NET, [1, 2], input_shape=(2, 4)), ConfigError, "state_dict must be a dict of tensors or arrays"),
    row("from_torch-nested-dict", lambda: I.from_torch(_NET, {"model": _TORCH_SD}, input_shape=(2, 4)), ConfigError, "state_dict['model'] is a dict, not an array"),
    row("from_torch-value-string", lambda: I.from_torch(_NET, _sd({"0.bias": "abc"}), input_shape=(2, 4)), ConfigError, "state_dict['0.bias'] must be an array or a tensor"),
    row("from_torch-int-keys", lambda: I.from_torch(_NET, {0: np.ones(3)}, input_shape=(2, 4)), ConfigError, "state dict keys must be strings"),
    row("from_torch-missing-file", lambda: I.from_torch(_NET, str(tmpdir() / "m.pt"), input_shape=(2, 4)), FileNotFoundError, "does not exist"),
    row("from_torch-bad-extension", lambda: I.from_torch(_NET, str(_file(b"x", "m.txt")), input_shape=(2, 4)), ConfigError, "must end in .pt, .pth, .bin"),
    row("from_torch-bad-input-shape", lambda: I.from_torch(_NET, _TORCH_SD, input_shape="2x4"), ConfigError, "input_shape must be the model's input shape"),
    row("from_torch-name-map-unknown-layer", lambda: I.from_torch(_NET, _TORCH_SD, input_shape=(2, 4), name_map={"fc1": "dense9"}), ConfigError, "name_map['fc1'] = 'dense9' names no layer"),
    row("from_torch-name-map-twice", lambda: I.from_torch(_NET, _TORCH_SD, input_shape=(2, 4), name_map={"a": "fc1", "b": "fc1"}), ConfigError, "name_map maps both"),
    row("from_torch-name-map-int", lambda: I.from_torch(_NET, _TORCH_SD, input_shape=(2, 4), name_map=3), ConfigError, "name_map must be None"),
    row("from_torch-name-map-values-int", lambda: I.from_torch(_NET, _TORCH_SD, input_shape=(2, 4), name_map={"fc1": 3}), ConfigError, "name_map must map torch prefixes (str)"),
    row("from_torch-int-weights", lambda: I.from_torch(_NET, _sd({"0.weight": np.ones((3, 4), np.int64)}), input_shape=(2, 4)), I.StateDictError, "'0.weight'", "int64", "needs float"),
    row("to_torch-batchnorm-without-state", lambda: I.to_torch(L.Serial(_BN), {"bn": _BN_P}, {}, input_shape=(4, 3)), ShapeError, "serial/bn", "state"),
    row("to_torch-params-of-another-model", lambda: I.to_torch(_NET, {"fc": _DENSE_P}, {}, input_shape=(2, 4)), ShapeError, "fc1", "params is missing"),
    row("to_torch-not-layer", lambda: I.to_torch(3, _NET_P, {}, input_shape=(2, 4)), ConfigError, "to_torch", "model must be a fundl Layer"),
    row("torch_names-not-layer", lambda: I.torch_names(None), ConfigError, "torch_names", "model must be a fundl Layer"),
    row("torch_names-bad-input-shape", lambda: I.torch_names(_NET, input_shape=(4,)), ShapeError, "fc1", "rank >= 2"),
]


# =========================================================================== experiment
_TRAIN = (np.ones((8, 4), np.float32), np.zeros(8, np.int32))


def _run(**kw):
    """``experiment.run`` of ``_NET`` into a fresh directory, quiet; ``kw`` overrides."""
    args = dict(out=tmpdir() / "run", epochs=1, batch_size=4, progress=False)
    args.update(kw)
    model, opt = args.pop("model", _NET), args.pop("optimizer", _SGD)
    train, test = args.pop("train", _TRAIN), args.pop("test", _TRAIN)
    return E.run(model, opt, train, test, **args)


@functools.cache
def _finished_run() -> pathlib.Path:
    """The ``--out`` of a finished one-epoch run of ``_NET`` (made once; a few seconds)."""
    out = tmpdir() / "done"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        E.run(_NET, _SGD, _TRAIN, _TRAIN, out=out, epochs=1, batch_size=4, progress=False)
    return out


_OTHER_NET = L.Serial(L.Dense(5, name="fc1"), L.Dense(2, name="fc2"))

SECTIONS["experiment"] = [
    # ---- on a finished run (slow: one real run, made once)
    row("run-again-without-resume", lambda: _run(out=_finished_run()), FundlError, "already holds checkpoints", "--resume", slow=True),
    row("run-resume-other-settings", lambda: _run(out=_finished_run(), resume=True, config={"lr": 0.5}), FundlError, "--resume", "settings differ", "lr", slow=True),
    row("load_checkpoint-no-such-epoch", lambda: E.load_checkpoint(_finished_run(), 99), FundlError, "no checkpoint of epoch 99", "have epochs [1]", slow=True),
    row("load_checkpoint-other-optimizer", lambda: E.load_checkpoint(_finished_run(), optimizer=optax.adam(1e-3)), FundlError, "optimizer state", "was the run trained with this optimizer", slow=True),
    row("load_checkpoint-optimizer-string", lambda: E.load_checkpoint(_finished_run(), optimizer="sgd"), ConfigError, "optimizer must be an optax GradientTransformation", slow=True),
    row("export_checkpoint-no-such-epoch", lambda: E.export_checkpoint(_finished_run(), tmpdir() / "p.safetensors", epoch=99), FundlError, "no checkpoint of epoch 99", slow=True),
    row("export_checkpoint-model-string", lambda: E.export_checkpoint(_finished_run(), tmpdir() / "p.safetensors", model="net"), ConfigError, "model must be a fundl Layer", slow=True),
    row("export_checkpoint-missing-directory", lambda: E.export_checkpoint(_finished_run(), tmpdir() / "no" / "p.safetensors"), FileNotFoundError, "does not exist", slow=True),
    row("export_checkpoint-other-model", lambda: E.export_checkpoint(_finished_run(), tmpdir() / "p.safetensors", model=_OTHER_NET, input_shape=(1, 4)), ShapeError, "fc1", "export_checkpoint", slow=True),
    row("run-init-from-missing-file", lambda: _run(init_from=tmpdir() / "none.safetensors"), FileNotFoundError, "no such file"),
    row("run-init-from-garbage", lambda: _run(init_from=_file(b"garbage", "g.bin")), _IO.CorruptFileError, "g.bin", "8-byte header length"),
    # ---- helpers and arguments
    row("make_optimizer-unknown", lambda: E.make_optimizer("adamw2", 0.1), ConfigError, "make_optimizer", "unknown optimizer name='adamw2'", "sgd"),
    row("make_optimizer-case", lambda: E.make_optimizer("SGD", 0.1), ConfigError, "unknown optimizer name='SGD'"),
    row("make_optimizer-weight-decay-negative", lambda: E.make_optimizer("sgd", 0.1, weight_decay=-1e-4), ConfigError, "weight_decay must be a finite number >= 0"),
    row("make_schedule-unknown", lambda: E.make_schedule("linear", 0.1, epochs=2, steps_per_epoch=3), ConfigError, "make_schedule", "unknown schedule name='linear'", "cosine"),
    row("make_schedule-empty-name", lambda: E.make_schedule("", 0.1, epochs=2, steps_per_epoch=3), ConfigError, "unknown schedule"),
    row("make_schedule-gamma-negative", lambda: E.make_schedule("step", 0.1, epochs=2, steps_per_epoch=3, gamma=-1.0), ConfigError, "make_schedule", "gamma"),
    row("make_schedule-milestone-beyond-end", lambda: E.make_schedule("step", 0.1, epochs=2, steps_per_epoch=3, milestones=(1.5,)), ConfigError, "milestones"),
    row("steps_per_epoch-batch-size-zero", lambda: E.steps_per_epoch(10, 0), ConfigError, "steps_per_epoch", "batch_size"),
    row("steps_per_epoch-negative-n", lambda: E.steps_per_epoch(-10, 2), ConfigError, "steps_per_epoch", "-10"),
    row("load_splits-unknown-name", lambda: E.load_splits("imagenet", image_shape=(28, 28, 1)), ConfigError, "unknown data set name='imagenet'"),
    row("load_splits-limit-train-negative", lambda: E.load_splits("mnist", image_shape=(28, 28, 1), synthetic=8, limit_train=-100), ConfigError, "load_splits", "limit_train must be an int >= 1", "-100"),
    row("load_splits-synthetic-negative", lambda: E.load_splits("mnist", image_shape=(28, 28, 1), synthetic=-5), ConfigError, "synthetic"),
    row("load_checkpoint-missing-dir", lambda: E.load_checkpoint(tmpdir() / "nothing"), FundlError, "load_checkpoint", "no checkpoints/", "--out of a run"),
    row("load_checkpoint-empty-run-dir", lambda: E.load_checkpoint(tmpdir()), FundlError, "load_checkpoint", "no checkpoints/"),
    row("export_checkpoint-missing-dir", lambda: E.export_checkpoint(tmpdir() / "nothing", tmpdir() / "p.safetensors"), FundlError, "no checkpoints/"),
    row("run-model-not-layer", lambda: _run(model="convnet"), ConfigError, "run: model must be a fundl Layer"),
    row("run-epochs-negative", lambda: _run(epochs=-1), ConfigError, "run: epochs must be an int >= 0", "-1"),
    row("run-epochs-float", lambda: _run(epochs=1.5), ConfigError, "run: epochs must be an int"),
    row("run-batch-size-zero", lambda: _run(batch_size=0), ConfigError, "run: batch_size must be an int >= 1"),
    row("run-batch-size-bool", lambda: _run(batch_size=True), ConfigError, "batch_size must be an int"),
    row("run-batch-size-exceeds-data", lambda: _run(batch_size=16), ConfigError, "batch_size=16 exceeds the 8 training examples"),
    row("run-eval-batch-size-zero", lambda: _run(eval_batch_size=0), ConfigError, "eval_batch_size must be an int >= 1"),
    row("run-log-every-zero", lambda: _run(log_every=0), ConfigError, "log_every must be an int >= 1"),
    row("run-data-parallel-string", lambda: _run(data_parallel="yes"), ConfigError, "data_parallel must be True or False"),
    row("run-bad-parallel", lambda: _run(parallel="ddp"), ConfigError, "run: parallel must be one of", "'ddp'"),
    row("run-pmap", lambda: _run(parallel="pmap"), ConfigError, "run: parallel='pmap' is not supported"),
    row("run-parallel-and-data-parallel", lambda: _run(parallel="fsdp", data_parallel=True), ConfigError, "data_parallel=True means parallel='sharded'", "parallel='fsdp'"),
    row("run-train-not-pair", lambda: _run(train=_TRAIN[0]), ShapeError, "run: train must be non-empty (x, y) arrays"),
    row("run-train-lengths", lambda: _run(train=(_TRAIN[0], _TRAIN[1][:5])), ShapeError, "run: train", "one length"),
    row("run-test-empty", lambda: _run(test=(_TRAIN[0][:0], _TRAIN[1][:0])), ShapeError, "run: test must be non-empty"),
    row("run-export-params-missing-dir", lambda: _run(export_params=tmpdir() / "no" / "p.safetensors"), ConfigError, "export_params", "does not exist"),
    row("run-export-model-is-dir", lambda: _run(export_model=tmpdir()), ConfigError, "export_model", "it is a directory"),
]


# =========================================================================== runner flags
# Only what argparse itself refuses (choices, types, unknown flags); value ranges: section issue13.
_ARG = ArgparseExit

SECTIONS["runner_flags"] = [
    row(f"{name}-{tag}", (lambda name=name, argv=argv: parse(name, *argv)), _ARG, *frags)
    for name, tag, argv, frags in [
        ("mnist", "optimizer-choice", ["--optimizer", "adamw2"], ["--optimizer", "invalid choice", "'adamw2'"]),
        ("mnist", "schedule-choice", ["--schedule", "linear"], ["--schedule", "invalid choice"]),
        ("mnist", "dataset-choice", ["--dataset", "cifar10"], ["--dataset", "invalid choice"]),
        ("mnist", "model-choice", ["--model", "resnet18"], ["--model", "invalid choice"]),
        ("mnist", "epochs-not-int", ["--epochs", "ten"], ["--epochs", "'ten'"]),
        ("mnist", "batch-size-float", ["--batch-size", "1.5"], ["--batch-size", "'1.5'"]),
        ("mnist", "lr-not-float", ["--lr", "fast"], ["--lr", "'fast'"]),
        ("mnist", "momentum-not-float", ["--momentum", "high"], ["--momentum", "'high'"]),
        ("mnist", "weight-decay-not-float", ["--weight-decay", "1e-4x"], ["--weight-decay", "'1e-4x'"]),
        ("mnist", "seed-float", ["--seed", "0.5"], ["--seed", "'0.5'"]),
        ("mnist", "stop-after-not-int", ["--stop-after", "last"], ["--stop-after", "'last'"]),
        ("mnist", "limit-train-not-int", ["--limit-train", "1k"], ["--limit-train", "'1k'"]),
        ("mnist", "limit-test-not-int", ["--limit-test", "all"], ["--limit-test", "'all'"]),
        ("mnist", "eval-batch-size-not-int", ["--eval-batch-size", "big"], ["--eval-batch-size", "'big'"]),
        ("mnist", "synthetic-not-int", ["--synthetic", "yes"], ["--synthetic", "'yes'"]),
        ("mnist", "unknown-flag", ["--learning-rate", "0.1"], ["unrecognized arguments", "--learning-rate"]),
        ("mnist", "epochs-missing-value", ["--epochs"], ["--epochs", "expected one argument"]),
        ("mnist", "resume-with-value", ["--resume=yes"], ["--resume", "ignored explicit argument"]),
        ("mnist", "fsdp-and-data-parallel", ["--fsdp", "--data-parallel"], ["--data-parallel", "not allowed with argument --fsdp"]),
        ("cifar10", "data-parallel-and-fsdp", ["--data-parallel", "--fsdp"], ["--fsdp", "not allowed with argument --data-parallel"]),
        ("cifar10", "optimizer-choice", ["--optimizer", "rmsprop2"], ["--optimizer", "invalid choice"]),
        ("cifar10", "source-choice", ["--source", "web"], ["--source", "invalid choice"]),
        ("cifar10", "model-choice", ["--model", "vgg99"], ["--model", "invalid choice"]),
        ("cifar10", "schedule-choice", ["--schedule", "poly"], ["--schedule", "invalid choice"]),
        ("cifar10", "batch-size-not-int", ["--batch-size", "x"], ["--batch-size", "'x'"]),
        ("cifar10", "lr-not-float", ["--lr", "0,1"], ["--lr", "'0,1'"]),
        ("cifar10", "unknown-flag", ["--augment"], ["unrecognized arguments", "--augment"]),
        ("dp_sgd_mnist", "max-norm-not-float", ["--max-norm", "x"], ["--max-norm", "'x'"]),
        ("dp_sgd_mnist", "noise-not-float", ["--noise-multiplier", "lots"], ["--noise-multiplier", "'lots'"]),
        ("dp_sgd_mnist", "epochs-not-int", ["--epochs", "1.0"], ["--epochs", "'1.0'"]),
        ("dp_sgd_mnist", "unknown-flag", ["--optimizer", "sgd"], ["unrecognized arguments"]),
        ("finetune", "model-choice", ["--model", "resnet18"], ["--model", "invalid choice"]),
        ("finetune", "epochs-not-int", ["--epochs", "two"], ["--epochs", "'two'"]),
        ("finetune", "lr-not-float", ["--lr", "?"], ["--lr", "'?'"]),
        ("finetune", "unknown-flag", ["--frozen", "features"], ["unrecognized arguments", "--frozen"]),
        ("gradient_penalty_mnist", "lam-not-float", ["--lam", "ten"], ["--lam", "'ten'"]),
        ("gradient_penalty_mnist", "fgsm-eps-not-float", ["--fgsm-eps", "x"], ["--fgsm-eps", "'x'"]),
        ("gradient_penalty_mnist", "unknown-flag", ["--penalty", "1"], ["unrecognized arguments"]),
        ("maml_sinusoid", "iterations-not-int", ["--iterations", "many"], ["--iterations", "'many'"]),
        ("maml_sinusoid", "inner-lr-not-float", ["--inner-lr", "x"], ["--inner-lr", "'x'"]),
        ("maml_sinusoid", "k-shot-float", ["--k-shot", "2.5"], ["--k-shot", "'2.5'"]),
        ("maml_sinusoid", "unknown-flag", ["--out", "runs/x"], ["unrecognized arguments"]),
        ("quickstart", "epochs-not-int", ["--epochs", "x"], ["--epochs", "'x'"]),
        ("quickstart", "lr-not-float", ["--lr", "x"], ["--lr", "'x'"]),
        ("quickstart", "unknown-flag", ["--optimizer", "adam"], ["unrecognized arguments"]),
        ("visualize_filters", "source-choice", ["--source", "tfds"], ["--source", "invalid choice"]),
        ("visualize_filters", "index-not-int", ["--index", "first"], ["--index", "'first'"]),
        ("visualize_filters", "epochs-not-int", ["--epochs", "x"], ["--epochs", "'x'"]),
    ]
]


# =========================================================================== distributed
_FUNDL_ENV = DIST.ENV_VARS  # FUNDL_*, SLURM, Kubernetes, Open MPI: what initialize reads


def _initialize(*args, **kw):
    """``distributed.initialize`` with every variable it reads unset (every row fails
    validation before ``jax.distributed.initialize`` is reached, even inside srun)."""
    saved = {k: os.environ.pop(k) for k in _FUNDL_ENV if k in os.environ}
    try:
        return DIST.initialize(*args, **kw)
    finally:
        os.environ.update(saved)


SECTIONS["distributed"] = [
    row("initialize-only-coordinator", lambda: _initialize("localhost:1234"), ConfigError, "initialize", "give all of coordinator_address, num_processes, process_id", "missing ['num_processes', 'process_id']"),
    row("initialize-only-counts", lambda: _initialize(None, 2, 0), ConfigError, "missing ['coordinator_address']"),
    row("initialize-address-without-port", lambda: _initialize("localhost", 2, 0), ConfigError, "coordinator_address must be 'host:port'", "'localhost'"),
    row("initialize-zero-processes", lambda: _initialize("localhost:1234", 0, 0), ConfigError, "need num_processes >= 1"),
    row("initialize-process-id-too-big", lambda: _initialize("localhost:1234", 2, 2), ConfigError, "0 <= process_id < num_processes", "process_id=2"),
    row("initialize-num-processes-string", lambda: _initialize("localhost:1234", "two", 0), ConfigError, "num_processes must be an int", "'two'"),
    row("initialize-process-id-negative", lambda: _initialize("localhost:1234", 2, -1), ConfigError, "process_id must be >= 0"),
    row("initialize-bad-cpu-collectives", lambda: _initialize(cpu_collectives="nccl"), ConfigError, "cpu_collectives must be 'gloo' or 'mpi'", "'nccl'"),
    row("process_batches-x-y-lengths", lambda: next(DIST.process_batches(_XS, _YS[:3], 2)), ShapeError, "x and y must have the same length"),
    row("process_batches-size-zero", lambda: next(DIST.process_batches(_XS, _YS, 0)), ConfigError, "batch_size must be >= 1"),
]


# =========================================================================== viz, initializers
_double = lambda a: a * 2  # noqa: E731

SECTIONS["viz_initializers"] = [
    row("trace-not-function", lambda: V.trace(3), ConfigError, "trace", "fn must be a function or a fundl Layer", "int"),
    row("graph-not-function", lambda: V.graph("f"), ConfigError, "fn must be a function or a fundl Layer"),
    row("graph-grad-non-scalar", lambda: V.graph(_double, x(3), grad=True), ShapeError, "grad=True needs fn to return a scalar", "(3,)"),
    row("graph-bad-rankdir", lambda: V.graph(_double, x(3), rankdir="UP"), ConfigError, "rankdir must be 'TB', 'LR', 'BT' or 'RL'"),
    row("graph-expand-string", lambda: V.graph(_double, x(3), expand="yes"), ConfigError, "expand must be True, False or a depth >= 0"),
    row("render-not-dot-text", lambda: V.render(3, tmpdir() / "g.svg"), ConfigError, "render", "dot must be Graphviz DOT text"),
    row("graph-argnums-out-of-range", lambda: V.graph(_double, x(3), argnums=5), ConfigError, "argnums must be an int or a non-empty sequence of ints", "argnums=5"),
    row("graph-without-example-args", lambda: V.graph(_double), ConfigError, "cannot take the 0 example argument(s) given", "graph(fn, *args)"),
    row("uniform-bound-negative", lambda: IN.uniform(-1.0), ConfigError, "uniform: bound must be >= 0"),
    row("uniform-bound-string", lambda: IN.uniform("a"), ConfigError, "uniform", "bound must be a number", "'a'"),
    row("torch_default-fan-in-zero", lambda: IN.torch_default(0), ConfigError, "torch_default", "fan_in must be an int >= 1", "got 0"),
    row("torch_default-fan-in-negative", lambda: IN.torch_default(-3), ConfigError, "torch_default", "fan_in must be an int >= 1", "got -3"),
    row("fan_in_dense-empty-shape", lambda: IN.fan_in_dense(()), ShapeError, "fan_in_dense", "w_shape must be a weight shape [in, out]", "got ()"),
]


# =========================================================================== issue 13: labels, non-finite, flags, integer inputs, keys, calls
# The checks of issue 13 ("nothing silent") through the public API: a tiny classifier with 10
# outputs on 4x4x1 images; runs go to fresh temporary directories.
_TINY = L.Serial(L.Flatten(), L.Dense(10, name="fc"))
_TINY_P = init(_TINY, (2, 4, 4, 1))[1]
_IMG_U8, _IMG_F = np.zeros((8, 4, 4, 1), np.uint8), np.ones((8, 4, 4, 1), np.float32)
_Y10 = np.arange(8, dtype=np.int32)


def _y_with(value) -> np.ndarray:
    """``_Y10`` with the label at index 3 replaced by ``value``."""
    y = _Y10.copy()
    y[3] = value
    return y


def _x_with(value, index=(2, 1, 1, 0)) -> np.ndarray:
    """``_IMG_F`` holding ``value`` (NaN, Inf) at ``index``."""
    x = _IMG_F.copy()
    x[index] = value
    return x


def _tfit(x=_IMG_F, y=_Y10, **kw):
    """``fit`` of ``_TINY`` on ``(x, y)`` for one epoch, quiet; ``kw`` overrides."""
    args = dict(epochs=1, batch_size=4, key=KEY, progress=False)
    args.update(kw)
    return T.fit(_TINY, _TINY_P, {}, args.pop("optimizer", _SGD), (x, y), **args)


def _teval(x=_IMG_F, y=_Y10, **kw):
    return T.evaluate(_TINY, _TINY_P, {}, (x, y), **kw)


def _trun(x=_IMG_F, y=_Y10, **kw):
    """``experiment.run`` of ``_TINY`` on ``(x, y)`` (train and test) into a fresh directory."""
    args = dict(out=tmpdir() / "run", epochs=1, batch_size=4, progress=False)
    args.update(kw)
    return E.run(_TINY, _SGD, (x, y), (x, y), **args)


def _locked_run():
    """``run`` into a directory whose ``.lock`` names this (live) process."""
    out = tmpdir()
    (out / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                           "started": "2026-01-01T00:00:00+00:00"}) + "\n")
    return _run(out=out)


def _corrupt_copy() -> pathlib.Path:
    """A copy of ``_finished_run()`` with every checkpoint file overwritten with garbage."""
    out = tmpdir() / "corrupt"
    shutil.copytree(_finished_run(), out)
    for f in (out / "checkpoints").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    return out


def _bad_metrics() -> pathlib.Path:
    path = tmpdir() / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2\n{"epoch": 3}\n')
    return path


def _flags(*argv):
    """``experiments/mnist.py``'s parse_args on ``argv`` (argparse's exit -> ArgparseExit)."""
    return parse("mnist", *argv)


_EXISTING_FILE = __file__
_SEQ_DENSE = L.Serial(L.Dense(3, name="fc"))
_SEQ_BN = L.Serial(L.BatchNorm(name="bn"))
_SEQ_POOL = L.Serial(L.AvgPool(2, name="pool"))
_SEQ_CONV = L.Serial(L.Conv(2, 3, name="conv"))
_OUT_OF_RANGE = "outside the valid range [0, 10)"


def _bn_int():
    """A BatchNorm applied (training mode) to uint8 input."""
    _, p, s = _SEQ_BN.init_with_state(KEY, (2, 4))
    return _SEQ_BN.apply(p, np.ones((2, 4), np.uint8), state=s)



SECTIONS["issue13"] = [
    # ---- labels against the model's 10 outputs
    row("i13-fit-label-minus-one", lambda: _tfit(y=_y_with(-1)), DataError, "fit: train_data has label -1 at index 3", _OUT_OF_RANGE, "drop those rows"),
    row("i13-fit-label-C", lambda: _tfit(y=_y_with(10)), DataError, "fit: train_data has label 10 at index 3", "give the model 11 outputs"),
    row("i13-fit-label-C-plus-5", lambda: _tfit(y=_y_with(15)), DataError, "label 15 at index 3", _OUT_OF_RANGE),
    row("i13-fit-float-labels", lambda: _tfit(y=_Y10.astype(np.float32)), DataError, "fit: train_data labels y must be integer class indices", "float32", "y.astype(np.int32)"),
    row("i13-fit-eval-data-label-C", lambda: _tfit(eval_data=(_IMG_F, _y_with(10))), DataError, "fit: eval_data has label 10"),
    row("i13-evaluate-label-minus-one", lambda: _teval(y=_y_with(-1)), DataError, "evaluate: data has label -1 at index 3"),
    row("i13-evaluate-label-C", lambda: _teval(y=_y_with(10)), DataError, "evaluate: data has label 10", _OUT_OF_RANGE),
    row("i13-evaluate-float-labels", lambda: _teval(y=_Y10.astype(np.float64)), DataError, "evaluate: data labels y must be integer class indices", "float64"),
    row("i13-run-label-C", lambda: _trun(y=_y_with(10)), DataError, "run: train has label 10 at index 3"),
    row("i13-run-label-minus-one", lambda: _trun(y=_y_with(-1)), DataError, "run: train has label -1"),
    row("i13-run-float-labels", lambda: _trun(y=_Y10.astype(np.float32)), DataError, "run: train labels y must be integer class indices"),
    row("i13-cross_entropy-eager-label-C", lambda: F.cross_entropy(jnp.zeros((4, 10)), jnp.array([0, 1, 2, 10])), DataError, "cross_entropy: target class index 10 at index (3,)", "outside [0, 10)"),
    row("i13-cross_entropy-eager-label-minus-one", lambda: F.cross_entropy(jnp.zeros((4, 10)), jnp.array([0, 1, 2, -1])), DataError, "cross_entropy: target class index -1"),
    # ---- NaN / Inf in the data, on_nonfinite, checks
    row("i13-fit-nan-x", lambda: _tfit(x=_x_with(np.nan)), DataError, "fit: train_data x holds nan at index (2, 1, 1, 0)", "allow_nonfinite=True"),
    row("i13-fit-inf-x", lambda: _tfit(x=_x_with(np.inf, (5, 0, 0, 0))), DataError, "fit: train_data x holds inf at index (5, 0, 0, 0)"),
    row("i13-evaluate-inf-x", lambda: _teval(x=_x_with(np.inf, (5, 0, 0, 0))), DataError, "evaluate: data x holds inf"),
    row("i13-standardizer-nan", lambda: D.standardizer(_x_with(np.nan)), DataError, "standardizer: x_train holds nan at index (2, 1, 1, 0)"),
    row("i13-run-nan-x", lambda: _trun(x=_x_with(np.nan)), DataError, "run: train x holds nan"),
    row("i13-fit-on-nonfinite-bogus", lambda: _tfit(on_nonfinite="bogus"), ConfigError, "fit: on_nonfinite must be one of ['stop', 'raise', 'skip']", "'bogus'"),
    row("i13-train_step-checks-string", lambda: T.make_train_step(_TINY, _SGD, checks="yes"), ConfigError, "make_train_step: checks must be True or False", "'yes'"),
    row("i13-fit-allow-nonfinite-string", lambda: _tfit(allow_nonfinite="yes"), ConfigError, "fit: allow_nonfinite must be True or False"),
    # ---- runner flag values (experiments/mnist.py; every runner shares add_training_flags)
    row("i13-flag-lr-zero", lambda: _flags("--lr", "0"), _ARG, "--lr", "expected a finite number > 0", "got 0.0"),
    row("i13-flag-lr-negative", lambda: _flags("--lr", "-1"), _ARG, "--lr", "expected a finite number > 0", "got -1.0"),
    row("i13-flag-lr-nan", lambda: _flags("--lr", "nan"), _ARG, "--lr", "'nan'", "not finite"),
    row("i13-flag-lr-inf", lambda: _flags("--lr", "inf"), _ARG, "--lr", "'inf'", "not finite"),
    row("i13-flag-momentum-negative", lambda: _flags("--momentum", "-1"), _ARG, "--momentum", "expected a momentum in [0, 1)"),
    row("i13-flag-momentum-one", lambda: _flags("--momentum", "1"), _ARG, "--momentum", "in [0, 1)", "got 1.0"),
    row("i13-flag-batch-size-zero", lambda: _flags("--batch-size", "0"), _ARG, "--batch-size", "expected an integer >= 1", "got 0"),
    row("i13-flag-limit-train-negative", lambda: _flags("--limit-train", "-100"), _ARG, "--limit-train", "expected an integer >= 1", "got -100"),
    row("i13-flag-epochs-negative", lambda: _flags("--epochs", "-1"), _ARG, "--epochs", "expected an integer >= 0", "got -1"),
    row("i13-flag-weight-decay-negative", lambda: _flags("--weight-decay", "-0.1"), _ARG, "--weight-decay", "expected a finite number >= 0"),
    row("i13-flag-stop-after-past-epochs", lambda: _flags("--epochs", "2", "--stop-after", "5"), _ARG, "--stop-after", "5 is after the last epoch", "--epochs 2"),
    row("i13-flag-out-existing-file", lambda: _flags("--out", _EXISTING_FILE), _ARG, "--out", "is an existing file, not a directory"),
    row("i13-flag-init-from-missing", lambda: _flags("--init-from", str(tmpdir() / "none.safetensors")), _ARG, "--init-from", "does not exist", "give an existing file"),
    row("i13-flag-synthetic-zero", lambda: _flags("--synthetic", "0"), _ARG, "--synthetic", "expected an integer >= 1"),
    # ---- integer inputs where float computation starts
    row("i13-conv-uint8-images", lambda: _SEQ_CONV.apply(init(_SEQ_CONV, (1, 4, 4, 1))[1], _IMG_U8), DataError, "Conv 'serial/conv'", "dtype uint8", "x.astype(np.float32) / 255"),
    row("i13-dense-int-input", lambda: _SEQ_DENSE.apply(init(_SEQ_DENSE, (1, 4))[1], np.ones((2, 4), np.int32)), DataError, "serial/fc", "dtype int32"),
    row("i13-batchnorm-uint8-input", lambda: _bn_int(), DataError, "serial/bn", "dtype uint8"),
    row("i13-avgpool-uint8-images", lambda: _SEQ_POOL.apply({}, _IMG_U8), DataError, "serial/pool", "dtype uint8"),
    row("i13-F-conv-uint8", lambda: F.conv(_IMG_U8, jnp.ones((3, 3, 1, 2))), DataError, "conv: x has dtype uint8", "convert it first"),
    row("i13-fit-uint8-images", lambda: _tfit(x=_IMG_U8), DataError, "dtype uint8"),
    # ---- random keys
    row("i13-init-key-string", lambda: _TINY.init("seed", (2, 4, 4, 1)), ConfigError, "init: key must be a jax.random.key(seed)", "got str 'seed'"),
    row("i13-init-key-float", lambda: _TINY.init(0.5, (2, 4, 4, 1)), ConfigError, "key must be a jax.random.key", "got float 0.5"),
    row("i13-init-key-array-3", lambda: _TINY.init(jax.random.split(KEY, 3), (2, 4, 4, 1)), ConfigError, "a key array of shape (3,)", "one key is needed"),
    row("i13-fit-key-float", lambda: _tfit(key=0.5), ConfigError, "fit: key must be a jax.random.key", "got float 0.5"),
    row("i13-fit-key-array-3", lambda: _tfit(key=jax.random.split(KEY, 3)), ConfigError, "fit: key must be", "shape (3,)"),
    row("i13-dropout-key-string", lambda: F.dropout(_IMG_F, 0.5, key="k"), ConfigError, "dropout", "key must be a jax.random.key", "got str 'k'"),
    row("i13-dropout-key-float", lambda: F.dropout(_IMG_F, 0.5, key=1.5), ConfigError, "dropout", "got float 1.5"),
    row("i13-train_step-key-string", lambda: T.make_train_step(_TINY, _SGD, donate=False)(_TINY_P, {}, _SGD.init(_TINY_P), (_IMG_F, _Y10), "x"), ConfigError, "train step: key must be a jax.random.key", "got str 'x'"),
    # ---- calls: a layer called, an optimizer name, a per-example loss
    row("i13-layer-called", lambda: _TINY(_IMG_F), TypeError, "fundl layers are not callable", "use layer.apply"),
    row("i13-fit-optimizer-name", lambda: _tfit(optimizer="adam"), ConfigError, "fit: optimizer must be an optax GradientTransformation", "optax.adam(1e-3)"),
    row("i13-fit-per-example-loss", lambda: _tfit(loss_fn=lambda lo, y: F.cross_entropy(lo, y, reduction="none")), ConfigError, "loss_fn must return a scalar", "shape (4,)"),
    # ---- run directories, checkpoints and metrics
    row("i13-run-locked-directory", _locked_run, DirectoryInUseError, "is in use by another runner", f"PID {os.getpid()}"),
    row("i13-run-resume-all-checkpoints-corrupt", lambda: _run(out=_corrupt_copy(), resume=True), CheckpointError, "run: --resume: no usable checkpoint", "epoch 1", "restore a backup", slow=True),
    row("i13-load_checkpoint-corrupt", lambda: E.load_checkpoint(_corrupt_copy()), CheckpointError, "load_checkpoint: no usable checkpoint", "epoch 1", slow=True),
    row("i13-read_metrics-bad-middle-line", lambda: E.read_metrics(_bad_metrics()), _IO.CorruptFileError, "read_metrics: line 2", "is not a JSON record"),
]


# =========================================================================== the tests
ALL_ROWS = [p for rows in SECTIONS.values() for p in rows]

# Rows per section when this table was last extended (known gaps included); lower only on purpose.
MIN_ROWS = {
    "functional": 119,
    "layers": 111,
    "combinators": 50,
    "models": 57,
    "summary": 11,
    "train": 96,
    "data": 69,
    "autodiff": 52,
    "surgery": 29,
    "io": 43,
    "interop": 22,
    "experiment": 43,
    "runner_flags": 48,
    "distributed": 10,
    "viz_initializers": 13,
    "issue13": 56,
}


@pytest.mark.parametrize("call, exc, fragments", ALL_ROWS)
def test_bad_input(call, exc, fragments):
    """The bad call raises ``exc`` and the message holds every fragment.

    ``exc`` is a fundl error, argparse's refusal, an ``OSError`` subclass (``FileNotFoundError``,
    ``IsADirectoryError``) for a path that is missing or of the wrong kind, as ``open`` does, or
    ``TypeError`` for a layer called like a function (Python's error for a wrong call).
    """
    assert issubclass(exc, (FundlError, ArgparseExit, OSError, TypeError)), exc
    with pytest.raises(exc) as info:
        call()
    message = info.value.stderr if isinstance(info.value, ArgparseExit) else str(info.value)
    missing = [f for f in fragments if f.lower() not in message.lower()]
    assert not missing, f"fragments {missing} not in message:\n{message}"


def test_row_counts():
    """No section shrinks unnoticed; ids are unique (pytest would otherwise suffix them)."""
    counts = {name: len(rows) for name, rows in SECTIONS.items()}
    assert set(counts) == set(MIN_ROWS), (counts, MIN_ROWS)
    short = {k: (counts[k], v) for k, v in MIN_ROWS.items() if counts[k] < v}
    assert not short, f"sections with fewer rows than pinned (have, pinned): {short}"
    ids = [p.id for p in ALL_ROWS]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})

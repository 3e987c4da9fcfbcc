"""Residual blocks of ResNet (He et al. 2016), with batch norm; channels last.

Both blocks use a projection shortcut (strided 1x1 conv + batch norm) exactly
when the block changes the shape (stride > 1 or another channel count), the
identity otherwise, as torchvision's ResNet does.
"""
from __future__ import annotations

import jax
from jax.nn import initializers

from ._combinators import Residual, Serial
from ._conv_layers import Conv
from ._errors import ConfigError
from ._norm import BatchNorm
from ._simple_layers import ReLU

# torchvision's ResNet initialisation: kaiming normal, fan_out, for relu.
resnet_conv_init = initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(out, k, stride=1, name=None):
    return Conv(out, k, stride=stride, padding=k // 2, bias=False, w_init=resnet_conv_init, name=name)


def _projection(out, stride):
    return Serial(_conv(out, 1, stride, name="conv"), BatchNorm(name="bn"), name="shortcut")


def _check(kind, **values):
    for arg, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{kind}: {arg} must be a positive int; got {v!r}")


def BasicBlock(out_channels: int, *, stride: int = 1, name: str | None = None):
    """Two 3x3 convolutions with batch norm, plus the shortcut; ``relu`` after the sum.

    Shapes: ``[N, H, W, C_in] -> [N, ceil(H/stride), ceil(W/stride), out_channels]``.
    Parameters: ``{'body': {'conv1','bn1','conv2','bn2'}, 'shortcut'?: {'conv','bn'}}``;
    state holds the batch-norm statistics.
    """
    _check("BasicBlock", out_channels=out_channels, stride=stride)
    body = Serial(_conv(out_channels, 3, stride, "conv1"), BatchNorm(name="bn1"), ReLU(),
                  _conv(out_channels, 3, 1, "conv2"), BatchNorm(name="bn2"))
    return Residual(body, _projection(out_channels, stride), projection="auto",
                    activation=jax.nn.relu, name=name or "basic_block")


def Bottleneck(width: int, *, stride: int = 1, expansion: int = 4, name: str | None = None):
    """1x1 (reduce) -> 3x3 (stride) -> 1x1 (expand x ``expansion``), batch norm after each.

    The stride sits on the 3x3 convolution (torchvision's "ResNet v1.5").
    Shapes: ``[N, H, W, C_in] -> [N, ceil(H/stride), ceil(W/stride), width * expansion]``.
    """
    _check("Bottleneck", width=width, stride=stride, expansion=expansion)
    out = width * expansion
    body = Serial(_conv(width, 1, 1, "conv1"), BatchNorm(name="bn1"), ReLU(),
                  _conv(width, 3, stride, "conv2"), BatchNorm(name="bn2"), ReLU(),
                  _conv(out, 1, 1, "conv3"), BatchNorm(name="bn3"))
    return Residual(body, _projection(out, stride), projection="auto",
                    activation=jax.nn.relu, name=name or "bottleneck")

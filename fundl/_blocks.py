"""Residual blocks of ResNet (He et al. 2016), with batch norm; channels last.

Both blocks use a projection shortcut (strided 1x1 conv + batch norm) exactly
when the block changes the shape (stride > 1 or another channel count), the
identity otherwise, as torchvision's ResNet does. Each is a :class:`Residual`
whose body and shortcut follow from its hyper-parameters; ``replace`` of a
hyper-parameter rebuilds them, and editing a child (``fundl.surgery``) turns
the block into a plain :class:`Residual`.
"""
from __future__ import annotations

from dataclasses import KW_ONLY

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
    return Conv(out, (k, k), stride=stride, padding=k // 2, bias=False, w_init=resnet_conv_init,
                name=name)


def _projection(out, stride):
    return Serial(_conv(out, 1, stride, name="conv"), BatchNorm(name="bn"), name="shortcut")


def _check(where, **values):
    for arg, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{where}: {arg} must be a positive int; got {arg}={v!r}")


class _Block(Residual):
    """A Residual built from hyper-parameters (``_HYPER``) by ``_parts``."""

    _HYPER = ()

    def _setup(self, name, **hyper):
        self._set(name=name, **hyper)
        _check(f"{type(self).__name__} '{name or type(self).default_name}'", **hyper)
        body, shortcut = self._parts()
        self._set(body=body, shortcut=shortcut, projection="auto", activation=jax.nn.relu)
        self.__post_init__()
        self._finish()

    def replace(self, **fields):
        """Changed hyper-parameters rebuild the block; changed children (or
        ``projection``/``activation``) make it a plain :class:`Residual`."""
        structural = set(fields) - set(self._HYPER) - {"name"}
        if not structural:
            hyper = {k: fields.get(k, getattr(self, k)) for k in self._HYPER}
            return type(self)(**hyper, name=fields.get("name", self.name))
        base = {k: getattr(self, k) for k in ("body", "shortcut", "projection", "activation")}
        base.update({k: v for k, v in fields.items() if k in base})
        unknown = set(fields) - set(base) - set(self._HYPER) - {"name"}
        if unknown:
            return super().replace(**fields)  # the usual error for unknown fields
        return Residual(base["body"], base["shortcut"], projection=base["projection"],
                        activation=base["activation"], name=fields.get("name", self.name))

    def __repr__(self):
        hyper = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._HYPER)
        return f"{type(self).__name__}({hyper}, name={self.name!r})"


class BasicBlock(_Block):
    """Two 3x3 convolutions with batch norm, plus the shortcut; ``relu`` after the sum.

    Shapes: ``[N, H, W, C_in] -> [N, ceil(H/stride), ceil(W/stride), out_channels]``.
    Parameters: ``{'body': {'conv1','bn1','conv2','bn2'}, 'shortcut'?: {'conv','bn'}}``;
    state holds the batch-norm statistics.

    Example:
      >>> b = BasicBlock(64, stride=2)
      >>> b.init(jax.random.key(0), (1, 8, 8, 32))[0], isinstance(b, Residual)
      ((1, 4, 4, 64), True)
    """

    _: KW_ONLY
    out_channels: int = 64
    stride: int = 1

    _HYPER = ("out_channels", "stride")

    def __init__(self, out_channels: int, *, stride: int = 1, name: str | None = None):
        self._setup(name or "basic_block", out_channels=out_channels, stride=stride)

    def _parts(self):
        c, s = self.out_channels, self.stride
        body = Serial(_conv(c, 3, s, "conv1"), BatchNorm(name="bn1"), ReLU(),
                      _conv(c, 3, 1, "conv2"), BatchNorm(name="bn2"))
        return body, _projection(c, s)


class Bottleneck(_Block):
    """1x1 (reduce) -> 3x3 (stride) -> 1x1 (expand x ``expansion``), batch norm after each.

    The stride sits on the 3x3 convolution (torchvision's "ResNet v1.5").
    Shapes: ``[N, H, W, C_in] -> [N, ceil(H/stride), ceil(W/stride), width * expansion]``.

    Example:
      >>> Bottleneck(16).init(jax.random.key(0), (1, 8, 8, 64))[0]
      (1, 8, 8, 64)
    """

    _: KW_ONLY
    width: int = 64
    stride: int = 1
    expansion: int = 4

    _HYPER = ("width", "stride", "expansion")

    def __init__(self, width: int, *, stride: int = 1, expansion: int = 4,
                 name: str | None = None):
        self._setup(name or "bottleneck", width=width, stride=stride, expansion=expansion)

    def _parts(self):
        w, s, out = self.width, self.stride, self.width * self.expansion
        body = Serial(_conv(w, 1, 1, "conv1"), BatchNorm(name="bn1"), ReLU(),
                      _conv(w, 3, s, "conv2"), BatchNorm(name="bn2"), ReLU(),
                      _conv(out, 1, 1, "conv3"), BatchNorm(name="bn3"))
        return body, _projection(out, s)

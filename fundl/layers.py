"""Pure-function layers and combinators (``import fundl.layers as L``).

Data layout: channels last, ``x: [N, *spatial, C]``. A layer is a
:class:`Layer`: ``out_shape, params = layer.init(key, input_shape)`` then
``y = layer.apply(params, x)``; layers holding batch-norm statistics also take
and return ``state``. See ``fundl/_layer.py`` for the protocol.
"""
from ._blocks import BasicBlock, Bottleneck
from ._combinators import Concat, Graph, Node, Parallel, Residual, Serial, Sum
from ._conv_layers import Conv, ConvTranspose, Dense
from ._layer import Layer, layer, stateful_layer
from ._norm import BatchNorm, LayerNorm
from ._pool_layers import AdaptiveAvgPool, AvgPool, GlobalAvgPool, MaxPool
from ._simple_layers import (ELU, GELU, Dropout, Flatten, Identity, LeakyReLU, LogSoftmax, ReLU,
                             Sigmoid, Softmax, Softplus, Tanh)

__all__ = [
    "Layer", "layer", "stateful_layer",
    "Dense", "Conv", "ConvTranspose", "MaxPool", "AvgPool", "AdaptiveAvgPool", "GlobalAvgPool",
    "Flatten", "Identity", "Dropout", "BatchNorm", "LayerNorm",
    "ReLU", "LeakyReLU", "ELU", "GELU", "Sigmoid", "Tanh", "Softplus", "Softmax", "LogSoftmax",
    "Serial", "Parallel", "Residual", "Graph", "Node", "Sum", "Concat",
    "BasicBlock", "Bottleneck",
]

"""Pure-function layers and combinators (``import fundl.layers as L``).

Data layout: channels last, ``x: [N, *spatial, C]``. A layer is a
:class:`Layer`: ``out_shape, params = layer.init(key, input_shape)`` then
``y = layer.apply(params, x)``; layers holding batch-norm statistics also take
and return ``state``. See ``fundl/_layer.py`` for the protocol.
"""
from ._basic import (ELU, GELU, AdaptiveAvgPool, AvgPool, Conv, ConvTranspose, Dense, Dropout,
                     Flatten, GlobalAvgPool, Identity, LeakyReLU, LogSoftmax, MaxPool, ReLU,
                     Sigmoid, Softmax, Softplus, Tanh)
from ._blocks import BasicBlock, Bottleneck
from ._combinators import Concat, Graph, Node, Parallel, Residual, Serial, Sum
from ._layer import Layer, layer, stateful_layer
from ._norm import BatchNorm, LayerNorm

__all__ = [
    "Layer", "layer", "stateful_layer",
    "Dense", "Conv", "ConvTranspose", "MaxPool", "AvgPool", "AdaptiveAvgPool", "GlobalAvgPool",
    "Flatten", "Identity", "Dropout", "BatchNorm", "LayerNorm",
    "ReLU", "LeakyReLU", "ELU", "GELU", "Sigmoid", "Tanh", "Softplus", "Softmax", "LogSoftmax",
    "Serial", "Parallel", "Residual", "Graph", "Node", "Sum", "Concat",
    "BasicBlock", "Bottleneck",
]

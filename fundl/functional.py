"""Functional ops with PyTorch semantics in channels-last layout (``import fundl.functional as F``).

Layout, stated once: inputs are ``[N, *spatial, C]`` (NHWC in 2-d); convolution
weights are ``[*kernel, C_in // groups, C_out]``; transposed-convolution weights
``[*kernel, C_in, C_out // groups]``; dense weights ``[in, out]``. Output sizes,
padding, cross-correlation order and loss reductions follow
``torch.nn.functional``, so ``F.conv(x, w)`` equals
``torch.conv2d(x.permute(0, 3, 1, 2), w.permute(3, 2, 0, 1)).permute(0, 2, 3, 1)``.
"""
from ._activations import (dropout, elu, gelu, leaky_relu, linear, log_softmax, relu, sigmoid,
                           softmax, softplus, tanh)
from ._conv import conv, conv_transpose
from ._losses import (binary_cross_entropy_with_logits, cross_entropy, l1_loss, mse_loss,
                      multi_margin_loss, nll_loss, smooth_l1_loss)
from ._pool import adaptive_avg_pool, avg_pool, global_avg_pool, max_pool, pool_output_size
from ._shapes import (ReceptiveField, conv_output_size, conv_transpose_output_size,
                      receptive_field)

__all__ = [
    "conv", "conv_transpose", "max_pool", "avg_pool", "adaptive_avg_pool", "global_avg_pool",
    "linear", "relu", "leaky_relu", "elu", "gelu", "sigmoid", "tanh", "softplus", "softmax",
    "log_softmax", "dropout",
    "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss",
    "binary_cross_entropy_with_logits", "multi_margin_loss",
    "conv_output_size", "conv_transpose_output_size", "pool_output_size", "receptive_field",
    "ReceptiveField",
]

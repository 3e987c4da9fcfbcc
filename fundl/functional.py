"""Functional ops with PyTorch semantics in channels-last layout (``import fundl.functional as F``).

Layout, stated once: inputs are ``[N, *spatial, C]`` (NHWC in 2-d); convolution
weights are ``[*kernel, C_in // groups, C_out]``; transposed-convolution weights
``[*kernel, C_in, C_out // groups]``; dense weights ``[in, out]``. Output sizes,
padding, cross-correlation order and loss reductions follow
``torch.nn.functional``, so ``F.conv(x, w)`` equals
``torch.conv2d(x.permute(0, 3, 1, 2), w.permute(3, 2, 0, 1)).permute(0, 2, 3, 1)``.

Lowering (speed only; results agree up to float summation order). Convolution
and pooling each have two lowerings, picked when an op is traced:

* ``conv``: ``'xla'`` (``lax.conv_general_dilated``) or ``'im2col'`` (one
  gather of the input rows each output position sees into patches
  ``[N * prod(out), prod(kernel) * C_in]``, times ``w`` reshaped to
  ``[prod(kernel) * C_in, C_out]``; any stride, padding, dilation, groups,
  and ``conv_transpose``). ``'auto'`` (default) uses im2col on CPU where it
  was measured to win (ungrouped; 1x1, one input channel, or >= 8 input
  channels with at most 16 MiB of patches) and XLA's convolution otherwise,
  including on GPU/TPU.
* ``pool`` (``max_pool``, ``avg_pool``): ``'reduce_window'`` or ``'reshape'``
  (non-overlapping windows, ``stride >= kernel_size`` and no dilation:
  pad/crop to ``out * stride``, reshape, reduce). ``'auto'`` uses reshape on
  CPU where it applies; overlapping or dilated windows always use
  ``reduce_window``. The max pool's gradient goes to the first maximum of each
  window in row-major order, like ``reduce_window``'s and PyTorch's, so ties
  get identical gradients under both lowerings.

Both fast paths are plain JAX ops or a custom JVP: reverse, forward and
higher-order differentiation and ``vmap`` work under every setting. Force a
lowering globally with ``set_lowering(conv='xla', pool='reduce_window')``
(returns the previous setting) or for a block with
``with lowering(conv='im2col'): ...``; ``get_lowering()`` reads it. Any other
value raises :class:`~fundl.ConfigError`. The setting is read at trace
time, so a jitted function keeps the lowering it was first traced with; and
``'auto'`` reads ``jax.default_backend()`` then. Details: ``fundl/_lowering.py``.
"""
from ._activations import (dropout, elu, gelu, leaky_relu, linear, log_softmax, relu, sigmoid,
                           softmax, softplus, tanh)
from ._conv import conv, conv_transpose
from ._lowering import Lowering, get_lowering, lowering, set_lowering
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
    "ReceptiveField", "Lowering", "get_lowering", "set_lowering", "lowering",
]

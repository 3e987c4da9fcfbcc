"""fundl: functional deep learning on JAX.

Layers are pure functions with named parameter pytrees; data layout is
channels last (``[N, *spatial, C]``); semantics follow PyTorch.
"""
from ._errors import ConfigError, FundlError, ShapeError
from ._layer import Layer
from ._summary import Summary, summary

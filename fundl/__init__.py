"""fundl: functional deep learning on JAX.

Layers are pure functions with named parameter pytrees; data layout is
channels last (``[N, *spatial, C]``); semantics follow PyTorch.

Public surface:
  * ``fundl.functional`` (``F``): ops with PyTorch semantics;
  * ``fundl.layers`` (``L``): layers and combinators;
  * ``fundl.models``: the model zoo;
  * ``fundl.train``: train/eval steps and a small fit loop;
  * ``fundl.summary``: per-layer parameters and multiply-accumulates;
  * ``fundl.data``: local data sets, batching, prefetch, augmentation;
  * ``fundl.experiment``: the resumable runner behind ``experiments/``;
  * ``fundl.distributed``: several processes (hosts) training one model;
  * ``fundl.autodiff``: Jacobians, Hessian-vector products, per-example gradients, gradient checks;
  * ``fundl.surgery``: edit a model by layer path and carry its weights over;
  * ``fundl.initializers``: PyTorch's default initialisers, for ``w_init`` and your own layers;
  * ``fundl.interop``: PyTorch state dicts (torchvision's names and layouts) in and out;
  * ``fundl.viz``: the computation DAG of a function (and of its gradient) as Graphviz DOT;
  * ``fundl.io``: params and state in one checked ``.safetensors`` file (``save``, ``load``);
  * ``fundl.export`` / ``fundl.load_exported``: a trained model as bytes (StableHLO and
    weights) that run without the model's Python code.
"""
from . import (autodiff, data, distributed, experiment, functional, initializers, interop, io,
               layers, models, surgery, train, viz)
from ._errors import (CheckpointError, ConfigError, DataError, DirectoryInUseError, FundlError,
                      NonFiniteError, ShapeError)
from ._export import export, load_exported
from ._layer import Layer
from ._summary import Summary, summary
from .train import count_params

__version__ = "0.1.0"

__all__ = ["autodiff", "viz", "data", "distributed", "experiment", "functional", "layers", "models", "surgery", "initializers", "interop", "train", "summary", "Summary", "Layer",
           "count_params", "FundlError", "ShapeError", "ConfigError", "DataError",
           "NonFiniteError", "CheckpointError", "DirectoryInUseError", "io", "export", "load_exported"]

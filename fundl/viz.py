"""Pictures of computations: the DAG of a function and of its gradient (``import fundl.viz``).

* :func:`graph` -> Graphviz DOT text of ``fn(*args)``'s jaxpr (operator names
  and shapes on nodes; fundl layers, named scopes and ``jit`` / ``custom_jvp``
  calls as nested clusters); ``grad=True`` draws the gradient computation, the
  backward pass in red.
* :func:`trace` -> the same as a :class:`Dag` (nodes, edges, clusters) to inspect
  in code.
* :func:`render` writes SVG/PNG/PDF with Graphviz's ``dot`` (raises
  :class:`RenderError` when it is not installed; no Python dependency).

Example:
  >>> import jax, jax.numpy as jnp, fundl.layers as L
  >>> from fundl import viz
  >>> net = L.Serial(L.Dense(3, name="fc1"), L.ReLU(), L.Dense(1, name="fc2"))
  >>> _, p = net.init(jax.random.key(0), (2, 4))
  >>> dag = viz.trace(lambda p, x: jnp.sum(net.apply(p, x)), p, jnp.ones((2, 4)), grad=True)
  >>> sorted(n.op for n in dag.find(kind="output"))
  ['grad p/fc1/b', 'grad p/fc1/w', 'grad p/fc2/b', 'grad p/fc2/w']
"""
from ._viz import Cluster as Cluster
from ._viz import Dag as Dag
from ._viz import DagNode as DagNode
from ._viz import RenderError as RenderError
from ._viz import graph as graph
from ._viz import render as render
from ._viz import trace as trace

__all__ = ["graph", "trace", "render", "Dag", "DagNode", "Cluster", "RenderError"]

"""Higher-order and per-example automatic differentiation (``import fundl.autodiff as AD``).

Everything works on fundl's named parameter pytrees (``{'fc1': {'w', 'b'}}``)
and inside ``jax.jit``. A loss is ``loss(params, *args) -> scalar`` (extra
``args`` such as the batch or a batch-norm ``state`` are passed through and not
differentiated; ``has_aux=True`` accepts ``(loss, new_state)``). Data layout:
channels last, batches ``[N, ...]``. Call these functions inside ``jax.jit``:
run op by op (eagerly), a Hessian or a Newton step takes seconds of dispatch
and per-operation compilation; compiled, milliseconds.

* Jacobians of a layer: :func:`jacobians` (``dy/dx`` and ``dy/dparams``).
* Second order: :func:`hvp` (forward-over-reverse), :func:`hessian` (matrix
  over a flattened parameter subtree, layout from :func:`param_layout`),
  :func:`newton_step`, :func:`cg_solve`, :func:`hessian_free_step`.
* Per-example gradients and DP-SGD: :func:`per_example_grads`,
  :func:`per_example_norms`, :func:`clip_per_example`, :func:`add_noise`,
  :func:`dp_sgd_grads`.
* Input gradients: :func:`gradient_penalty` (WGAN-GP, double backprop).
* Checking derivatives: :func:`check_grads` (float64 finite differences of
  first and second derivatives; raises :class:`GradientCheckError` with a
  readable report).

Example:
  >>> import jax, jax.numpy as jnp, fundl.layers as L
  >>> import fundl.autodiff as AD
  >>> net = L.Serial(L.Dense(4, name="fc1"), L.Tanh(), L.Dense(1, name="fc2"))
  >>> _, params = net.init(jax.random.key(0), (8, 3))
  >>> x, y = jnp.ones((8, 3)), jnp.zeros((8, 1))
  >>> loss = lambda p, x, y: jnp.mean((net.apply(p, x) - y) ** 2)
  >>> H = jax.jit(lambda p, x, y: AD.hessian(loss, p, x, y, wrt="fc2"))(params, x, y)
  >>> H.shape                                       # fc2/b (1) + fc2/w (4)
  (5, 5)
"""
from ._autodiff import CGResult as CGResult
from ._autodiff import DPGrads as DPGrads
from ._autodiff import Jacobians as Jacobians
from ._autodiff import LayoutEntry as LayoutEntry
from ._autodiff import add_noise as add_noise
from ._autodiff import cg_solve as cg_solve
from ._autodiff import clip_per_example as clip_per_example
from ._autodiff import dp_sgd_grads as dp_sgd_grads
from ._autodiff import gradient_penalty as gradient_penalty
from ._autodiff import hessian as hessian
from ._autodiff import hessian_free_step as hessian_free_step
from ._autodiff import hvp as hvp
from ._autodiff import jacobians as jacobians
from ._autodiff import newton_step as newton_step
from ._autodiff import param_layout as param_layout
from ._autodiff import per_example_grads as per_example_grads
from ._autodiff import per_example_norms as per_example_norms
from ._gradcheck import GradCheck as GradCheck
from ._gradcheck import GradCheckReport as GradCheckReport
from ._gradcheck import GradientCheckError as GradientCheckError
from ._gradcheck import check_grads as check_grads

__all__ = [
    "jacobians", "Jacobians",
    "hvp", "hessian", "param_layout", "LayoutEntry", "newton_step", "cg_solve", "CGResult",
    "hessian_free_step",
    "per_example_grads", "per_example_norms", "clip_per_example", "add_noise", "dp_sgd_grads",
    "DPGrads",
    "gradient_penalty",
    "check_grads", "GradCheckReport", "GradCheck", "GradientCheckError",
]

"""Training: a compiled train step, exact evaluation, a minimal ``fit`` loop.

Data layout: channels last, ``x: [N, *spatial, C]``; a batch is ``(x, y)`` with
``y: [N]`` integer class labels (or any target ``loss_fn`` accepts).

The train step is a factory that returns one pure, ``jax.jit``-compiled function
(no object graph is walked at call time)::

    step = make_train_step(model, optimizer)
    params, state, opt_state, metrics = step(params, state, opt_state, (x, y), key)

``params``, ``state`` and ``opt_state`` are donated: pass the returned trees to
the next call and do not reuse the ones you passed in (copy them first if you
need them, e.g. to keep the best checkpoint). :func:`fit` copies the trees it is
given, so its caller's arrays stay valid.

Optimizers
==========

Any Optax ``GradientTransformation`` works. The setup for the examples:

>>> import jax, jax.numpy as jnp, optax
>>> import fundl.layers as L
>>> from fundl.train import make_train_step, param_labels, set_hyperparams
>>> model = L.Serial(L.Dense(8, name="hidden"), L.ReLU(), L.Dense(3, name="head"))
>>> _, params = model.init(jax.random.key(0), (4, 5))
>>> batch = (jnp.ones((4, 5)), jnp.array([0, 1, 2, 0]))

SGD, with momentum and Nesterov momentum (PyTorch's ``SGD(nesterov=True)``):

>>> opt = optax.sgd(0.1)
>>> opt = optax.sgd(0.1, momentum=0.9)
>>> opt = optax.sgd(0.1, momentum=0.9, nesterov=True)

Adaptive methods:

>>> opt = optax.adam(1e-3)                       # betas (0.9, 0.999), eps 1e-8
>>> opt = optax.adagrad(1e-2)
>>> opt = optax.rmsprop(1e-3, decay=0.9)
>>> opt = optax.adadelta(1.0, rho=0.9)

Weight decay on the weights only (``'w'`` leaves; not biases nor batch-norm
scales), added to the gradient before SGD as in PyTorch's ``weight_decay=``:

>>> decay_mask = lambda p: param_labels(p, {"*/w": True}, default=False)
>>> opt = optax.chain(optax.add_decayed_weights(5e-4, mask=decay_mask),
...                   optax.sgd(0.1, momentum=0.9))
>>> opt = optax.adamw(1e-3, weight_decay=1e-2, mask=decay_mask)   # decoupled (AdamW)

Per-layer-group learning rates: label each parameter from its path (``'head/w'``)
and give each label its own transformation:

>>> labels = param_labels(params, {"head/*": "head", "*": "body"})
>>> labels["head"]["w"], labels["hidden"]["w"]
('head', 'body')
>>> opt = optax.multi_transform({"body": optax.sgd(1e-3), "head": optax.sgd(1e-2)},
...                             lambda p: param_labels(p, {"head/*": "head", "*": "body"}))

Learning-rate schedules (a function of the step count; no recompilation):

>>> lr = optax.cosine_decay_schedule(init_value=0.1, decay_steps=1000)
>>> lr = optax.piecewise_constant_schedule(0.1, {500: 0.1, 750: 0.1})  # x0.1 at 500 and 750
>>> opt = optax.sgd(lr, momentum=0.9)

Changing a hyperparameter by hand without recompiling: ``inject_hyperparams``
keeps it in the optimizer state (an array input of the compiled step) instead of
baking it into the compiled code as a constant:

>>> opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
>>> step = make_train_step(model, opt)
>>> opt_state = opt.init(params)
>>> params, state, opt_state, m = step(params, {}, opt_state, batch, None)
>>> opt_state = set_hyperparams(opt_state, learning_rate=1e-4)   # same dtype: no re-trace
>>> params, state, opt_state, m = step(params, state, opt_state, batch, None)
>>> sorted(m)
['accuracy', 'loss']
"""
from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _argcheck, _datacheck, _freeze, _keys, _loop, _parallel, _precision
from ._freeze import trainable
from . import functional as F
from ._errors import ConfigError, DataError, NonFiniteError, ShapeError
from ._layer import Layer
from ._patterns import matches
from ._parallel import is_classification as _is_classification
from ._parallel import replicate, unreplicate
from ._precision import Policy
from ._parallel import split_batch as _split_batch

__all__ = ["make_train_step", "make_eval_step", "evaluate", "fit", "FitResult",
           "param_labels", "trainable", "set_hyperparams", "count_params", "replicate", "unreplicate", "Policy"]

_REQUIRED = object()


# -- steps --------------------------------------------------------------------

def _check_model(model, where):
    if not isinstance(model, Layer):
        raise ConfigError(f"{where}: model must be a fundl Layer (e.g. L.Serial(...)); "
                          f"got {type(model).__name__}")


def make_train_step(model: Layer, optimizer: optax.GradientTransformation, *,
                    loss_fn: Callable = F.cross_entropy, donate: bool = True,
                    metrics: Mapping[str, Callable] | None = None,
                    parallel: str | None = None, devices=None,
                    sync_batch_stats: bool = True, accumulate: int = 1,
                    precision=None, frozen=None, checks: bool = False,
                    skip_nonfinite: bool = False) -> Callable:
    """Build the compiled training step for ``model`` and ``optimizer``.

    Args:
      model: a fundl :class:`~fundl.layers.Layer` mapping ``x`` to ``logits``.
      optimizer: any Optax ``GradientTransformation``.
      loss_fn: ``loss_fn(logits, y) -> scalar`` averaged over the batch
        (default :func:`fundl.functional.cross_entropy`; use
        ``functools.partial(F.cross_entropy, label_smoothing=0.1)`` to configure).
      donate: donate ``params``, ``state`` and ``opt_state`` to the step, so the
        update is done in place (the arrays passed in are invalid afterwards;
        one array may not appear twice among them, else XLA refuses to run).
      metrics: extra ``{name: fn(logits, y) -> scalar}`` batch metrics, computed
        in the same compiled step.
      parallel: ``None`` (one device); ``'sharded'``: data parallel over
        ``devices`` with ``jax.sharding`` (a 1-d ``Mesh`` with axis ``'data'``;
        the batch is split along it, ``params``/``state``/``opt_state`` are
        replicated, the compiler averages the gradients); ``'pmap'``: the same
        with ``jax.pmap`` and an explicit ``lax.pmean`` of the gradients over
        axis ``'data'``; ``'fsdp'``: as ``'sharded'``, but ``params`` and
        ``opt_state`` are split over the devices (ZeRO-3 / fully sharded data
        parallel): each leaf along its largest dimension divisible by
        ``len(devices)``, leaves of fewer than 1024 elements or without such a
        dimension replicated (``step.param_shardings(params)`` shows which); the
        compiler gathers each where it is used. Per device about ``1/D`` of the
        parameter and optimizer memory; results as ``'sharded'`` (up to float
        rounding: the gradient sums may run in another order). The
        global batch size must be divisible by ``len(devices) * accumulate``
        (ConfigError otherwise).
      devices: the devices for ``parallel`` (default: all, ``jax.devices()``;
        with several processes, every process's devices).
      sync_batch_stats: with ``parallel``, how BatchNorm layers (built without
        their own ``axis_name``) compute batch statistics in training:
        ``True``: over the whole global batch (cross-replica / synchronised BN:
        the result equals the one-device step on the same batch);
        ``False``: over each device's ``N/D`` rows (per-device statistics, as
        without synchronisation; in the ``'sharded'`` and ``'fsdp'`` forms
        computed as "ghost" statistics over ``D`` contiguous groups of rows, so
        all forms agree).
        In both modes the running statistics stay identical on all devices:
        ``running = (1 - momentum) * running + momentum * b`` with ``b`` the
        global batch's statistics (``True``) or the average over devices of the
        per-device mean and unbiased variance (``False``).
      accumulate: gradient accumulation: split every batch into ``accumulate``
        micro-batches (micro-batch ``j`` = rows ``i`` with ``i % accumulate == j``),
        run them in a ``lax.scan`` and apply the mean of their gradients once.
        For models without batch norm or dropout this equals one step on the
        whole batch (up to float rounding). Batch norm normalises each
        micro-batch with its own statistics and updates the running statistics
        once per micro-batch (``accumulate`` momentum updates per step);
        micro-batch ``j`` gets the dropout key ``fold_in(key, j)``. Metrics are
        means over the micro-batches.

      frozen: path patterns (as in :func:`param_labels`; e.g. ``'backbone'``,
        ``('conv1', 'layer1')``) of parameters to keep fixed: they get no
        gradient, no update and no optimizer state, and the layers whose path
        matches run in eval mode (batch-norm running statistics used, not
        updated; dropout off), as ``backbone.eval()`` plus
        ``requires_grad_(False)`` in PyTorch. Frozen params and statistics
        stay bit-identical over any number of steps. The optimizer state is
        then ``step.init_opt_state(params)`` (``optimizer.init`` of
        :func:`trainable` params). A pattern matching no parameter is an error.
      precision: mixed precision for the whole model: ``None``/``'float32'``;
        ``'bfloat16'`` (float32 parameters, updates, output and loss; layers
        compute in bfloat16); ``'float16'`` (the same in float16, with the loss
        scaled by ``2 ** 12`` and steps with non-finite gradients skipped,
        reported as ``metrics['grads_finite']``); or a :class:`Policy`
        ``(param_dtype, compute_dtype, output_dtype, loss_scale)``. Batch-norm
        statistics are float32 in every case.
      checks: compile ``jax.experimental.checkify`` checks into the step (one
        device only: ``parallel=None``): integer labels ``y: [N]`` must lie in
        ``[0, C)`` (``C = logits.shape[-1]``) and the loss must be finite. The
        step then reads the check result after every call (one host sync per
        step: a debugging mode) and raises :class:`~fundl.DataError` naming the
        first bad label and its index, or :class:`~fundl.NonFiniteError` with
        the loss, before returning. The donated input trees are then gone: keep
        a copy if you want to inspect them. Without checks, an out-of-range
        label under ``jit`` is not detected by the step: the loss gathers NaN
        for ``y >= C``, and ``y = -1`` wraps to class ``C - 1`` (see
        :func:`fundl.functional.cross_entropy`); :func:`fit`, :func:`evaluate`
        and :func:`fundl.experiment.run` check the labels on the host first.
      skip_nonfinite: keep ``params``, ``state`` and ``opt_state`` unchanged in
        a step whose loss, gradients or new parameters are not finite (decided
        inside the compiled step, no host sync), and report
        ``metrics['skipped']`` (1.0 for a skipped step, else 0.0), as the
        float16 path does with ``grads_finite``. ``fit(on_nonfinite='skip')``
        uses it.

    Returns:
      ``step(params, state, opt_state, batch, key) -> (params, state, opt_state,
      metrics)`` where ``batch = (x, y)``, ``x: [N, ...]`` host (NumPy) or device
      arrays; ``state`` is ``{}`` for models without batch norm; ``key`` feeds
      dropout and may be ``None`` for models without it (a key of another form, e.g. a
      string, is a ConfigError before the step runs). ``metrics`` is a dict
      of scalar arrays: ``'loss'``, plus ``'accuracy'`` when ``y: [N]`` holds
      integer labels and ``logits: [N, C]``. Reading a metric
      (``float(m['loss'])``) waits for the device: read them every few steps,
      not every step. ``step.init_opt_state(params)`` gives the optimizer
      state the step expects (``optimizer.init(params)`` unless ``frozen``);
      an ``opt_state`` of another structure is a ConfigError when the step is
      traced. ``params`` and ``state`` are checked against the model there too.
      A non-bool ``donate``/``checks``/``skip_nonfinite``, a non-callable
      ``loss_fn`` or ``metrics`` other than a ``{name: function}`` dict are a
      ConfigError here, when the step is built.

      Data-parallel forms:

      * ``'sharded'``: same trees as the one-device step (placed replicated on
        the mesh at the first call; the returned trees are replicated
        ``jax.Array``s, usable as ordinary arrays). ``x`` is the global batch;
        with several processes, each passes its own ``N / process_count`` rows
        (what ``fundl.data.batches(..., process_index=, process_count=)``
        yields) and they are assembled with
        ``jax.make_array_from_process_local_data``. Dropout masks equal the
        one-device step's for the same global batch and key. Metrics are global.
      * ``'pmap'``: ``params``, ``state`` and ``opt_state`` carry a leading
        device axis: pass ``replicate(tree, devices)`` and read results with
        ``unreplicate(tree)``. ``x`` is the global batch (reshaped to
        ``[D, N/D, ...]`` inside). Device ``d`` draws its dropout mask from
        ``fold_in(key, d)``: same distribution as, but other masks than, the
        one-device step. Metrics are averaged over devices (unreplicated scalars).
      * ``'fsdp'``: the batch, keys, dropout masks and metrics as in
        ``'sharded'``; ``state`` (batch norm, small) replicated. ``params`` and
        ``opt_state`` come back split over the devices (``leaf.sharding`` is a
        ``NamedSharding`` on axis ``'data'``): they are ordinary ``jax.Array`` s,
        and ``np.asarray`` / ``fundl.distributed.to_host`` gather them. Trees
        passed in (host, one-device or differently placed arrays) are placed
        at each call (with several processes from each process's identical
        copy, by ``jax.make_array_from_callback``); pass the returned trees back
        to avoid that copy. ``step.param_shardings(tree)`` gives the shardings
        and ``step.place(tree)`` places a tree (e.g. ``step.place(opt.init(p))``),
        ``step.mesh`` is the mesh and ``step.lower(params, state, opt_state,
        batch)`` lowers the step for these trees (``jax.ShapeDtypeStruct`` s
        allowed: e.g. ``.compile().memory_analysis()``).

    Example:
      >>> import jax, jax.numpy as jnp, optax, fundl.layers as L
      >>> model = L.Serial(L.Dense(3))
      >>> _, params = model.init(jax.random.key(0), (2, 4))
      >>> opt = optax.sgd(0.1)
      >>> step = make_train_step(model, opt)
      >>> params, state, opt_state, m = step(params, {}, opt.init(params),
      ...                                    (jnp.ones((2, 4)), jnp.array([0, 2])), None)
      >>> m['loss'].shape
      ()
    """


    _check_model(model, "make_train_step")
    _argcheck.check_optimizer(optimizer, "make_train_step")
    if parallel not in _parallel.PARALLEL:
        raise ConfigError(f"make_train_step: parallel must be one of {list(_parallel.PARALLEL)}; "
                          f"got parallel={parallel!r}")
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise ConfigError(f"make_train_step: accumulate must be an int >= 1; got accumulate={accumulate!r}")
    if not isinstance(sync_batch_stats, bool):
        raise ConfigError(f"make_train_step: sync_batch_stats must be True or False; got "
                          f"sync_batch_stats={sync_batch_stats!r}")
    if parallel is None and devices is not None:
        raise ConfigError("make_train_step: devices= needs parallel='sharded', 'fsdp' or 'pmap'; "
                          f"got parallel=None with devices={devices!r}")
    where = "make_train_step"
    for arg, value in (("checks", checks), ("skip_nonfinite", skip_nonfinite)):
        if not isinstance(value, bool):
            raise ConfigError(f"make_train_step: {arg} must be True or False; got {arg}={value!r}")
    if checks and parallel is not None:
        raise ConfigError("make_train_step: checks=True works on one device only (parallel=None); "
                          f"got parallel={parallel!r}. Debug on one device, then train in parallel")
    metrics = _check_step_fns(loss_fn, metrics, donate, where)
    pats = _freeze.patterns(frozen, where)
    body = functools.partial(
        _parallel.make_body, model, optimizer, loss_fn, metrics, accumulate,
        prec=_precision.policy(precision), frozen=pats, where=where,
        skip_nonfinite=skip_nonfinite, checks=checks)
    if parallel in ("sharded", "fsdp"):
        step = _parallel.make_sharded_step(body(), _parallel.check_devices(devices, where),
                                           accumulate, sync_batch_stats, donate, where,
                                           fsdp=parallel == "fsdp")
    elif parallel == "pmap":
        step = _parallel.make_pmap_step(body(grad_axis=_parallel.DATA_AXIS),
                                        _parallel.check_devices(devices, where), accumulate,
                                        sync_batch_stats, donate, where)
    else:
        step = _one_device_step(body(), accumulate, donate, where, checks)
    step.init_opt_state = lambda params: optimizer.init(_freeze.mask(params, pats))
    return step


def _check_step_fns(loss_fn, metrics, donate, where) -> dict:
    """Check ``loss_fn``, ``metrics`` and ``donate`` when the step is built; return the metrics dict."""
    _argcheck.check_callable(loss_fn, "loss_fn", where, "loss_fn(logits, y) -> scalar")
    _argcheck.check_bool(donate, "donate", where)
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise ConfigError(f"{where}: metrics must be a dict {{name: fn(logits, y) -> scalar}}; "
                          f"got {type(metrics).__name__}"
                          + (": give each function a name, e.g. {'top5': fn}"
                             if isinstance(metrics, (list, tuple)) else ""))
    for name, fn in metrics.items():
        if not isinstance(name, str):
            raise ConfigError(f"{where}: metrics names must be strings; got {name!r}")
        _argcheck.check_callable(fn, f"metrics[{name!r}]", where, "fn(logits, y) -> scalar")
    return dict(metrics)


def _one_device_step(body, accumulate, donate, where, checks=False):
    def step(params, state, opt_state, batch, key):
        x, y = _split_batch(batch, "train step")
        if accumulate > 1:
            _parallel.check_divisible(x.shape[0], 1, accumulate, where)
        return body(params, state, opt_state, x, y, key)

    donate_argnums = (0, 1, 2) if donate else ()
    if not checks:
        jitted = jax.jit(step, donate_argnums=donate_argnums)

        checked_key = [None]  # the last key checked: an epoch passes the same one each step

        def keyed_step(params, state, opt_state, batch, key):
            # The key is normalised on the host: a string would fail in jit's argument handling.
            if key is not checked_key[0]:
                key = checked_key[0] = _keys.as_optional_key(key, "train step")
            return jitted(params, state, opt_state, batch, key)

        keyed_step.lower = jitted.lower  # still inspectable as a jax.jit function
        keyed_step.trace = jitted.trace  # (jit's stages: trace -> lower -> compile)
        # The epoch loop's fast path (fundl._loop.StepKeys): the key fold_in(key, i) derived
        # inside the compiled step, not by one more dispatch per step on the host.
        keyed_step.fold_in_step = jax.jit(
            lambda params, state, opt_state, batch, key, i: step(
                params, state, opt_state, batch, jax.random.fold_in(key, i)),
            donate_argnums=donate_argnums)
        return keyed_step
    from jax.experimental import checkify

    checked = jax.jit(checkify.checkify(step, errors=checkify.user_checks),
                      donate_argnums=donate_argnums)

    def checked_step(params, state, opt_state, batch, key):
        key = _keys.as_optional_key(key, "train step")
        err, out = checked(params, state, opt_state, batch, key)
        msg = err.get()  # a host sync: checks=True is a debugging mode
        if msg is not None:
            kind, _, text = msg.partition(": ")
            raise (DataError if kind == "DataError" else NonFiniteError)(text)
        return out

    return checked_step


def make_eval_step(model: Layer, *, loss_fn: Callable = F.cross_entropy,
                   parallel: str | None = None, devices=None) -> Callable:
    """Build the compiled evaluation step (inference mode, no key, no update).

    The metrics are sums, so that averages over batches of unequal size are
    exact: ``loss = sum(loss_sum) / sum(count)``. There are no user metrics: the
    step reports the loss, the count and the correct predictions only.

    Args:
      model: the model, as for :func:`make_train_step`.
      loss_fn: ``loss_fn(logits, y) -> scalar`` averaged over the batch.
      parallel: ``None`` (one device); ``'sharded'``: data parallel over
        ``devices`` (a 1-d ``Mesh`` with axis ``'data'``, as
        ``make_train_step(parallel='sharded')``): a batch of ``n`` rows is padded
        to a multiple of the device count with copies of its last row, split
        along ``'data'``, and the padded rows' logits are dropped before
        ``loss_fn`` and the accuracy, so the sums equal the one-device step's
        (up to float rounding in the loss) for any ``n`` and any ``loss_fn``.
        ``params``/``state`` that are ``jax.Array`` s with a ``NamedSharding`` on
        an equal mesh (replicated, or sharded along ``'data'`` as FSDP params
        are) are used as they are; anything else (host, one-device arrays) is
        placed replicated. ``'fsdp'``: the same step (it keeps the params'
        sharding; host params are placed replicated). ``'pmap'`` is refused
        (ConfigError): use ``'sharded'``.
        With several processes every process passes the same whole batch
        (each places only its devices' rows) and gets the same global sums.
      devices: the devices for ``parallel`` (default: all, ``jax.devices()``).

    Returns:
      ``eval_step(params, state, batch) -> {'loss_sum', 'count'[, 'correct']}``,
      scalar arrays; ``'correct'`` (number of right argmax predictions) only for
      integer labels ``y: [N]`` with ``logits: [N, C]``. With ``parallel`` they are
      replicated global arrays, and ``eval_step.place((params, state))`` places
      trees once (what the step does at each call), ``eval_step.mesh`` is the mesh.

    Raises:
      ConfigError: a ``parallel`` other than ``None``/``'sharded'``/``'fsdp'``,
        ``devices`` without ``parallel`` or not a list of devices, a bad ``loss_fn``.

    Example:
      >>> import jax, jax.numpy as jnp, fundl.layers as L
      >>> model = L.Serial(L.Dense(3))
      >>> _, params = model.init(jax.random.key(0), (2, 4))
      >>> s = make_eval_step(model, parallel="sharded")(params, {}, (jnp.ones((5, 4)), jnp.zeros(5, int)))
      >>> int(s['count'])
      5
    """
    _check_model(model, "make_eval_step")
    _argcheck.check_callable(loss_fn, "loss_fn", "make_eval_step", "loss_fn(logits, y) -> scalar")
    devices = _parallel.check_eval_parallel(parallel, devices, "make_eval_step")

    def sums(params, state, x, y, n):
        # Rows past n (padding for the devices) are dropped before the loss and the accuracy.
        logits, _ = model.apply_with_state(params, state, x, key=None, train=False)
        logits, y = logits[:n], y[:n]
        # loss_fn is a batch mean; times n gives the batch's sum of per-example losses.
        loss = _argcheck.check_scalar_loss(loss_fn(logits, y), "evaluate")
        out = {"loss_sum": loss * n, "count": jnp.asarray(n, jnp.int32)}
        if _is_classification(logits, y):
            out["correct"] = jnp.sum(jnp.argmax(logits, axis=-1) == y).astype(jnp.int32)
        return out

    if parallel is not None:
        return _parallel.make_sharded_eval(sums, devices)

    def eval_step(params, state, batch):
        x, y = _split_batch(batch, "eval step")
        return sums(params, state, x, y, x.shape[0])

    return jax.jit(eval_step)


@functools.lru_cache(maxsize=16)
def _cached_eval_step(model, loss_fn, parallel=None, devices=None):
    # One compiled eval step per (model, loss, parallel, devices) across evaluate() calls,
    # so that evaluating every epoch does not recompile.
    return make_eval_step(model, loss_fn=loss_fn, parallel=parallel,
                          devices=None if devices is None else list(devices))


def _check_data(data, where, arg):
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ShapeError(f"{where}: {arg} must be a pair of arrays (x, y); got {type(data).__name__}")
    x, y = data
    if len(x) != len(y):
        raise ShapeError(f"{where}: {arg} x and y must have the same number of examples; "
                         f"got {len(x)} and {len(y)}")
    if len(x) == 0:
        raise ShapeError(f"{where}: {arg} is empty")
    return x, y


def _check_batch_size(batch_size, where):
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"{where}: batch_size must be a positive int; got {batch_size!r}")


def evaluate(model: Layer, params, state, data, *, batch_size: int = 512,
             loss_fn: Callable = F.cross_entropy, transform: Callable | None = None,
             allow_nonfinite: bool = False, check_data: bool = True,
             parallel: str | None = None, devices=None) -> dict:
    """Average loss (and accuracy) of ``model`` over a whole dataset, in inference mode.

    Exact over a last batch smaller than ``batch_size`` (sums, not means of means).

    Args:
      model: the model.
      params: its parameters.
      state: its state (``{}`` for models without batch norm).
      data: ``(x, y)`` arrays, ``x: [N, ...]``, ``y: [N]``.
      batch_size: examples per compiled call (a smaller last batch compiles once more).
      loss_fn: ``loss_fn(logits, y) -> scalar`` averaged over the batch.
      transform: host-side ``x_batch -> x_batch`` applied to every batch of ``x``
        before the compiled call (e.g. ``uint8`` images to standardised float32,
        a :func:`fundl.data.standardizer`); ``None`` passes batches as they are.
      allow_nonfinite: accept float ``x`` (or float ``y``) holding NaN/Inf.
      check_data: check ``data`` on the host first (see Raises); :func:`fit` and
        :func:`fundl.experiment.run` check once up front and pass ``False`` per epoch.
      parallel: ``None`` (one device), ``'sharded'`` or ``'fsdp'``: every batch is
        split over ``devices`` by :func:`make_eval_step` (padded to a multiple of
        the device count, the padding masked out), so any ``batch_size`` works and
        the result equals the one-device evaluation (the loss up to float
        rounding). ``params``/``state`` may be host, one-device, replicated or
        ``'data'``-sharded arrays (see :func:`make_eval_step`); they are placed
        once. With several processes every process passes the same whole ``data``
        and gets the same result.
      devices: the devices for ``parallel`` (default: all).

    Returns:
      ``{'loss': float, 'accuracy': float}``; no ``'accuracy'`` unless ``y`` holds
      integer class labels.

    Raises:
      DataError: integer labels ``y: [N]`` outside ``[0, C)`` (``C`` the model's
        number of outputs; the loss's ``ignore_index`` is allowed), float labels
        ``[N]`` for a class-index loss, or NaN/Inf in float ``x``/``y`` (unless
        ``allow_nonfinite``). The message names the first bad value and its index.
      ConfigError: a ``transform`` or ``loss_fn`` that is not callable, a bad ``batch_size``,
        a ``parallel`` other than ``None``/``'sharded'``/``'fsdp'``, ``devices`` without it.
    """
    _check_model(model, "evaluate")
    devices = _parallel.check_eval_parallel(parallel, devices, "evaluate")
    x, y = _check_data(data, "evaluate", "data")
    _check_batch_size(batch_size, "evaluate")
    _argcheck.check_callable(transform, "transform", "evaluate", "transform(x_batch) -> x_batch",
                             optional=True)
    _argcheck.check_callable(loss_fn, "loss_fn", "evaluate", "loss_fn(logits, y) -> scalar")
    transform = transform or (lambda a: a)
    first = transform(x[:batch_size])  # also the input of the label check's model trace
    if check_data:
        _check_values(model, x, y, "evaluate", "data", loss_fn=loss_fn, x_like=first,
                      allow_nonfinite=allow_nonfinite, trees=(params, state))
    eval_step = _cached_eval_step(model, loss_fn, parallel,
                                  None if devices is None else tuple(devices))
    if parallel is not None:
        params, state = eval_step.place((params, state))
    parts = [eval_step(params, state, (first if i == 0 else transform(x[i:i + batch_size]),
                                       y[i:i + batch_size]))
             for i in range(0, len(x), batch_size)]
    parts = jax.device_get(_parallel.first_copy(parts))  # one host sync for the whole pass
    count = sum(int(p["count"]) for p in parts)
    out = {"loss": float(sum(np.float64(p["loss_sum"]) for p in parts) / count)}
    if "correct" in parts[0]:
        out["accuracy"] = sum(int(p["correct"]) for p in parts) / count
    return out


def _check_values(model, x, y, where, arg, *, loss_fn, x_like=None, allow_nonfinite=False,
                  trees=(None, None)):
    """Host-side, once per call: labels in ``[0, C)`` and finite float data (DataError).

    ``x_like``: an input batch as the model sees it (after any transform; default ``x``),
    for the one abstract trace that finds ``C``."""
    _datacheck.check_finite(x, where, f"{arg} x", allow=allow_nonfinite)
    _datacheck.check_finite(y, where, f"{arg} y", allow=allow_nonfinite)
    c = None
    if np.ndim(y) == 1 and np.issubdtype(np.asarray(y).dtype, np.integer):
        x1 = x[:1] if x_like is None else x_like
        c = _datacheck.num_classes(model, (1, *np.shape(x1)[1:]), np.asarray(x1[:1]).dtype,
                                   *trees)
    _datacheck.check_labels(y, c, where, arg, loss_fn=loss_fn)


# -- the loop -----------------------------------------------------------------

class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
      params: the trained parameters.
      state: the final state (batch-norm statistics; ``{}`` if none).
      opt_state: the final optimizer state, to resume training.
      history: one dict per epoch: ``epoch`` (1-based), ``train_loss``,
        ``train_accuracy`` (means over the epoch's examples, in training mode:
        each step's batch mean weighted by its batch size),
        ``test_loss``, ``test_accuracy`` (on ``eval_data``; ``None`` without it)
        and ``seconds`` (wall time of the epoch, evaluation included).
    """

    params: Any
    state: Any
    opt_state: Any
    history: list


def fit(model: Layer, params, state, optimizer: optax.GradientTransformation, train_data, *,
        epochs: int, batch_size: int, key, eval_data=None, opt_state=None, shuffle: bool = True,
        progress: bool = True, callback: Callable | None = None,
        loss_fn: Callable = F.cross_entropy, log_every: int = 20,
        drop_last: bool = False, frozen=None, on_nonfinite: str = "stop",
        allow_nonfinite: bool = False, parallel: str | None = None, devices=None) -> FitResult:
    """Train on in-memory NumPy arrays: a minimal loop around :func:`make_train_step`.

    Every epoch reshuffles the examples (a permutation drawn from ``key``), runs
    the compiled step over the batches (the epoch loop shared with
    :func:`fundl.experiment.run`), then evaluates on ``eval_data`` with
    :func:`evaluate`. Metrics are summed on the device and read once every
    ``log_every`` steps and at the end of the epoch, so the host does not wait
    for the device at every step.

    Args:
      model: the model.
      params: initial parameters (copied: the caller's arrays stay valid).
      state: initial state (``{}`` for models without batch norm).
      optimizer: an Optax ``GradientTransformation``.
      train_data: ``(x, y)`` arrays, ``x: [N, ...]``, ``y: [N]``.
      epochs: number of passes over ``train_data``.
      batch_size: examples per step.
      key: a ``jax.random`` key (or an int seed) for shuffling and dropout.
      eval_data: optional ``(x, y)`` evaluated after every epoch.
      opt_state: optimizer state to resume from (default ``optimizer.init(params)``).
      shuffle: reshuffle every epoch; ``False`` keeps the data order.
      progress: show a progress bar (live loss, examples/s) on stderr and print
        one summary line per epoch on stdout.
      callback: ``callback(record, params, state, opt_state)`` after every epoch,
        ``record`` being the epoch's history dict; returning ``True`` stops
        training. The trees are donated to the next step: copy what you keep.
      loss_fn: ``loss_fn(logits, y) -> scalar`` averaged over the batch.
      log_every: steps between reads of the metrics from the device.
      drop_last: skip the last batch of an epoch when smaller than ``batch_size``
        (otherwise it is used, costing one extra compilation).
      frozen: path patterns of the parts to keep fixed, as in
        :func:`make_train_step` (no update, no optimizer state, eval mode);
        a given ``opt_state`` must then cover the trainable params only.
      on_nonfinite: what to do when training goes non-finite, detected at each
        metrics read (every ``log_every`` steps and at the end of each epoch: a
        non-finite metric, or a NaN/Inf parameter, from one device reduction read
        with the metrics; no per-step sync):
        ``'stop'`` (default): warn (a ``RuntimeWarning`` with the epoch, the
        window of steps, the first non-finite metric and the likely causes),
        stop, and return the trees of the last good read (a copy of the trees is
        kept at every read: one tree copy per ``log_every`` steps and twice the
        memory of params and optimizer state); the last history entry then has
        ``'stopped'``: the message. ``'raise'``: raise
        :class:`~fundl.NonFiniteError` with that message. ``'skip'``: the
        compiled step skips any update whose loss, gradients or new parameters
        are not finite (``make_train_step(skip_nonfinite=True)``) and training
        goes on; each history entry gets ``'skipped'``, the number of steps
        skipped in the epoch (its train metrics average the other steps).
      allow_nonfinite: accept float ``x``/``y`` holding NaN or Inf (refused by default).
      parallel: ``None`` (one device), ``'sharded'`` or ``'fsdp'``: train with
        ``make_train_step(parallel=..., devices=...)`` and evaluate with
        ``evaluate(parallel=..., devices=...)`` (exact for any ``eval_data`` size).
        ``batch_size`` must be divisible by the device count, and so must the
        epoch's last batch unless ``drop_last`` (ConfigError before training).
        The returned trees are then global arrays on the devices (replicated, or
        sharded for ``'fsdp'``). One process only: with several, use
        :func:`fundl.experiment.run` (ConfigError). ``'pmap'`` is refused: use
        ``'sharded'``.
      devices: the devices for ``parallel`` (default: all).

    Returns:
      A :class:`FitResult` ``(params, state, opt_state, history)``.

    Raises:
      DataError: before training, integer labels outside ``[0, C)`` (``C`` the
        model's number of outputs, the loss's ``ignore_index`` allowed), float
        labels ``[N]`` for a class-index loss, or NaN/Inf in float data (unless
        ``allow_nonfinite``), in ``train_data`` or ``eval_data``; the message
        names the first bad value and its index.
      ConfigError: before training, a bad count (``epochs``, ``batch_size``,
        ``log_every``), a non-bool ``shuffle``/``progress``/``drop_last`` (``'no'`` is not
        False), a ``callback`` or ``loss_fn`` that is not callable, a bad ``optimizer``,
        ``key`` or ``on_nonfinite``; a bad ``parallel``/``devices`` or batch sizes
        that do not divide over the devices (see ``parallel``).
      NonFiniteError: with ``on_nonfinite='raise'``, see above.
    """
    from tqdm.auto import tqdm  # imported here: only the epoch lines need it

    _check_model(model, "fit")
    _argcheck.check_optimizer(optimizer, "fit")
    x, y, steps = _check_fit_args(train_data, eval_data, epochs=epochs, batch_size=batch_size,
                                  log_every=log_every, drop_last=drop_last, shuffle=shuffle,
                                  progress=progress, callback=callback, loss_fn=loss_fn)
    _check_fit_values(model, (params, state), train_data, eval_data, loss_fn=loss_fn,
                      on_nonfinite=on_nonfinite, allow_nonfinite=allow_nonfinite)
    devices = _check_fit_parallel(parallel, devices, len(x), batch_size, drop_last)
    key = _as_key(key)
    # Shuffling runs on the host (seeded from the key): a device permutation would
    # cost a compilation and a sync per epoch for nothing the step needs.
    shuffler = np.random.default_rng([*np.asarray(jax.random.key_data(key)).ravel().tolist(), 1])
    # The step donates its inputs: copy once so the caller's arrays survive fit().
    # One compiled call, not one compilation per leaf shape as eager ops would cost.
    step = _fit_step(model, optimizer, loss_fn, frozen, on_nonfinite == "skip", parallel, devices)
    trees = step.copy_and_init(params, state, opt_state)
    history = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        order = shuffler.permutation(len(x)) if shuffle else np.arange(len(x))
        result = _loop.run_epoch(
            step, trees, _slices(x, y, order, batch_size, steps),
            # Step i of epoch e gets fold_in(key, (e - 1) * steps + i): unique over the run.
            key_for_step=_loop.StepKeys(key, (epoch - 1) * steps),
            steps=steps, progress=progress, desc=f"epoch {epoch}/{epochs}", log_every=log_every,
            on_nonfinite=on_nonfinite, where="fit")
        trees = result.trees
        record = _fit_record(epoch, result, model, trees, eval_data, loss_fn,
                             dict(parallel=parallel, devices=devices))
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        if result.stopped:
            warnings.warn(result.stopped, RuntimeWarning, stacklevel=2)
            break
        if progress:
            tqdm.write(_epoch_line(record, epochs))
        if callback is not None and callback(record, *trees) is True:
            break
    return FitResult(*trees, history)


def _check_fit_args(train_data, eval_data, *, epochs, batch_size, log_every, drop_last,
                    shuffle, progress, callback, loss_fn):
    """Validate :func:`fit`'s data, counts, switches and functions; return ``(x, y, steps per
    epoch)``, ``x, y`` NumPy."""
    for arg, value in (("shuffle", shuffle), ("progress", progress), ("drop_last", drop_last)):
        _argcheck.check_bool(value, arg, "fit")
    _argcheck.check_callable(callback, "callback", "fit",
                             "callback(record, params, state, opt_state)", optional=True)
    _argcheck.check_callable(loss_fn, "loss_fn", "fit", "loss_fn(logits, y) -> scalar")
    x, y = (np.asarray(a) for a in _check_data(train_data, "fit", "train_data"))
    if eval_data is not None:
        _check_data(eval_data, "fit", "eval_data")
    _check_batch_size(batch_size, "fit")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ConfigError(f"fit: epochs must be a non-negative int; got {epochs!r}")
    if not isinstance(log_every, int) or log_every < 1:
        raise ConfigError(f"fit: log_every must be a positive int; got {log_every!r}")
    n = len(x)
    steps = n // batch_size if drop_last else math.ceil(n / batch_size)
    if steps == 0:
        raise ConfigError(f"fit: drop_last=True with batch_size={batch_size} > {n} examples "
                          "leaves no batch to train on")
    return x, y, steps


_ON_NONFINITE = ("stop", "raise", "skip")


def _check_fit_values(model, trees, train_data, eval_data, *, loss_fn, on_nonfinite,
                      allow_nonfinite):
    """:func:`fit`'s host-side data checks (labels, NaN/Inf) and its ``on_nonfinite``."""
    if on_nonfinite not in _ON_NONFINITE:
        raise ConfigError(f"fit: on_nonfinite must be one of {list(_ON_NONFINITE)}; "
                          f"got on_nonfinite={on_nonfinite!r}")
    if not isinstance(allow_nonfinite, bool):
        raise ConfigError(f"fit: allow_nonfinite must be True or False; got {allow_nonfinite!r}")
    for arg, data in (("train_data", train_data), ("eval_data", eval_data)):
        if data is not None:
            _check_values(model, data[0], data[1], "fit", arg, loss_fn=loss_fn,
                          allow_nonfinite=allow_nonfinite, trees=trees)


def _slices(x, y, order, batch_size, steps):
    """The epoch's ``steps`` host batches ``(x[idx], y[idx])``, ``idx`` consecutive runs of ``order``."""
    for i in range(steps):
        idx = order[i * batch_size:(i + 1) * batch_size]
        yield x[idx], y[idx]


def _check_fit_parallel(parallel, devices, n, batch_size, drop_last):
    """:func:`fit`'s ``parallel``/``devices``: the devices (``None`` for one device); every
    batch of the epoch must divide over them."""
    devices = _parallel.check_eval_parallel(parallel, devices, "fit")
    if devices is None:
        return None
    if jax.process_count() > 1:
        raise ConfigError(f"fit: parallel={parallel!r} runs in one process; got "
                          f"{jax.process_count()} processes. Use fundl.experiment.run, or "
                          "make_train_step(parallel=...) with fundl.distributed.process_batches")
    d, last = len(devices), n % batch_size
    if batch_size % d or (last % d and not drop_last):
        raise ConfigError(
            f"fit: with parallel={parallel!r}, every batch must divide over the {d} devices; "
            f"got batch_size={batch_size} and a last batch of {last or batch_size} of the {n} "
            f"examples. Use a batch_size divisible by {d}, and drop_last=True unless the "
            f"examples divide into such batches (evaluation needs neither)")
    return devices


def _fit_record(epoch, result, model, trees, eval_data, loss_fn, parallel) -> dict:
    """One :attr:`FitResult.history` entry (without ``seconds``): train means, then evaluation
    (of the kept trees; ``parallel``: evaluate's ``parallel``/``devices``), plus ``'skipped'`` /
    ``'stopped'`` when the epoch had them."""
    train_metrics = result.metrics
    record = {"epoch": epoch, "train_loss": train_metrics["loss"],
              "train_accuracy": train_metrics.get("accuracy"),
              "test_loss": None, "test_accuracy": None}
    if "skipped" in train_metrics:
        record["skipped"] = int(train_metrics["skipped"])
    if result.stopped:
        record["stopped"] = result.stopped
    if eval_data is not None:
        params, state, _ = trees
        ev = evaluate(model, params, state, eval_data, loss_fn=loss_fn, check_data=False,
                      **parallel)
        record["test_loss"], record["test_accuracy"] = ev["loss"], ev.get("accuracy")
    return record


def _as_key(key):
    """A typed ``jax.random`` key from a key, a legacy ``uint32[2]`` key or an int seed."""
    return _keys.as_key(key, "fit")


def _fit_step(model, optimizer, loss_fn, frozen, skip_nonfinite, parallel, devices):
    """:func:`fit`'s train step, with ``step.copy_and_init(params, state, opt_state)``: one
    compiled copy of the trees (``opt_state`` ``None``: initialised). Built once per
    arguments (a repeated ``fit`` with the same model and optimizer objects compiles nothing
    new); unhashable arguments (e.g. ``frozen`` as a list) build a new step."""
    args = (model, optimizer, loss_fn, frozen, skip_nonfinite, parallel,
            None if devices is None else tuple(devices))
    try:
        return _cached_fit_step(*args)
    except TypeError:  # unhashable: no cache
        return _cached_fit_step.__wrapped__(*args)


@functools.lru_cache(maxsize=8)
def _cached_fit_step(model, optimizer, loss_fn, frozen, skip_nonfinite, parallel, devices):
    step = make_train_step(model, optimizer, loss_fn=loss_fn, frozen=frozen,
                           skip_nonfinite=skip_nonfinite, parallel=parallel,
                           devices=None if devices is None else list(devices))
    step.copy_and_init = jax.jit(functools.partial(_copy_and_init, step.init_opt_state))
    return step


def _copy_and_init(init_opt_state, params, state, opt_state):
    if opt_state is None:
        opt_state = init_opt_state(params)
    return jax.tree_util.tree_map(jnp.copy, (params, state, opt_state))


def _epoch_line(r, epochs) -> str:
    parts = [f"epoch {r['epoch']:>{len(str(epochs))}}/{epochs}", f"train_loss={r['train_loss']:.4f}"]
    if r["train_accuracy"] is not None:
        parts.append(f"train_acc={r['train_accuracy']:.4f}")
    if r["test_loss"] is not None:
        parts.append(f"test_loss={r['test_loss']:.4f}")
    if r["test_accuracy"] is not None:
        parts.append(f"test_acc={r['test_accuracy']:.4f}")
    parts.append(f"{r['seconds']:.2f}s")
    return "  ".join(parts)


# -- parameter trees and optimizer state ------------------------------------------

def _path_str(path) -> str:
    out = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            out.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            out.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            out.append(k.name)
        else:
            out.append(str(k))
    return "/".join(out)


def param_labels(params, rules: Mapping[str, Any] | Callable[[str], Any], *, default=_REQUIRED):
    """A tree like ``params`` holding one label per leaf, chosen from the leaf's path.

    Paths join the dict keys with ``/``: ``'conv1/w'``, ``'block/body/bn1/scale'``.
    For optax masks (``add_decayed_weights(mask=...)``) use boolean labels; for
    ``optax.multi_transform`` use strings.

    Args:
      params: a parameter pytree (nested dicts).
      rules: ``{pattern: label}`` tried in order, the first match wins. A pattern
        matches a path if it is an ``fnmatch`` glob of the whole path
        (``'*/w'``, ``'head/*'``; ``*`` also matches ``/``) or a prefix made of
        whole path components (``'conv1'`` matches ``'conv1/w'``, not
        ``'conv10/w'``). Or a function ``path -> label``.
      default: the label of paths no rule matches; if not given, such a path is
        an error.

    Returns:
      A pytree with the structure of ``params`` and labels as leaves.

    Example:
      >>> import jax.numpy as jnp
      >>> p = {'conv1': {'w': jnp.ones(2), 'b': jnp.ones(1)}, 'head': {'w': jnp.ones(3)}}
      >>> param_labels(p, {'head': 'head', '*/b': 'bias'}, default='body')
      {'conv1': {'b': 'bias', 'w': 'body'}, 'head': {'w': 'head'}}
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    if callable(rules):
        labels = [rules(_path_str(path)) for path, _ in leaves]
        return jax.tree_util.tree_unflatten(treedef, labels)
    if not isinstance(rules, Mapping):
        raise ConfigError(f"param_labels: rules must be a dict {{pattern: label}} or a function "
                          f"path -> label; got {type(rules).__name__}")
    labels = []
    for path, _ in leaves:
        s = _path_str(path)
        for pattern, lab in rules.items():
            if matches(s, pattern):
                labels.append(lab)
                break
        else:
            if default is _REQUIRED:
                raise ConfigError(f"param_labels: no rule matches parameter '{s}'; rules are "
                                  f"{list(rules)}; add a rule (e.g. '*') or pass default=...")
            labels.append(default)
    return jax.tree_util.tree_unflatten(treedef, labels)


def _is_inject_state(s) -> bool:
    return isinstance(s, tuple) and hasattr(s, "_fields") and "hyperparams" in s._fields


def set_hyperparams(opt_state, **values):
    """Return ``opt_state`` with hyperparameters of ``optax.inject_hyperparams`` set.

    The values are cast to the dtype of the stored ones, so the compiled step
    sees the same input types and is not traced again. Every
    ``inject_hyperparams`` state inside ``opt_state`` (e.g. one per group of
    ``multi_transform``) that has the hyperparameter is updated.

    Args:
      opt_state: the optimizer state.
      **values: e.g. ``learning_rate=1e-4``.

    Returns:
      The new optimizer state (the old one is not modified).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
      >>> s = set_hyperparams(opt.init({'w': jnp.ones(2)}), learning_rate=0.01)
      >>> s.hyperparams['learning_rate']
      Array(0.01, dtype=float32)
    """
    found: set = set()

    def fix(s):
        if not _is_inject_state(s):
            return s
        hp = dict(s.hyperparams)
        scheduled = getattr(s, "hyperparams_states", None) or {}
        for name, v in values.items():
            if name in hp:
                if name in scheduled:
                    raise ConfigError(f"set_hyperparams: {name!r} follows a schedule, which would "
                                      "overwrite the value at the next step; inject a constant instead")
                old = jnp.asarray(hp[name])
                new = jnp.asarray(v, dtype=old.dtype)
                if new.shape != old.shape:
                    raise ShapeError(f"set_hyperparams: {name} must have shape {old.shape}; "
                                     f"got {new.shape}")
                hp[name] = new
                found.add(name)
        return s._replace(hyperparams=hp)

    out = jax.tree_util.tree_map(fix, opt_state, is_leaf=_is_inject_state)
    missing = set(values) - found
    if missing:
        raise ConfigError(f"set_hyperparams: no optax.inject_hyperparams state holds "
                          f"{sorted(missing)}; build the optimizer with "
                          "optax.inject_hyperparams(optax.adam)(learning_rate=...)")
    return out


def count_params(params) -> int:
    """Total number of scalars in a parameter pytree (arrays, or Python numbers as scalars).

    Raises:
      ConfigError: for a leaf that is not an array (e.g. a string), naming its path.

    Example:
      >>> import jax.numpy as jnp
      >>> count_params({'dense': {'w': jnp.ones((3, 4)), 'b': jnp.ones(4)}})
      16
    """
    total = 0
    for path, p in jax.tree_util.tree_leaves_with_path(params):
        if not (hasattr(p, "shape") or isinstance(p, (int, float, complex))) or isinstance(p, str):
            raise ConfigError(f"count_params: params must be a pytree of arrays; the leaf at "
                              f"{jax.tree_util.keystr(path) or '(root)'} is "
                              f"{type(p).__name__} {p!r}"[:200])
        total += math.prod(np.shape(p))
    return total

"""Data-parallel train steps: one body, four ways to run it (one device, sharded, fsdp, pmap).

Semantics shared by every form (see :func:`fundl.train.make_train_step`):

* the batch ``(x, y)`` is the *global* batch, ``x: [N, ...]``; with ``D``
  devices device ``d`` holds rows ``[d * N/D, (d + 1) * N/D)``;
* gradients and metrics are means over the global batch;
* ``accumulate=k`` splits the batch into ``k`` micro-batches, micro-batch ``j``
  being the rows ``i`` with ``i % k == j`` (so each device contributes ``N/(D k)``
  rows of its own shard to every micro-batch), runs them one after another in a
  ``lax.scan`` (batch-norm state threaded through), and applies the mean of
  their gradients once; micro-batch ``j`` gets the dropout key ``fold_in(key, j)``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from . import _datacheck, _freeze
from ._argcheck import check_scalar_loss
from ._precision import Policy, all_finite, cast_floating
from ._errors import ConfigError, ShapeError
from ._keys import as_optional_key
from ._norm import STEP_AXIS, batch_stats_mode

DATA_AXIS = STEP_AXIS  # one name, defined beside BatchNorm (which resolves its own axis_name against it)
PARALLEL = (None, "sharded", "fsdp", "pmap")
# 'fsdp': leaves with fewer elements than this stay replicated (a bias, a batch-norm
# scale, Adam's step count): 4 KiB in float32, less than splitting and gathering them costs.
FSDP_MIN_SIZE = 2 ** 10


def split_batch(batch, where):
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ShapeError(f"{where}: batch must be a pair (x, y); got "
                         f"{type(batch).__name__} of length {len(batch) if hasattr(batch, '__len__') else '?'}")
    return batch


def is_classification(logits, y) -> bool:
    """Static test: integer labels ``[N]`` against logits ``[N, C]``."""
    return (logits.ndim == 2 and y.ndim == 1 and jnp.issubdtype(y.dtype, jnp.integer)
            and logits.shape[0] == y.shape[0])


def _micro(a, k):
    """``[N, ...] -> [k, N/k, ...]``; micro-batch ``j`` holds rows ``i % k == j``."""
    return jnp.swapaxes(jnp.reshape(a, (a.shape[0] // k, k, *a.shape[1:])), 0, 1)


def make_body(model, optimizer, loss_fn, extra, accumulate, grad_axis=None, prec=None,
              frozen=(), where="make_train_step", skip_nonfinite=False, checks=False):
    """``body(params, state, opt_state, x, y, key) -> (params, state, opt_state, metrics)``.

    ``frozen``: path patterns of parameters that get no gradient, no update and
    no optimizer state, and of layers that run in eval mode (see :mod:`fundl._freeze`).
    ``skip_nonfinite``: keep the old trees when the loss, a gradient or a new
    parameter is not finite, and report ``metrics['skipped']`` (1.0 for a skipped
    step; its other metrics are then those of the skipped step).
    ``checks``: add ``checkify.check`` s of the labels' range and of the loss's
    finiteness (the caller wraps the step with ``checkify.checkify``, as
    ``fundl.train.make_train_step(checks=True)`` does).
    """
    prec = prec or Policy()
    grads_and_metrics = _grads_and_metrics(model, loss_fn, extra, prec,
                                           _freeze.train_modes(frozen), checks=checks)

    def body(params, state, opt_state, x, y, key):
        state_in = state
        if prec != Policy():
            params = cast_floating(params, prec.param_dtype)
        if frozen:
            _freeze.check_matches(params, frozen, where)
        tp = _freeze.mask(params, frozen) if frozen else params
        _freeze.check_opt_state(optimizer, opt_state, tp, frozen, where)
        if accumulate == 1:
            grads, state, metrics = grads_and_metrics(tp, params, state, x, y, key)
        else:
            grads, state, metrics = _accumulated(grads_and_metrics, accumulate, tp, params,
                                                 state, x, y, key)
        if grad_axis is not None:
            grads = jax.lax.pmean(grads, grad_axis)
            metrics = jax.lax.pmean(metrics, grad_axis)
        updates, new_opt_state = optimizer.update(grads, opt_state, tp)
        new_params = _freeze.merge(optax.apply_updates(tp, updates), params)
        if prec.loss_scale != 1.0:  # skip a step whose (float16) gradients overflowed
            finite = all_finite(grads)
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
            new_params, new_opt_state = keep(new_params, params), keep(new_opt_state, opt_state)
            state = keep(state, state_in)
            metrics = {**metrics, "grads_finite": finite.astype(jnp.float32)}
        if skip_nonfinite:
            new_params, state, new_opt_state, metrics = _skip_nonfinite(
                (params, state_in, opt_state), (new_params, state, new_opt_state), grads, metrics)
        return new_params, state, new_opt_state, metrics

    return body


def _skip_nonfinite(old, new, grads, metrics):
    """``new`` trees if the loss, the gradients and the new params are finite, else ``old``;
    the metrics gain ``'skipped'`` (float32 0/1)."""
    ok = (jnp.isfinite(metrics["loss"]) & _datacheck.all_finite(grads)
          & _datacheck.all_finite(new[0]))
    out = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    return (*out, {**metrics, "skipped": 1.0 - ok.astype(jnp.float32)})


def _check_labels_in_step(logits, y, loss_fn):
    """``checkify`` check inside the compiled step: integer labels in ``[0, C)`` (or the
    loss's ``ignore_index``); the index is the row within the (micro-)batch."""
    from jax.experimental import checkify

    if not is_classification(logits, y):
        return
    c = logits.shape[-1]
    bad = (y < 0) | (y >= c)
    ignore = _datacheck.index_loss(loss_fn)[1]
    if ignore is not None:
        bad &= y != ignore
    i = jnp.argmax(bad)
    checkify.check(~jnp.any(bad), "DataError: train step: batch label {v} at index {i} is "
                   f"outside the valid range [0, {c}) for a model with {c} outputs; "
                   "{n} labels of the batch are out of range. Labels must be 0..C-1: relabel "
                   "with np.unique(y, return_inverse=True)[1], or drop unlabelled (-1) rows",
                   v=y[i], i=i, n=jnp.sum(bad))


def _check_loss_in_step(loss):
    """``checkify`` check inside the compiled step: a finite loss."""
    from jax.experimental import checkify

    checkify.check(jnp.isfinite(loss), "NonFiniteError: train step: the loss is {loss}. Likely "
                   "causes: a learning rate too high or diverging (try one 10x smaller), "
                   "NaN/Inf in the data, float16 overflow", loss=loss)


def _grads_and_metrics(model, loss_fn, extra, prec, train, checks=False):
    """``f(trainable, params, state, x, y, key) -> (grads, new_state, metrics)``; gradients
    with respect to the trainable leaves only (frozen ones are ``None`` in ``trainable``)."""
    mixed = prec != Policy()
    scaled = prec.loss_scale != 1.0

    def grads_and_metrics(trainable, params, state, x, y, key):
        def objective(t):
            p = _freeze.merge(t, params)
            if mixed:  # every layer computes in compute_dtype; the loss sees output_dtype
                p, xc = cast_floating(p, prec.compute_dtype), cast_floating(x, prec.compute_dtype)
            else:
                xc = x
            logits, new_state = model.apply_with_state(p, state, xc, key=key, train=train)
            logits = logits.astype(prec.output_dtype) if mixed else logits
            if checks:  # before the loss: a bad label must not be reported as a NaN loss
                _check_labels_in_step(logits, y, loss_fn)
            loss = check_scalar_loss(loss_fn(logits, y), "make_train_step")
            if checks:
                _check_loss_in_step(loss)
            return (loss * prec.loss_scale if scaled else loss), (loss, logits, new_state)

        (_, (loss, logits, new_state)), grads = jax.value_and_grad(objective, has_aux=True)(
            trainable)
        if scaled:
            grads = jax.tree.map(lambda g: g / prec.loss_scale, grads)
        out = {"loss": loss}
        if is_classification(logits, y):
            out["accuracy"] = jnp.mean(jnp.argmax(logits, axis=-1) == y)
        for name, fn in extra.items():
            out[name] = fn(logits, y)
        return grads, new_state, out

    return grads_and_metrics


def _accumulated(grads_and_metrics, k, trainable, params, state, x, y, key):
    """The mean gradient over ``k`` micro-batches (rows ``i % k == j``) in a ``lax.scan``."""
    def micro_step(carry, inp):
        gsum, st = carry
        xj, yj, j = inp
        kj = None if key is None else jax.random.fold_in(key, j)
        g, st, m = grads_and_metrics(trainable, params, st, xj, yj, kj)
        return (jax.tree.map(jnp.add, gsum, g), st), m

    zeros = jax.tree.map(jnp.zeros_like, trainable)
    (gsum, state), ms = jax.lax.scan(micro_step, (zeros, state),
                                     (_micro(x, k), _micro(y, k), jnp.arange(k)))
    grads = jax.tree.map(lambda g: g / k, gsum)
    return grads, state, jax.tree.map(lambda m: jnp.mean(m, axis=0), ms)


def check_devices(devices, where):
    if devices is None:
        return list(jax.devices())
    devices = list(devices)
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise ConfigError(f"{where}: devices must be a non-empty list of jax.Device "
                          f"(e.g. jax.devices()); got {devices!r}")
    return devices


def check_divisible(n_global, devices, accumulate, where):
    need = devices * accumulate
    if n_global % need:
        raise ConfigError(
            f"{where}: the global batch size must be divisible by the device count ({devices})"
            f" times accumulate ({accumulate}) = {need}; got batch size {n_global}. Use a "
            f"multiple of {need}, e.g. {max(need, n_global // need * need)}")


def _key_parts(key):
    """Split a (typed or legacy) key into ``(uint32 data, impl)`` for placement."""
    if key is None:
        return None, None
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key), jax.random.key_impl(key)
    return key, None


def _global(a, sharding):
    """``a`` (host, one-device or global array) as a global array with ``sharding``; with
    several processes a host value must be the same on all of them."""
    if isinstance(a, jax.Array) and a.sharding == sharding:
        return a
    if jax.process_count() == 1 or (isinstance(a, jax.Array) and not a.is_fully_addressable):
        return jax.device_put(a, sharding)
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def fsdp_spec(shape, n_dev: int) -> P:
    """The 'fsdp' ``PartitionSpec`` of a leaf of ``shape`` over ``n_dev`` devices.

    The leaf is split along its largest dimension divisible by ``n_dev`` (the first
    such on a tie); it is replicated (``P()``) when it has fewer than
    ``FSDP_MIN_SIZE`` elements or no dimension divisible by ``n_dev``.
    """
    shape = tuple(shape)
    dims = [i for i, d in enumerate(shape) if d % n_dev == 0]
    if n_dev == 1 or int(np.prod(shape)) < FSDP_MIN_SIZE or not dims:
        return P()
    axis = max(dims, key=lambda i: (shape[i], -i))
    return P(*([None] * axis), DATA_AXIS)


def fsdp_shardings(tree, mesh: Mesh):
    """ZeRO-3 / FSDP placement of ``tree`` on ``mesh``: a ``NamedSharding`` per leaf.

    Args:
      tree: a pytree of arrays or ``jax.ShapeDtypeStruct`` s (params, optimizer state).
      mesh: a ``Mesh`` with axis ``'data'`` (e.g. ``step.mesh`` of a
        ``make_train_step(..., parallel='fsdp')`` step), of ``D`` devices.

    Returns:
      A tree of the same structure (``None`` leaves stay ``None``): each leaf split
      along ``'data'`` on its largest dimension divisible by ``D`` (each device holds
      ``1/D`` of it), or replicated when it has fewer than ``FSDP_MIN_SIZE = 1024``
      elements or no such dimension.

    Example:
      >>> import jax, numpy as np
      >>> from jax.sharding import Mesh
      >>> mesh = Mesh(np.array(jax.devices()[:1]), ('data',))
      >>> sh = fsdp_shardings({'w': np.zeros((64, 32)), 'b': np.zeros(32)}, mesh)
      >>> sh['w'].mesh.axis_names, sh['b'].is_fully_replicated
      (('data',), True)
      >>> fsdp_spec((3, 3, 64, 128), 8) == P(None, None, None, 'data')  # on 8 devices
      True
    """
    n_dev = mesh.shape[DATA_AXIS]
    return jax.tree.map(lambda a: NamedSharding(mesh, fsdp_spec(np.shape(a), n_dev)), tree)


def _mesh_fn(body, sync, n_dev):
    """The global-view function: key rebuilt from its data, batch-norm groups set."""
    def fn(params, state, opt_state, batch, key_data, impl):
        key = None if key_data is None else (
            key_data if impl is None else jax.random.wrap_key_data(key_data, impl=impl))
        x, y = batch
        with batch_stats_mode(groups=1 if sync else n_dev):
            return body(params, state, opt_state, x, y, key)
    return fn


def _global_batch(batch, data, n_dev, accumulate, where):
    """``(x, y)`` as global arrays split along ``'data'`` (each process passes its rows)."""
    x, y = split_batch(batch, "train step")
    n_local = np.shape(x)[0]
    if np.shape(y)[0] != n_local:
        raise ShapeError(f"train step: x and y must have the same number of rows; got "
                         f"{n_local} and {np.shape(y)[0]}")
    n_global = n_local if isinstance(x, jax.Array) and not x.is_fully_addressable \
        else n_local * jax.process_count()
    check_divisible(n_global, n_dev, accumulate, where)
    if jax.process_count() == 1:
        return jax.device_put((x, y), data)
    return tuple(a if isinstance(a, jax.Array) and a.sharding == data
                 else jax.make_array_from_process_local_data(data, np.asarray(a)) for a in (x, y))


def make_sharded_step(body, devices, accumulate, sync, donate, where, fsdp=False):
    """The global-view step: ``jit`` over a 1-d ``Mesh`` with axis ``'data'``.

    ``fsdp``: ``params`` and ``opt_state`` placed by :func:`fsdp_shardings` (in and
    out) instead of replicated; one ``jit`` per structure and shapes of these trees.
    """
    mesh = Mesh(np.array(devices), (DATA_AXIS,))
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))
    fn, cache = _mesh_fn(body, sync, len(devices)), {}
    tree_shardings = (lambda t: fsdp_shardings(t, mesh)) if fsdp else (lambda t: repl)

    def jitted_for(params, opt_state):  # shardings depend on the trees' structure and shapes
        sig = (jax.tree.structure((params, opt_state)),
               tuple(np.shape(a) for a in jax.tree.leaves((params, opt_state))))
        if sig not in cache:
            ps, os_ = tree_shardings(params), tree_shardings(opt_state)
            cache[sig] = (jax.jit(fn, static_argnums=(5,), in_shardings=(ps, repl, os_, data, repl),
                                  out_shardings=(ps, repl, os_, repl),
                                  donate_argnums=(0, 1, 2) if donate else ()), ps, os_)
        return cache[sig]

    def place(tree, shardings):
        if isinstance(shardings, NamedSharding):
            return jax.tree.map(lambda a: _global(a, shardings), tree)
        return jax.tree.map(_global, tree, shardings)

    def step(params, state, opt_state, batch, key):
        key = as_optional_key(key, "train step")
        batch = _global_batch(batch, data, len(devices), accumulate, where)
        jitted, ps, os_ = jitted_for(params, opt_state)
        params, opt_state = place(params, ps), place(opt_state, os_)
        state = jax.tree.map(lambda a: _global(a, repl), state)
        key_data, impl = _key_parts(key)
        if key_data is not None:
            key_data = _global(key_data, repl)
        return jitted(params, state, opt_state, batch, key_data, impl)

    def lower(params, state, opt_state, batch, key=None):
        """``jit.lower`` on shapes (``jax.ShapeDtypeStruct`` s allowed; nothing placed)."""
        key_data, impl = _key_parts(as_optional_key(key, "train step"))
        return jitted_for(params, opt_state)[0].lower(params, state, opt_state, tuple(batch),
                                                      key_data, impl)

    step.mesh, step.replicated, step.batch_sharding, step.lower = mesh, repl, data, lower
    step.param_shardings = lambda tree: fsdp_shardings(tree, mesh) if fsdp \
        else jax.tree.map(lambda _: repl, tree)
    step.place = lambda tree: place(tree, step.param_shardings(tree))
    return step


def make_pmap_step(body, devices, accumulate, sync, donate, where):
    """The ``jax.pmap`` step over axis ``'data'``: replicated trees in and out."""
    n_dev = len(devices)

    def fn(params, state, opt_state, x, y, key_data, impl):
        key = None
        if key_data is not None:  # a different dropout mask on every device
            key = key_data if impl is None else jax.random.wrap_key_data(key_data, impl=impl)
            key = jax.random.fold_in(key, jax.lax.axis_index(DATA_AXIS))
        with batch_stats_mode(axis_name=DATA_AXIS, sync=sync):
            return body(params, state, opt_state, x, y, key)

    # Every argument mapped over axis 0 (the key broadcast by hand): in_axes=None
    # next to empty trees ({} state) is mis-aligned by this JAX's pmap.
    pmapped = jax.pmap(fn, axis_name=DATA_AXIS, devices=devices, static_broadcasted_argnums=(6,),
                       donate_argnums=(0, 1, 2) if donate else ())

    def step(params, state, opt_state, batch, key):
        key = as_optional_key(key, "train step")
        x, y = split_batch(batch, "train step")
        n = np.shape(x)[0]
        if np.shape(y)[0] != n:
            raise ShapeError(f"train step: x and y must have the same number of rows; got "
                             f"{n} and {np.shape(y)[0]}")
        check_divisible(n, n_dev, accumulate, where)
        lead = {(np.shape(a) or (None,))[0] for a in jax.tree.leaves((params, state, opt_state))}
        if lead - {n_dev}:
            raise ShapeError(f"{where}: the pmap step takes replicated trees (a leading axis of "
                             f"{n_dev} devices on every leaf); got leading sizes {sorted(lead, key=str)}. "
                             "Use fundl.train.replicate(tree, devices) first and "
                             "fundl.train.unreplicate(tree) to read the result")
        shard = lambda a: np.reshape(a, (n_dev, n // n_dev, *np.shape(a)[1:])) \
            if isinstance(a, np.ndarray) else jnp.reshape(a, (n_dev, n // n_dev, *a.shape[1:]))
        key_data, impl = _key_parts(key)
        if key_data is not None:
            key_data = jnp.broadcast_to(key_data[None], (n_dev, *key_data.shape))
        params, state, opt_state, m = pmapped(params, state, opt_state, shard(x), shard(y),
                                              key_data, impl)
        return params, state, opt_state, jax.tree.map(lambda a: a[0], m)

    step.devices = devices
    return step


def replicate(tree, devices=None):
    """Copy every leaf of ``tree`` onto each device: ``[...] -> [D, ...]`` for the pmap step.

    Args:
      tree: a pytree of arrays (params, state, optimizer state).
      devices: the devices (default ``jax.devices()``), as given to the step.

    Returns:
      The tree with a leading device axis of size ``D = len(devices)`` on every
      leaf, laid out one slice per device.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> r = replicate({'w': jnp.ones(3)}, jax.devices()[:1])
      >>> r['w'].shape
      (1, 3)
    """
    devices = check_devices(devices, "replicate")
    sharding = NamedSharding(Mesh(np.array(devices), (DATA_AXIS,)), P(DATA_AXIS))
    return jax.tree.map(
        lambda a: jax.device_put(jnp.broadcast_to(jnp.asarray(a)[None], (len(devices), *np.shape(a))),
                                 sharding), tree)


def unreplicate(tree):
    """The first device's copy of a replicated tree: ``[D, ...] -> [...]``.

    Raises:
      ShapeError: when the leaves do not share one leading (device) axis: a 0-d leaf, or
        leading sizes that differ (e.g. a plain ``{'w': [4, 3], 'b': [3]}``, whose ``[0]``
        would silently drop a row of ``w`` and turn ``b`` into a scalar). A plain tree whose
        leaves all happen to share a leading size cannot be told apart and passes.

    Example:
      >>> import jax.numpy as jnp
      >>> unreplicate({'w': jnp.ones((2, 3))})['w'].shape
      (3,)
    """
    lead = {(np.shape(a) or (None,))[0] for a in jax.tree.leaves(tree)}
    if len(lead) > 1 or None in lead:
        raise ShapeError("unreplicate: tree must be replicated, every leaf with the same leading "
                         f"device axis [D, ...]; got leading sizes {sorted(lead, key=str)} (None: "
                         "a 0-d leaf). Unreplicate only what replicate() or the pmap step returned")
    return jax.tree.map(lambda a: a[0], tree)


# -- data-parallel evaluation ---------------------------------------------------------

EVAL_PARALLEL = (None, "sharded", "fsdp")


def check_eval_parallel(parallel, devices, where):
    """``parallel``/``devices`` of :func:`fundl.train.make_eval_step`, ``evaluate``, ``fit`` and
    ``fundl.experiment.run``; returns the devices (``None`` for one device)."""
    if parallel == "pmap":
        raise ConfigError(f"{where}: parallel='pmap' is not supported here (its trees carry a "
                          "leading device axis, for hand-written loops around "
                          "make_train_step(parallel='pmap')); use parallel='sharded': the same "
                          "data parallelism over the same devices, with ordinary-looking trees")
    if parallel not in EVAL_PARALLEL:
        raise ConfigError(f"{where}: parallel must be one of {list(EVAL_PARALLEL)}; "
                          f"got parallel={parallel!r}")
    if parallel is None:
        if devices is not None:
            raise ConfigError(f"{where}: devices= needs parallel='sharded' or 'fsdp'; got "
                              f"parallel=None with devices={devices!r}")
        return None
    return check_devices(devices, where)


def first_copy(tree):
    """This process's first copy of every array replicated over several devices (no copy, no
    sync); other leaves (one-device, sharded, host) as they are."""
    if jax.device_count() == 1:
        return tree  # nothing can be replicated: skip the per-leaf walk (once per train step)
    return jax.tree.map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array)
                        and len(a.sharding.device_set) > 1 and a.sharding.is_fully_replicated
                        else a, tree)


def _pad_rows(a, k):
    """``a: [n, ...]`` followed by ``k`` copies of its last row (valid input for any model)."""
    if k == 0:
        return a
    xp = jnp if isinstance(a, jax.Array) else np
    a = a if xp is jnp else np.asarray(a)
    return xp.concatenate([a, xp.repeat(a[-1:], k, axis=0)])


def _put(a, sharding):
    """``a`` (the whole global array, the same on every process) placed with ``sharding``."""
    if jax.process_count() == 1:
        return jax.device_put(a, sharding)
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def make_sharded_eval(sums, devices):
    """The global-view evaluation step over a 1-d ``Mesh`` (axis ``'data'``) of ``devices``.

    ``sums(params, state, x, y, n) -> {name: scalar}`` sees a batch padded to a multiple of
    the device count and must use its first ``n`` rows only (``n`` static). Returns
    ``eval_step(params, state, batch)``; ``eval_step.place(tree)`` keeps arrays already on
    the mesh (replicated or sharded, e.g. FSDP params) and places others replicated.
    """
    mesh = Mesh(np.array(devices), (DATA_AXIS,))
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))
    jitted = jax.jit(sums, static_argnums=(4,), out_shardings=repl)

    def keep(a):
        return (isinstance(a, jax.Array) and isinstance(a.sharding, NamedSharding)
                and a.sharding.mesh == mesh)

    def place(tree):
        return jax.tree.map(lambda a: a if keep(a) else _global(a, repl), tree)

    def eval_step(params, state, batch):
        x, y = split_batch(batch, "eval step")
        n = int(np.shape(x)[0])
        if np.shape(y)[0] != n:
            raise ShapeError(f"eval step: x and y must have the same number of rows; got "
                             f"{n} and {np.shape(y)[0]}")
        pad = -n % len(devices)
        x, y = (_put(_pad_rows(a, pad), data) for a in (x, y))
        params, state = place((params, state))
        return jitted(params, state, x, y, n)

    eval_step.mesh = mesh
    eval_step.place = place
    return eval_step

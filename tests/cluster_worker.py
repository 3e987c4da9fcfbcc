"""One process of tests/test_cluster_launch.py: ``python cluster_worker.py OUT [--train-only]``.

The launcher's environment (SLURM variables as ``srun`` sets them, or a Kubernetes
Indexed Job's ``JOB_COMPLETION_INDEX`` + ``FUNDL_*``) is all it gets: it calls
``fundl.distributed.initialize()`` with no arguments, then records in
``OUT/process_<i>.npz``

* ``train_*``: the parameters after 4 sharded train steps (2 batches in each of
  epochs 0 and 1), this process feeding its rows of every global batch;
* for the same 4 batches, through ``fundl.experiment``'s own data pipeline: the host
  rows this process reads (``host_x``, ``host_y``), its rows of the global device
  batch (``dev_x``) and of that batch augmented on the device with a replicated key
  (``aug_x``, :func:`fundl.data.augment_cifar`); not with ``--train-only``.

The test computes the same quantities in one process (the functions below, with
``process_count=1``) and compares process ``p``'s with rows ``[p*B/P, (p+1)*B/P)``.
"""
import sys

import numpy as np

import fundl.distributed as dist

BATCH, SEED, EPOCHS, STEPS = 16, 3, (0, 1), 2


def data():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 8, 8, 3)).astype(np.uint8)
    return x, rng.integers(0, 4, 64).astype(np.int32)


def transform(a):
    return np.asarray(a, np.float32) / 255.0


def step_key(epoch, i):
    import jax
    return jax.random.fold_in(jax.random.key(SEED), 100 * epoch + i)


def host_batches(process_index=0, process_count=1):
    """``[(epoch, i, x_rows, y_rows)]`` of the first ``STEPS`` batches of each epoch."""
    from fundl.data import batches
    x, y = data()
    out = []
    for epoch in EPOCHS:
        it = batches(x, y, BATCH, seed=SEED, epoch=epoch, drop_remainder=True,
                     process_index=process_index, process_count=process_count)
        out += [(epoch, i, xb, yb) for i, (xb, yb) in zip(range(STEPS), it)]
    return out


def train(parallel):
    """Flat ``{path: array}`` params after the 4 steps (``parallel``: sharded, this process's rows)."""
    import jax
    import optax

    import fundl.layers as L
    from fundl.train import make_train_step
    model = L.Serial(L.Flatten(), L.Dense(16), L.BatchNorm(), L.ReLU(), L.Dense(4))
    _, params, state = model.init(jax.random.key(0), (BATCH, 8, 8, 3))
    opt = optax.sgd(0.1, momentum=0.9)
    opt_state = opt.init(params)
    step = make_train_step(model, opt, parallel="sharded" if parallel else None)
    procs = (jax.process_index(), jax.process_count()) if parallel else (0, 1)
    for epoch, i, xb, yb in host_batches(*procs):
        params, state, opt_state, _ = step(params, state, opt_state, (transform(xb), yb),
                                           step_key(epoch, i))
    return {"train_" + jax.tree_util.keystr(k): v for k, v in
            jax.tree_util.tree_flatten_with_path(dist.to_host((params, state)))[0]}


def local_rows(a):
    """This process's rows of a global batch ``a`` (all of it in one process), in order."""
    shards = sorted(a.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


def pipeline(parallel):
    """``{host_x, host_y, dev_x, aug_x}``, each ``[4, rows, ...]``, from ``fundl.experiment``'s
    data pipeline and device augmentation (data parallel over all processes if ``parallel``)."""
    import jax
    import optax

    import fundl.layers as L
    from fundl.data import augment_cifar
    # private on purpose: the very data pipeline and device augmentation run() trains with
    from fundl.experiment import _data_pipeline, _device_augment
    from fundl.train import make_train_step
    step = make_train_step(L.Serial(L.Flatten(), L.Dense(4)), optax.sgd(0.1),
                           parallel="sharded" if parallel else None)
    x, y = data()
    epoch_batches = _data_pipeline(step, x, y, batch_size=BATCH, seed=SEED, transform=transform,
                                   data_parallel=parallel)
    augment = _device_augment(step, augment_cifar, parallel)
    procs = (jax.process_index(), jax.process_count()) if parallel else (0, 1)
    host = iter(host_batches(*procs))
    out = {"host_x": [], "host_y": [], "dev_x": [], "aug_x": []}
    for epoch in EPOCHS:
        for i, (xd, _) in zip(range(STEPS), epoch_batches(epoch)):
            e, j, xb, yb = next(host)
            assert (e, j) == (epoch, i)
            out["host_x"].append(xb)
            out["host_y"].append(yb)
            out["dev_x"].append(local_rows(xd))
            out["aug_x"].append(local_rows(augment(jax.random.fold_in(step_key(epoch, i), 1), xd)))
    return {k: np.stack(v) for k, v in out.items()}


if __name__ == "__main__":
    out = sys.argv[1]
    requested = dist.requested()
    index, count = dist.initialize()  # no arguments: everything from the launcher's environment
    import jax
    print(f"process {index}/{count}: requested={requested}, {jax.device_count()} devices, "
          f"{jax.local_device_count()} local, coordinator "
          f"{jax._src.distributed.global_state.coordinator_address}", flush=True)
    data_checks = {} if "--train-only" in sys.argv else pipeline(parallel=True)
    np.savez(f"{out}/process_{index}.npz", index=index, count=count, requested=requested,
             **train(parallel=True), **data_checks)
    print(f"process {index}: done", flush=True)

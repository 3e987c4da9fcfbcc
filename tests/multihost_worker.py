"""One process of tests/test_multihost.py: ``python multihost_worker.py PORT PROCESS_ID NPROC OUT``.

Joins a localhost JAX job, trains ``convnet_mnist`` with ``run(..., data_parallel=True)``
on synthetic data (each process reads its half of every batch; the 16 test examples are
evaluated in batches of 5, padded over the 2 devices), then writes this process's view
of the final checkpoint to ``OUT/params_<PROCESS_ID>.npz``; then two
``parallel='fsdp'`` steps of a small MLP (:func:`fsdp_mlp`) to ``OUT/fsdp_<PROCESS_ID>.npz``.
"""
import sys

import numpy as np

import fundl.distributed as dist


def data():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 28, 28, 1)).astype(np.uint8)
    return (x, (x.reshape(64, -1).mean(1) > 127.5).astype(np.int32) + rng.integers(0, 2, 64) * 2), \
        (x[:16], np.arange(16, dtype=np.int32) % 4)


def train(out, data_parallel):
    import optax

    from fundl.experiment import run
    from fundl.models import convnet_mnist
    train_data, test_data = data()
    return run(convnet_mnist(4), optax.sgd(0.05, momentum=0.9), train_data, test_data, out=out,
               epochs=2, batch_size=16, seed=0, progress=False, data_parallel=data_parallel,
               transform=lambda a: np.asarray(a, np.float32) / 255.0, eval_batch_size=5)


def fsdp_mlp(parallel="fsdp", process_index=0, process_count=1):
    """Two Adam steps of a small MLP on fixed global batches of 8 rows, this process's
    rows only; returns the host params and the local shard's shape of ``hidden/w``
    ([64, 32]: with ``parallel='fsdp'`` split by rows over the devices)."""
    import jax
    import optax

    import fundl.layers as L
    from fundl.distributed import to_host
    from fundl.train import make_train_step
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(2, 8, 64)).astype(np.float32), rng.integers(0, 4, (2, 8)).astype(np.int32)
    model, opt = L.Serial(L.Dense(32, name="hidden"), L.ReLU(), L.Dense(4, name="head")), optax.adam(1e-2)
    _, p = model.init(jax.random.key(0), (8, 64))
    step = make_train_step(model, opt, parallel=parallel)
    trees = (p, {}, opt.init(p))
    rows = slice(process_index * 8 // process_count, (process_index + 1) * 8 // process_count)
    for i in range(2):
        *trees, _ = step(*trees, (x[i][rows], y[i][rows]), None)
    return flat(to_host(trees[0])), trees[0]["hidden"]["w"].addressable_shards[0].data.shape


def flat(tree):
    import jax
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


if __name__ == "__main__":
    port, pid, nproc, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    index, count = dist.initialize(f"127.0.0.1:{port}", nproc, pid)
    import jax
    assert (index, count) == (pid, nproc), (index, count)
    print(f"process {index}/{count}: {jax.device_count()} devices, {jax.local_device_count()} local",
          flush=True)
    train(out + "/run", data_parallel=True)
    from fundl.experiment import load_checkpoint
    epoch, tree = load_checkpoint(out + "/run")
    np.savez(f"{out}/params_{pid}.npz", epoch=epoch, **flat(tree["params"]))
    fsdp_params, shard = fsdp_mlp("fsdp", index, count)
    np.savez(f"{out}/fsdp_{pid}.npz", shard=np.array(shard), **fsdp_params)
    print(f"process {index}: done", flush=True)

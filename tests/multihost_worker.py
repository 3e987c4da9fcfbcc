"""One process of tests/test_multihost.py: ``python multihost_worker.py PORT PROCESS_ID NPROC OUT``.

Joins a localhost JAX job, trains ``convnet_mnist`` with ``run(..., data_parallel=True)``
on synthetic data (each process reads its half of every batch; the 16 test examples are
evaluated in batches of 5, padded over the 2 devices), then writes this process's view
of the final checkpoint to ``OUT/params_<PROCESS_ID>.npz``.
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
    print(f"process {index}: done", flush=True)

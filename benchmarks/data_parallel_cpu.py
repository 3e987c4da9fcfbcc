"""Data-parallel train step vs one device, on 8 simulated CPU devices.

    python benchmarks/data_parallel_cpu.py [--devices 8] [--batch 256] [--steps 20]

Simulated devices share the host's cores, so expect little speed-up: this is a
correctness harness for the sharded/pmap code paths, not a scaling measurement.
Prints the median step time (ms) and examples/s of ``convnet_mnist`` for the
one-device step, ``parallel='sharded'`` and ``parallel='pmap'`` on the same batch.
"""
import argparse
import os
import statistics
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={args.devices}")
    import jax
    import numpy as np
    import optax

    from fundl.models import convnet_mnist
    from fundl.train import make_train_step, replicate

    model, opt = convnet_mnist(), optax.sgd(0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, args.batch).astype(np.int32)
    print(f"jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} devices, "
          f"{os.cpu_count()} host cores; convnet_mnist, batch {args.batch}, {args.steps} steps",
          flush=True)
    for parallel in (None, "sharded", "pmap"):
        _, params = model.init(jax.random.key(0), (args.batch, 28, 28, 1))
        trees = (params, {}, opt.init(params))
        if parallel == "pmap":
            trees = replicate(trees)
        step = make_train_step(model, opt, parallel=parallel)
        t0 = time.perf_counter()
        *trees, m = step(*trees, (x, y), None)
        jax.block_until_ready(m)
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            *trees, m = step(*trees, (x, y), None)
            jax.block_until_ready((trees, m))
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"{str(parallel):>8}: first call (compile) {first:6.2f} s, median step "
              f"{med * 1e3:7.1f} ms, {args.batch / med:7.0f} ex/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

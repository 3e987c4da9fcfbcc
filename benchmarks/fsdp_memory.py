"""Per-device memory of parameters and optimizer state: parallel='sharded' vs 'fsdp'.

Runs on 8 simulated CPU devices (set here, before jax is imported); nothing is
allocated or executed: the trees are ``jax.ShapeDtypeStruct`` s from ``jax.eval_shape``,
and the step is only lowered and compiled.

For each model and optimizer it reports, per device:

* ``params+opt``: bytes of params + optimizer state held by one device, from the
  step's shardings (``sharding.shard_shape`` of every leaf);
* ``arg``, ``out``, ``temp``: the compiled step's ``memory_analysis()``
  (``argument_size_in_bytes``: params, state, opt_state, batch; ``output_size_in_bytes``;
  ``temp_size_in_bytes``: activations, gradients, gathered parameters).

Usage: ``python benchmarks/fsdp_memory.py [--batch 8] [--models resnet50,resnet152,vgg16]``
"""
import argparse
import os
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8"
                           # LLVM code generation only: buffer sizes are the same, compiles faster
                           + " --xla_backend_optimization_level=0")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from fundl import models  # noqa: E402
from fundl.train import make_train_step  # noqa: E402

MODELS = {"resnet50": lambda: models.resnet50(1000), "resnet152": lambda: models.resnet152(1000),
          "vgg16": lambda: models.vgg("D", 1000)}
OPTS = {"momentum": optax.sgd(0.1, momentum=0.9), "adam": optax.adam(1e-3)}
MiB = 2 ** 20


def per_device_bytes(tree, shardings):
    """Bytes of ``tree`` held by one device under ``shardings`` (nothing allocated)."""
    return sum(int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize
               for a, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)))


def measure(model, opt, parallel, batch, size):
    p, s = jax.eval_shape(lambda k: model.init_with_state(k, (batch, size, size, 3))[1:],
                          jax.random.key(0))
    o = jax.eval_shape(opt.init, p)
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    y = jax.ShapeDtypeStruct((batch,), jnp.int32)
    step = make_train_step(model, opt, parallel=parallel)
    held = per_device_bytes((p, o), step.param_shardings((p, o)))
    mem = step.lower(p, s, o, (x, y), jax.random.key(0)).compile().memory_analysis()  # vgg: dropout
    return held, mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.temp_size_in_bytes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8, help="global batch (1 row per device)")
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--models", default="resnet50,vgg16", help="of resnet50, resnet152, vgg16")
    args = ap.parse_args()
    print(f"jax {jax.__version__}, {jax.device_count()} devices ({jax.devices()[0].platform}), "
          f"batch {args.batch}, input {args.size}x{args.size}x3; MiB per device")
    print("| model | optimizer | form | params+opt | arg | out | temp | compile s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        model = MODELS[name]()
        for opt_name, opt in OPTS.items():
            for parallel in ("sharded", "fsdp"):
                t = time.perf_counter()
                held, arg, out, temp = measure(model, opt, parallel, args.batch, args.size)
                print(f"| {name} | {opt_name} | {parallel} | {held / MiB:.1f} | {arg / MiB:.1f} | "
                      f"{out / MiB:.1f} | {temp / MiB:.1f} | {time.perf_counter() - t:.0f} |",
                      flush=True)


if __name__ == "__main__":
    main()

"""jit compile time of the ResNet-50 train step: fundl vs flax linen.

Times the first call of each jitted train step (tracing, XLA compilation and
one execution) minus the median of the next calls (execution alone), with the
persistent compilation cache disabled, each framework in a fresh process (so
neither profits from the other's warm caches), alternating for ``--repeats``
rounds.

    python benchmarks/compile_time.py                 # ResNet-50, batch 2, ~2 min (4+ if busy)
    python benchmarks/compile_time.py --repeats 2     # two fresh processes per framework
    python benchmarks/compile_time.py --model resnet18

Prints a table of seconds and ``ratio compile fundl/flax=X.XX`` (medians).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def _child(framework, model, batch):
    """Run in a fresh process: print JSON {trace_compile_s, run_s}."""
    os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    import jax
    jax.config.update("jax_enable_compilation_cache", False)
    import numpy as np

    import resnet_cpu as R
    _, _, _, size, classes = R.SPECS[model]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, classes, batch).astype(np.int32)
    run = R.fundl_step(model, x, y) if framework == "fundl" else R.flax_step(model, x, y)[0]
    t0 = time.perf_counter()
    jax.block_until_ready(run())
    first = time.perf_counter() - t0
    later = []
    for _ in range(2):
        t0 = time.perf_counter()
        jax.block_until_ready(run())
        later.append(time.perf_counter() - t0)
    print(json.dumps({"first_s": first, "run_s": statistics.median(later)}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet50", choices=["resnet18", "resnet50"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.model, args.batch)
        return
    import _harness
    _harness.print_machine()
    res = {"fundl": [], "flax linen": []}
    for _ in range(args.repeats):
        for fw, key in (("fundl", "fundl"), ("flax", "flax linen")):
            out = subprocess.run([sys.executable, __file__, "--child", fw, "--model", args.model,
                                  "--batch", str(args.batch)], capture_output=True, text=True,
                                 check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            res[key].append(r["first_s"] - r["run_s"])
    print(f"\n## {args.model} train step (batch {args.batch}): first call minus a later call "
          f"(trace + compile), {args.repeats} fresh processes each")
    print(f"{'':14s} {'median':>8s} {'min':>8s} {'max':>8s}   (s)")
    for k, v in res.items():
        print(f"{k:14s} {statistics.median(v):8.2f} {min(v):8.2f} {max(v):8.2f}")
    print(f"ratio compile fundl/flax="
          f"{statistics.median(res['fundl']) / statistics.median(res['flax linen']):.2f}")


if __name__ == "__main__":
    main()

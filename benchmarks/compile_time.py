"""jit compile time of a ResNet train step: fundl (with and without scan) vs flax linen.

Times the first call of each jitted train step (tracing, XLA compilation and
one execution) minus the median of the next calls (execution alone), with the
persistent compilation cache disabled, each contestant in a fresh process (so
none profits from another's warm caches), alternating for ``--repeats``
rounds. ``fundl scan`` is the same model built with ``scan=True`` (stretches
of at least 8 identical blocks compiled once as a ``lax.scan``; ``--scan K``
for ``scan=K``).

    python benchmarks/compile_time.py                 # ResNet-50, batch 2, ~3 min (5+ if busy)
    python benchmarks/compile_time.py --repeats 2     # two fresh processes per contestant
    python benchmarks/compile_time.py --model resnet152 --no-flax
    python benchmarks/compile_time.py --model resnet50 --no-flax --scan 2   # scan=2

Prints a table of seconds, ``ratio compile fundl/flax=X.XX`` and, for models
with a stretch of blocks to scan (ResNet-101/152, or any with ``--scan K``),
``ratio compile fundl_scan/fundl=Y.YY`` (medians).
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


def _child(framework, model, batch, scan=True):
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
    if framework == "flax":
        run = R.flax_step(model, x, y)[0]
    else:
        run = R.fundl_step(model, x, y, scan=scan if framework == "fundl-scan" else False)
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
    p.add_argument("--model", default="resnet50",
                   choices=["resnet18", "resnet50", "resnet101", "resnet152"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--no-flax", action="store_true", help="time fundl only (with and without scan)")
    p.add_argument("--scan", type=int, default=0,
                   help="'fundl scan' with scan=K (shortest scanned stretch); default scan=True (8)")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.model, args.batch, args.scan or True)
        return
    import _harness
    _harness.print_machine()
    import resnet_cpu as R
    # scan=True leaves models whose stages repeat a block < 8 times (ResNet-18/50) unchanged
    repeats = max(R.SPECS[args.model][1])  # at most this many copies in a row
    contestants = [("fundl", "fundl")]
    if repeats >= (args.scan or 8):
        contestants.append(("fundl-scan", "fundl scan"))
    if not args.no_flax:
        contestants.append(("flax", "flax linen"))
    res = {key: [] for _, key in contestants}
    step_s = {key: [] for _, key in contestants}
    for _ in range(args.repeats):
        for fw, key in contestants:
            out = subprocess.run([sys.executable, __file__, "--child", fw, "--model", args.model,
                                  "--batch", str(args.batch), "--scan", str(args.scan)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            res[key].append(r["first_s"] - r["run_s"])
            step_s[key].append(r["run_s"])
    print(f"\n## {args.model} train step (batch {args.batch}): first call minus a later call "
          f"(trace + compile), {args.repeats} fresh processes each")
    print(f"{'':14s} {'median':>8s} {'min':>8s} {'max':>8s}   (s)   step after compiling (s)")
    for k, v in res.items():
        print(f"{k:14s} {statistics.median(v):8.2f} {min(v):8.2f} {max(v):8.2f}"
              f"         {statistics.median(step_s[k]):8.2f}")
    med = {k: statistics.median(v) for k, v in res.items()}
    if "flax linen" in med:
        print(f"ratio compile fundl/flax={med['fundl'] / med['flax linen']:.2f}")
    if "fundl scan" in med:
        print(f"ratio compile fundl_scan/fundl={med['fundl scan'] / med['fundl']:.2f}")


if __name__ == "__main__":
    main()

"""Run the CPU benchmark suite, one benchmark after another (~10 min on 2 cores).

    python benchmarks/run_all.py            # everything, default (short) settings
    python benchmarks/run_all.py --quick    # fewer rounds, skips the compile timings

Each benchmark is also a script of its own (see its docstring):
``lenet_cpu.py`` (course convnet train step vs PyTorch / flax / stax),
``resnet_cpu.py`` (ResNet-18 CIFAR train step), ``first_step.py``
(time to first step: tracing, lowering and compilation of ResNet-50 and the quickstart
convnet vs flax; ResNet-152 with and without ``scan``; a runner's second run with the
compilation cache),
``overhead.py`` (a tiny step's per-call cost vs bare ``jax.jit``, ``nnx.jit``,
``eqx.filter_jit``; ``fit`` vs a bare loop), ``batched_vs_loop.py`` (batching
speed-up). ``lenet_breakdown.py`` (where the convnet step's time goes) and
``profile_step.py`` (a train step per compiled operation) are diagnostics, not part of the suite; nor is ``gpu.py``
(ResNet-50 throughput and MFU on one GPU, see its docstring).
No timing is asserted anywhere; the machine may be shared, so read ratios of
interleaved rounds rather than absolute times.
"""
from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    plan = [
        ["batched_vs_loop.py"] + (["--rounds", "10"] if args.quick else []),
        ["lenet_cpu.py"] + (["--rounds", "15", "--no-compile"] if args.quick else []),
        ["resnet_cpu.py"] + (["--rounds", "3"] if args.quick else []),
        ["overhead.py"] + (["--rounds", "5"] if args.quick else []),
    ]
    if not args.quick:
        plan += [["first_step.py", "--rounds", "1"],
                 ["first_step.py", "--models", "resnet152", "--scan", "8", "--no-flax", "--rounds", "1"],
                 ["first_step.py", "--cache", "--rounds", "1"]]
    failed = []
    for cmd in plan:
        print(f"\n===== {' '.join(cmd)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / cmd[0]), *cmd[1:]]).returncode:
            failed.append(cmd[0])
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()

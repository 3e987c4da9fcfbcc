"""Run the CPU benchmark suite, one benchmark after another (~6-8 min on 2 cores).

    python benchmarks/run_all.py            # everything, default (short) settings
    python benchmarks/run_all.py --quick    # fewer rounds, skips the ResNet-50 compile timing

Each benchmark is also a script of its own (see its docstring):
``lenet_cpu.py`` (course convnet train step vs PyTorch / flax / stax),
``resnet_cpu.py`` (ResNet-18 CIFAR train step), ``compile_time.py``
(ResNet-50 jit compile time), ``batched_vs_loop.py`` (batching speed-up).
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
    ]
    if not args.quick:
        plan.append(["compile_time.py"])
    failed = []
    for cmd in plan:
        print(f"\n===== {' '.join(cmd)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / cmd[0]), *cmd[1:]]).returncode:
            failed.append(cmd[0])
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()

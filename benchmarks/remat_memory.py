"""Memory of a ResNet-50 train step with and without rematerialisation (``remat=True``).

Compiles (never runs) the train step of ``fundl.train.make_train_step`` (SGD with
momentum 0.9, cross-entropy, buffers donated) for ResNet-50 on ``[32, 224, 224, 3]``
float32 inputs, built from ``jax.ShapeDtypeStruct`` s (no array is allocated), and
reads XLA's buffer assignment of the compiled step (``compiled.memory_analysis()``):

* ``temp``: the step's scratch buffers: the activations kept from the forward pass
  for the backward pass, gradients and other intermediates, at their largest
  simultaneous (XLA assigns the temporaries to one arena whose size is this);
* ``args`` / ``out``: the inputs (params, state, optimizer state, batch) and
  outputs; ``alias``: the outputs written in place of donated inputs;
* ``peak = temp + args + out - alias``: the device memory the step needs while it
  runs (arguments and non-aliased outputs live alongside the scratch arena).
  XLA's own ``peak_memory_in_bytes`` is printed too where the backend reports it
  (0 means not reported).

Remat changes ``temp`` only: the parameters, state and batch are the same.
Compile time (``lower`` + ``compile``, persistent cache off) is the cost side
on this machine; the run-time cost (about one extra forward pass per wrapped
block) is not measured here.

    python benchmarks/remat_memory.py                       # 4 variants, ~4 min on 2 cores
    python benchmarks/remat_memory.py --variants plain remat --batch 8
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

VARIANTS = {  # name -> resnet50 keyword arguments
    "plain": {},
    "remat": {"remat": True},
    "remat dots_saveable": {"remat": "dots_saveable"},
    "scan=2": {"scan": 2},
    "scan=2 + remat": {"scan": 2, "remat": True},
}
DEFAULT = ("plain", "remat", "scan=2", "scan=2 + remat")


def measure(kwargs: dict, batch: int, size: int) -> dict:
    """Compile ResNet-50's train step for ``kwargs``; memory figures (bytes) and seconds."""
    import jax
    import jax.numpy as jnp
    import optax

    from fundl import models
    from fundl.train import make_train_step

    model = models.resnet50(**kwargs)
    opt = optax.sgd(0.1, momentum=0.9)
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    y = jax.ShapeDtypeStruct((batch,), jnp.int32)
    _, params, state = jax.eval_shape(lambda k: model.init(k, x.shape), jax.random.key(0))
    opt_state = jax.eval_shape(opt.init, params)
    step = make_train_step(model, opt)
    t0 = time.perf_counter()
    compiled = step.lower(params, state, opt_state, (x, y), None).compile()
    seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("temp", "argument", "output",
                                                              "alias")}
    out["peak"] = out["temp"] + out["argument"] + out["output"] - out["alias"]
    out["xla_peak"] = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
    out["compile_s"] = seconds
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT), choices=list(VARIANTS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args(argv)
    os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    import jax
    jax.config.update("jax_enable_compilation_cache", False)
    import _harness

    _harness.print_machine()
    print(f"# ResNet-50 train step (SGD momentum 0.9, donated buffers), input "
          f"[{args.batch}, {args.size}, {args.size}, 3] float32; compiled, not run")
    mib = 2 ** 20
    head = ("| variant | temp MiB | args MiB | out MiB | alias MiB | peak MiB | "
            "peak vs plain | XLA peak MiB | compile s |")
    print(head)
    print("|" + "---|" * 9)
    base = None
    for name in args.variants:
        r = measure(VARIANTS[name], args.batch, args.size)
        base = base or (r["peak"] if name == "plain" else None)
        ratio = f"{r['peak'] / base:.2f}x" if base else "-"
        xla = f"{r['xla_peak'] / mib:,.0f}" if r["xla_peak"] else "n/a"
        print(f"| {name} | {r['temp'] / mib:,.0f} | {r['argument'] / mib:,.0f} | "
              f"{r['output'] / mib:,.0f} | {r['alias'] / mib:,.0f} | {r['peak'] / mib:,.0f} | "
              f"{ratio} | {xla} | {r['compile_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()

"""Python tracing time of fundl train steps, for two checkouts side by side.

Measures ``make_train_step(model, sgd).lower(params, state, opt_state, batch, key)``
(tracing, autodiff and lowering to StableHLO; no XLA compilation) in a fresh
process per sample, so no cache of a previous sample helps, alternating the
checkouts for ``--rounds`` rounds. Used to check that a change of fundl's layer
core does not slow tracing (issue 11 / 15): give the old checkout and the new.

    git worktree add /tmp/fundl-old <old commit>
    python benchmarks/trace_time.py --repos /tmp/fundl-old . --rounds 5

Prints one line per (model, checkout) with the median and minimum seconds and
``ratio new/old`` per model (medians).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODELS = {  # name -> (builder expression, input shape)
    "convnet_mnist": ("models.convnet_mnist()", (100, 28, 28, 1)),
    "resnet18_cifar": ("models.resnet18(num_classes=10, stem='cifar')", (32, 32, 32, 3)),
    "resnet50": ("models.resnet50()", (8, 224, 224, 3)),
}


def _child(model: str) -> None:
    import jax
    import jax.numpy as jnp
    import optax

    from fundl import models, train
    build, shape = MODELS[model]
    net = eval(build, {"models": models})  # noqa: S307  (our own table)
    t0 = time.perf_counter()
    out = jax.eval_shape(lambda k: net.init_with_state(k, shape)[1:], jax.random.key(0))
    init_s = time.perf_counter() - t0
    params, state = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), out)
    opt = optax.sgd(0.1, momentum=0.9)
    step = train.make_train_step(net, opt)
    opt_state = (step.init_opt_state(params) if hasattr(step, "init_opt_state")
                 else opt.init(params))
    batch = (jnp.zeros(shape, jnp.float32), jnp.zeros(shape[0], jnp.int32))
    t0 = time.perf_counter()
    step.lower(params, state, opt_state, batch, jax.random.key(1))
    print(json.dumps({"lower_s": time.perf_counter() - t0, "abstract_init_s": init_s}))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repos", nargs=2, required=True, metavar=("OLD", "NEW"),
                   help="two fundl checkouts (each put first on PYTHONPATH)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child)
        return
    res: dict = {}
    for _ in range(args.rounds):
        for model in args.models.split(","):
            for repo in args.repos:
                env = {**os.environ, "PYTHONPATH": os.path.abspath(repo),
                       "JAX_PLATFORMS": "cpu"}
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--repos", *args.repos,
                                      "--child", model], capture_output=True, text=True,
                                     check=True, env=env, cwd=os.path.abspath(repo))
                r = json.loads(out.stdout.strip().splitlines()[-1])
                res.setdefault((model, repo), []).append(r["lower_s"])
    old, new = args.repos
    for model in args.models.split(","):
        for repo in args.repos:
            v = res[(model, repo)]
            print(f"{model:16s} {repo:28s} median {statistics.median(v):6.2f} s  min {min(v):6.2f} s")
        ratio = statistics.median(res[(model, new)]) / statistics.median(res[(model, old)])
        print(f"{model:16s} ratio new/old={ratio:.2f}")


if __name__ == "__main__":
    main()

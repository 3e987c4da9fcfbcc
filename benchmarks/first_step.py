"""Time to first step: Python tracing, lowering and XLA compilation of a train step, fundl vs flax linen.

Each sample is a fresh process with the persistent compilation cache off, so nothing
compiled by an earlier sample helps; contestants alternate for ``--rounds`` rounds and
the table gives medians. The step's stages are timed separately with ``jax.jit``'s
ahead-of-time API on abstract arguments (``jax.ShapeDtypeStruct``, from ``jax.eval_shape``
of the initialisation): ``trace`` = ``jit(step).trace(...)`` (Python: the model, autodiff,
the optimizer, to a jaxpr), ``lower`` = ``.lower()`` (jaxpr to StableHLO, also Python),
``compile`` = ``.compile()`` (XLA), then ``run`` = the first execution on zero arrays.

* ``resnet50``: ImageNet ResNet-50, 224x224x3, batch 8, SGD + momentum (the steps of
  ``benchmarks/resnet_cpu.py``); ``resnet101`` / ``resnet152`` likewise, and
  ``--scan 8`` adds fundl with ``scan=True`` (stretches of >= 8 identical blocks compiled
  once; ``--scan K``: ``scan=K``). ``resnet18``: CIFAR stem, 32x32x3, batch 8.
* ``quickstart``: ``experiments/quickstart.py``'s convnet on 8x8x1 digits, batch 32, Adam,
  with dropout, and the same net in flax linen.
* ``--repos OLD NEW``: fundl from two checkouts side by side (each first on ``PYTHONPATH``),
  e.g. before and after a change to the layer core; flax is left out. (A checkout whose
  step has no ``.trace`` reports its tracing inside ``lower``.)
* ``--cache``: a runner's first and second run with the cache on (a fresh directory):
  the seconds of XLA compilation (JAX's ``backend_compile_duration`` events) and the
  persistent-cache hits of each run; target: run 2 / run 1 <= 0.2.

    python benchmarks/first_step.py                          # resnet50 + quickstart, 3 rounds (~5 min)
    python benchmarks/first_step.py --models quickstart --rounds 5
    python benchmarks/first_step.py --models resnet152 --scan 8 --no-flax --rounds 1
    python benchmarks/first_step.py --models resnet50,convnet_mnist --repos /tmp/fundl-old . --rounds 5
    python benchmarks/first_step.py --cache                  # experiments/quickstart.py, twice
    python benchmarks/first_step.py --cache --runner "experiments/mnist.py --synthetic 512 --epochs 1"

Prints markdown tables and ``ratio <model> trace+compile fundl/flax=X.XX`` (medians).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
STAGES = ("trace", "lower", "compile", "run")


# -- the steps, built in the child process -----------------------------------------------

def _quickstart_data():
    import numpy as np

    return np.zeros((32, 8, 8, 1), np.float32), np.zeros(32, np.int32)


def _fundl_step(model_name, scan):
    """``(jitted step with .trace, abstract args)`` of fundl's ``make_train_step``."""
    import importlib.util

    import jax
    import jax.numpy as jnp
    import optax

    from fundl import models, train
    if model_name == "quickstart":
        spec = importlib.util.spec_from_file_location("quickstart", REPO / "experiments" / "quickstart.py")
        qs = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(qs)
        model, opt, (x, y) = qs.convnet(), optax.adam(2e-3), _quickstart_data()
    elif model_name == "convnet_mnist":  # the course recipe's step (fundl only)
        model, opt = models.convnet_mnist(), optax.sgd(0.1)
        x, y = jnp.zeros((100, 28, 28, 1)), jnp.zeros(100, jnp.int32)
    else:
        import resnet_cpu as R

        _, _, stem, size, classes = R.SPECS[model_name]
        model = getattr(models, model_name)(classes, stem=stem, scan=scan or False)
        opt = optax.sgd(R.LR, R.MOMENTUM)
        x, y = jnp.zeros((8, size, size, 3)), jnp.zeros(8, jnp.int32)  # resnet18: CIFAR stem, 32x32
    params, state = jax.eval_shape(lambda k: model.init_with_state(k, x.shape)[1:], jax.random.key(0))
    step = train.make_train_step(model, opt)
    opt_state = jax.eval_shape(opt.init, params)
    return step, (params, state, opt_state, (x, y), jax.random.key(1))


def _flax_step(model_name):
    """``(jitted step, abstract args)`` of the same step in flax linen."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    if model_name == "quickstart":
        class Net(nn.Module):
            @nn.compact
            def __call__(self, x, train=True):
                for c in (16, 32):
                    x = nn.max_pool(nn.relu(nn.Conv(c, (3, 3), padding=1)(x)), (2, 2), (2, 2))
                x = nn.Dropout(0.3, deterministic=not train)(x.reshape(x.shape[0], -1))
                return nn.Dense(10)(nn.relu(nn.Dense(64)(x)))
        net, opt, (x, y) = Net(), optax.adam(2e-3), _quickstart_data()
        collections = []
    else:
        import resnet_cpu as R

        _, _, _, size, _ = R.SPECS[model_name]
        net, opt = R.flax_model(model_name), optax.sgd(R.LR, R.MOMENTUM)
        x, y = jnp.zeros((8, size, size, 3)), jnp.zeros(8, jnp.int32)
        collections = ["batch_stats"]
    variables = jax.eval_shape(lambda k: net.init(k, x, train=False), jax.random.key(0))
    params = variables["params"]
    stats = {c: variables[c] for c in collections}

    def step(params, stats, opt_state, x, y, key):
        def loss_fn(p):
            logits, upd = net.apply({"params": p, **stats}, x, train=True, mutable=collections,
                                    rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd
        (loss, upd), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        u, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, u), dict(upd), opt_state, loss

    jitted = jax.jit(step, donate_argnums=(0, 1, 2))
    return jitted, (params, stats, jax.eval_shape(opt.init, params), x, y, jax.random.key(1))


def _child(framework, model_name, scan):
    """In a fresh process: print JSON seconds of each stage (cache off)."""
    os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_compilation_cache", False)
    sys.path.insert(0, str(HERE))
    t0 = time.perf_counter()
    step, args = _flax_step(model_name) if framework == "flax" else _fundl_step(model_name, scan)
    seconds = {"build": time.perf_counter() - t0}
    t0 = time.perf_counter()
    if hasattr(step, "trace"):
        traced = step.trace(*args)
        seconds["trace"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        lowered = traced.lower()
    else:  # an older fundl checkout (--repos): its step has .lower only, which traces too
        seconds["trace"] = 0.0
        lowered = step.lower(*args)
    seconds["lower"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    seconds["compile"] = time.perf_counter() - t0
    concrete = jax.tree.map(lambda a: a if isinstance(a, jax.Array) else jnp.zeros(a.shape, a.dtype), args)
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*concrete))
    seconds["run"] = time.perf_counter() - t0
    print(json.dumps(seconds))


# -- the parent: rounds, medians, tables -------------------------------------------------

def _sample(label, framework, model_name, scan, repo):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pathlib.Path(repo).resolve()), str(HERE)]),
           "JAX_ENABLE_COMPILATION_CACHE": "false"}
    out = subprocess.run([sys.executable, str(pathlib.Path(__file__).resolve()), "--child", framework,
                          "--models", model_name, "--scan", str(scan)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{label} ({model_name}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _contestants(args, model_name):
    """``[(label, framework, scan, repo)]`` for one model."""
    repos = args.repos or [str(REPO)]
    out = [(f"fundl {r}" if args.repos else "fundl", "fundl", 0, r) for r in repos]
    if args.scan and model_name.startswith("resnet"):
        out.append((f"fundl scan={args.scan}", "fundl", args.scan, repos[-1]))
    if not args.no_flax and not args.repos and model_name != "convnet_mnist":
        out.append(("flax linen", "flax", 0, str(REPO)))
    return out


def compare_steps(args):
    """Interleaved rounds of fresh processes; a markdown table per model, medians."""
    for model_name in args.models.split(","):
        contestants = _contestants(args, model_name)
        samples = {c[0]: [] for c in contestants}
        for _ in range(args.rounds):
            for label, framework, scan, repo in contestants:
                samples[label].append(_sample(label, framework, model_name, scan, repo))
        batch = {"quickstart": "32, 8x8x1", "convnet_mnist": "100, 28x28x1",
                 "resnet18": "8, 32x32x3"}.get(model_name, "8, 224x224x3")
        print(f"\n### {model_name} train step (batch {batch}): seconds, median of {args.rounds} "
              "fresh processes, persistent cache off\n")
        print("| | " + " | ".join(STAGES) + " | trace+lower+compile |")
        print("|---|" + "---:|" * (len(STAGES) + 1))
        med = {}
        for label, runs in samples.items():
            med[label] = {s: statistics.median(r[s] for r in runs) for s in STAGES}
            total = statistics.median(r["trace"] + r["lower"] + r["compile"] for r in runs)
            med[label]["total"] = total
            med[label]["trace+lower"] = statistics.median(r["trace"] + r["lower"] for r in runs)
            print(f"| {label} | " + " | ".join(f"{med[label][s]:.2f}" for s in STAGES) + f" | {total:.2f} |")
        base = "flax linen" if "flax linen" in med else (list(med)[0] if args.repos else None)
        for label in med:
            if base and label != base:
                r = {k: med[label][k] / med[base][k] if med[base][k] else float("nan")
                     for k in ("trace", "trace+lower", "compile", "total")}
                print(f"\nratio {model_name} {label}/{base}: trace={r['trace']:.2f} "
                      f"trace+lower={r['trace+lower']:.2f} compile={r['compile']:.2f} "
                      f"trace+lower+compile={r['total']:.2f}")


def compare_cache_runs(args):
    """A runner twice with the persistent cache on (fresh directory): compile seconds of each."""
    runner = shlex.split(args.runner)
    rows = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as cache:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "FUNDL_COMPILE"))}
            env["PYTHONPATH"] = str(REPO)
            runs = []
            for _ in range(2):
                t0 = time.perf_counter()
                out = subprocess.run([sys.executable, str(REPO / "tests" / "compile_cache_worker.py"),
                                      str(REPO / runner[0]), *runner[1:], "--no-progress",
                                      "--compile-cache", cache],
                                     capture_output=True, text=True, env=env, cwd=cache)
                if out.returncode != 0:
                    raise SystemExit(f"{args.runner} failed:\n{out.stderr[-3000:]}")
                runs.append({**json.loads(out.stdout.strip().splitlines()[-1]),
                             "wall": time.perf_counter() - t0})
            rows.append(runs)
    print(f"\n### `{args.runner}`, run twice with a fresh compilation cache ({args.rounds} rounds, medians)\n")
    print("| run | XLA compile (s) | programs compiled or read | cache hits | wall (s) |")
    print("|---|---:|---:|---:|---:|")
    for i in range(2):
        med = {k: statistics.median(r[i][k] for r in rows)
               for k in ("compile_seconds", "backend_compiles", "cache_hits", "wall")}
        print(f"| {i + 1} | {med['compile_seconds']:.2f} | {med['backend_compiles']:.0f} | "
              f"{med['cache_hits']:.0f} | {med['wall']:.1f} |")
    ratio = statistics.median(r[1]["compile_seconds"] / r[0]["compile_seconds"] for r in rows)
    print(f"\nratio compile run2/run1={ratio:.3f} (target <= 0.2)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet50,quickstart",
                   help="comma list of resnet50, resnet101, resnet152, resnet18 (CIFAR stem), "
                        "quickstart, convnet_mnist (fundl only)")
    p.add_argument("--rounds", type=int, default=3, help="fresh processes per contestant")
    p.add_argument("--scan", type=int, default=0, metavar="K",
                   help="also fundl with scan=K (ResNets: stretches of >= K identical blocks as one "
                        "lax.scan; 8 is scan=True)")
    p.add_argument("--no-flax", action="store_true", help="fundl only")
    p.add_argument("--repos", nargs=2, default=None, metavar=("OLD", "NEW"),
                   help="fundl from two checkouts instead of fundl vs flax")
    p.add_argument("--cache", action="store_true",
                   help="time a runner's first and second run with the compilation cache on")
    p.add_argument("--runner", default="experiments/quickstart.py --epochs 1",
                   help="for --cache: the runner and its flags, relative to the repository")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.models, args.scan)
        return
    sys.path.insert(0, str(HERE))
    import _harness

    _harness.print_machine()
    if args.cache:
        compare_cache_runs(args)
    else:
        compare_steps(args)


if __name__ == "__main__":
    main()

"""Where a fundl train step's time goes, per compiled (HLO) operation.

Runs a zoo model's jitted train step (``make_train_step``, SGD momentum, batch
norm in train mode) under ``jax.profiler.trace``, reads the trace back with
``jax.profiler.ProfileData`` and adds up the CPU time of every executed HLO
instruction. Each instruction is attributed through the ``op_name`` metadata
XLA keeps from tracing: the layer (fundl applies every layer under
``jax.named_scope``, so the path is in the name) and the role:

* ``forward``: the primal computation;
* ``backward``: anything under ``transpose(...)`` (the reverse pass: input and
  weight gradients of convolutions, batch-norm backward, ...);
* ``optimizer``: the update (no layer scope, outside the loss).

The kind is the JAX primitive the instruction came from (the last op_name
component; XLA fuses most of them, so HLO opcodes say little); convolutions are
split into ``conv fwd``, ``conv dx`` and ``conv dw`` (by the result's shape), and a Winograd weight gradient
(``fundl._winograd``) shows up as ``dot`` rows in the backward pass.

    python benchmarks/profile_step.py --model resnet18 --batch 32 --steps 3
    python benchmarks/profile_step.py --model resnet50 --batch 8 --steps 2 --conv xla

Prints the top operations by time, then totals per op kind, per role and per
layer (``--depth`` path components). Thread time is summed over XLA's worker
threads, so the totals exceed the wall time on a multi-core machine; the
shares are what matter.
"""
from __future__ import annotations

import argparse
import collections
import pathlib
import re
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

SPECS = {"resnet18": ("cifar", 32, 10), "resnet50": ("imagenet", 224, 1000),
         "convnet_mnist": (None, 28, 10)}
_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?\b(\w[\w\-]*)\(")
_META = re.compile(r'op_name="([^"]*)"')


def build_step(model_name: str, batch: int):
    """``(run, compiled_text)``: a zero-argument train step and its HLO text."""
    import jax
    import jax.numpy as jnp
    import optax

    from fundl import models, train
    stem, size, classes = SPECS[model_name]
    chans = 1 if model_name == "convnet_mnist" else 3
    model = (models.convnet_mnist() if stem is None
             else getattr(models, model_name)(classes, stem=stem))
    x = jax.random.normal(jax.random.key(1), (batch, size, size, chans), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (batch,), 0, classes)
    _, params, state = model.init_with_state(jax.random.key(0), x.shape)
    opt = optax.sgd(0.1, 0.9)
    step = train.make_train_step(model, opt, donate=False)
    carry = [params, state, opt.init(params)]
    text = jax.jit(step).lower(*carry, (x, y), None).compile().as_text()

    def run():
        carry[0], carry[1], carry[2], m = step(*carry, (x, y), None)
        return m["loss"]
    return run, text


def hlo_index(text: str) -> dict[str, tuple[str, str, str]]:
    """Instruction name -> ``(opcode, op_name metadata, the instruction's line)``."""
    out = {}
    for line in text.splitlines():
        m = _INSTR.match(line)
        if m:
            meta = _META.search(line)
            out[m.group(1)] = (m.group(2), meta.group(1) if meta else "", line)
    return out


def event_times(trace_dir: str) -> collections.Counter:
    """Summed duration in ms per event name, over every CPU thread of the trace."""
    from jax.profiler import ProfileData
    (path,) = pathlib.Path(trace_dir).rglob("*.xplane.pb")
    data = ProfileData.from_file(str(path))
    times = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for ev in line.events:
                times[ev.name] += ev.duration_ns / 1e6
    return times


def role(op_name: str) -> str:
    """``forward``, ``backward`` or ``optimizer`` (outside the loss) from an op_name."""
    if "transpose(" in op_name:
        return "backward"
    return "forward" if "jvp(" in op_name else "optimizer"


def kind(op_name: str, line: str, batch: int) -> str:
    """The JAX primitive behind an instruction; convolutions split into forward,
    input gradient (``conv dx``: its result has the batch dimension) and weight
    gradient (``conv dw``)."""
    prim = op_name.rsplit("/", 1)[-1] or "(none)"
    if prim != "conv_general_dilated":
        return prim
    if "transpose(" not in op_name:
        return "conv fwd"
    shape = re.search(r"= \w+\[(\d+)", line)
    return "conv dx" if shape and int(shape.group(1)) == batch else "conv dw"


def layer(op_name: str, depth: int) -> str:
    """The layer path: the scope components between the model's ``jvp(...)`` wrapper
    and the primitive, the first ``depth`` of them."""
    parts = op_name.split("/")[:-1]
    parts = [q for q in parts if "(" not in q]
    return "/".join(parts[:depth]) or "(outside the layers)"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=SPECS, default="resnet18")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--conv", choices=("auto", "xla", "im2col", "winograd"), default="auto",
                   help="the CPU convolution lowering (fundl.functional.set_lowering)")
    args = p.parse_args(argv)
    import jax

    from fundl import functional as F
    F.set_lowering(conv=args.conv)
    run, text = build_step(args.model, args.batch)
    jax.block_until_ready(run())
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(args.steps):
                jax.block_until_ready(run())
        times = event_times(d)
    report(times, hlo_index(text), args)


def report(times, index, args) -> None:
    """Print the top instructions and the totals by kind, role and layer."""
    rows = [(ms / args.steps, name, *index[name]) for name, ms in times.items()
            if name in index]
    total = sum(r[0] for r in rows)
    print(f"{args.model} batch {args.batch}, conv={args.conv}: {total:.1f} ms thread time "
          f"per step in {len(rows)} HLO instructions\n")
    print("| ms/step | share | instruction | kind | op_name |\n|---:|---:|---|---|---|")
    for ms, name, opcode, op_name, line in sorted(rows, reverse=True)[:args.top]:
        print(f"| {ms:.2f} | {ms / total:.1%} | {name} | {kind(op_name, line, args.batch)} "
              f"| {op_name[-70:]} |")
    for title, key in (("kind", lambda r: kind(r[3], r[4], args.batch)),
                       ("role", lambda r: role(r[3])),
                       ("layer", lambda r: layer(r[3], args.depth))):
        sums = collections.Counter()
        for r in rows:
            sums[key(r)] += r[0]
        print(f"\n| {title} | ms/step | share |\n|---|---:|---:|")
        for k, ms in sums.most_common(15):
            print(f"| {k} | {ms:.1f} | {ms / total:.1%} |")


if __name__ == "__main__":
    main()

"""Train-step time of the course MNIST convnet: fundl vs PyTorch, flax linen, stax.

The network (``fundl.models.convnet_mnist``)::

    conv 32 k5 -> maxpool 3 -> relu -> conv 64 k5 -> maxpool 2 -> relu ->
    flatten -> fc 200 -> relu -> fc 10

One step = forward, cross-entropy, backward, plain SGD (lr 0.1) on a batch of
100 random 28x28 images. JAX steps are jitted with the old buffers donated. A
second fundl row forces the reference lowerings (XLA convolution,
``reduce_window`` pooling) to show what the fast paths give. PyTorch runs
eagerly with ``torch.set_num_threads(2)``, plus a 1-thread row (which a busy
machine disturbs less) and ``torch.compile`` if it works here. Rounds are
interleaved (see ``_harness.py``).

    python benchmarks/lenet_cpu.py                # ~1.5 min (torch.compile ~1 min of it)
    python benchmarks/lenet_cpu.py --rounds 50    # steadier medians
    python benchmarks/lenet_cpu.py --lowering xla,reduce_window   # fundl without fast paths

The last line is ``ratio fundl/torch=X.XX fundl/flax=Y.YY`` (median step times,
torch with 2 threads); the line before gives the same ratios from minimum times.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import _harness  # noqa: E402

BATCH, LR = 100, 0.1


def fundl_step(x, y, lowering=None):
    """One fundl train step as a zero-argument callable; ``x: [100, 28, 28, 1]``, ``y: [100]``."""
    import jax
    import optax

    import fundl.functional as F
    from fundl import models, train
    model = models.convnet_mnist()
    _, params = model.init(jax.random.key(0), x.shape)
    opt = optax.sgd(LR)
    step = train.make_train_step(model, opt)
    carry = [params, {}, opt.init(params)]

    def run():
        with F.lowering(*(lowering or ())):  # traced on the first call
            carry[0], carry[1], carry[2], m = step(*carry, (x, y), None)
        return m["loss"]
    return run


def flax_step(x, y):
    """One flax linen train step as a zero-argument callable (same net, NHWC)."""
    import flax.linen as nn
    import jax
    import optax

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.max_pool(nn.Conv(32, (5, 5), padding="VALID")(x), (3, 3), (3, 3)))
            x = nn.relu(nn.max_pool(nn.Conv(64, (5, 5), padding="VALID")(x), (2, 2), (2, 2)))
            x = x.reshape(x.shape[0], -1)
            return nn.Dense(10)(nn.relu(nn.Dense(200)(x)))

    net = Net()
    params = net.init(jax.random.key(0), x)
    opt = optax.sgd(LR)

    def step(params, opt_state, x, y):
        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(net.apply(p, x), y).mean()
        loss, g = jax.value_and_grad(loss_fn)(params)
        upd, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    carry = [params, opt.init(params)]

    def run():
        carry[0], carry[1], loss = step(*carry, x, y)
        return loss
    return run


def stax_step(x, y):
    """One ``jax.example_libraries.stax`` train step as a zero-argument callable."""
    import jax
    import optax
    from jax.example_libraries import stax

    init, apply = stax.serial(
        stax.Conv(32, (5, 5)), stax.MaxPool((3, 3), (3, 3)), stax.Relu,
        stax.Conv(64, (5, 5)), stax.MaxPool((2, 2), (2, 2)), stax.Relu,
        stax.Flatten, stax.Dense(200), stax.Relu, stax.Dense(10))
    _, params = init(jax.random.key(0), x.shape)
    opt = optax.sgd(LR)

    def step(params, opt_state, x, y):
        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()
        loss, g = jax.value_and_grad(loss_fn)(params)
        upd, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    carry = [params, opt.init(params)]

    def run():
        carry[0], carry[1], loss = step(*carry, x, y)
        return loss
    return run


def torch_net(torch):
    """The convnet in PyTorch (NCHW): ``[N, 1, 28, 28] -> [N, 10]``."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 32, 5), nn.MaxPool2d(3), nn.ReLU(),
        nn.Conv2d(32, 64, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Linear(256, 200), nn.ReLU(), nn.Linear(200, 10))


def torch_step(x, y, compile_=False, threads=None):
    """One PyTorch eager (or ``torch.compile``) train step; ``threads`` pins its thread count."""
    import torch
    torch.manual_seed(0)
    net = torch_net(torch)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    xt, yt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y).long()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        opt.step()
        return loss.detach()

    fn = torch.compile(step) if compile_ else step
    if threads is None:
        return fn

    def with_threads():
        # torch's thread count is per process: set it around each call.
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)
    return with_threads


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=30, help="interleaved timed rounds (default 30)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    p.add_argument("--lowering", default="", help="fundl conv,pool lowering (default auto,auto)")
    args = p.parse_args(argv)

    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, BATCH).astype(np.int32)

    _harness.print_machine()
    print(f"# torch threads: {torch.get_num_threads()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    lowering = tuple(args.lowering.split(",")) if args.lowering else None
    import fundl.functional as F
    ref = fundl_step(x, y)

    def fundl_reference():  # traced (first call) and run without the fast paths
        with F.lowering(conv="xla", pool="reduce_window"):
            return ref()

    runs = {"fundl": fundl_step(x, y, lowering), "fundl xla/reduce_window": fundl_reference,
            "torch eager": torch_step(x, y),
            "torch eager 1 thread": torch_step(x, y, threads=1),
            "flax linen": flax_step(x, y), "stax": stax_step(x, y)}
    if not args.no_compile:
        try:
            fn = torch_step(x, y, compile_=True)
            fn()
            runs["torch.compile"] = fn
        except Exception as e:  # noqa: BLE001 (report why and carry on)
            msg = str(e).strip().splitlines()
            print(f"# torch.compile unavailable: {type(e).__name__}: {msg[0] if msg else ''}")
    times = _harness.bench(runs, warmup=5, rounds=args.rounds)
    med = _harness.table(times, title=f"convnet_mnist train step, batch {BATCH}, SGD")
    best = {k: min(v) for k, v in times.items()}
    # With 2 threads, torch waits at every OpenMP barrier for a thread that
    # another process has descheduled (steps jump from ~15 ms to ~290 ms on a
    # shared 2-core VM): the minimum shows the uncontended speed.
    print(f"min-time ratios: fundl/torch={best['fundl'] / best['torch eager']:.2f} "
          f"fundl/torch_1thread={best['fundl'] / best['torch eager 1 thread']:.2f} "
          f"fundl/flax={best['fundl'] / best['flax linen']:.2f}")
    print(f"ratio fundl/torch={med['fundl'] / med['torch eager']:.2f} "
          f"fundl/flax={med['fundl'] / med['flax linen']:.2f}")


if __name__ == "__main__":
    main()

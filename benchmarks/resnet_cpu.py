"""ResNet train-step time on CPU: fundl vs PyTorch eager vs flax linen.

* ``resnet18``: CIFAR stem (3x3 conv, no max pool), 32x32x3 inputs, batch 8
  (about 1.5 s per step per framework on 2 cores; ``--batch18 32`` for ~6 s).
* ``resnet50``: ImageNet stem (7x7/2 conv, 3x3/2 max pool), 224x224x3 inputs,
  small batch (default 4). Slow on 2 cores (seconds per step): opt in with
  ``--models resnet18,resnet50``.

One step = forward in train mode (batch norm with batch statistics and a
running-statistics update), cross-entropy, backward, SGD (lr 0.1, momentum
0.9). Same architecture in every framework (torchvision's, written out here:
torchvision is not required). JAX steps are jitted with the old buffers
donated; PyTorch runs eagerly with ``torch.set_num_threads(2)`` (and 1 thread,
which a shared machine disturbs less). A second fundl row forces XLA's
convolution (``conv='xla'``) to show what the im2col fast path gives. Rounds
are interleaved (see ``_harness.py``).

    python benchmarks/resnet_cpu.py                       # resnet18, ~2-3 min
    python benchmarks/resnet_cpu.py --models resnet50 --batch50 4 --rounds 4

Prints one table per model and ``ratio <model> fundl/torch=X.XX fundl/flax=Y.YY``.
"""
from __future__ import annotations

import argparse
import functools
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import _harness  # noqa: E402

LR, MOMENTUM = 0.1, 0.9
SPECS = {  # name: (block kind, blocks per stage, stem, image size, classes)
    "resnet10": ("basic", (1, 1, 1, 1), "cifar", 32, 10),  # a smoke test's (benchmarks/gpu.py)
    "resnet18": ("basic", (2, 2, 2, 2), "cifar", 32, 10),
    "resnet50": ("bottleneck", (3, 4, 6, 3), "imagenet", 224, 1000),
    "resnet101": ("bottleneck", (3, 4, 23, 3), "imagenet", 224, 1000),
    "resnet152": ("bottleneck", (3, 8, 36, 3), "imagenet", 224, 1000),
}


# -- fundl ---------------------------------------------------------------------------

def fundl_step(name, x, y, scan=False, precision=None):
    """A zero-argument callable running one fundl train step (``make_train_step``);
    ``scan`` compiles each stage's repeated blocks once (``resnet(..., scan=True)``);
    ``precision`` is ``make_train_step``'s (``'bfloat16'``: float32 params, bf16 compute)."""
    import jax
    import optax

    from fundl import models, train
    kind, layers, stem, _, classes = SPECS[name]
    if hasattr(models, name):
        model = getattr(models, name)(classes, stem=stem, scan=scan)
    else:
        model = models.resnet(kind, layers, classes, stem=stem, scan=scan, name=name)
    _, params, state = model.init(jax.random.key(0), x.shape)
    opt = optax.sgd(LR, MOMENTUM)
    step = train.make_train_step(model, opt, precision=precision)
    carry = [params, state, opt.init(params)]

    def run():
        carry[0], carry[1], carry[2], m = step(*carry, (x, y), None)
        return m["loss"]
    return run


# -- flax linen ----------------------------------------------------------------------

def flax_model(name, dtype=None):
    """torchvision's ResNet in flax linen (NHWC), BatchNorm momentum 0.9 = torch's 0.1.

    ``dtype``: the computation dtype of every layer (``jnp.bfloat16`` for mixed
    precision; parameters stay float32, batch statistics are reduced in float32);
    ``None``: inferred from the inputs and parameters (float32).
    """
    import flax.linen as nn
    import jax.numpy as jnp

    kind, layers, stem, _, classes = SPECS[name]

    class Block(nn.Module):
        width: int
        stride: int

        @nn.compact
        def __call__(self, x, train):
            norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9,  # noqa: E731
                                        epsilon=1e-5, dtype=dtype)
            conv = lambda c, k, s: nn.Conv(c, (k, k), (s, s), padding=k // 2,  # noqa: E731
                                           use_bias=False, dtype=dtype)
            if kind == "basic":
                out = self.width
                h = nn.relu(norm()(conv(out, 3, self.stride)(x)))
                h = norm()(conv(out, 3, 1)(h))
            else:
                out = self.width * 4
                h = nn.relu(norm()(conv(self.width, 1, 1)(x)))
                h = nn.relu(norm()(conv(self.width, 3, self.stride)(h)))
                h = norm()(conv(out, 1, 1)(h))
            if self.stride != 1 or x.shape[-1] != out:
                x = norm()(conv(out, 1, self.stride)(x))
            return nn.relu(h + x)

    class ResNet(nn.Module):
        @nn.compact
        def __call__(self, x, train=True):
            if stem == "cifar":
                x = nn.Conv(64, (3, 3), padding=1, use_bias=False, dtype=dtype)(x)
            else:
                x = nn.Conv(64, (7, 7), (2, 2), padding=3, use_bias=False, dtype=dtype)(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                     epsilon=1e-5, dtype=dtype)(x))
            if stem != "cifar":
                x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
            for i, n in enumerate(layers):
                for j in range(n):
                    x = Block(64 * 2 ** i, 2 if (i > 0 and j == 0) else 1)(x, train)
            return nn.Dense(classes, dtype=dtype)(jnp.mean(x, axis=(1, 2)))

    return ResNet()


def flax_step(name, x, y, dtype=None):
    """A zero-argument callable running one flax linen train step (``dtype``: see
    :func:`flax_model`; the logits are cast to float32 before the loss)."""
    import jax
    import jax.numpy as jnp
    import optax

    net = flax_model(name, dtype)
    # one compiled init (op by op, every operation compiles on its own); shapes from one row
    variables = jax.jit(functools.partial(net.init, train=False))(jax.random.key(0), x[:1])
    opt = optax.sgd(LR, MOMENTUM)

    def step(params, stats, opt_state, x, y):
        def loss_fn(p):
            logits, upd = net.apply({"params": p, "batch_stats": stats}, x, train=True,
                                    mutable=["batch_stats"])
            logits = logits.astype(jnp.float32)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd
        (loss, upd), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        u, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, u), upd["batch_stats"], opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1, 2))
    carry = [variables["params"], variables["batch_stats"], opt.init(variables["params"])]

    def run():
        carry[0], carry[1], carry[2], loss = step(*carry, x, y)
        return loss
    return run, step, carry


# -- PyTorch -------------------------------------------------------------------------

def torch_model(torch, name):
    """torchvision's ResNet (BasicBlock / Bottleneck v1.5), CIFAR or ImageNet stem."""
    nn = torch.nn
    kind, layers, stem, _, classes = SPECS[name]

    class Block(nn.Module):
        def __init__(self, c_in, width, stride):
            super().__init__()
            if kind == "basic":
                out = width
                self.body = nn.Sequential(
                    nn.Conv2d(c_in, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(),
                    nn.Conv2d(out, out, 3, 1, 1, bias=False), nn.BatchNorm2d(out))
            else:
                out = width * 4
                self.body = nn.Sequential(
                    nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                    nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
                    nn.ReLU(), nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out))
            self.short = (nn.Sequential(nn.Conv2d(c_in, out, 1, stride, bias=False),
                                        nn.BatchNorm2d(out))
                          if stride != 1 or c_in != out else nn.Identity())
            self.out = out

        def forward(self, x):
            return torch.relu(self.body(x) + self.short(x))

    if stem == "cifar":
        mods = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    else:
        mods = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                nn.MaxPool2d(3, 2, 1)]
    c = 64
    for i, n in enumerate(layers):
        for j in range(n):
            b = Block(c, 64 * 2 ** i, 2 if (i > 0 and j == 0) else 1)
            mods.append(b)
            c = b.out
    mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
    return nn.Sequential(*mods)


def torch_step(name, x, y, threads=None):
    """A zero-argument callable running one PyTorch eager train step."""
    import torch
    torch.manual_seed(0)
    net = torch_model(torch, name).train()
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    yt = torch.from_numpy(y).long()

    def run():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        opt.step()
        return loss.detach()
    if threads is None:
        return run

    def with_threads():
        before = torch.get_num_threads()  # per process: set it around each call
        torch.set_num_threads(threads)
        try:
            return run()
        finally:
            torch.set_num_threads(before)
    return with_threads


def _under_lowering(fn, conv):
    """``fn`` traced and run with ``fundl.functional.lowering(conv=conv)``."""
    import fundl.functional as F

    def run():
        with F.lowering(conv=conv):
            return fn()
    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet18", help="comma list: resnet18,resnet50")
    p.add_argument("--batch18", type=int, default=8)
    p.add_argument("--batch50", type=int, default=4)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lowering", default="", help="fundl conv,pool lowering (default auto,auto)")
    args = p.parse_args(argv)
    if args.lowering:
        import fundl.functional as F
        F.set_lowering(*args.lowering.split(","))

    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    _harness.print_machine()
    print(f"# torch threads: {torch.get_num_threads()}")
    for name in args.models.split(","):
        _, _, _, size, classes = SPECS[name]
        batch = args.batch18 if name == "resnet18" else args.batch50
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
        y = rng.integers(0, classes, batch).astype(np.int32)
        runs = {"fundl": fundl_step(name, x, y),
                "fundl conv='xla'": _under_lowering(fundl_step(name, x, y), "xla"),
                "torch eager": torch_step(name, x, y),
                "torch eager 1 thread": torch_step(name, x, y, threads=1),
                "flax linen": flax_step(name, x, y)[0]}
        times = _harness.bench(runs, warmup=2, rounds=args.rounds)
        med = _harness.table(times, title=f"{name} train step, batch {batch}, {size}x{size}, "
                                          "BN train mode")
        best = {k: min(v) for k, v in times.items()}
        print(f"min-time ratios {name}: fundl/torch={best['fundl'] / best['torch eager']:.2f} "
              f"fundl/torch_1thread={best['fundl'] / best['torch eager 1 thread']:.2f} "
              f"fundl/flax={best['fundl'] / best['flax linen']:.2f}")
        print(f"ratio {name} fundl/torch={med['fundl'] / med['torch eager']:.2f} "
              f"fundl/flax={med['fundl'] / med['flax linen']:.2f}")


if __name__ == "__main__":
    main()

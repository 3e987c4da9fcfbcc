"""PyTorch reference of the course MNIST recipe, for a side-by-side wall-time comparison with fundl.

The same network as ``fundl.models.convnet_mnist`` (in NCHW, as PyTorch wants it)::

    conv 32 k5 -> maxpool 3 -> relu -> conv 64 k5 -> maxpool 2 -> relu ->
    flatten -> fc 200 -> relu -> fc 10

trained with cross-entropy, plain SGD (lr 0.1, no momentum), batch 100, a fresh
shuffle every epoch, on the same data as the fundl runs: the 22,699-image MNIST
training subset and the official 10k test set from ``--data-dir``, read with
``fundl.data.load_idx`` and standardised with ``fundl.data.standardizer`` (the
training set's mean and standard deviation). PyTorch's default initialisation,
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, is also fundl's. The test set is
evaluated after every epoch (in batches of 1,000, no gradients).

    python benchmarks/mnist_torch.py                 # 10 epochs, all CPU cores
    python benchmarks/mnist_torch.py --epochs 1      # smoke run

Each epoch prints one line; the last line is
``test_accuracy=0.xxxx total_seconds=... train_seconds=...`` where
``total_seconds`` is the wall time of the whole run (data loading, training and
every evaluation; the ``torch`` import excluded) and ``train_seconds`` the sum
of the training loops alone (shuffling and SGD steps; no evaluation).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "mnist"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="PyTorch reference: the course convnet on MNIST.")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training set (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation and shuffling (default 0)")
    p.add_argument("--data-dir", type=pathlib.Path, default=DEFAULT_DATA_DIR,
                   help=f"directory of the gzip IDX files (default {DEFAULT_DATA_DIR})")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help=f"torch.set_num_threads (default os.cpu_count() = {os.cpu_count()})")
    p.add_argument("--batch-size", type=int, default=100, help="examples per SGD step (default 100)")
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default 0.1)")
    return p.parse_args(argv)


def build_net(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 32, 5), nn.MaxPool2d(3), nn.ReLU(),     # 28 -> 24 -> 8
        nn.Conv2d(32, 64, 5), nn.MaxPool2d(2), nn.ReLU(),    # 8 -> 4 -> 2
        nn.Flatten(),                                        # 64 * 2 * 2 = 256
        nn.Linear(256, 200), nn.ReLU(),
        nn.Linear(200, 10),
    )


def load_data(torch, data_dir):
    """``(x_train, y_train), (x_test, y_test)`` as torch tensors, x ``[N, 1, 28, 28]`` float32."""
    from fundl.data import load_idx, standardizer

    train, test = load_idx(data_dir, "train"), load_idx(data_dir, "test")
    standardize = standardizer(train.x)  # training-set statistics only

    def to_torch(ds):
        x = torch.from_numpy(standardize(ds.x)).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        y = torch.from_numpy(ds.y).long()
        return x, y

    return to_torch(train), to_torch(test)


def evaluate(torch, net, x, y, batch_size=1000):
    """``(mean loss, accuracy)`` over the whole set."""
    net.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            logits = net(x[i:i + batch_size])
            t = y[i:i + batch_size]
            loss_sum += torch.nn.functional.cross_entropy(logits, t, reduction="sum").item()
            correct += (logits.argmax(1) == t).sum().item()
    net.train()
    return loss_sum / len(x), correct / len(x)


def main(argv=None):
    args = parse_args(argv)
    import torch

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    (x_tr, y_tr), (x_te, y_te) = load_data(torch, args.data_dir)
    net = build_net(torch)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr)
    shuffler = torch.Generator().manual_seed(args.seed + 1)
    n, bs = len(x_tr), args.batch_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; MNIST {n} train / "
          f"{len(x_te)} test from {args.data_dir}; "
          f"{sum(p.numel() for p in net.parameters()):,} parameters", flush=True)

    train_seconds = 0.0
    test_acc = float("nan")
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        net.train()
        order = torch.randperm(n, generator=shuffler)
        loss_sum = torch.zeros(())
        correct = torch.zeros((), dtype=torch.long)
        for i in range(0, n, bs):
            idx = order[i:i + bs]
            xb, yb = x_tr[idx], y_tr[idx]
            logits = net(xb)
            loss = torch.nn.functional.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == yb).sum()
        t_train = time.perf_counter() - t0
        train_seconds += t_train
        test_loss, test_acc = evaluate(torch, net, x_te, y_te)
        t_epoch = time.perf_counter() - t0
        print(f"epoch {epoch:>{len(str(args.epochs))}}/{args.epochs}  "
              f"train_loss={loss_sum.item() / n:.4f}  train_acc={correct.item() / n:.4f}  "
              f"test_loss={test_loss:.4f}  test_acc={test_acc:.4f}  "
              f"train {t_train:.2f}s  epoch {t_epoch:.2f}s", flush=True)
    if args.epochs == 0:
        _, test_acc = evaluate(torch, net, x_te, y_te)
    total = time.perf_counter() - t_start
    print(f"test_accuracy={test_acc:.4f} total_seconds={total:.1f} train_seconds={train_seconds:.1f}")
    return {"test_accuracy": test_acc, "total_seconds": total, "train_seconds": train_seconds}


if __name__ == "__main__":
    main()

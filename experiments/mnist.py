"""MNIST with the course recipe: convnet_mnist, cross-entropy, SGD lr 0.1, batch 100, 10 epochs.

Input is standardised with the training set's mean and standard deviation.
Data: MNIST-format IDX files (gzip or raw) from ``--data-dir`` (default
``../shared/data/mnist`` beside this repository, then ``$FUNDL_DATA_DIR``), or a
prepared TFDS copy; ``--dataset fashion_mnist`` likewise; ``--synthetic N``
trains on N random images (a smoke test that needs no data).

    python experiments/mnist.py                                  # the recipe, ~98.8% on the official 10k test set
    python experiments/mnist.py --epochs 1 --limit-train 2000    # a quick look
    python experiments/mnist.py --out runs/mnist --resume        # continue an interrupted run
    python experiments/mnist.py --export-params mnist_params.safetensors --export-model mnist_model.safetensors
    python experiments/mnist.py --init-from mnist_params.safetensors --epochs 2   # fine-tune from a params file

Writes into ``--out`` (default ``runs/mnist``): ``config.json``, ``metrics.jsonl``
(one line per epoch), ``curves.png``, ``checkpoints/<epoch>/``; with
``--export-params`` / ``--export-model``, the final params (``fundl.io.load``)
and the final model (``fundl.load_exported``, on standardised input: see the
``config`` metadata's ``norm``). The last line printed is ``test_accuracy=0.xxxx``.
"""
from __future__ import annotations

import argparse
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "mnist"
MODELS = ("convnet_mnist", "lenet5", "mlp")


def parse_args(argv=None):
    from fundl.experiment import (add_training_flags, check_training_flags, class_spec,
                                  positive_int)

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=("mnist", "fashion_mnist"), default="mnist",
                   help="which data set")
    p.add_argument("--data-dir", type=pathlib.Path, default=DEFAULT_DATA_DIR,
                   help="directory of the IDX files (or a TFDS data dir); $FUNDL_DATA_DIR is tried next")
    p.add_argument("--synthetic", type=positive_int, default=None, metavar="N",
                   help="train and test on N random 28x28 images instead of real data (smoke tests)")
    p.add_argument("--classes", type=class_spec, default=None, metavar="SPEC",
                   help="train and test on these digits only, e.g. '0-4' (labels renumbered "
                        "0..k-1 in order; the model gets k outputs): the pretraining half of "
                        "experiments/finetune.py")
    p.add_argument("--model", choices=MODELS, default="convnet_mnist",
                   help="convnet_mnist: conv32k5-maxpool3-relu-conv64k5-maxpool2-relu-fc200-relu-fc10; "
                        "lenet5: LeNet-5 (tanh); mlp: 784-512-256-10 (ReLU)")
    add_training_flags(p, epochs=10, batch_size=100, optimizer="sgd", lr=0.1, schedule="constant",
                       momentum=0.9, weight_decay=0.0, out="runs/mnist")
    return check_training_flags(p, p.parse_args(argv))


def load_data(args):
    """``(train, test, description)``; train/test are ``(x uint8 [N, 28, 28, 1], y int32 [N])``,
    restricted to ``--classes`` (relabelled) when given."""
    from fundl.data import parse_classes, select_classes
    from fundl.experiment import load_splits

    classes = parse_classes(args.classes, "--classes") if args.classes else None
    train, test, source = load_splits(
        args.dataset, image_shape=(28, 28, 1), data_dir=args.data_dir, synthetic=args.synthetic,
        seed=args.seed, limit_train=None if classes else args.limit_train,
        limit_test=None if classes else args.limit_test)
    if classes:
        train = select_classes(*train, classes, limit=args.limit_train)
        test = select_classes(*test, classes, limit=args.limit_test)
        source += f", digits {args.classes}"
    return train, test, source


def build_model(name: str, num_classes: int = 10):
    from fundl import models

    if name == "mlp":
        return models.mlp([512, 256, num_classes], name="mlp")
    return getattr(models, name)(num_classes)


def main(argv=None):
    args = parse_args(argv)
    from fundl.experiment import setup_compile_cache

    setup_compile_cache(args)  # before anything compiles
    import fundl.distributed
    if fundl.distributed.requested():  # one of several processes (FUNDL_*, srun, Indexed Job)
        fundl.distributed.initialize()
    import jax
    import numpy as np

    import fundl
    import fundl.data as D
    from fundl.experiment import make_optimizer, make_schedule, run, steps_per_epoch

    train, test, source = load_data(args)
    norm = D.standardizer(train[0])  # training-set statistics only
    from fundl.data import parse_classes
    model = build_model(args.model, len(parse_classes(args.classes)) if args.classes else 10)
    lr = make_schedule(args.schedule, args.lr, epochs=args.epochs,
                       steps_per_epoch=steps_per_epoch(len(train[0]), args.batch_size))
    opt = make_optimizer(args.optimizer, lr, momentum=args.momentum, weight_decay=args.weight_decay)
    print(f"fundl {fundl.__version__}, jax {jax.__version__} on {jax.default_backend()} "
          f"({jax.device_count()} device(s)); {source}: {len(train[0])} train / {len(test[0])} test; "
          f"{args.model}, {args.optimizer} lr {args.lr} ({args.schedule}), batch {args.batch_size}, "
          f"{args.epochs} epochs -> {args.out}", flush=True)
    config = {k: v for k, v in vars(args).items() if k not in ("no_progress", "compile_cache")}
    for flag in ("data_parallel", "fsdp"):  # only when set: keeps earlier config.json resumable
        if not config[flag]:
            del config[flag]
    if args.on_nonfinite == "stop":  # likewise
        del config["on_nonfinite"]
    config["norm"] = {"mean": np.asarray(norm.mean).tolist(), "std": np.asarray(norm.std).tolist()}
    records = run(model, opt, train, test, out=args.out, epochs=args.epochs,
                  batch_size=args.batch_size, seed=args.seed, transform=norm, resume=args.resume,
                  stop_after=args.stop_after, progress=not args.no_progress,
                  data_parallel=args.data_parallel, parallel="fsdp" if args.fsdp else None,
                  eval_batch_size=args.eval_batch_size, config=config, learning_rate=lr,
                  init_from=args.init_from, export_params=args.export_params,
                  export_model=args.export_model, on_nonfinite=args.on_nonfinite,
                  force=args.force,
                  title=f"{args.model} on {args.dataset if args.synthetic is None else 'synthetic'}")
    return records


if __name__ == "__main__":
    records = main()
    if records and "stopped" in records[-1]:  # on_nonfinite='stop': training went NaN/Inf
        raise SystemExit(1)

"""CIFAR-10 with ResNet-18 (CIFAR stem): SGD + momentum 0.9 + weight decay 5e-4, cosine schedule, crop + flip.

Input is standardised per channel with the training set's statistics; every
training batch is augmented on the device (random 32x32 crop of the image
zero-padded by 4, then a random horizontal flip; ``fundl.data.augment_cifar``)
with a key fixed by (seed, epoch, step).

Data, never downloaded (see ``fundl.data.load``): the python-pickle
``cifar-10-batches-py`` directory, or a TFDS copy prepared as array_record,
under ``--data-dir`` or ``$FUNDL_DATA_DIR`` or TFDS's default data dir. To get
the data once, on a machine with network::

    curl -O https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz && tar xzf cifar-10-python.tar.gz
    python experiments/cifar10.py --data-dir .        # the directory holding cifar-10-batches-py/

``--synthetic N`` trains on N random images (a smoke test that needs no data).

    python experiments/cifar10.py --data-dir DIR                          # 30 epochs (GPU advised; accuracy not measured here: no CIFAR-10 on this machine)
    python experiments/cifar10.py --synthetic 64 --epochs 1 --batch-size 32   # pipeline check, no data

Writes into ``--out`` (default ``runs/cifar10``): ``config.json``,
``metrics.jsonl``, ``curves.png``, ``checkpoints/<epoch>/``; ``--export-params FILE``
and ``--export-model FILE`` also write the final params (``fundl.io.load``) and
model (``fundl.load_exported``, on input standardised with the ``config``
metadata's ``norm``); ``--init-from FILE`` starts from a params file. The last line
printed is ``test_accuracy=0.xxxx``.
"""
from __future__ import annotations

import argparse
import pathlib

MODELS = ("resnet18", "resnet34", "resnet50")


def parse_args(argv=None):
    from fundl.experiment import add_training_flags, check_training_flags, positive_int

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", type=pathlib.Path, default=None,
                   help="directory holding cifar-10-batches-py/ or a TFDS copy; then $FUNDL_DATA_DIR, "
                        "then TFDS's default data dir")
    p.add_argument("--source", choices=("auto", "pickle", "tfds"), default="auto",
                   help="where to read CIFAR-10 from (auto: the first that has it)")
    p.add_argument("--synthetic", type=positive_int, default=None, metavar="N",
                   help="train and test on N random 32x32x3 images instead of real data (smoke tests)")
    p.add_argument("--model", choices=MODELS, default="resnet18", help="ResNet with the CIFAR stem")
    p.add_argument("--no-augment", action="store_true", help="train without crop + flip")
    add_training_flags(p, epochs=30, batch_size=128, optimizer="momentum", lr=0.1, schedule="cosine",
                       momentum=0.9, weight_decay=5e-4, out="runs/cifar10")
    return check_training_flags(p, p.parse_args(argv))


def load_data(args):
    """``(train, test, description)``; train/test are ``(x uint8 [N, 32, 32, 3], y int32 [N])``."""
    from fundl.experiment import load_splits

    return load_splits("cifar10", image_shape=(32, 32, 3), data_dir=args.data_dir, source=args.source,
                       synthetic=args.synthetic, seed=args.seed, limit_train=args.limit_train,
                       limit_test=args.limit_test)


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
    from fundl import models
    from fundl.experiment import make_optimizer, make_schedule, run, steps_per_epoch

    train, test, source = load_data(args)
    norm = D.standardizer(train[0], per_channel=True)  # training-set statistics only
    model = getattr(models, args.model)(10, stem="cifar")
    lr = make_schedule(args.schedule, args.lr, epochs=args.epochs,
                       steps_per_epoch=steps_per_epoch(len(train[0]), args.batch_size))
    opt = make_optimizer(args.optimizer, lr, momentum=args.momentum, weight_decay=args.weight_decay)
    print(f"fundl {fundl.__version__}, jax {jax.__version__} on {jax.default_backend()} "
          f"({jax.device_count()} device(s)); {source}: {len(train[0])} train / {len(test[0])} test; "
          f"{args.model}, {args.optimizer} lr {args.lr} ({args.schedule}), wd {args.weight_decay}, "
          f"batch {args.batch_size}, {args.epochs} epochs, "
          f"{'no augmentation' if args.no_augment else 'crop + flip'} -> {args.out}", flush=True)
    config = {k: v for k, v in vars(args).items() if k not in ("no_progress", "compile_cache")}
    for flag in ("data_parallel", "fsdp"):  # only when set: keeps earlier config.json resumable
        if not config[flag]:
            del config[flag]
    if args.on_nonfinite == "stop":  # likewise
        del config["on_nonfinite"]
    config["norm"] = {"mean": np.asarray(norm.mean).tolist(), "std": np.asarray(norm.std).tolist()}
    return run(model, opt, train, test, out=args.out, epochs=args.epochs, batch_size=args.batch_size,
               seed=args.seed, transform=norm, augment=None if args.no_augment else D.augment_cifar,
               resume=args.resume, stop_after=args.stop_after, progress=not args.no_progress,
               data_parallel=args.data_parallel, parallel="fsdp" if args.fsdp else None,
               eval_batch_size=args.eval_batch_size, config=config, learning_rate=lr,
               init_from=args.init_from, export_params=args.export_params,
               export_model=args.export_model, on_nonfinite=args.on_nonfinite,
               force=args.force,
               title=f"{args.model} on CIFAR-10" if args.synthetic is None else f"{args.model}, synthetic")


if __name__ == "__main__":
    records = main()
    if records and "stopped" in records[-1]:  # on_nonfinite='stop': training went NaN/Inf
        raise SystemExit(1)

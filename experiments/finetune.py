"""Fine-tune pretrained weights on new classes: load, replace the head, freeze, train.

Loads a model's weights (``--init-from``: a ``fundl.io`` file such as the
runners' ``--export-params``, or a PyTorch state_dict), replaces its
classification head for the new number of classes (``fundl.surgery``), freezes
what ``--freeze`` names (default: everything but the head, batch-norm
statistics included), trains on a few labelled examples and reports the test
accuracy, next to training the same model from scratch on the same data for
the same steps (``--compare``). The last line printed is ``test_accuracy=``
of the fine-tuned model.

Without ``--init-from`` it runs the offline demo: pretrain ``convnet_mnist`` on
the MNIST digits 0-4 (``experiments/mnist.py --classes 0-4``, once; the file is
reused), then fine-tune on a few hundred images of the digits 5-9 and compare
with training from scratch:

    python experiments/finetune.py                                   # the demo, ~1-2 min
    python experiments/finetune.py --init-from runs/m04.safetensors --classes 5-9 --train-size 300
    python experiments/finetune.py --init-from net.pth --pretrained-classes 10 --classes 0-9
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "mnist"
INPUT = (1, 28, 28, 1)


def parse_args(argv=None):
    from fundl.experiment import (add_compile_cache_flags,
                                  check_paths, class_spec, non_negative_int, positive_float, positive_int)

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--init-from", type=pathlib.Path, default=None, metavar="FILE",
      help="pretrained weights: a fundl.io file or a PyTorch state_dict (.pt/.pth/.safetensors); "
           "default: pretrain on --pretrain-classes first (the demo)")
    a("--model", choices=("convnet_mnist", "lenet5", "mlp"), default="convnet_mnist")
    a("--pretrained-classes", type=positive_int, default=None, metavar="K",
      help="outputs of the pretrained head (default: read from a fundl.io file)")
    a("--pretrain-classes", type=class_spec, default="0-4", help="demo: the digits to pretrain on")
    a("--pretrain-epochs", type=positive_int, default=3, help="demo: epochs of pretraining")
    a("--classes", type=class_spec, default="5-9", help="the digits to fine-tune on (labels renumbered 0..k-1)")
    a("--train-size", type=positive_int, default=500, help="labelled training images of --classes")
    a("--head", default=None, help="path of the head to replace (default: the last Dense)")
    a("--freeze", default="all-but-head",
      help="comma-separated path patterns to freeze, 'all-but-head' or 'none'")
    a("--epochs", type=positive_int, default=20)
    a("--batch-size", type=positive_int, default=50)
    a("--lr", type=positive_float, default=0.05, help="SGD with momentum 0.9")
    a("--compare", action=argparse.BooleanOptionalAction, default=True,
      help="also train the same model from scratch on the same data and steps")
    a("--seed", type=non_negative_int, default=0)
    a("--data-dir", type=pathlib.Path, default=DEFAULT_DATA_DIR)
    a("--synthetic", type=positive_int, default=None, metavar="N", help="random images (smoke tests)")
    a("--out", type=pathlib.Path, default=pathlib.Path("runs/finetune"),
      help="demo: where the pretraining run and its weights go")
    a("--no-progress", action="store_true")
    add_compile_cache_flags(p)
    args = p.parse_args(argv)
    check_paths(p, args, out=("out",), inputs=("init_from",))
    return args


def _runner(name: str):
    spec = importlib.util.spec_from_file_location(f"_runner_{name}", REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pretrain(args) -> pathlib.Path:
    """The demo's pretrained weights: ``experiments/mnist.py --classes`` once, then reused."""
    path = args.out / f"pretrained_{args.model}_{args.pretrain_classes}.safetensors"
    if path.exists():
        print(f"pretrained weights: {path} (reused; delete it to pretrain again)", flush=True)
        return path
    args.out.mkdir(parents=True, exist_ok=True)
    data = ["--synthetic", str(args.synthetic)] if args.synthetic else ["--data-dir", str(args.data_dir)]
    _runner("mnist").main([*data, "--model", args.model, "--classes", args.pretrain_classes,
                           "--epochs", str(args.pretrain_epochs), "--seed", str(args.seed),
                           "--out", str(args.out / "pretrain"), "--export-params", str(path),
                           *(["--no-progress"] if args.no_progress else [])])
    return path


def load_pretrained(args, path):
    """``(model, params, state, norm)``: the pretrained model and weights, checked against it,
    and the input normalisation recorded with them (None if the file has none)."""
    import fundl
    from fundl import io

    mnist = _runner("mnist")
    try:
        meta = io.metadata(path)
    except io.NotFundlFileError:
        meta = None
    k = args.pretrained_classes or (meta and _head_classes(io.load(path)[0]))
    if not k:
        raise SystemExit(f"finetune: {path} is a PyTorch state_dict: give --pretrained-classes K "
                         "(the outputs of its head)")
    model = mnist.build_model(args.model, k)
    if meta is None:
        params, state = fundl.interop.from_torch(model, str(path), input_shape=INPUT)
    else:
        params, state = io.load(path, model=model, input_shape=INPUT)
    norm = json.loads(meta.get("config", "{}")).get("norm") if meta else None
    return model, params, state, norm


def _head_classes(params) -> int:
    """Outputs of the last Dense-like ``w`` in a params tree (in insertion order)."""
    last = None

    def walk(tree):
        nonlocal last
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value)
            elif key == "w" and getattr(value, "ndim", 0) == 2:
                last = value.shape[1]

    walk(params)
    return last


def new_head(model, params, state, args, k: int, key):
    """The model with its head replaced by ``Dense(k)``, and params and state carried over."""
    import fundl.layers as L
    from fundl import surgery

    head = args.head or [p for p in surgery.paths(model)
                         if isinstance(surgery.get(model, p), L.Dense)][-1]
    new = surgery.replace(model, head, L.Dense(k))
    # the old head answers other classes: drop it, so that adapt initialises a new one
    # even when the class counts agree
    params = _without(params, head.split("/"))
    params, state, report = surgery.adapt(new, params, state, key=key, input_shape=INPUT)
    print(f"head {head!r} replaced by Dense({k}); kept {len(report.kept)} groups of arrays, "
          f"initialised {report.initialised}", flush=True)
    return new, params, state, head


def _without(tree, path):
    """``tree`` without the entry at ``path`` (a list of keys); the input is not changed."""
    if not path or path[0] not in tree:
        return tree
    out = dict(tree)
    if len(path) == 1:
        del out[path[0]]
    else:
        out[path[0]] = _without(tree[path[0]], path[1:])
    return out


def frozen_patterns(params, head: str, spec: str):
    """The parameter groups to freeze: every layer but the head by default."""
    if spec == "none":
        return None
    if spec != "all-but-head":
        return tuple(s.strip() for s in spec.split(",") if s.strip())
    groups = []

    def walk(tree, path):
        if any(not isinstance(v, dict) for v in tree.values()):
            groups.append("/".join(path))
        for k, v in tree.items():
            if isinstance(v, dict):
                walk(v, path + (k,))

    walk(params, ())
    return tuple(g for g in groups if g != head and not g.startswith(head + "/"))


def load_data(args):
    """``(train, test)`` of ``--classes``, relabelled, ``train`` cut to ``--train-size``."""
    from fundl.data import select_classes
    from fundl.experiment import load_splits

    train, test, _ = load_splits("mnist", image_shape=INPUT[1:], data_dir=args.data_dir,
                                 synthetic=args.synthetic, seed=args.seed)
    return (select_classes(*train, args.classes, limit=args.train_size),
            select_classes(*test, args.classes))


def train(model, params, state, train_data, test_data, args, frozen, label):
    import jax
    import optax

    from fundl.train import fit

    opt = optax.sgd(args.lr, momentum=0.9)
    res = fit(model, params, state, opt, train_data, epochs=args.epochs,
              batch_size=args.batch_size, key=jax.random.key(args.seed), eval_data=test_data,
              progress=not args.no_progress, frozen=frozen)
    acc = res.history[-1]["test_accuracy"]
    print(f"{label}: test_accuracy={acc:.4f} after {args.epochs} epochs of "
          f"{len(train_data[0])} images", flush=True)
    return acc


def main(argv=None):
    args = parse_args(argv)
    from fundl.experiment import setup_compile_cache

    setup_compile_cache(args)  # before anything compiles
    import jax
    import numpy as np

    import fundl.data as D
    from fundl.data import parse_classes

    k = len(parse_classes(args.classes, "--classes"))
    path = args.init_from or pretrain(args)
    model, params, state, norm = load_pretrained(args, path)
    (xtr, ytr), (xte, yte) = load_data(args)
    norm = (D.Standardizer(np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32))
            if norm else D.standardizer(xtr))
    train_data, test_data = (norm(xtr), ytr), (norm(xte), yte)
    print(f"fine-tuning {args.model} from {path} on digits {args.classes}: {len(xtr)} train / "
          f"{len(xte)} test images", flush=True)
    net, p, s, head = new_head(model, params, state, args, k, jax.random.key(args.seed + 1))
    frozen = frozen_patterns(p, head, args.freeze)
    print(f"frozen: {list(frozen) if frozen else 'nothing'}", flush=True)
    scratch = None
    if args.compare:
        _, p0, s0 = net.init_with_state(jax.random.key(args.seed + 1), INPUT)
        scratch = train(net, p0, s0, train_data, test_data, args, None, "from scratch")
    tuned = train(net, p, s, train_data, test_data, args, frozen, "fine-tuned")
    if scratch is not None:
        print(f"fine-tuned {tuned:.4f} vs from scratch {scratch:.4f} (same data and steps)")
    print(f"test_accuracy={tuned:.4f}", flush=True)
    return tuned, scratch


if __name__ == "__main__":
    main()

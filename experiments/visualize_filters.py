"""The classic convolution pictures: hand-set filters, learned filters, feature maps.

Writes three PNGs into ``--out``:

* ``handset_filters.png``: five hand-set 3x3 filters (identity, box blur,
  vertical edge, horizontal edge, Laplacian) applied with
  ``fundl.functional.conv`` (no padding, so a 28x28 digit gives 26x26 maps) to
  one test digit: the input, the five kernels (values printed) and the five
  responses.
* ``learned_filters.png``: the 32 first-layer 5x5 filters of
  ``fundl.models.convnet_mnist`` after a short training run (plain SGD, lr 0.1,
  batch 100, standardised input), each on its own symmetric grey scale.
* ``activations.png``: the 32 conv1 feature maps (24x24, before pooling and
  ReLU) of that network for the same test digit.

Data: real MNIST from ``--data-dir`` (read with ``fundl.data.load_idx``); if
that directory is absent (or ``--source sklearn``), scikit-learn's 1,797 8x8
digits, upsampled 3x (nearest) and zero-padded to 28x28 so that
``convnet_mnist`` applies unchanged.

    python experiments/visualize_filters.py                       # 1 epoch on MNIST, ~20 s on 2 CPU cores
    python experiments/visualize_filters.py --limit-train 500     # a few seconds
    python experiments/visualize_filters.py --source sklearn      # no MNIST needed

Prints the paths written, one per line.
"""
from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "mnist"

# Figure geometry, fixed (no bbox_inches='tight') so the PNG sizes are known:
# width x height in pixels = figsize * DPI.
DPI = 100
FIGSIZES = {"handset_filters": (12.0, 4.6), "learned_filters": (8.0, 4.6),
            "activations": (12.0, 5.6)}

# Hand-set 3x3 kernels, as F.conv applies them: cross-correlation, out[i, j] =
# sum_{a, b} x[i + a, j + b] * k[a, b] (no flip; the Laplacian is symmetric anyway).
HANDSET = {
    "identity": np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], np.float32),
    "box blur": np.full((3, 3), 1 / 9, np.float32),
    # Prewitt: responds to intensity changes along x, i.e. to vertical edges.
    "vertical edge": np.array([[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]], np.float32),
    "horizontal edge": np.array([[-1, -1, -1], [0, 0, 0], [1, 1, 1]], np.float32),
    "Laplacian": np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32),
}


def parse_args(argv=None):
    from fundl.experiment import add_compile_cache_flags, check_paths, non_negative_int, positive_int

    p = argparse.ArgumentParser(description="Hand-set and learned convolution filters, as PNGs.")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/filters"),
                   help="output directory (default runs/filters)")
    p.add_argument("--data-dir", type=pathlib.Path, default=DEFAULT_DATA_DIR,
                   help=f"MNIST gzip IDX directory (default {DEFAULT_DATA_DIR})")
    p.add_argument("--source", choices=("auto", "mnist", "sklearn"), default="auto",
                   help="auto: MNIST if --data-dir exists, else scikit-learn's digits (default auto)")
    p.add_argument("--epochs", type=non_negative_int, default=1, help="training epochs for convnet_mnist (default 1)")
    p.add_argument("--limit-train", type=positive_int, default=None,
                   help="train on the first N training images only (default: all)")
    p.add_argument("--from-run", type=pathlib.Path, default=None, metavar="DIR",
                   help="show the convnet_mnist trained by experiments/mnist.py --out DIR (its latest "
                        "checkpoint and normalisation) instead of training one here")
    p.add_argument("--index", type=non_negative_int, default=0, help="which test digit to show (default 0)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed for initialisation and shuffling (default 0)")
    add_compile_cache_flags(p)
    args = p.parse_args(argv)
    check_paths(p, args, out=("out",), dirs=("from_run",))
    return args


# -- data ----------------------------------------------------------------------

def load_data(source: str, data_dir: pathlib.Path):
    """``(name, (x_train, y_train), (x_test, y_test))`` with x float32 ``[N, 28, 28, 1]``
    scaled to [0, 1] and y int32."""
    if source == "auto":
        source = "mnist" if pathlib.Path(data_dir).is_dir() else "sklearn"
        if source == "sklearn":
            print(f"MNIST not found at {data_dir}; using scikit-learn's 8x8 digits upsampled to 28x28")
    if source == "mnist":
        from fundl.data import load_idx

        train, test = load_idx(data_dir, "train"), load_idx(data_dir, "test")
        scale = lambda x: np.asarray(x, np.float32) / 255.0  # noqa: E731
        return "MNIST", (scale(train.x), np.asarray(train.y, np.int32)), \
            (scale(test.x), np.asarray(test.y, np.int32))
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32) / 16.0                     # [1797, 8, 8] in [0, 1]
    x = np.kron(x, np.ones((1, 3, 3), np.float32))                  # nearest 3x: 24x24
    x = np.pad(x, ((0, 0), (2, 2), (2, 2)))[..., None]              # [1797, 28, 28, 1]
    y = digits.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=360, stratify=y, random_state=0)
    return "sklearn digits (8x8 upsampled)", (x_tr, y_tr), (x_te, y_te)


# -- hand-set filters --------------------------------------------------------------

def apply_filters(image, kernels=None):
    """Apply 3x3 kernels to one grey image with ``fundl.functional.conv`` (no padding).

    Args:
      image: ``[H, W]`` (or ``[H, W, 1]``) array.
      kernels: ``{name: [3, 3] array}``; default :data:`HANDSET`.

    Returns:
      ``{name: [H - 2, W - 2] float32 NumPy array}``, in the order of ``kernels``.
    """
    import fundl.functional as F

    kernels = HANDSET if kernels is None else kernels
    img = np.asarray(image, np.float32)
    img = img[..., 0] if img.ndim == 3 else img
    w = np.stack([np.asarray(k, np.float32) for k in kernels.values()], -1)[:, :, None, :]
    out = np.asarray(F.conv(img[None, :, :, None], w))[0]            # [H-2, W-2, K]
    return {name: out[..., i] for i, name in enumerate(kernels)}


def plot_handset(image, kernels, responses, path, source):
    import matplotlib.pyplot as plt

    names = list(responses)
    fig, axes = plt.subplots(2, len(names) + 1, figsize=FIGSIZES["handset_filters"], dpi=DPI,
                             layout="constrained")
    axes[0, 0].imshow(image, cmap="gray")
    axes[0, 0].set_title(f"input {image.shape[0]}x{image.shape[1]}")
    axes[1, 0].axis("off")
    axes[1, 0].text(0.5, 0.5, "F.conv(x, k)\nno padding\n(cross-correlation)\n\n"
                    "signed maps:\nred > 0 > blue",
                    ha="center", va="center", transform=axes[1, 0].transAxes)
    for j, name in enumerate(names, start=1):
        k = np.asarray(kernels[name], np.float32)
        ax = axes[0, j]
        m = float(np.abs(k).max()) or 1.0
        ax.imshow(k, cmap="RdBu_r", vmin=-m, vmax=m)
        for (r, c), v in np.ndenumerate(k):
            ax.text(c, r, f"{v:.2g}" if v % 1 else f"{int(v)}", ha="center", va="center",
                    fontsize=10, color="white" if abs(v) > 0.6 * m else "black")
        ax.set_title(f"kernel: {name}")
        r = responses[name]
        m = float(np.abs(r).max()) or 1.0
        # Signed responses (edges, Laplacian) on a diverging map centred at 0.
        if r.min() < 0:
            axes[1, j].imshow(r, cmap="RdBu_r", vmin=-m, vmax=m)
        else:
            axes[1, j].imshow(r, cmap="gray")
        axes[1, j].set_title(f"{name} {r.shape[0]}x{r.shape[1]}")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Hand-set 3x3 filters on one {source} test digit")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


# -- learned filters ---------------------------------------------------------------

def train_convnet(train, test, *, epochs, seed):
    """Train ``convnet_mnist`` (SGD 0.1, batch 100, standardised input); returns
    ``(model, params, standardize, test_accuracy)``."""
    import jax
    import optax

    from fundl.data import standardizer
    from fundl.models import convnet_mnist
    from fundl.train import evaluate, fit

    standardize = standardizer(train[0])  # training-set mean and std, float32 out
    x_tr, x_te = standardize(train[0]), standardize(test[0])
    model = convnet_mnist(10)
    k_init, k_fit = jax.random.split(jax.random.key(seed))
    params = jax.jit(lambda k: model.init(k, (1, 28, 28, 1))[1])(k_init)
    result = fit(model, params, {}, optax.sgd(0.1), (x_tr, train[1]), epochs=epochs,
                 batch_size=100, key=k_fit, progress=False, drop_last=len(x_tr) >= 100)
    acc = evaluate(model, result.params, result.state, (x_te, test[1]), batch_size=1000)["accuracy"]
    return model, result.params, standardize, acc


def plot_learned(w, path, title):
    """``w``: ``[5, 5, 1, 32]`` conv1 weights, drawn in a 4x8 grid."""
    import matplotlib.pyplot as plt

    w = np.asarray(w)[:, :, 0, :]
    n = w.shape[-1]
    cols = 8
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=FIGSIZES["learned_filters"], dpi=DPI,
                             layout="constrained")
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        m = float(np.abs(w[..., i]).max()) or 1.0
        ax.imshow(w[..., i], cmap="gray", vmin=-m, vmax=m)  # per filter: black < 0 < white
        ax.set_title(str(i), fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_activations(image, maps, path, title):
    """``image``: ``[28, 28]``; ``maps``: ``[24, 24, 32]`` conv1 outputs."""
    import matplotlib.pyplot as plt

    n = maps.shape[-1]
    cols = 8
    rows = -(-n // cols)
    fig = plt.figure(figsize=FIGSIZES["activations"], dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(rows, cols + 2)
    ax = fig.add_subplot(grid[:2, :2])
    ax.imshow(image, cmap="gray")
    ax.set_title("input")
    ax.set_xticks([])
    ax.set_yticks([])
    for i in range(n):
        ax = fig.add_subplot(grid[i // cols, 2 + i % cols])
        ax.imshow(maps[..., i], cmap="viridis")
        ax.set_title(str(i), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


# -- main ----------------------------------------------------------------------------

def load_run(run_dir: pathlib.Path):
    """``(params, standardize, test_accuracy, description)`` of a run of experiments/mnist.py.

    ``standardize`` maps images in [0, 1] (this script's scale) to the run's input:
    ``(255 x - mean) / std`` with the statistics recorded in ``config.json``.
    """
    import json

    from fundl.experiment import load_checkpoint, read_metrics

    config = json.loads((run_dir / "config.json").read_text())
    if config.get("model") != "convnet_mnist":
        raise SystemExit(f"--from-run {run_dir}: trained model {config.get('model')!r}, "
                         "expected 'convnet_mnist'")
    epoch, tree = load_checkpoint(run_dir)
    mean, std = (np.float32(config["norm"][k]) for k in ("mean", "std"))
    acc = next(r["test_accuracy"] for r in read_metrics(run_dir / "metrics.jsonl") if r["epoch"] == epoch)
    what = f"convnet_mnist from {run_dir}, epoch {epoch} (test acc {acc:.4f})"
    return tree["params"], lambda x: (np.float32(255) * x - mean) / std, acc, what


def main(argv=None):
    args = parse_args(argv)
    from fundl.experiment import setup_compile_cache

    setup_compile_cache(args)  # before anything compiles
    import matplotlib

    matplotlib.use("Agg")
    import fundl.functional as F

    t0 = time.perf_counter()
    source, train, test = load_data(args.source, args.data_dir)
    if args.limit_train is not None:
        train = (train[0][:args.limit_train], train[1][:args.limit_train])
    digit = test[0][args.index, :, :, 0]  # [28, 28] in [0, 1]
    args.out.mkdir(parents=True, exist_ok=True)
    paths = {name: args.out / f"{name}.png" for name in FIGSIZES}

    plot_handset(digit, HANDSET, apply_filters(digit), paths["handset_filters"], source)

    if args.from_run is not None:
        params, standardize, acc, what = load_run(args.from_run)
    else:
        _, params, standardize, acc = train_convnet(train, test, epochs=args.epochs, seed=args.seed)
        what = (f"convnet_mnist, {args.epochs} epoch(s) on {len(train[0]):,} {source} images "
                f"(test acc {acc:.4f})")
    plot_learned(params["conv1"]["w"], paths["learned_filters"], f"Learned conv1 5x5 filters\n{what}")
    maps = np.asarray(F.conv(standardize(digit[None, :, :, None]), params["conv1"]["w"],
                             params["conv1"]["b"]))[0]
    plot_activations(digit, maps, paths["activations"],
                     f"conv1 feature maps (before pool and ReLU) of test digit {args.index} "
                     f"(label {int(test[1][args.index])})\n{what}")
    print(f"test_accuracy={acc:.4f} ({time.perf_counter() - t0:.1f}s)")
    for p in paths.values():
        print(p)
    return paths


if __name__ == "__main__":
    main()

"""experiments/visualize_filters.py: the hand-set filters' values and the three PNGs it writes."""
import importlib.util
import pathlib

import numpy as np
import pytest

# Subprocesses, notebooks or whole training runs: the slow tier.
pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def vf():
    spec = importlib.util.spec_from_file_location(
        "visualize_filters", REPO / "experiments" / "visualize_filters.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def correlate_valid(img, k):
    """Independent reference: 2-d cross-correlation, no padding, by explicit loops."""
    kh, kw = k.shape
    out = np.zeros((img.shape[0] - kh + 1, img.shape[1] - kw + 1), np.float64)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = sum(img[i + a, j + b] * k[a, b] for a in range(kh) for b in range(kw))
    return out


# -- the hand-set filters -------------------------------------------------------------

def test_identity_returns_the_input_crop(vf):
    img = np.random.default_rng(0).uniform(0, 1, (9, 7)).astype(np.float32)
    out = vf.apply_filters(img)["identity"]
    assert out.shape == (7, 5)
    np.testing.assert_array_equal(out, img[1:-1, 1:-1])


def test_laplacian_exact_on_a_hand_made_image(vf):
    img = np.array([[0, 0, 0, 0],
                    [0, 1, 2, 0],
                    [0, 3, 4, 0],
                    [0, 0, 0, 0]], np.float32)
    # up + down + left + right - 4 * centre, at the four interior pixels:
    # (1,1): 0+3+0+2-4 = 1; (1,2): 0+4+1+0-8 = -3; (2,1): 1+0+0+4-12 = -7; (2,2): 2+0+3+0-16 = -11
    out = vf.apply_filters(img)["Laplacian"]
    np.testing.assert_array_equal(out, np.array([[1, -3], [-7, -11]], np.float32))


def test_all_handset_filters_match_numpy_loops(vf):
    img = np.random.default_rng(1).uniform(0, 1, (8, 10)).astype(np.float32)
    out = vf.apply_filters(img[..., None])  # [H, W, 1] accepted too
    assert list(out) == ["identity", "box blur", "vertical edge", "horizontal edge", "Laplacian"]
    for name, k in vf.HANDSET.items():
        np.testing.assert_allclose(out[name], correlate_valid(img, k), rtol=1e-5, atol=1e-5,
                                   err_msg=name)


def test_edge_filters_orientation(vf):
    img = np.zeros((6, 6), np.float32)
    img[:, 3:] = 1.0  # a vertical step edge (dark left, bright right)
    out = vf.apply_filters(img)
    assert np.all(out["horizontal edge"] == 0)
    np.testing.assert_array_equal(out["vertical edge"][0], [0, 3, 3, 0])  # 3 rows of (+1 - 0)
    img_t = np.ascontiguousarray(img.T)  # a horizontal edge (dark top, bright bottom)
    out_t = vf.apply_filters(img_t)
    assert np.all(out_t["vertical edge"] == 0)
    np.testing.assert_array_equal(out_t["horizontal edge"][:, 0], [0, 3, 3, 0])


# -- the PNGs ------------------------------------------------------------------------------

def check_pngs(vf, paths, out_dir):
    import matplotlib.image as mpimg

    assert set(paths) == {"handset_filters", "learned_filters", "activations"}
    for name, path in paths.items():
        path = pathlib.Path(path)
        assert path.parent == out_dir and path.name == f"{name}.png"
        data = path.read_bytes()
        assert len(data) > 1000 and data[:8] == PNG_MAGIC, name
        img = mpimg.imread(path)
        w, h = vf.FIGSIZES[name]
        assert img.shape[2] in (3, 4), name
        assert abs(img.shape[0] - h * vf.DPI) <= 2 and abs(img.shape[1] - w * vf.DPI) <= 2, \
            (name, img.shape)
        assert img[..., :3].std() > 0.05, name  # not a blank picture


def test_main_falls_back_to_sklearn_digits(vf, tmp_path, capsys):
    out = tmp_path / "filters"
    paths = vf.main(["--out", str(out), "--data-dir", str(tmp_path / "no-mnist-here"),
                     "--limit-train", "500", "--epochs", "1"])
    printed = capsys.readouterr().out
    assert "using scikit-learn's 8x8 digits" in printed
    for p in paths.values():
        assert str(p) in printed
    check_pngs(vf, paths, out)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"no MNIST at {MNIST_DIR}")
def test_main_on_mnist(vf, tmp_path, capsys):
    pytest.importorskip("fundl.data")
    out = tmp_path / "filters"
    paths = vf.main(["--out", str(out), "--data-dir", str(MNIST_DIR), "--limit-train", "500"])
    printed = capsys.readouterr().out
    assert "scikit-learn" not in printed
    acc = float(printed.split("test_accuracy=")[1].split()[0])
    assert acc > 0.2  # 5 SGD steps on 500 digits (0.31-0.41 over seeds 0-2): above chance (0.1)
    check_pngs(vf, paths, out)


def test_main_from_a_run_of_the_mnist_runner(vf, tmp_path, capsys):
    """--from-run shows the runner's trained conv1 (its checkpoint), not a newly trained one."""
    spec = importlib.util.spec_from_file_location("mnist_runner", REPO / "experiments" / "mnist.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    run_dir = tmp_path / "run"
    records = runner.main(["--synthetic", "200", "--epochs", "1", "--out", str(run_dir), "--no-progress"])
    paths = vf.main(["--out", str(tmp_path / "filters"), "--source", "sklearn", "--from-run", str(run_dir)])
    printed = capsys.readouterr().out
    assert f"test_accuracy={records[-1]['test_accuracy']:.4f}" in printed
    check_pngs(vf, paths, tmp_path / "filters")
    with pytest.raises(SystemExit, match="expected 'convnet_mnist'"):
        cfg = run_dir / "config.json"
        cfg.write_text(cfg.read_text().replace('"convnet_mnist"', '"mlp"'))
        vf.main(["--out", str(tmp_path / "f2"), "--source", "sklearn", "--from-run", str(run_dir)])

"""fundl.interop: PyTorch state dicts in and out, checked against torch.nn models.

Each zoo model is rebuilt in ``torch.nn`` with torchvision's module names (small
builders below: torchvision itself cannot be installed next to this torch), given
random weights and random batch-norm statistics, loaded with ``from_torch`` and
compared: logits in eval mode, logits and running statistics after one train-mode
forward, and the ``to_torch`` round trip (bit for bit). The heavy models are in
the slow tier; every comparison prints its largest differences (``-s`` shows them).
"""
from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

import fundl
import fundl.layers as L
from fundl import models, surgery
from fundl.interop import StateDictError, StateDictWarning, from_torch, to_torch, torch_names

KEY = jax.random.key(0)
TOL = 1e-4  # max |fundl - torch| / max |torch| for logits and running statistics


# -- torch twins of the zoo, with torchvision's names ----------------------------------------

class TorchBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(cin, planes, stride)

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchBottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # torchvision v1.5
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = _downsample(cin, planes * 4, stride)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


def _downsample(cin, cout, stride):
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class TorchResNet(nn.Module):
    """torchvision.models.ResNet's modules and forward (and the CIFAR stem: 3x3 conv, no pool)."""

    def __init__(self, block, layers, num_classes=1000, stem="imagenet"):
        super().__init__()
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else nn.Identity()
        cin = 64
        for i, n in enumerate(layers):
            planes = 64 * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if i > 0 and j == 0 else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TorchVGG(nn.Module):
    """torchvision.models.VGG: features (conv, [bn], relu, ..., 'M' maxpool), avgpool, classifier."""

    def __init__(self, cfg, batch_norm, num_classes=1000):
        super().__init__()
        parts, cin = [], 3
        for v in models.VGG_CONFIGS[cfg]:
            if v == "M":
                parts.append(nn.MaxPool2d(2, 2))
                continue
            parts += [nn.Conv2d(cin, v, 3, padding=1),
                      *([nn.BatchNorm2d(v)] if batch_norm else []), nn.ReLU()]
            cin = v
        self.features = nn.Sequential(*parts)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class TorchAlexNet(nn.Module):
    """torchvision.models.AlexNet."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(),
            nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def torch_mlp():
    """The nn.Sequential of fundl.models.mlp((32, 10)) on 28x28x1."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


def torch_convnet_mnist():
    """The nn.Sequential in fundl.models.convnet_mnist's docstring."""
    return nn.Sequential(nn.Conv2d(1, 32, 5), nn.MaxPool2d(3), nn.ReLU(),
                         nn.Conv2d(32, 64, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(256, 200), nn.ReLU(), nn.Linear(200, 10))


def torch_lenet5():
    """The nn.Sequential in fundl.models.lenet5's docstring (tanh)."""
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(),
                         nn.Linear(84, 10))


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Random weights (torch's default init) and random batch-norm affine parameters and
    running statistics (so that loading them is checked, not their defaults)."""
    torch.manual_seed(seed)
    for m in module.modules():
        if hasattr(m, "reset_parameters") and not isinstance(m, nn.modules.batchnorm._NormBase):
            m.reset_parameters()
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                c = m.num_features
                m.weight.uniform_(0.5, 1.0)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)
                assert m.running_mean.shape == (c,)
    return module


# -- the comparisons -----------------------------------------------------------------------

def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def rel(a, b) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def run_fundl(model, params, state, x, train):
    if model.stateful:
        f = jax.jit(lambda p, s, x: model.apply(p, x, state=s, train=train))
        return f(params, state, x)
    return jax.jit(lambda p, x: model.apply(p, x, train=train))(params, x), {}


def check_parity(name, model, tmodel, input_shape, *, train_too=True, seed=0):
    """Load tmodel's state dict into model; compare eval logits, the round trip and (for
    batch-norm models) one train-mode forward. Returns the differences."""
    tmodel = randomise(tmodel, seed)
    sd = tmodel.state_dict()
    params, state = from_torch(model, sd)     # input_shape: the model's standard input
    x = np.random.default_rng(seed).standard_normal(input_shape).astype(np.float32)
    tmodel.eval()
    with torch.no_grad():
        y_ref = tmodel(nchw(x)).numpy()
    y, _ = run_fundl(model, params, state, x, False)
    out = {"eval": rel(y, y_ref)}
    assert out["eval"] <= TOL, (name, out)
    back = to_torch(model, params, state)
    assert set(back) == {k for k in sd if not k.endswith("num_batches_tracked")}
    for k, v in back.items():
        assert v.dtype == np.float32 and np.array_equal(v, sd[k].numpy()), k
    if train_too and model.stateful:
        out.update(_train_parity(name, model, tmodel, params, state, x))
    print(f"\n{name}: " + ", ".join(f"{k} {v:.2e}" for k, v in out.items()))
    return out


def _train_parity(name, model, tmodel, params, state, x):
    """One train-mode forward (dropout off in both): logits and the new running statistics.

    Batch statistics of a batch of 2 at 2x2 (ResNet's last stage at 64x64) are badly
    conditioned, and through 33 or 50 blocks float32 rounding grows past ``TOL`` in torch
    itself. Where fundl and torch differ by more than ``TOL``, both are compared with
    torch in float64: fundl must be within 3x of torch's own float32 error.
    """
    before = {k: v.clone() for k, v in tmodel.state_dict().items()}
    y_ref, sd = _torch_train_forward(tmodel, x)
    # Dropout off where there is any (a train pattern matching no layer is an error).
    mode = {"*dropout*": False, "*": True} if "Dropout(" in repr(model) else True
    y, new_state = run_fundl(model, params, state, x, mode)
    got = to_torch(model, params, new_state)
    stats = [k for k in got if k.endswith(("running_mean", "running_var"))]
    out = {"train": rel(y, y_ref), "running stats": max(rel(got[k], sd[k]) for k in stats)}
    if max(out.values()) > TOL:
        t64 = copy.deepcopy(tmodel).double()
        t64.load_state_dict(before)
        y64, sd64 = _torch_train_forward(t64, x)
        out["train vs torch64"], out["torch32 vs torch64"] = rel(y, y64), rel(y_ref, y64)
        out["stats vs torch64"] = max(rel(got[k], sd64[k]) for k in stats)
        out["torch32 stats vs torch64"] = max(rel(sd[k], sd64[k]) for k in stats)
        assert out["train vs torch64"] <= max(TOL, 3 * out["torch32 vs torch64"]), (name, out)
        assert out["stats vs torch64"] <= max(TOL, 3 * out["torch32 stats vs torch64"]), \
            (name, out)
    return out


def _torch_train_forward(tmodel, x):
    """Logits and the state dict (as NumPy) after one train-mode forward, dropout off."""
    tmodel.train()
    for m in tmodel.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    dtype = next(tmodel.parameters()).dtype
    with torch.no_grad():
        y = tmodel(nchw(x).to(dtype)).numpy()
    return y, {k: v.numpy() for k, v in tmodel.state_dict().items()}


# -- fast tier: the course models, ResNet-18 (CIFAR stem) ------------------------------------

def test_mlp_matches_torch():
    check_parity("mlp", models.mlp((32, 10)), torch_mlp(), (3, 28, 28, 1))


def test_convnet_mnist_matches_torch():
    check_parity("convnet_mnist", models.convnet_mnist(), torch_convnet_mnist(), (3, 28, 28, 1))


def test_lenet5_matches_torch():
    check_parity("lenet5", models.lenet5(activation="tanh"), torch_lenet5(), (3, 28, 28, 1))


@pytest.mark.slow
def test_resnet18_cifar_matches_torch():
    t = TorchResNet(TorchBasicBlock, (2, 2, 2, 2), 10, stem="cifar")
    check_parity("resnet18 cifar", models.resnet18(10, stem="cifar"), t, (2, 32, 32, 3))


def test_zoo_names_are_torchvisions():
    """The keys of every zoo model equal those of its torch twin (shapes only, no weights)."""
    pairs = [(models.resnet50(), lambda: TorchResNet(TorchBottleneck, (3, 4, 6, 3))),
             (models.vgg11(batch_norm=True), lambda: TorchVGG("A", True)),
             (models.vgg13(), lambda: TorchVGG("B", False)),
             (models.alexnet(), TorchAlexNet),
             (models.lenet5(), torch_lenet5)]
    for model, build in pairs:
        with torch.device("meta"):  # shapes only: no memory, no init
            sd = build().state_dict()
        keys = {k for k in sd if not k.endswith("num_batches_tracked")}
        names = torch_names(model)
        got = {f"{m}.{s}" for m in names for s in ("weight", "bias", "running_mean",
                                                    "running_var")}
        assert keys <= got, (model.name, sorted(keys - got)[:5])
        assert set(names) == {k.rpartition(".")[0] for k in keys}, model.name
    assert torch_names(models.vgg16())["classifier.6"] == "classifier/fc3"
    assert torch_names(models.vgg16(batch_norm=True))["features.40"] == "features/conv13"
    assert list(torch_names(models.alexnet())) == [
        "features.0", "features.3", "features.6", "features.8", "features.10",
        "classifier.1", "classifier.4", "classifier.6"]


# -- slow tier: the ImageNet models -------------------------------------------------------------

RESNETS = {18: (TorchBasicBlock, (2, 2, 2, 2)), 34: (TorchBasicBlock, (3, 4, 6, 3)),
           50: (TorchBottleneck, (3, 4, 6, 3)), 101: (TorchBottleneck, (3, 4, 23, 3)),
           152: (TorchBottleneck, (3, 8, 36, 3))}


@pytest.mark.slow
@pytest.mark.parametrize("depth", sorted(RESNETS))
def test_resnet_matches_torchvision_layout(depth):
    block, layers = RESNETS[depth]
    model = getattr(models, f"resnet{depth}")(10)
    check_parity(f"resnet{depth}", model, TorchResNet(block, layers, 10), (2, 64, 64, 3))


@pytest.mark.slow
@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
@pytest.mark.parametrize("depth,cfg", [(11, "A"), (13, "B"), (16, "D"), (19, "E")])
def test_vgg_matches_torchvision_layout(depth, cfg, batch_norm):
    """At 64x64 the features end at 2x2, which the adaptive pool spreads to 7x7 (rows and
    columns of different values, so a wrong flatten permutation changes the logits)."""
    model = getattr(models, f"vgg{depth}")(10, batch_norm=batch_norm)
    check_parity(model.name, model, TorchVGG(cfg, batch_norm, 10), (2, 64, 64, 3))


@pytest.mark.slow
def test_alexnet_matches_torchvision_layout():
    """At 224x224 the features end at 6x6x256: the flatten permutation acts on distinct values."""
    check_parity("alexnet", models.alexnet(10), TorchAlexNet(10), (2, 224, 224, 3))



@pytest.mark.slow
def test_torchvision_resnet50_file_in_three_lines(tmp_path, monkeypatch):
    """The README recipe, on a random state dict saved under torchvision's file name."""
    tmodel = randomise(TorchResNet(TorchBottleneck, (3, 4, 6, 3)), 9).eval()
    torch.save(tmodel.state_dict(), tmp_path / "resnet50-0676ba61.pth")
    monkeypatch.chdir(tmp_path)
    images = np.random.default_rng(9).standard_normal((2, 64, 64, 3)).astype(np.float32)

    model = fundl.models.resnet50()                                     # 1000 ImageNet classes
    params, state = fundl.interop.from_torch(model, "resnet50-0676ba61.pth")
    logits, _ = model.apply(params, images, state=state)                # eval mode

    with torch.no_grad():
        y_ref = tmodel(nchw(images)).numpy()
    assert logits.shape == (2, 1000) and rel(logits, y_ref) <= TOL

# -- layouts: conv 1d/3d, groups, transposed convs, norms on a flattened map --------------------

def test_conv1d_groups_transposed_and_norms_after_flatten_match_torch():
    """[N, 7, 4] -> grouped conv -> grouped transposed conv -> Flatten of a 14x4 map ->
    BatchNorm and LayerNorm on the flattened vector (permuted too) -> Dense."""
    model = L.Serial(L.Conv(6, 3, padding=1, groups=2), L.ReLU(),
                     L.ConvTranspose(4, 2, stride=2, groups=2), L.Flatten(),
                     L.BatchNorm(), L.LayerNorm(), L.Dense(5))
    tmodel = nn.Sequential(nn.Conv1d(4, 6, 3, padding=1, groups=2), nn.ReLU(),
                           nn.ConvTranspose1d(6, 4, 2, stride=2, groups=2), nn.Flatten(),
                           nn.BatchNorm1d(56), nn.LayerNorm(56), nn.Linear(56, 5))
    with torch.no_grad():
        tmodel[5].weight.uniform_(0.5, 1.5)
        tmodel[5].bias.normal_()
    _layout_parity(model, tmodel, (4, 7, 4))


def test_conv3d_and_transposed_conv3d_match_torch():
    model = L.Serial(L.Conv(6, (2, 3, 2), stride=(1, 2, 1), groups=3, bias=False),
                     L.BatchNorm(), L.ReLU(), L.ConvTranspose(4, (3, 2, 2), stride=2, groups=2))
    tmodel = nn.Sequential(nn.Conv3d(3, 6, (2, 3, 2), stride=(1, 2, 1), groups=3, bias=False),
                           nn.BatchNorm3d(6), nn.ReLU(),
                           nn.ConvTranspose3d(6, 4, (3, 2, 2), stride=2, groups=2))
    _layout_parity(model, tmodel, (2, 4, 7, 5, 3))


def _layout_parity(model, tmodel, input_shape):
    tmodel = randomise(tmodel, 1)
    sd = tmodel.state_dict()
    params, state = from_torch(model, sd, input_shape=input_shape)
    x = np.random.default_rng(1).standard_normal(input_shape).astype(np.float32)
    for train in (False, True):
        tmodel.train(train)
        with torch.no_grad():
            y_ref = np.moveaxis(tmodel(nchw(x)).numpy(), 1, -1)
        y, new_state = run_fundl(model, params, state, x, train)
        assert rel(y, y_ref) <= TOL, train
    got, sd = to_torch(model, params, new_state, input_shape=input_shape), tmodel.state_dict()
    for k in got:
        if k.endswith(("running_mean", "running_var")):
            assert rel(got[k], sd[k].numpy()) <= TOL, k


# -- user models: names by map, by order; files; dtypes ------------------------------------------

class TorchUserNet(nn.Module):
    """Conv -> BN -> ReLU -> Flatten of a 3x5x4 map -> Linear, under names of its own."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(60, 6)

    def forward(self, x):
        return self.head(torch.flatten(self.body(x), 1))


USER_INPUT = (2, 5, 7, 3)  # H != W: a transposed (H, W) order would show


def user_model(nested=False):
    conv, bn, relu = L.Conv(4, 3, name="conv"), L.BatchNorm(name="bn"), L.ReLU()
    if nested:
        return L.Serial(L.Serial(conv, bn, relu, name="features"), L.Flatten(),
                        L.Dense(6, name="fc"), name="net")
    return L.Serial(conv, bn, relu, L.Flatten(), L.Dense(6, name="fc"), name="net")


def _user_logits(model, sd, **kw):
    params, state = from_torch(model, sd, input_shape=USER_INPUT, **kw)
    x = np.random.default_rng(2).standard_normal(USER_INPUT).astype(np.float32)
    return model.apply(params, x, state=state)[0], x


@pytest.mark.parametrize("nested,name_map", [
    (False, {"body.0": "conv", "body.1": "bn", "head": "fc"}),
    (True, {"body": "features", "head": "fc"}),        # a composite: its layers by position
    (False, "order"),
    (True, "order"),
], ids=["dict", "dict-subtree", "order", "order-nested"])
def test_user_model_by_name_map_and_by_order(nested, name_map):
    tmodel = randomise(TorchUserNet(), 3).eval()
    model = user_model(nested)
    y, x = _user_logits(model, tmodel.state_dict(), name_map=name_map)
    with torch.no_grad():
        y_ref = tmodel(nchw(x)).numpy()
    assert rel(y, y_ref) <= TOL
    names = torch_names(model, input_shape=USER_INPUT, name_map=name_map,
                        state_dict=tmodel.state_dict())
    assert names == {"body.0": "features/conv" if nested else "conv",
                     "body.1": "features/bn" if nested else "bn", "head": "fc"}
    back = to_torch(model, *from_torch(model, tmodel.state_dict(), input_shape=USER_INPUT,
                                       name_map=name_map), input_shape=USER_INPUT,
                    name_map=names)
    assert all(np.array_equal(v, tmodel.state_dict()[k].numpy()) for k, v in back.items())


def test_user_model_default_names_are_sequential_indices():
    assert torch_names(user_model(), input_shape=USER_INPUT) == {"0": "conv", "1": "bn",
                                                                 "4": "fc"}
    assert torch_names(user_model(True), input_shape=USER_INPUT) == {
        "features.0": "features/conv", "features.1": "features/bn", "fc": "fc"}


def test_mlp_on_a_multichannel_image_permutes_its_first_dense_rows():
    """mlp's Flatten of a 4x4x2 input: torch flattens (C, H, W), so dense1 needs the permutation."""
    tmodel = randomise(nn.Sequential(nn.Flatten(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 3)),
                       10).eval()
    model = models.mlp((8, 3))
    params, _ = from_torch(model, tmodel.state_dict(), input_shape=(2, 4, 4, 2))
    x = np.random.default_rng(10).standard_normal((2, 4, 4, 2)).astype(np.float32)
    with torch.no_grad():
        y_ref = tmodel(nchw(x)).numpy()
    assert rel(model.apply(params, x), y_ref) <= TOL

def test_wrong_flatten_order_would_show():
    """The same weights without the permutation (as if the map were 1x1) give other logits."""
    tmodel = randomise(TorchUserNet(), 3).eval()
    sd = tmodel.state_dict()
    model = user_model()
    y, x = _user_logits(model, sd, name_map="order")
    params, state = from_torch(model, sd, input_shape=USER_INPUT, name_map="order")
    params["fc"]["w"] = jnp.asarray(sd["head.weight"].numpy().T)   # no permutation
    y_wrong = model.apply(params, x, state=state)[0]
    assert rel(y_wrong, y) > 1e-2


def test_pt_and_safetensors_files(tmp_path):
    from safetensors.numpy import save_file

    tmodel = randomise(torch_convnet_mnist(), 4)
    sd = tmodel.state_dict()
    model = models.convnet_mnist()
    want = from_torch(model, sd)
    torch.save(sd, tmp_path / "convnet.pt")
    save_file({k: v.numpy() for k, v in sd.items()}, str(tmp_path / "convnet.safetensors"))
    for path in (tmp_path / "convnet.pt", str(tmp_path / "convnet.safetensors")):
        got = from_torch(model, path)
        assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, got, want)), path
    np_sd = {k: v.numpy() for k, v in sd.items()}           # a dict of NumPy arrays
    got = from_torch(model, np_sd)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, got, want))


def test_bfloat16_tensors_and_files_become_float32(tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.to(torch.bfloat16) for k, v in randomise(torch_lenet5(), 5).state_dict().items()}
    save_file(sd, str(tmp_path / "lenet.safetensors"))
    model = models.lenet5()
    for source in (sd, tmp_path / "lenet.safetensors"):
        params, _ = from_torch(model, source)
        w = params["conv1"]["w"]
        assert w.dtype == jnp.float32
        np.testing.assert_array_equal(w, sd["0.weight"].float().numpy().transpose(2, 3, 1, 0))


def test_to_torch_loads_into_torch_strictly():
    """num_batches_tracked is not written: torch's load_state_dict(strict=True) fills it in."""
    tmodel = randomise(TorchResNet(TorchBasicBlock, (1, 1, 1, 1), 10, stem="cifar"), 6)
    model = models.resnet(L.BasicBlock, (1, 1, 1, 1), 10, stem="cifar")
    params, state = from_torch(model, randomise(TorchResNet(TorchBasicBlock, (1, 1, 1, 1), 10,
                                                            stem="cifar"), 60).state_dict())
    sd = to_torch(model, params, state)
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    np.testing.assert_array_equal(tmodel.layer2[0].downsample[1].running_var.numpy(),
                                  state["layer2"]["block1"]["shortcut"]["bn"]["var"])


# -- strict and non-strict loading, errors ----------------------------------------------------

def _broken_convnet_sd():
    sd = dict(randomise(torch_convnet_mnist(), 7).state_dict())
    del sd["9.bias"]                                  # missing
    sd["extra.weight"] = torch.zeros(3)               # unexpected
    sd["3.weight"] = torch.zeros(64, 32, 3, 3)        # shape mismatch
    return sd


def test_strict_reports_missing_unexpected_and_mismatched_together():
    with pytest.raises(StateDictError) as e:
        from_torch(models.convnet_mnist(), _broken_convnet_sd())
    msg = str(e.value)
    for part in ("3 problems", "missing: key '9.bias' for Dense 'convnet_mnist/fc2'",
                 "unexpected: key 'extra.weight' of shape (3,)",
                 "mismatched: key '3.weight' has shape (64, 32, 3, 3)",
                 "Conv 'convnet_mnist/conv2' needs float (64, 32, 5, 5)", "torch_names(model)"):
        assert part in msg, (part, msg)
    assert (e.value.missing, e.value.unexpected, e.value.mismatched) == (
        ["9.bias"], ["extra.weight"], ["3.weight"])
    assert isinstance(e.value, fundl.FundlError)


@pytest.mark.slow
def test_non_strict_loads_what_fits_and_warns_about_the_rest():
    model = models.convnet_mnist()
    sd = _broken_convnet_sd()
    with pytest.warns(StateDictWarning, match="strict=False") as record:
        params, state = from_torch(model, sd, strict=False)
    assert record[0].message.missing == ["9.bias"]
    assert sorted(params) == ["conv1", "conv2", "fc1", "fc2"]
    assert sorted(params["conv2"]) == ["b"] and sorted(params["fc2"]) == ["w"]  # what fitted
    np.testing.assert_array_equal(params["fc2"]["w"], sd["9.weight"].numpy().T)
    full, _, report = surgery.adapt(model, params, state, key=KEY, input_shape=(1, 28, 28, 1))
    assert set(report.initialised) == {"conv2", "fc2"}
    assert model.apply(full, jnp.zeros((1, 28, 28, 1))).shape == (1, 10)


def test_fine_tuning_head_mismatch_with_adapt():
    """A 1000-class state dict into a 10-class ResNet: fc mismatched, the backbone loads."""
    with torch.device("meta"):
        shapes = TorchResNet(TorchBasicBlock, (1, 1, 1, 1), 1000).state_dict()
    sd = {k: np.ones(v.shape, np.float32) for k, v in shapes.items()}
    model = models.resnet(L.BasicBlock, (1, 1, 1, 1), 10)
    with pytest.warns(StateDictWarning) as record:
        params, state = from_torch(model, sd, strict=False, input_shape=(1, 64, 64, 3))
    assert record[0].message.mismatched == ["fc.weight", "fc.bias"]
    assert "fc" not in params and "layer4" in params


@pytest.mark.parametrize("case,error,match", [
    ("checkpoint", fundl.ConfigError, r"state_dict\['model'\] is a dict"),
    ("bad_name_map_path", fundl.ConfigError, r"name_map\['head'\] = 'classifier' names no layer"),
    ("order_to_torch", fundl.ConfigError, "name_map='order' pairs"),
    ("order_safetensors", fundl.ConfigError, "stores its keys sorted"),
    ("module_prefix", StateDictError, r"strip it: \{k.removeprefix\('module.'\)"),
    ("unsupported_layer", StateDictError, "PositionEmbedding 'net/pos'.*no known torch layout"),
    ("no_standard_input", fundl.ConfigError, "pass input_shape"),
    ("missing_file", FileNotFoundError, "does not exist"),
    ("bad_params", fundl.ShapeError, "fc"),
])
def test_errors_say_what_is_wrong(case, error, match, tmp_path):
    sd = randomise(torch_convnet_mnist(), 8).state_dict()
    net = models.convnet_mnist()
    calls = {
        "checkpoint": lambda: from_torch(net, {"model": sd, "epoch": 3}),
        "bad_name_map_path": lambda: from_torch(net, sd, name_map={"head": "classifier"}),
        "order_to_torch": lambda: to_torch(net, *from_torch(net, sd), name_map="order"),
        "order_safetensors": lambda: _order_safetensors(net, sd, tmp_path),
        "module_prefix": lambda: from_torch(net, {f"module.{k}": v for k, v in sd.items()}),
        "unsupported_layer": lambda: from_torch(_pos_net(), {}, input_shape=(1, 3, 4)),
        "no_standard_input": lambda: from_torch(L.Serial(L.Conv(2, 3), L.Conv(2, 300)), {}),
        "missing_file": lambda: from_torch(net, tmp_path / "nope.pt"),
        "bad_params": lambda: to_torch(net, {"fc": {}}, {}, input_shape=(1, 28, 28, 1)),
    }
    with pytest.raises(error, match=match):
        calls[case]()


def _order_safetensors(net, sd, tmp_path):
    from safetensors.numpy import save_file

    save_file({k: v.numpy() for k, v in sd.items()}, str(tmp_path / "m.safetensors"))
    return from_torch(net, tmp_path / "m.safetensors", name_map="order")


class PositionEmbedding(L.Layer):
    """x + a learned [T, D] table: a user layer interop has no layout for."""

    def build(self, key, input_shape):
        return input_shape, {"pos": jnp.zeros(input_shape[1:])}

    def forward(self, params, x, *, key, train):
        return x + params["pos"][None]


def _pos_net():
    return L.Serial(L.Dense(4, name="fc"), PositionEmbedding(name="pos"), name="net")

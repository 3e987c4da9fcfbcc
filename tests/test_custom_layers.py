"""User-written layers, as in the README's "Writing your own layers": a squeeze-and-excitation
block (composite of two Dense) and multi-head self-attention (Dense children plus its own
computation and MACs).

The classes are written here again, independently of the README; the parity tests also run
on the README's own class definitions (extracted from its text), so the two cannot drift.
References: ``torch.nn.MultiheadAttention`` (batch_first) for attention, a NumPy transcription
of the formula for SE, hand counts for MACs, float64 finite differences for gradients.
"""
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fundl
import fundl.autodiff as AD
import fundl.layers as L

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


# -- the layers under test ------------------------------------------------------------------

class SqueezeExcite(L.Layer):
    """x * sigmoid(fc2(relu(fc1(mean over H, W of x)))): [N, H, W, C] -> [N, H, W, C]."""
    channels: int
    reduction: int = 4
    default_name = "se"

    @property
    def fc1(self):
        return L.Dense(self.channels // self.reduction, name="fc1")

    @property
    def fc2(self):
        return L.Dense(self.channels, name="fc2")

    def build(self, key, input_shape):
        if len(input_shape) != 4 or input_shape[-1] != self.channels:
            raise fundl.ShapeError(f"{self.label()}: input must be [N, H, W, {self.channels}]; "
                                   f"got input shape {input_shape}")
        k1, k2 = jax.random.split(key)
        hidden_shape, p1 = self.fc1.init(k1, (input_shape[0], self.channels))
        _, p2 = self.fc2.init(k2, hidden_shape)
        return input_shape, {"fc1": p1, "fc2": p2}

    def forward(self, params, x, *, key, train):
        s = x.mean(axis=(1, 2))
        s = jax.nn.relu(self.fc1.apply(params["fc1"], s))
        s = jax.nn.sigmoid(self.fc2.apply(params["fc2"], s))
        return x * s[:, None, None, :]


class SelfAttention(L.Layer):
    """Multi-head self-attention: [N, T, D] -> [N, T, D]; params q, k, v, o: Dense D -> D."""
    num_heads: int
    default_name = "attn"

    def build(self, key, input_shape):
        d = input_shape[-1]
        if len(input_shape) != 3 or d % self.num_heads:
            raise fundl.ShapeError(f"{self.label()}: input must be [N, T, D] with D divisible "
                                   f"by num_heads={self.num_heads}; got {input_shape}")
        ks = jax.random.split(key, 4)
        return input_shape, {c: L.Dense(d, name=c).init(k, input_shape)[1]
                             for c, k in zip("qkvo", ks)}

    def forward(self, params, x, *, key, train):
        n, t, d = x.shape
        h = self.num_heads
        dense = lambda c, z: L.Dense(d, name=c).apply(params[c], z)  # noqa: E731
        q, k, v = (dense(c, x).reshape(n, t, h, d // h) for c in "qkv")
        a = jax.nn.softmax(jnp.einsum("nthe,nshe->nhts", q, k) / (d // h) ** 0.5, axis=-1)
        return dense("o", jnp.einsum("nhts,nshe->nthe", a, v).reshape(n, t, d))

    def macs(self, input_shape, output_shape, params):
        n, t, d = input_shape
        return 2 * n * t * t * d


class PositionEmbedding(L.Layer):
    """x + a learned vector per position: [N, T, D] -> [N, T, D]."""

    def build(self, key, input_shape):
        _, t, d = input_shape
        return input_shape, {"pos": 0.02 * jax.random.normal(key, (t, d))}

    def forward(self, params, x, *, key, train):
        return x + params["pos"][None]


def _readme_classes():
    """The README's ``class X(L.Layer):`` definitions, executed: ``{name: class}``."""
    text = README.read_text()
    ns = {"jax": jax, "jnp": jnp, "L": L, "fundl": fundl}
    for src in re.findall(r"^class \w+\(L\.Layer\):\n(?:(?:    .*)?\n)*", text, flags=re.M):
        exec(compile(src, "README.md", "exec"), ns)
    return ns


SOURCES = ["test", "readme"]


def _classes(source):
    if source == "test":
        return {"SqueezeExcite": SqueezeExcite, "SelfAttention": SelfAttention,
                "PositionEmbedding": PositionEmbedding}
    return _readme_classes()


def se_net():
    return L.Serial(L.Conv(16, 3, padding=1), L.ReLU(), SqueezeExcite(16),
                    L.GlobalAvgPool(), L.Dense(3), name="se_net")


def seq_net():
    return L.Serial(L.Dense(16, name="embed"), PositionEmbedding(), SelfAttention(4),
                    L.LayerNorm(), L.GlobalAvgPool(), L.Dense(2, name="head"), name="seq_net")


def _abstract_init(layer, shape):
    """``(output_shape, params)`` of ``layer.init`` with ``jax.ShapeDtypeStruct`` leaves:
    nothing runs (compiling the RNG kernels of an eager init dominates small tests' time)."""
    box = {}

    def init(key):
        box["out"], params = layer.init(key, shape)
        return params

    params = jax.eval_shape(init, jax.random.key(0))
    return box["out"], params


def _random_params(layer, shape, rng, scale=0.5):
    """Params of ``layer`` for ``shape``, drawn with NumPy."""
    _, tree = _abstract_init(layer, shape)
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(scale * rng.normal(size=a.shape).astype(np.float32)), tree)


# -- parity ---------------------------------------------------------------------------------

@pytest.mark.parametrize("source", SOURCES)
def test_self_attention_matches_torch(source, rng):
    torch = pytest.importorskip("torch")
    n, t, d, h = 3, 5, 8, 2
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(d, h, batch_first=True)
    with torch.no_grad():  # nonzero biases, so a missing or misplaced bias shows
        mha.in_proj_bias.copy_(torch.from_numpy(rng.normal(size=3 * d).astype(np.float32)))
        mha.out_proj.bias.copy_(torch.from_numpy(rng.normal(size=d).astype(np.float32)))
    w_in = mha.in_proj_weight.detach().numpy()       # [3D, D]: rows q; k; v; y = x @ W.T + b
    b_in = mha.in_proj_bias.detach().numpy()
    rows = {c: slice(i * d, (i + 1) * d) for i, c in enumerate("qkv")}
    params = {c: {"w": jnp.asarray(w_in[r].T), "b": jnp.asarray(b_in[r])} for c, r in rows.items()}
    params["o"] = {"w": jnp.asarray(mha.out_proj.weight.detach().numpy().T),
                   "b": jnp.asarray(mha.out_proj.bias.detach().numpy())}
    x = rng.normal(size=(n, t, d)).astype(np.float32)

    layer = _classes(source)["SelfAttention"](h)
    y = jax.jit(layer.apply)(params, jnp.asarray(x))
    with torch.no_grad():
        want, _ = mha(*(torch.from_numpy(x),) * 3, need_weights=False)
    np.testing.assert_allclose(np.asarray(y), want.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("source", SOURCES)
def test_squeeze_excite_matches_numpy(source, rng):
    layer = _classes(source)["SqueezeExcite"](8, reduction=2)
    params = _random_params(layer, (2, 3, 4, 8), rng)
    x = rng.normal(size=(2, 3, 4, 8)).astype(np.float32)
    y = jax.jit(layer.apply)(params, jnp.asarray(x))

    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    xd = x.astype(np.float64)
    want = np.empty_like(xd)
    for i in range(xd.shape[0]):                     # per example, from the formula
        s = xd[i].mean(axis=(0, 1))                  # [C]
        hidden = np.maximum(s @ p["fc1"]["w"] + p["fc1"]["b"], 0.0)
        gate = 1.0 / (1.0 + np.exp(-(hidden @ p["fc2"]["w"] + p["fc2"]["b"])))
        want[i] = xd[i] * gate
    assert jax.tree_util.tree_map(jnp.shape, params) == {
        "fc1": {"w": (8, 4), "b": (4,)}, "fc2": {"w": (4, 8), "b": (8,)}}
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-6)


# -- value semantics, shapes and errors -----------------------------------------------------

def test_user_layers_are_values_with_contracts():
    se = SqueezeExcite(16)
    assert se == SqueezeExcite(16) and hash(se) == hash(SqueezeExcite(16)) and se.name == "se"
    assert se.replace(reduction=2) == SqueezeExcite(16, reduction=2) != se
    assert SelfAttention(4).name == "attn" and SelfAttention(4, name="a2").name == "a2"
    for layer, shape in ((se, (2, 4, 4, 16)), (SelfAttention(2), (2, 5, 6)),
                         (PositionEmbedding(), (2, 5, 6))):
        # shape contract (abstractly, nothing runs): init's promise == apply's result
        out_shape, params = _abstract_init(layer, shape)
        y = jax.eval_shape(layer.apply, params, jax.ShapeDtypeStruct(shape, jnp.float32))
        assert y.shape == out_shape == shape


def test_user_layer_errors_name_the_layer_path():
    with pytest.raises(fundl.ShapeError, match=r"SqueezeExcite 'net/se'.*\[N, H, W, 16\]"):
        _abstract_init(L.Serial(L.Conv(8, 3), SqueezeExcite(16), name="net"), (1, 8, 8, 3))
    with pytest.raises(fundl.ShapeError, match=r"SelfAttention 'attn'.*num_heads=4"):
        _abstract_init(SelfAttention(4), (1, 5, 6))
    params = {"pos": jnp.zeros((6, 4))}               # params for T=6 applied to T=7
    with pytest.raises(fundl.ShapeError, match=r"position_embedding.*\(6, 4\).*\(7, 4\)"):
        PositionEmbedding().apply(params, jnp.ones((1, 7, 4)))


# -- summary: hand-counted MACs, children counted once ---------------------------------------

def test_summary_of_the_se_convnet():
    s = fundl.summary(se_net(), (2, 8, 8, 3))
    rows = {r.path: (r.params, r.macs) for r in s.rows}
    n = 2
    assert rows == {
        "conv": (3 * 3 * 3 * 16 + 16, n * 16 * 8 * 8 * 3 * 3 * 3),
        "relu": (0, 0),
        "se/fc1": (16 * 4 + 4, n * 16 * 4),          # the SE block: two dense products
        "se/fc2": (4 * 16 + 16, n * 4 * 16),
        "global_avg_pool": (0, 0),
        "dense": (16 * 3 + 3, n * 16 * 3),
    }
    assert s.total_params == 647 == sum(p for p, _ in rows.values())
    assert s.total_macs == n * 27_824


def test_summary_of_the_attention_classifier():
    n, t, f, d = 3, 6, 4, 16
    s = fundl.summary(seq_net(), (n, t, f))
    rows = {r.path: (r.params, r.macs) for r in s.rows}
    assert rows["attn"] == (0, 2 * n * t * t * d)    # its own: q k^T and a v
    for c in "qkvo":
        assert rows[f"attn/{c}"] == (d * d + d, n * t * d * d)
    assert rows["embed"] == (f * d + d, n * t * f * d)
    assert rows["position_embedding"] == (t * d, 0)
    assert s.total_params == 1_330 == sum(p for p, _ in rows.values())
    assert s.total_macs == n * 7_712 == n * (t * f * d + 4 * t * d * d + 2 * t * t * d + d * 2)


# -- training and gradients ----------------------------------------------------------------

def _train(net, x, y, steps=25):
    _, params = net.init(jax.random.key(0), (1, *x.shape[1:]))
    opt = optax.adam(1e-2)
    opt_state, step = opt.init(params), fundl.train.make_train_step(net, opt)
    losses = []
    for _ in range(steps):
        params, _, opt_state, m = step(params, {}, opt_state, (x, y), None)
        losses.append(float(m["loss"]))
    return losses


@pytest.mark.slow
def test_both_train_with_make_train_step(rng):
    x = rng.normal(size=(32, 8, 8, 3)).astype(np.float32)
    losses = _train(se_net(), x, x.mean(axis=(1, 2)).argmax(-1))
    assert losses[-1] < 0.8 * losses[0], losses
    x = rng.normal(size=(32, 6, 4)).astype(np.float32)
    losses = _train(seq_net(), x, (x[:, :3, 0].sum(1) > x[:, 3:, 0].sum(1)).astype(np.int32))
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("layer, shape", [(SqueezeExcite(4, reduction=2), (2, 3, 3, 4)),
                                          (SelfAttention(2), (2, 3, 4))],
                         ids=["se", "attention"])
def test_grads_match_finite_differences(layer, shape, rng):
    params = _random_params(layer, shape, rng)
    x = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    u = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    # a scalar loss with a non-symmetric weighting, so that every output element matters
    AD.check_grads(lambda p, x: jnp.sum(layer.apply(p, x) * u), (params, x), order=1)


def test_readme_shows_the_summary_it_prints():
    ns = _readme_classes()
    net = L.Serial(L.Dense(16, name="embed"), ns["PositionEmbedding"](), ns["SelfAttention"](4),
                   L.LayerNorm(), L.GlobalAvgPool(), L.Dense(2, name="head"), name="seq_net")
    tables = [t for t in re.findall(r"```text\n(.*?)```", README.read_text(), flags=re.S)
              if "attn/q" in t]
    assert tables == [str(fundl.summary(net, (1, 6, 4))) + "\n"]


def test_function_layer_apply_without_key_and_train():
    """``L.layer``'s apply gets ``key=`` / ``train=`` only if it accepts them."""
    init = lambda key, shape: (shape, {"a": jnp.full((), 2.0)})  # noqa: E731
    x = jnp.ones((2, 3))
    plain = L.layer("Scale", None, init, lambda p, a: p["a"] * a)
    np.testing.assert_allclose(plain.apply(plain.init(jax.random.key(0), (2, 3))[1], x), 2 * x)
    seen = {}

    def only_train(p, a, *, train):
        seen["train"] = train
        return a

    lay = L.layer("T", None, init, only_train)
    lay.apply(lay.init(jax.random.key(0), (2, 3))[1], x, train=True)
    assert seen == {"train": True}
    st = L.stateful_layer("St", None, lambda k, s: (s, {}, {"n": jnp.zeros(())}),
                          lambda p, s, a: (a, {"n": s["n"] + 1}))
    _, p, s = st.init(jax.random.key(0), (2, 3))
    assert float(st.apply(p, x, state=s)[1]["n"]) == 1.0
    with pytest.raises(fundl.ConfigError, match=r"'st'.*apply must have the signature \(params, "
                                                r"state, x"):
        L.stateful_layer("St", None, lambda k, s: (s, {}, {}), lambda p, a: a)

"""fundl.viz: the DAG traced from a jaxpr, its DOT text, and rendering."""
import re
import shutil

import jax
import jax.numpy as jnp
import pytest

import fundl.layers as L
from fundl import ConfigError, ShapeError
from fundl import viz

KEY = jax.random.key(0)
HAS_DOT = shutil.which("dot") is not None


def residual_block():
    return L.Residual(L.Serial(L.Dense(4, name="fc"), L.Tanh()), name="block")


def test_residual_block_graph_contains_the_shortcut():
    net = residual_block()
    _, p = net.init(KEY, (2, 4))
    dag = viz.trace(net, p, jnp.ones((2, 4)))
    (x,) = [n for n in dag.find(kind="input") if n.op == "x"]
    adds = [n for n in dag.find("add") if dag.cluster_path(n) == ["block"]]
    assert len(adds) == 1, [dag.cluster_path(n) for n in dag.find("add")]
    ins = dag.inputs_of(adds[0].id)
    assert len(ins) == 2
    assert x in ins                                   # the shortcut: the block's input itself
    (body,) = [n for n in ins if n is not x]
    assert body.op == "tanh" and dag.cluster_path(body) == ["block", "body", "tanh"]
    assert adds[0].shapes == ("f32[2,4]",)


def test_layer_names_become_nested_clusters():
    net = L.Serial(L.Dense(3, name="fc1"), L.ReLU(), L.Dense(2, name="fc2"), name="net")
    _, p = net.init(KEY, (5, 4))
    dot = viz.graph(net, p, jnp.ones((5, 4)))
    labels = re.findall(r'label="([^"]*)"; style', dot)
    assert "net" in labels
    assert any(lab.startswith("fc1") for lab in labels) and any(lab.startswith("fc2") for lab in labels)
    assert "net/net" not in dot and "fc1/fc1" not in dot
    without = viz.trace(net, p, jnp.ones((5, 4)), layer_names=False)
    assert not any(c.kind == "scope" for c in without.clusters)

    def boom(p, x):
        raise RuntimeError("inside")
    with pytest.raises(RuntimeError, match="inside"):
        viz.trace(boom, p, jnp.ones(1))


def test_layers_apply_under_their_names_in_any_trace():
    # fundl itself pushes each layer's name onto JAX's name stack when applying it
    # (no patching by viz), so the names also reach profiles and HLO metadata.
    net = L.Serial(L.Dense(3, name="fc1"), name="net")
    _, p = net.init(KEY, (2, 4))
    eqns = jax.make_jaxpr(lambda p, x: net.apply(p, x))(p, jnp.ones((2, 4))).jaxpr.eqns
    stacks = [str(e.source_info.name_stack) for e in eqns]
    assert any("net/fc1" in s for s in stacks), stacks
    dag = viz.trace(net, p, jnp.ones((2, 4)))
    (dot,) = dag.find("dot_general")
    assert dag.cluster_path(dot)[:2] == ["net", "fc1"]


def test_gradient_graph_has_a_backward_pass_and_one_output_per_parameter():
    net = L.Serial(L.Dense(3, name="fc1"), L.Tanh(), L.Dense(1, name="fc2"))
    _, p = net.init(KEY, (5, 4))
    loss = lambda params, x: jnp.sum(net.apply(params, x) ** 2)
    dag = viz.trace(loss, p, jnp.ones((5, 4)), grad=True)
    outs = sorted(n.op for n in dag.find(kind="output"))
    assert outs == ["grad params/fc1/b", "grad params/fc1/w", "grad params/fc2/b", "grad params/fc2/w"]
    back = [n for n in dag.nodes if n.backward]
    assert any(n.op == "dot_general" for n in back)
    assert any(c.label == "fc1 (backward)" for c in dag.clusters)
    # the loss value itself feeds no gradient: pruned
    assert not [n for n in dag.find("reduce_sum") if n.shapes == ("f32[]",)]
    dot = dag.to_dot()
    assert "#fad2cf" in dot  # backward nodes drawn in red


def test_shared_subnetwork_weights_feed_both_uses():
    enc = L.Dense(3, name="enc")
    g = L.Graph(inputs=("a", "b"), outputs="s", nodes=[
        L.Node("u", enc, "a"), L.Node("v", enc, "b", share="u"), L.Node("s", L.Sum(), ("u", "v"))])
    _, p = g.init(KEY, ((2, 4), (2, 4)))
    dag = viz.trace(g, p, (jnp.ones((2, 4)), jnp.ones((2, 4))))
    (w,) = [n for n in dag.find(kind="input") if n.op == "params/u/w"]
    users = [d for s, d in dag.edges if s == w.id]
    paths = sorted(tuple(dag.cluster_path(dag.node(d))[:2]) for d in users)
    assert paths == [("graph", "u"), ("graph", "v")]


def test_calls_are_clusters_unless_collapsed():
    @jax.jit
    def inner(x):
        return jnp.sin(x) * 2.0

    f = lambda x: jnp.sum(inner(x) + jax.nn.relu(x))
    dag = viz.trace(f, jnp.ones(3))
    labels = [c.label for c in dag.clusters]
    assert "jit: inner" in labels and any(lab.startswith("custom_jvp_call") for lab in labels)
    (mul,) = dag.find("mul")
    assert "with 2.0" in mul.label   # literal operands are written on the node
    flat = viz.trace(f, jnp.ones(3), expand=False)
    assert not flat.clusters and [n.op for n in flat.find(kind="op")].count("jit") == 1


def test_dot_text_is_well_formed():
    net = residual_block()
    _, p = net.init(KEY, (2, 4))
    dot = viz.graph(lambda params, x: jnp.sum(net.apply(params, x)), p, jnp.ones((2, 4)), grad=True,
                    title='a "quoted" title')
    assert dot.startswith("digraph fundl {") and dot.rstrip().endswith("}")
    assert dot.count("{") == dot.count("}")
    declared = set(re.findall(r"^\s*(n\d+) \[", dot, re.M))
    for s, d in re.findall(r"^\s*(n\d+) -> (n\d+);", dot, re.M):
        assert s in declared and d in declared
    assert 'label="a \\"quoted\\" title"' in dot
    with pytest.raises(ShapeError, match="grad=True needs fn to return a scalar"):
        viz.graph(lambda x: x * 2, jnp.ones(2), grad=True)
    with pytest.raises(ConfigError, match="rankdir"):
        viz.trace(jnp.sin, jnp.ones(2)).to_dot(rankdir="up")


@pytest.mark.skipif(not HAS_DOT, reason="Graphviz 'dot' executable not installed (apt-get install graphviz)")
def test_render_writes_svg_and_png(tmp_path):
    dot = viz.graph(lambda x: jnp.tanh(x) * x, jnp.ones(2))
    svg = viz.render(dot, tmp_path / "g.svg")
    assert "<svg" in svg.read_text()
    png = viz.render(dot, tmp_path / "sub" / "g.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="DOT text"):
        viz.render("not dot", tmp_path / "g.svg")
    with pytest.raises(ConfigError, match="suffix"):
        viz.render("digraph g {}", tmp_path / "g")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(viz.RenderError, match="Graphviz 'dot' executable was not found"):
        viz.render("digraph g {}", tmp_path / "g.svg")

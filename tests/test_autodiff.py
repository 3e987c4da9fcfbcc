"""fundl.autodiff: every helper against an independent reference on random inputs.

References: jax.jacfwd / jax.hessian on hand-flattened functions, loops of
jax.grad over single examples, NumPy linear algebra, closed forms, and float64
finite differences.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fundl.layers as L
from fundl import ConfigError, ShapeError
from fundl import autodiff as AD

KEY = jax.random.key(0)


def mlp():
    return L.Serial(L.Dense(5, name="fc1"), L.Tanh(), L.Dense(3, name="fc2"))


NET = mlp()
# The parameters do not depend on the batch size: initialise once, in one compiled call.
PARAMS = jax.jit(lambda k: NET.init(k, (1, 4))[1])(KEY)


def setup_mlp(rng, n=6, d=4):
    net, params = NET, PARAMS
    x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(n, 3)), jnp.float32)
    return net, params, x, y


def mse(net):
    return lambda p, x, y: jnp.mean((net.apply(p, x) - y) ** 2)


def ravel_by_paths(tree, paths):
    """Independent flattening: leaves looked up by path, in the given order."""
    out = []
    for path in paths:
        a = tree
        for k in path.split("/"):
            a = a[k]
        out.append(np.asarray(a).reshape(-1))
    return np.concatenate(out)


def assemble_hessian(h, paths, shapes):
    """Dense matrix from jax.hessian's nested blocks h[a][b] (paths in order)."""
    def get(t, path):
        for k in path.split("/"):
            t = t[k]
        return t
    sizes = [int(np.prod(s)) for s in shapes]
    rows = []
    for pa, sa in zip(paths, sizes):
        row = [np.asarray(get(get(h, pa), pb)).reshape(sa, sb) for pb, sb in zip(paths, sizes)]
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


# -- jacobians ------------------------------------------------------------------------------

def test_jacobians_of_dense_are_the_closed_forms(rng):
    fc = L.Dense(3)
    _, p = fc.init(KEY, (2, 4))
    x = jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
    J = jax.jit(lambda p, x: AD.jacobians(fc, p, x))(p, x)
    W = np.asarray(p["w"])
    assert J.wrt_input.shape == (2, 3, 2, 4)
    for i in range(2):
        for j in range(2):
            expect = W.T if i == j else np.zeros((3, 4))
            np.testing.assert_allclose(J.wrt_input[i, :, j, :], expect, atol=1e-6)
    # y[i, o] = sum_k x[i, k] w[k, o] + b[o]: dy[i, o]/dw[k, o'] = x[i, k] [o == o']
    expect_w = np.einsum("ik,op->iokp", np.asarray(x), np.eye(3))
    np.testing.assert_allclose(J.wrt_params["w"], expect_w, atol=1e-6)
    np.testing.assert_allclose(J.wrt_params["b"], np.broadcast_to(np.eye(3), (2, 3, 3)), atol=1e-6)


def test_jacobians_match_jacfwd_reference(rng):
    net, p, x, _ = setup_mlp(rng, n=3)

    @jax.jit
    def all_modes(p, x):
        ref = (jax.jacfwd(lambda xx: net.apply(p, xx))(x), jax.jacfwd(lambda pp: net.apply(pp, x))(p))
        return ref, [AD.jacobians(net, p, x, mode=m) for m in ("fwd", "rev")]

    (ref_x, ref_p), Js = all_modes(p, x)
    for J in Js:
        np.testing.assert_allclose(J.output, net.apply(p, x), rtol=1e-6)
        np.testing.assert_allclose(J.wrt_input, ref_x, rtol=1e-5, atol=1e-6)
        for a, b in zip(jax.tree_util.tree_leaves(J.wrt_params), jax.tree_util.tree_leaves(ref_p)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert J.wrt_params["fc1"]["w"].shape == (3, 3, 4, 5)


def test_per_example_jacobians_are_the_diagonal_blocks(rng):
    net, p, x, _ = setup_mlp(rng, n=4)
    full, per = jax.jit(lambda p, x: (AD.jacobians(net, p, x),
                                      AD.jacobians(net, p, x, per_example=True)))(p, x)
    assert per.wrt_input.shape == (4, 3, 4)
    for i in range(4):
        np.testing.assert_allclose(per.wrt_input[i], full.wrt_input[i, :, i, :], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(per.wrt_params["fc1"]["w"][i], full.wrt_params["fc1"]["w"][i],
                                   rtol=1e-5, atol=1e-6)


def test_jacobians_with_batch_norm_state(rng):
    bn = L.Serial(L.Dense(3), L.BatchNorm())
    _, p, s = bn.init(KEY, (4, 2))
    x = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)
    with pytest.raises(ConfigError, match="state"):
        AD.jacobians(bn, p, x)
    with pytest.raises(ConfigError, match="per_example"):
        AD.jacobians(bn, p, x, state=s, train=True, per_example=True)
    ev, tr, ref, per = jax.jit(lambda p, s, x: (
        AD.jacobians(bn, p, x, state=s, train=False),
        AD.jacobians(bn, p, x, state=s, train=True),
        jax.jacrev(lambda xx: bn.apply(p, xx, state=s, train=True)[0])(x),
        AD.jacobians(bn, p, x, state=s, per_example=True)))(p, s, x)
    off = lambda j: max(float(jnp.max(jnp.abs(j[0, :, k, :]))) for k in range(1, 4))
    assert off(ev.wrt_input) == 0.0       # running statistics: examples independent
    assert off(tr.wrt_input) > 1e-3       # batch statistics couple the examples
    np.testing.assert_allclose(tr.wrt_input, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(per.wrt_input[2], ev.wrt_input[2, :, 2, :], rtol=1e-5, atol=1e-6)


# -- Hessians --------------------------------------------------------------------------------

def test_hvp_matches_dense_hessian_times_v(rng):
    net, p, x, y = setup_mlp(rng)
    loss = mse(net)
    v = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), p)
    paths = [e.path for e in AD.param_layout(p)]
    shapes = [e.shape for e in AD.param_layout(p)]
    H = assemble_hessian(jax.jit(jax.hessian(loss))(p, x, y), paths, shapes)
    expect = H @ ravel_by_paths(v, paths)
    got = jax.jit(lambda p, v, x, y: AD.hvp(loss, p, v, x, y))(p, v, x, y)
    np.testing.assert_allclose(ravel_by_paths(got, paths), expect, rtol=1e-4, atol=1e-5)


def test_hvp_with_batch_norm_state_as_aux(rng):
    net = L.Serial(L.Dense(3, name="fc"), L.BatchNorm(name="bn"), L.Tanh(), L.Dense(1, name="out"))
    _, p, s = net.init(KEY, (5, 2))
    x = jnp.asarray(rng.normal(size=(5, 2)), jnp.float32)

    def loss(p, state, x):
        y, new_state = net.apply(p, x, state=state, train=True)
        return jnp.mean(y ** 2), new_state

    v = jax.tree_util.tree_map(jnp.ones_like, p)
    got, ref = jax.jit(lambda p, v, s, x: (
        AD.hvp(loss, p, v, s, x, has_aux=True),
        jax.jvp(jax.grad(lambda q: loss(q, s, x)[0]), (p,), (v,))[1]))(p, v, s, x)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_hessian_of_a_subtree_in_documented_layout(rng):
    net, p, x, y = setup_mlp(rng)
    loss = mse(net)
    layout = AD.param_layout(p, "fc1")
    assert [e.path for e in layout] == ["fc1/b", "fc1/w"]
    assert layout[1].start == 5 and layout[1].stop == 5 + 4 * 5
    H, H2, H3, full = jax.jit(lambda p, x, y: (
        AD.hessian(loss, p, x, y, wrt="fc1"),
        AD.hessian(loss, p, x, y, wrt=["fc1/b", "fc1/w"]),
        AD.hessian(loss, p, x, y, wrt=lambda path: path.startswith("fc1/")),
        jax.hessian(loss)(p, x, y)))(p, x, y)
    ref = assemble_hessian(full, ["fc1/b", "fc1/w"], [(5,), (4, 5)])
    assert H.shape == (25, 25)
    np.testing.assert_allclose(H, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(H, H.T, atol=1e-5)
    # other selectors: a list of paths and a predicate give the same leaves
    np.testing.assert_allclose(H2, H, atol=1e-6)
    np.testing.assert_allclose(H3, H, atol=1e-6)


def test_hessian_errors_name_the_argument(rng):
    net, p, x, y = setup_mlp(rng)
    with pytest.raises(ConfigError, match=r"selects no parameter.*fc1/w"):
        AD.hessian(mse(net), p, x, y, wrt="fc3")
    with pytest.raises(ConfigError, match="wrt must be"):
        AD.hessian(mse(net), p, x, y, wrt=3)
    with pytest.raises(ShapeError, match="scalar"):
        AD.hessian(lambda p, x: net.apply(p, x), p, x)
    with pytest.raises(ShapeError, match=r"v\['fc1/w'\] must have shape"):
        AD.hvp(mse(net), p, {"fc1": {"w": jnp.ones(3), "b": jnp.ones(5)},
                             "fc2": p["fc2"]}, x, y)


def test_newton_step_solves_least_squares_in_one_step(rng):
    lin = L.Dense(2, name="lin")
    _, p = lin.init(KEY, (20, 3))
    x = jnp.asarray(rng.normal(size=(20, 3)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(20, 2)), jnp.float32)
    loss = lambda p, x, y: jnp.mean((lin.apply(p, x) - y) ** 2)
    new = jax.jit(lambda p, x, y: AD.newton_step(loss, p, x, y, damping=0.0))(p, x, y)
    X = np.concatenate([np.asarray(x), np.ones((20, 1))], axis=1)
    coef = np.linalg.lstsq(X, np.asarray(y), rcond=None)[0]
    np.testing.assert_allclose(new["w"], coef[:3], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(new["b"], coef[3], rtol=1e-3, atol=1e-4)


def test_newton_step_on_a_subtree_leaves_the_rest(rng):
    net, p, x, y = setup_mlp(rng)
    new, H, g = jax.jit(lambda p, x, y: (
        AD.newton_step(mse(net), p, x, y, damping=1.0, wrt="fc2"),
        AD.hessian(mse(net), p, x, y, wrt="fc2"), jax.grad(mse(net))(p, x, y)))(p, x, y)
    np.testing.assert_array_equal(new["fc1"]["w"], p["fc1"]["w"])
    # fc2 enters the loss quadratically: the damped step is (H + I)^{-1} g exactly
    H = np.asarray(H)
    g = ravel_by_paths(g, ["fc2/b", "fc2/w"])
    z = ravel_by_paths(p, ["fc2/b", "fc2/w"])
    expect = z - np.linalg.solve(H + np.eye(len(z)), g)
    np.testing.assert_allclose(ravel_by_paths(new, ["fc2/b", "fc2/w"]), expect, rtol=1e-4, atol=1e-5)


def test_cg_solve_matches_numpy_on_a_pytree(rng):
    m = rng.normal(size=(7, 7))
    A = m @ m.T + 7 * np.eye(7)
    b = rng.normal(size=7)
    split = lambda z: {"a": z[:3], "b": z[3:]}
    join = lambda t: jnp.concatenate([t["a"], t["b"]])
    Aj = jnp.asarray(A, jnp.float32)
    matvec = lambda t: split(Aj @ join(t))
    res = jax.jit(lambda bb: AD.cg_solve(matvec, bb, damping=0.5, maxiter=30, tol=1e-7))(
        split(jnp.asarray(b, jnp.float32)))
    expect = np.linalg.solve(A + 0.5 * np.eye(7), b)
    np.testing.assert_allclose(join(res.x), expect, rtol=1e-4, atol=1e-5)
    assert not bool(res.negative_curvature) and int(res.iterations) <= 10


def test_cg_solve_reports_negative_curvature():
    A = jnp.diag(jnp.array([1.0, -2.0, 3.0]))
    res = AD.cg_solve(lambda v: A @ v, jnp.array([1.0, 1.0, 1.0]))
    assert bool(res.negative_curvature)
    assert bool(jnp.all(jnp.isfinite(res.x)))


def test_hessian_free_step_equals_newton_step_on_a_quadratic(rng):
    lin = L.Dense(2, name="lin")
    _, p = lin.init(KEY, (30, 3))
    x = jnp.asarray(rng.normal(size=(30, 3)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(30, 2)), jnp.float32)
    loss = lambda p, x, y: jnp.mean((lin.apply(p, x) - y) ** 2)
    newton, (hf, info) = jax.jit(lambda p, x, y: (
        AD.newton_step(loss, p, x, y, damping=0.1),
        AD.hessian_free_step(loss, p, x, y, damping=0.1, maxiter=20, tol=1e-7)))(p, x, y)
    for a, b in zip(jax.tree_util.tree_leaves(hf), jax.tree_util.tree_leaves(newton)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert int(info.iterations) <= 8   # 8 unknowns: CG is exact in at most 8 steps


# -- per-example gradients, DP-SGD ----------------------------------------------------------------

def batch_loss(net):
    return lambda p, b: jnp.mean((net.apply(p, b[0]) - b[1]) ** 2)


def test_per_example_grads_match_a_loop(rng):
    net, p, x, y = setup_mlp(rng, n=5)
    loss = batch_loss(net)
    got = jax.jit(lambda p, b: AD.per_example_grads(loss, p, b))(p, (x, y))
    grad = jax.jit(jax.grad(loss))
    for i in range(5):
        ref = grad(p, (x[i:i + 1], y[i:i + 1]))
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
            np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6)
    # the batch-mean gradient is the mean of the per-example ones
    mean = jax.tree_util.tree_map(lambda a: a.mean(0), got)
    full = grad(p, (x, y))
    for a, b in zip(jax.tree_util.tree_leaves(mean), jax.tree_util.tree_leaves(full)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_per_example_grads_with_eval_state(rng):
    net = L.Serial(L.Dense(3), L.BatchNorm(), L.Dense(1))
    _, p, s = net.init(KEY, (4, 2))
    s = jax.tree_util.tree_map(lambda a: a + 0.5, s)
    x = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)
    loss = lambda p, b, state: jnp.mean(net.apply(p, b, state=state)[0] ** 2)
    got, ref = jax.jit(lambda p, x, s: (AD.per_example_grads(loss, p, x, s),
                                        jax.grad(loss)(p, x[2:3], s)))(p, x, s)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a[2], b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ShapeError, match="leading"):
        AD.per_example_grads(loss, p, (x, jnp.ones(3)), s)


def test_clip_per_example_bounds_every_example(rng):
    g = {"a": jnp.asarray(rng.normal(size=(6, 3)) * [[0.01], [0.1], [1], [3], [10], [0]], jnp.float32),
         "b": jnp.asarray(rng.normal(size=(6, 2, 2)), jnp.float32) * 0.1}
    clipped, norms = jax.jit(AD.clip_per_example, static_argnums=1)(g, 1.0)
    ref = np.sqrt(np.sum(np.asarray(g["a"]) ** 2, 1) + np.sum(np.asarray(g["b"]).reshape(6, -1) ** 2, 1))
    np.testing.assert_allclose(norms, ref, rtol=1e-5)
    after = AD.per_example_norms(clipped)
    assert float(jnp.max(after)) <= 1.0 + 1e-5
    for i in range(6):
        factor = min(1.0, 1.0 / ref[i]) if ref[i] > 0 else 1.0
        np.testing.assert_allclose(clipped["a"][i], np.asarray(g["a"][i]) * factor, rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="max_norm"):
        AD.clip_per_example(g, 0.0)


def test_add_noise_has_the_dp_sgd_scale():
    s = {"w": jnp.full((200_000,), 8.0)}
    out = AD.add_noise(s, key=KEY, noise_multiplier=1.5, max_norm=2.0, batch_size=4)
    w = np.asarray(out["w"])
    assert abs(w.mean() - 2.0) < 0.01           # sum / B
    assert abs(w.std() - 1.5 * 2.0 / 4) < 0.01   # sigma C / B
    same = AD.add_noise(s, key=KEY, noise_multiplier=0.0, max_norm=2.0, batch_size=4)
    np.testing.assert_allclose(same["w"], 2.0)


def test_dp_sgd_grads_without_noise_is_the_clipped_mean_and_sensitivity_is_bounded(rng):
    net, p, x, y = setup_mlp(rng, n=8)
    x = x.at[0].mul(30.0)   # one outlier with a large gradient
    loss = batch_loss(net)
    C = 0.5
    out = jax.jit(lambda p, b, k: AD.dp_sgd_grads(loss, p, b, key=k, max_norm=C,
                                                   noise_multiplier=0.0))(p, (x, y), KEY)
    grad = jax.jit(jax.grad(loss))
    ref = []
    for i in range(8):
        g = [np.asarray(a, np.float64) for a in jax.tree_util.tree_leaves(grad(p, (x[i:i + 1], y[i:i + 1])))]
        n = np.sqrt(sum(np.sum(a ** 2) for a in g))
        ref.append([a * min(1.0, C / n) for a in g])
    mean = [sum(r[k] for r in ref) / 8 for k in range(len(ref[0]))]
    for a, b in zip(jax.tree_util.tree_leaves(out.grads), mean):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert float(out.norms[0]) > C   # the outlier was clipped
    # removing any one example changes the clipped sum by at most C
    clipped, _ = jax.jit(lambda p, b: AD.clip_per_example(AD.per_example_grads(loss, p, b), C))(
        p, (x, y))
    leaves = [np.asarray(a, np.float64) for a in jax.tree_util.tree_leaves(clipped)]
    total = [a.sum(0) for a in leaves]
    for i in range(8):
        diff = np.sqrt(sum(np.sum((t - (t - a[i])) ** 2) for t, a in zip(total, leaves)))
        assert diff <= C * (1 + 1e-5)


# -- gradient penalty ---------------------------------------------------------------------------

@pytest.mark.slow
def test_gradient_penalty_matches_per_example_loop_and_is_differentiable(rng):
    net, p, x, _ = setup_mlp(rng, n=4)
    f = lambda p, x: jnp.sum(net.apply(p, x) ** 2, axis=1)           # [N]
    gp = jax.jit(lambda p, x: AD.gradient_penalty(lambda xx: f(p, xx), x))(p, x)
    one = jax.jit(jax.grad(lambda xi: f(p, xi[None])[0]))
    for i in range(4):
        g = one(x[i])
        np.testing.assert_allclose(gp[i], np.linalg.norm(np.asarray(g)), rtol=1e-5)
    # double backprop: d/dparams of mean(gp^2), checked by float64 finite differences
    pen = lambda p, x: jnp.mean(AD.gradient_penalty(lambda xx: f(p, xx), x) ** 2)
    AD.check_grads(pen, (p, x), order=1)
    g = jax.jit(jax.grad(pen))(p, x)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(g))


def test_gradient_penalty_zero_gradient_and_shape_errors():
    x = jnp.zeros((3, 2))
    gp = AD.gradient_penalty(lambda x: jnp.sum(x ** 2, axis=1), x)
    np.testing.assert_array_equal(gp, 0.0)
    g = jax.grad(lambda x: jnp.sum(AD.gradient_penalty(lambda z: jnp.sum(z ** 2, axis=1), x)))(x)
    assert bool(jnp.all(jnp.isfinite(g)))   # not NaN at zero
    with pytest.raises(ShapeError, match=r"one scalar per example.*\(3, 2\)"):
        AD.gradient_penalty(lambda x: x, x)


# -- weight sharing ------------------------------------------------------------------------------

def test_shared_weight_gradient_is_the_sum_over_uses(rng):
    enc = L.Dense(3, name="enc")
    head = L.Dense(1, name="head")
    tied = L.Graph(inputs=("a", "b"), outputs="out", nodes=[
        L.Node("u", enc, "a"), L.Node("v", enc, "b", share="u"),
        L.Node("cat", L.Concat(), ("u", "v")), L.Node("out", head, "cat")])
    untied = L.Graph(inputs=("a", "b"), outputs="out", nodes=[
        L.Node("u", enc, "a"), L.Node("v", enc, "b"),
        L.Node("cat", L.Concat(), ("u", "v")), L.Node("out", head, "cat")])
    _, pt = tied.init(KEY, ((4, 2), (4, 2)))
    assert "v" not in pt
    pu = {"u": pt["u"], "v": pt["u"], "out": pt["out"]}   # same values, separate copies
    xa = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)
    xb = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)
    loss = lambda net: lambda p: jnp.sum(jnp.tanh(net.apply(p, (xa, xb))))
    gt, gu = jax.jit(lambda pt, pu: (jax.grad(loss(tied))(pt), jax.grad(loss(untied))(pu)))(pt, pu)
    np.testing.assert_allclose(gt["u"]["w"], gu["u"]["w"] + gu["v"]["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gt["u"]["b"], gu["u"]["b"] + gu["v"]["b"], rtol=1e-5, atol=1e-6)


# -- check_grads -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_check_grads_passes_on_a_network(rng):
    net, p, x, y = setup_mlp(rng, n=3)
    report = AD.check_grads(mse(net), (p, x, y), order=2, num_directions=2)
    assert report.ok and len(report.checks) == 12
    assert {c.check for c in report.checks} == {"jvp", "vjp", "jvp of jvp", "vjp of jvp",
                                                "jvp of vjp", "vjp of vjp"}
    assert "all 12 checks passed" in str(report)


def _sin_with_bwd(bwd):
    @jax.custom_vjp
    def f(x):
        return jnp.sin(x)
    f.defvjp(lambda x: (jnp.sin(x), x), bwd)
    return f


def test_check_grads_catches_a_wrong_custom_vjp():
    wrong = _sin_with_bwd(lambda x, g: (2.0 * g * jnp.cos(x),))   # factor 2 too big
    x = jnp.array([0.3, -0.7, 1.1])
    with pytest.raises(AD.GradientCheckError, match=r"worst: order 1 'vjp'") as e:
        AD.check_grads(lambda x: jnp.sum(wrong(x) ** 2), (x,))
    rep = e.value.report
    assert not rep.ok and rep.worst.check == "vjp"
    assert abs(rep.worst.autodiff / rep.worst.finite_diff - 2.0) < 1e-6
    assert any(c.skipped for c in rep.checks)   # no jvp for custom_vjp: reported as skipped
    right = _sin_with_bwd(lambda x, g: (g * jnp.cos(x),))
    assert AD.check_grads(lambda x: jnp.sum(right(x) ** 2), (x,)).ok


def test_check_grads_catches_a_second_order_only_bug():
    # First derivative right, but stop_gradient hides cos(x)'s own derivative.
    bad = _sin_with_bwd(lambda x, g: (g * jnp.cos(jax.lax.stop_gradient(x)),))
    f = lambda x: jnp.sum(bad(x) * x)
    x = jnp.array([0.3, 0.5])
    assert AD.check_grads(f, (x,), order=1).ok
    rep = AD.check_grads(f, (x,), order=2, raise_on_failure=False)
    assert not rep.ok and {c.check for c in rep.failures} == {"jvp of vjp", "vjp of vjp"}


def test_check_grads_catches_a_wrong_custom_jvp():
    @jax.custom_jvp
    def f(x):
        return jnp.exp(x)
    f.defjvp(lambda primals, tangents: (jnp.exp(primals[0]), 1.01 * jnp.exp(primals[0]) * tangents[0]))
    with pytest.raises(AD.GradientCheckError, match="FAIL"):
        AD.check_grads(f, (jnp.array([0.1, 0.2]),), order=1)


def test_check_grads_argument_errors():
    with pytest.raises(ConfigError, match="args must be a tuple"):
        AD.check_grads(jnp.sin, jnp.ones(2))
    with pytest.raises(ConfigError, match="order must be 1 or 2"):
        AD.check_grads(jnp.sin, (jnp.ones(2),), order=3)
    with pytest.raises(ConfigError, match="no floating-point"):
        AD.check_grads(lambda i: i * 1.0, (jnp.arange(3),))

"""Run by tests/test_data_parallel.py in a subprocess with 8 simulated CPU devices.

Prints one JSON line ``{check: max abs difference | value}``; the test asserts.
Kept out of the main process so that the rest of the suite sees one device.
"""


def main():  # everything inside: importing this module (pytest --doctest-modules) runs nothing
    import json
    import os
    import sys

    # Level 0: these tiny programs compile ~2x faster; the checks compare forms, not speed.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8"
                               + " --xla_backend_optimization_level=0")

    import jax  # noqa: E402
    import numpy as np  # noqa: E402
    import optax  # noqa: E402

    jax.config.update("jax_numpy_rank_promotion", "raise")

    import fundl.layers as L  # noqa: E402
    from fundl import ConfigError  # noqa: E402
    from fundl.train import make_train_step, replicate, unreplicate  # noqa: E402

    STEPS, N = 2, 16

    def bn_model(rate, axis_name=None):
        return L.Serial(L.Flatten(), L.Dense(8, name="hidden"),
                        L.BatchNorm(name="bn", axis_name=axis_name), L.ReLU(),
                        L.Dropout(rate), L.Dense(3, name="head"))

    mlp = L.Serial(L.Flatten(), L.Dense(8, name="hidden"), L.ReLU(), L.Dense(3, name="head"))
    opt = optax.sgd(0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(STEPS, N, 6, 6, 2)).astype(np.float32)
    Y = rng.integers(0, 3, (STEPS, N)).astype(np.int32)

    def train(model, parallel, *, dropout=True, **kw):
        _, p, s = jax.jit(model.init_with_state, static_argnums=1)(jax.random.key(0), (N, 6, 6, 2))
        o = opt.init(p)
        step = make_train_step(model, opt, parallel=parallel, **kw)
        if parallel == "pmap":
            p, s, o = replicate((p, s, o))
        losses, accs = [], []
        for i in range(STEPS):
            p, s, o, m = step(p, s, o, (X[i], Y[i]), jax.random.key(100 + i) if dropout else None)
            losses.append(float(m["loss"]))
            accs.append(float(m["accuracy"]))
        if parallel == "pmap":
            p, s = unreplicate((p, s))
        return jax.device_get((p, s)), np.array(losses), np.array(accs)

    def diff(a, b):
        """Largest absolute difference over params, state and metrics."""
        (pa, sa), la, aa = a
        (pb, sb), lb, ab = b
        leaves = zip(jax.tree.leaves((pa, sa)), jax.tree.leaves((pb, sb)), strict=True)
        return max([float(np.max(np.abs(u - v))) for u, v in leaves]
                   + [float(np.max(np.abs(la - lb))), float(np.max(np.abs(aa - ab)))])

    out = {"devices": jax.device_count()}
    single = train(bn_model(0.5), None)
    out["sharded_vs_single_bn_dropout"] = diff(train(bn_model(0.5), "sharded"), single)
    single0 = train(bn_model(0.0), None, dropout=False)
    out["pmap_vs_single_bn"] = diff(train(bn_model(0.0), "pmap", dropout=False), single0)
    ghost = train(bn_model(0.0), "sharded", dropout=False, sync_batch_stats=False)
    out["per_device_pmap_vs_sharded"] = diff(
        train(bn_model(0.0), "pmap", dropout=False, sync_batch_stats=False), ghost)
    out["per_device_vs_sync"] = diff(ghost, single0)  # must be clearly non-zero
    # BatchNorm built with axis_name='data' (the step's device axis): synchronised statistics
    # in both forms, even with sync_batch_stats=False.
    for form in ("sharded", "pmap"):
        out[f"own_axis_data_{form}_vs_single"] = diff(
            train(bn_model(0.0, "data"), form, dropout=False, sync_batch_stats=False), single0)
    acc = train(bn_model(0.5), None, accumulate=2)
    out["accumulate_sharded_vs_single"] = diff(train(bn_model(0.5), "sharded", accumulate=2), acc)
    out["accumulate_pmap_vs_sharded"] = diff(
        train(bn_model(0.0), "pmap", dropout=False, accumulate=2),
        train(bn_model(0.0), "sharded", dropout=False, accumulate=2))

    # pmap with dropout: device d draws its mask from fold_in(key, d); check one step
    # against that reference computed by hand (mean of the 8 per-shard gradients).
    drop_mlp = L.Serial(L.Flatten(), L.Dense(8, name="hidden"), L.Dropout(0.5), L.Dense(3, name="head"))
    _, p0 = drop_mlp.init(jax.random.key(0), (N, 6, 6, 2))
    key = jax.random.key(7)
    step = make_train_step(drop_mlp, optax.sgd(0.1), parallel="pmap", donate=False)
    got, _, _, _ = step(*replicate((p0, {}, optax.sgd(0.1).init(p0))), (X[0], Y[0]), key)
    from fundl import functional as F  # noqa: E402

    def shard_loss(p, d):
        xs, ys = X[0][2 * d:2 * d + 2], Y[0][2 * d:2 * d + 2]
        return F.cross_entropy(drop_mlp.apply(p, xs, key=jax.random.fold_in(key, d), train=True), ys)

    g = jax.tree.map(lambda *a: sum(a) / 8, *[jax.grad(shard_loss)(p0, d) for d in range(8)])
    ref = jax.tree.map(lambda p, gg: p - 0.1 * gg, p0, g)
    out["pmap_dropout_vs_per_device_keys"] = max(
        float(np.max(np.abs(u - v))) for u, v in zip(jax.tree.leaves(unreplicate(got)), jax.tree.leaves(ref)))

    for parallel in ("sharded", "pmap"):
        try:
            step = make_train_step(mlp, opt, parallel=parallel)
            _, p = mlp.init(jax.random.key(0), (12, 6, 6, 2))
            trees = (p, {}, opt.init(p))
            step(*(replicate(trees) if parallel == "pmap" else trees), (X[0][:12], Y[0][:12]), None)
            out[f"error_{parallel}"] = "no error"
        except ConfigError as e:
            out[f"error_{parallel}"] = str(e)
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

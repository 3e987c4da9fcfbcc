"""Run by tests/test_parallel_eval.py in a subprocess with 8 simulated CPU devices.

Prints one JSON line ``{check: value}``; the test asserts. Kept out of the main process
so that the rest of the suite sees one device.
"""


def main():  # everything inside: importing this module (pytest --doctest-modules) runs nothing
    import json
    import os
    import sys
    import warnings

    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8"
                               + " --xla_backend_optimization_level=0")

    import jax  # noqa: E402
    import jax.numpy as jnp  # noqa: E402
    import numpy as np  # noqa: E402
    import optax  # noqa: E402
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

    jax.config.update("jax_numpy_rank_promotion", "raise")

    import fundl.layers as L  # noqa: E402
    # private on purpose: the loop's finiteness read on params sharded over the devices
    from fundl import _loop  # noqa: E402
    from fundl.train import evaluate, fit, make_eval_step  # noqa: E402

    def model(rate=0.0):
        return L.Serial(L.Flatten(), L.Dense(8, name="hidden"), L.BatchNorm(name="bn"), L.ReLU(),
                        L.Dropout(rate), L.Dense(3, name="head"))

    net = model()
    rng = np.random.default_rng(0)
    _, params, state = net.init_with_state(jax.random.key(0), (4, 6, 6, 2))
    # Running statistics far from the init (eval-mode batch norm must use them).
    state = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 2.0, a.shape), a.dtype), state)
    x = rng.normal(size=(21, 6, 6, 2)).astype(np.float32)
    y = np.asarray(jnp.argmax(net.apply_with_state(params, state, x)[0], -1)).astype(np.int32)
    y[::3] = (y[::3] + 1) % 3  # 14 of 21 right: both counts non-trivial
    y_ignored = y.copy()
    y_ignored[[2, 9, 13]] = -100  # cross_entropy's ignore_index: the batch mean skips them
    out = {"devices": jax.device_count()}

    def gap(a, b):
        """(|loss difference|, accuracy equal) of two evaluate() results."""
        return [abs(a["loss"] - b["loss"]), a.get("accuracy") == b.get("accuracy")]

    for labels, tag in ((y, ""), (y_ignored, "_ignored")):
        for b in (5, 8, 16, 21, 64):
            one = evaluate(net, params, state, (x, labels), batch_size=b)
            out[f"evaluate_b{b}{tag}"] = gap(
                one, evaluate(net, params, state, (x, labels), batch_size=b, parallel="sharded"))
    out["accuracy"] = evaluate(net, params, state, (x, y))["accuracy"]

    # The step itself: exact counts, for a batch of 21 and one of 5 rows (one row per device).
    one, par = make_eval_step(net), make_eval_step(net, parallel="sharded")
    for n in (21, 5, 1):
        a, b = jax.device_get(one(params, state, (x[:n], y[:n]))), \
            jax.device_get(par(params, state, (x[:n], y[:n])))
        out[f"step_{n}"] = {"count": [int(a["count"]), int(b["count"])],
                            "correct": [int(a["correct"]), int(b["correct"])],
                            "loss_sum": abs(float(a["loss_sum"]) - float(b["loss_sum"]))}

    # Params sharded by hand along 'data' (as FSDP leaves them), host params, a device subset.
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.tree.map(lambda a: a, params)
    sharded["hidden"]["w"] = jax.device_put(params["hidden"]["w"], NamedSharding(mesh, P("data")))
    sharded["head"]["w"] = jax.device_put(params["head"]["w"], NamedSharding(mesh, P("data")))
    one = evaluate(net, params, state, (x, y), batch_size=5)
    for mode in ("sharded", "fsdp"):
        out[f"hand_sharded_{mode}"] = gap(one, evaluate(net, sharded, state, (x, y), batch_size=5,
                                                        parallel=mode))
    placed = make_eval_step(net, parallel="fsdp").place((sharded, state))[0]
    out["kept_sharded"] = placed["hidden"]["w"] is sharded["hidden"]["w"]
    out["placed_replicated"] = bool(placed["hidden"]["b"].sharding.is_fully_replicated
                                    and len(placed["hidden"]["b"].sharding.device_set) == 8)
    out["host_params"] = gap(one, evaluate(net, jax.device_get(params), jax.device_get(state),
                                           (x, y), batch_size=5, parallel="sharded"))
    out["three_devices"] = gap(one, evaluate(net, params, state, (x, y), batch_size=8,
                                             parallel="sharded", devices=jax.devices()[:3]))

    # fit: one epoch data parallel (dropout and batch norm) against one device.
    xt = rng.normal(size=(32, 6, 6, 2)).astype(np.float32)
    yt = rng.integers(0, 3, 32).astype(np.int32)
    drop = model(0.25)

    def train(parallel, **kw):
        r = fit(drop, params, state, optax.sgd(0.1, momentum=0.9), (xt, yt), epochs=1,
                batch_size=16, key=3, eval_data=(x, y), progress=False, parallel=parallel, **kw)
        return jax.device_get(r[:2]), r.history[0]

    ref = train(None)

    def fit_gap(got):
        (p0, s0), h0 = ref
        (p1, s1), h1 = got
        trees = max(float(np.max(np.abs(u - v)))
                    for u, v in zip(jax.tree.leaves((p0, s0)), jax.tree.leaves((p1, s1)), strict=True))
        return [trees] + [abs(h0[k] - h1[k]) for k in ("train_loss", "train_accuracy",
                                                        "test_loss", "test_accuracy")]

    out["fit_sharded"] = fit_gap(train("sharded"))
    try:  # needs make_train_step(parallel='fsdp')
        out["fit_fsdp"] = fit_gap(train("fsdp"))
    except Exception as e:  # noqa: BLE001 -- reported to the test
        out["fit_fsdp"] = f"{type(e).__name__}: {e}"
    try:
        fit(drop, params, state, optax.sgd(0.1), (xt[:28], yt[:28]), epochs=1, batch_size=8,
            key=0, progress=False, parallel="sharded")
        out["fit_last_batch_error"] = "no error"
    except Exception as e:  # noqa: BLE001
        out["fit_last_batch_error"] = f"{type(e).__name__}: {e}"

    # Non-finite training, data parallel: stopped, the last good (finite) params returned.
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        r = fit(net, params, state, optax.sgd(1e30), (xt, yt), epochs=1, batch_size=8, key=0,
                progress=False, parallel="sharded", log_every=1)
    out["nonfinite_stopped"] = r.history[-1].get("stopped", "")
    out["nonfinite_params_finite"] = bool(all(np.isfinite(np.asarray(a)).all()
                                              for a in jax.tree.leaves(r.params)))

    # The loop's finiteness check on params sharded over the devices: a NaN in the last
    # device's rows only is seen (a first-device read would miss it).
    w = np.ones((16, 3), np.float32)
    bad = w.copy()
    bad[-1, 0] = np.nan
    sharding = NamedSharding(mesh, P("data"))
    for tag, arr in (("clean", w), ("nan_last_shard", bad)):
        sums = _loop._MetricSums()
        sums.add({"loss": jax.device_put(jnp.float32(1.0), NamedSharding(mesh, P()))}, 8)
        out[f"loop_finite_{tag}"] = bool(sums.read({"w": jax.device_put(arr, sharding)})
                                         ["_params_finite"])
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

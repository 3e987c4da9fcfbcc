"""Run by tests/test_compile_cache.py in a subprocess: one experiment runner, with JAX's
compilation events counted.

    python tests/compile_cache_worker.py experiments/quickstart.py --epochs 1 ...

Calls the runner's ``main(argv)`` and prints one JSON line: persistent-cache hits and
misses, the programs compiled or read back, and the seconds spent in them (the sum of
``/jax/core/compile/backend_compile_duration``). The test asserts.
"""


def main():  # everything inside: importing this module (pytest --doctest-modules) runs nothing
    import importlib.util
    import json
    import sys

    import jax

    counts = {"cache_hits": 0, "cache_misses": 0, "backend_compiles": 0, "compile_seconds": 0.0}

    def on_event(name, **kwargs):
        for key in ("cache_hits", "cache_misses"):
            if name == f"/jax/compilation_cache/{key}":
                counts[key] += 1

    def on_duration(name, seconds, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            counts["backend_compiles"] += 1
            counts["compile_seconds"] += seconds

    jax.monitoring.register_event_listener(on_event)
    jax.monitoring.register_event_duration_secs_listener(on_duration)
    spec = importlib.util.spec_from_file_location("runner", sys.argv[1])
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    runner.main(sys.argv[2:])
    print(json.dumps(counts))


if __name__ == "__main__":
    main()

"""Strict numerics for the whole suite (rank promotion raises; float32 CPU), and a
persistent compilation cache so that a second run of the tests does not compile again."""
import os
import pathlib

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

# Most of a test's time is XLA compiling small programs. Keep every compiled program
# on disk (.jax_cache/, ignored by git): the first run of a fresh clone compiles as
# before, later runs (the fast tier after each change) read them back.
# FUNDL_TEST_JAX_CACHE=0 turns it off.
if os.environ.get("FUNDL_TEST_JAX_CACHE", "1") != "0":
    # One directory per pytest-xdist worker: JAX writes cache entries without a lock, so
    # two workers compiling the same program could read each other's half-written file.
    jax.config.update("jax_compilation_cache_dir",
                      str(pathlib.Path(__file__).resolve().parent / ".jax_cache"
                          / os.environ.get("PYTEST_XDIST_WORKER", "main")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
else:  # off, also for the runners called in process (fundl.experiment.setup_compile_cache
    # keeps a cache JAX was given, or its absence, rather than open ~/.cache/fundl/jax)
    jax.config.update("jax_enable_compilation_cache", False)
# The runners the tests start as subprocesses compile afresh and write no cache (their default
# is ~/.cache/fundl/jax, shared and unlocked): tests/test_compile_cache.py turns it on itself.
os.environ.pop("FUNDL_COMPILE_CACHE", None)
os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"


# Doctests that compile a whole model: the slow tier (they run in the full suite).
SLOW_DOCTESTS = {"fundl.models.convolutionize", "fundl.models.lenet5", "fundl.models.context_module",
                 "fundl._autodiff.hessian", "fundl._norm.BatchNorm", "fundl._blocks.Bottleneck"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if type(item).__name__ == "DoctestItem" and item.name in SLOW_DOCTESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def rng():
    """A NumPy generator with a fixed seed, so failures reproduce."""
    return np.random.default_rng(0)

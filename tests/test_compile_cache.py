"""The runners' persistent compilation cache: the flags, the directory chosen, entries written
and read back by a second run, nothing written with ``--no-compile-cache``.

The runs are subprocesses (``tests/compile_cache_worker.py`` counts JAX's compilation
events), so the cache configured there never touches this process's (the suite's
per-worker cache set in ``conftest.py``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

import fundl
from fundl import experiment as E

REPO = pathlib.Path(__file__).resolve().parents[1]
RUNNERS = ("quickstart", "mnist", "cifar10", "dp_sgd_mnist", "finetune", "gradient_penalty_mnist",
           "maml_sinusoid", "visualize_filters")


def _runner(name):
    spec = importlib.util.spec_from_file_location(f"cc_{name}", REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flags_parse():
    p = argparse.ArgumentParser()
    E.add_compile_cache_flags(p)
    assert p.parse_args([]).compile_cache is None
    assert p.parse_args(["--no-compile-cache"]).compile_cache is False
    assert p.parse_args(["--compile-cache", "some/dir"]).compile_cache == pathlib.Path("some/dir")
    with pytest.raises(SystemExit) as info:  # exclusive: argparse error, status 2
        p.parse_args(["--no-compile-cache", "--compile-cache", "d"])
    assert info.value.code == 2


@pytest.mark.parametrize("name", RUNNERS)
def test_every_runner_has_the_flags(name, capsys):
    with pytest.raises(SystemExit):
        _runner(name).parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--compile-cache" in text and "--no-compile-cache" in text and "~/.cache/fundl/jax" in text


def test_default_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("FUNDL_COMPILE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert E.default_compile_cache_dir() == tmp_path / "xdg" / "fundl" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert E.default_compile_cache_dir() == pathlib.Path.home() / ".cache" / "fundl" / "jax"
    monkeypatch.setenv("FUNDL_COMPILE_CACHE", str(tmp_path / "mine"))
    assert E.default_compile_cache_dir() == tmp_path / "mine"


def test_a_directory_jax_was_given_is_kept(monkeypatch):
    """In process, with no flag, a cache already configured (here: the suite's) is left alone."""
    monkeypatch.delenv("FUNDL_COMPILE_CACHE", raising=False)
    before = jax.config.jax_compilation_cache_dir
    got = E.setup_compile_cache(argparse.Namespace(compile_cache=None))
    assert jax.config.jax_compilation_cache_dir == before
    if not jax.config.jax_enable_compilation_cache:  # FUNDL_TEST_JAX_CACHE=0: off, and kept off
        assert got is None
    else:
        assert got == pathlib.Path(before)


def test_unusable_directory_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(fundl.ConfigError) as info:
        E.use_compile_cache(blocker / "sub")
    assert "--no-compile-cache" in str(info.value) and str(blocker / "sub") in str(info.value)


def _run(tmp_path, *flags):
    """Run experiments/quickstart.py for one epoch in a subprocess; its compilation counts."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_ENABLE_COMPILATION_CACHE",
                                "FUNDL_COMPILE_CACHE"))}
    env.update(PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(tmp_path / "xdg"), HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, str(REPO / "tests" / "compile_cache_worker.py"),
                          str(REPO / "experiments" / "quickstart.py"), "--epochs", "1",
                          "--batch-size", "64", "--no-progress", *flags],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _files(path):
    return sorted(p for p in pathlib.Path(path).rglob("*") if p.is_file()) if path.exists() else []


@pytest.mark.slow
def test_second_run_reads_the_cache_and_no_compile_cache_writes_nothing(tmp_path):
    default = tmp_path / "xdg" / "fundl" / "jax"
    first = _run(tmp_path)  # no flag: the default directory ($XDG_CACHE_HOME/fundl/jax)
    written = _files(default)
    assert first["cache_misses"] > 0 and first["cache_hits"] == 0
    assert len(written) >= first["cache_misses"]  # every compiled program kept, however small
    second = _run(tmp_path, "--compile-cache", str(default))  # the same directory, by the flag
    assert second["cache_hits"] == first["cache_misses"] and second["cache_misses"] == 0
    assert _files(default) == written  # read back, nothing new

    off = _run(tmp_path, "--no-compile-cache")
    assert off["cache_hits"] == off["cache_misses"] == 0 and off["backend_compiles"] > 0
    assert _files(default) == written
    assert not _files(tmp_path / "home")  # nothing anywhere else either

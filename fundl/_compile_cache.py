"""The runners' persistent compilation cache: one place that chooses the directory and
configures JAX (``--compile-cache DIR`` / ``--no-compile-cache``).

Part of :mod:`fundl.experiment` (which re-exports the public names). A runner calls
:func:`add_compile_cache_flags` on its parser (:func:`fundl.experiment.add_training_flags`
does) and :func:`setup_compile_cache` right after parsing, before anything compiles.

The directory, in order: ``--compile-cache DIR``; ``$FUNDL_COMPILE_CACHE``; a directory
JAX was already given, or the cache turned off (``$JAX_COMPILATION_CACHE_DIR``,
``jax.config`` set by the caller, e.g. the test suite's per-worker cache: left as it is); otherwise
``$XDG_CACHE_HOME/fundl/jax`` (``~/.cache/fundl/jax``). Every compiled program is kept,
however small or quick to compile, so that a second run of the same runner reads them
back instead of compiling. The cache is trusted code: do not point it at a directory
others can write to.
"""
from __future__ import annotations

import argparse
import os
import pathlib

ENV_VAR = "FUNDL_COMPILE_CACHE"


def default_compile_cache_dir() -> pathlib.Path:
    """``$FUNDL_COMPILE_CACHE`` if set, else ``$XDG_CACHE_HOME/fundl/jax`` (``~/.cache/fundl/jax``).

    Example:
      >>> isinstance(default_compile_cache_dir(), pathlib.Path)
      True
    """
    if os.environ.get(ENV_VAR):
        return pathlib.Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base).expanduser() / "fundl" / "jax"


def add_compile_cache_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--compile-cache DIR`` and ``--no-compile-cache`` (exclusive) to ``parser``.

    Both land in ``args.compile_cache`` (a path, ``False`` for ``--no-compile-cache``,
    ``None`` when neither is given); pass ``args`` to :func:`setup_compile_cache`.

    Example:
      >>> p = argparse.ArgumentParser()
      >>> add_compile_cache_flags(p)
      >>> p.parse_args(["--no-compile-cache"]).compile_cache, p.parse_args([]).compile_cache
      (False, None)
    """
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--compile-cache", type=pathlib.Path, default=None, metavar="DIR",
        help="keep JAX's compiled programs in DIR, so that a second run of this runner reads "
             "them back instead of compiling again (default: $FUNDL_COMPILE_CACHE, else a "
             "directory JAX was already given ($JAX_COMPILATION_CACHE_DIR), else "
             "~/.cache/fundl/jax)")
    group.add_argument(
        "--no-compile-cache", dest="compile_cache", action="store_const", const=False,
        help="compile everything afresh and write no compilation cache")


def setup_compile_cache(args) -> pathlib.Path | None:
    """Configure JAX's persistent compilation cache from parsed :func:`add_compile_cache_flags`.

    Call it before the first compilation of the process (a later call still takes
    effect for what compiles after it).

    Args:
      args: a namespace with ``compile_cache``: a path, ``False`` (off) or ``None``
        (the default directory, see the module docstring).

    Returns:
      The cache directory in use, or ``None`` when the cache is off.
    """
    choice = getattr(args, "compile_cache", None)
    if choice is False:
        return use_compile_cache(None)
    if choice is not None:
        return use_compile_cache(choice)
    if not os.environ.get(ENV_VAR):
        import jax

        # The caller's choice (JAX_* environment variables, the test suite, a runner that
        # calls another): kept as it is.
        if not jax.config.jax_enable_compilation_cache:
            return None
        if jax.config.jax_compilation_cache_dir:
            return pathlib.Path(jax.config.jax_compilation_cache_dir)
    return use_compile_cache(default_compile_cache_dir())


def use_compile_cache(directory) -> pathlib.Path | None:
    """Keep every compiled program in ``directory`` (created), or turn the cache off (``None``).

    Sets ``jax_compilation_cache_dir``, ``jax_persistent_cache_min_compile_time_secs = 0``
    and ``jax_persistent_cache_min_entry_size_bytes = -1`` (no size threshold), and
    re-reads the directory if the cache was already in use in this process. ``None``
    sets ``jax_enable_compilation_cache = False`` for the rest of the process.

    Args:
      directory: a path (str or ``pathlib.Path``; ``~`` expanded) or ``None``.

    Returns:
      The directory as a ``pathlib.Path``, or ``None``.

    Raises:
      ConfigError: ``directory`` exists and is not a directory, or cannot be created.
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    from ._errors import ConfigError

    if directory is None:
        jax.config.update("jax_enable_compilation_cache", False)
        cc.reset_cache()
        return None
    path = pathlib.Path(directory).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"compile cache: cannot use directory={str(path)!r} ({e}); give "
                          "--compile-cache a writable directory, or --no-compile-cache") from None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    cc.reset_cache()  # a cache already opened on another directory reads this one from now on
    return path

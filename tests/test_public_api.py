"""The public surface: tests reach fundl through its public modules, and every public name is documented.

Tests import ``fundl``, ``fundl.layers``, ``fundl.functional``, ... (the modules users import), not
the private ``fundl._*`` implementation modules, so what is tested is what users get. A test that
checks an implementation detail on purpose says so with a ``# private on purpose: <why>`` comment
next to the import, and its (file, private module) pair is listed, with the reason, in
``PRIVATE_ON_PURPOSE`` below.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import re

import pytest

TESTS = pathlib.Path(__file__).parent

# (test file, first private component reached) -> why the test goes past the public surface.
PRIVATE_ON_PURPOSE = {
    ("cluster_worker.py", "fundl.experiment._data_pipeline"):
        "the host batches run() feeds each process, checked against one process's rows",
    ("cluster_worker.py", "fundl.experiment._device_augment"):
        "run()'s on-device augmentation with a replicated key, checked against one process's rows",
    ("test_remat.py", "fundl._remat"):
        "RematSerial (the checkpointed segments of VGG's features with remat=True) is built only "
        "by the zoo and tested directly, with the list of named policies",
    ("fsdp_worker.py", "fundl._parallel"):
        "reads FSDP_MIN_SIZE to tell which leaves the fsdp step must split and which replicate",
    ("test_fsdp.py", "fundl._parallel"):
        "pins the fsdp placement rule (fsdp_shardings, fsdp_spec, FSDP_MIN_SIZE) leaf by leaf",
    ("test_fast_paths.py", "fundl._lowering"):
        "checks the auto lowering against its policy (pool_reshape_ok) and simulates a GPU by "
        "patching the backend probe _on_cpu",
    ("test_winograd.py", "fundl._lowering"):
        "checks the auto policy (choose_conv) on shapes, and simulates a GPU by patching _on_cpu",
    ("test_winograd.py", "fundl._winograd"):
        "the Winograd form (winograd_conv) is what reverse mode transposes: its values are "
        "checked against the convolution directly, negative (cropping) pads included",
    ("test_loop.py", "fundl._loop"):
        "pins that fit and experiment.run share one epoch loop (counts calls to run_epoch) and "
        "tests that loop directly",
    ("parallel_eval_worker.py", "fundl._loop"):
        "the epoch loop's finiteness check on params sharded over devices (as FSDP leaves "
        "them), before any public step returns such params",
    ("test_shapes.py", "fundl._shapes"):
        "resolve_padding, the one normaliser of padding spellings behind the public ops, is "
        "checked directly on hand-computed (lo, hi) pairs",
    ("test_data.py", "fundl.data._standardize"):
        "shrinks the standardizer's chunk size (_CHUNK_ELEMS) to force the many-chunk path",
    ("test_checkpoint_faults.py", "fundl._checkpoints"):
        "the finite flag of a checkpoint's record (_checksums) on NaN/Inf params, which a run "
        "stops before saving",
    ("test_loop.py", "fundl.train._cached_fit_step"):
        "fit's cache of compiled steps: a second fit with the same model and optimizer hits it",
    ("test_experiments.py", "fundl.experiment._compile_fast"):
        "run's init compiled at XLA optimisation level 1 must equal model.init bit for bit",
    ("test_experiments.py", "fundl.experiment._compile_in_background"):
        "run's train step compiled in a thread during init: the first step must reuse it",
    ("test_experiments.py", "fundl.experiment._train_step_with_augment"):
        "the runner's step (with its fold_in_step) that the background compilation targets",
    ("test_train.py", "fundl.train._as_key"):
        "the key normaliser behind fit(key=...): int seeds, legacy and typed keys agree",
}

# Every public module (the ``Public surface`` list in fundl/__init__.py).
PUBLIC_MODULES = ("fundl", "fundl.layers", "fundl.functional", "fundl.train", "fundl.models",
                  "fundl.data", "fundl.experiment", "fundl.autodiff", "fundl.viz",
                  "fundl.distributed", "fundl.surgery", "fundl.initializers", "fundl.interop",
                  "fundl.io")


def _private_prefix(dotted: str) -> str | None:
    """``'fundl._conv.conv'`` -> ``'fundl._conv'``: the path up to its first private component."""
    parts = dotted.split(".")
    if parts[0] != "fundl":
        return None
    for i, part in enumerate(parts[1:], start=1):
        if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):
            return ".".join(parts[:i + 1])
    return None


def _dotted(node: ast.AST, bound: dict[str, str]) -> str | None:
    """The fundl path an expression such as ``T._as_key`` or ``fundl._conv`` names, if any."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in bound:
        return ".".join([bound[node.id], *reversed(attrs)])
    return None


def private_uses(source: str) -> set[str]:
    """The private fundl modules and names a Python source reaches.

    Counted: ``import fundl._x``, ``from fundl._x import y``, ``from fundl import _x``, attribute
    access through a name bound to fundl (``fundl._x``, ``T._helper`` after ``import fundl.train
    as T``) and dotted strings passed to a call (``monkeypatch.setattr("fundl._x.f", ...)``,
    ``importlib.import_module("fundl._x")``).
    """
    tree = ast.parse(source)
    found, bound = set(), {}
    for node in ast.walk(tree):  # bindings first: a name may be used above its (local) import
        if isinstance(node, ast.Import):
            for a in node.names:
                found.add(_private_prefix(a.name))
                if a.asname:
                    bound[a.asname] = a.name
                elif a.name.split(".")[0] == "fundl":
                    bound["fundl"] = "fundl"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                path = f"{node.module}.{a.name}"
                found.add(_private_prefix(path))
                if node.module.split(".")[0] == "fundl":
                    bound[a.asname or a.name] = path
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            path = _dotted(node, bound)
            if path is not None:
                found.add(_private_prefix(path))
        elif isinstance(node, ast.Call):
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) \
                        and re.fullmatch(r"fundl(\.\w+)+", arg.value):
                    found.add(_private_prefix(arg.value))
    return found - {None}


def _scan() -> set[tuple[str, str]]:
    """``{(test file, private path)}`` over every Python file under tests/."""
    return {(path.relative_to(TESTS).as_posix(), private)
            for path in TESTS.rglob("*.py") for private in private_uses(path.read_text())}


@pytest.mark.parametrize("source,expected", [
    ("import fundl._conv", {"fundl._conv"}),
    ("import fundl._lowering as lo\nlo._on_cpu()", {"fundl._lowering"}),
    ("from fundl._errors import ConfigError", {"fundl._errors"}),
    ("from fundl import _conv, layers", {"fundl._conv"}),
    ("from fundl.data import _standardize", {"fundl.data._standardize"}),
    ("import fundl\nfundl._shapes.resolve_padding", {"fundl._shapes"}),
    ("import fundl.layers\nfundl.layers.Conv\nfundl._pool", {"fundl._pool"}),
    ("import fundl.train as T\nT.fit\nT._as_key(3)", {"fundl.train._as_key"}),
    ("def f(mp):\n    mp.setattr('fundl._loop.run_epoch', None)", {"fundl._loop"}),
    ("import fundl, fundl.functional as F\nfundl.ConfigError, F.conv, fundl.__version__", set()),
    ("def f(mp):\n    mp.setattr(x, '_CHUNK_ELEMS', 1)\n    print('fundl._x is private')", set()),
    ("import numpy._core\nfrom os import _exit", set()),
])
def test_private_uses_finds_every_spelling(source, expected):
    assert private_uses(source) == expected


def test_tests_import_only_public_modules():
    uses = _scan()
    unlisted = sorted(uses - set(PRIVATE_ON_PURPOSE))
    assert not unlisted, (
        "tests reach private fundl modules; import the public module instead (fundl, fundl.layers, "
        "fundl.functional, ...), or, if the test checks an implementation detail on purpose, add a "
        "'# private on purpose: <why>' comment and list the pair in PRIVATE_ON_PURPOSE: "
        f"{unlisted}")
    stale = sorted(set(PRIVATE_ON_PURPOSE) - uses)
    assert not stale, f"PRIVATE_ON_PURPOSE lists pairs no test uses any more; remove them: {stale}"


def test_allowed_private_uses_say_why_in_the_test():
    for file, private in PRIVATE_ON_PURPOSE:
        assert "# private on purpose:" in (TESTS / file).read_text(), (file, private)


def _public_names():
    for modname in PUBLIC_MODULES:
        for name in importlib.import_module(modname).__all__:
            yield modname, name


@pytest.mark.parametrize("modname,name", list(_public_names()))
def test_public_name_exists_and_is_documented(modname, name):
    module = importlib.import_module(modname)
    assert hasattr(module, name), f"{modname}.__all__ lists {name!r}, which {modname} lacks"
    obj = getattr(module, name)
    if not (inspect.ismodule(obj) or inspect.isclass(obj) or callable(obj)):
        pytest.skip(f"{modname}.{name} is a value ({type(obj).__name__}): it has no docstring")
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    assert doc and doc.strip(), f"{modname}.{name} has no docstring"
    if inspect.isclass(obj):  # dataclass / NamedTuple fill in "Name(field, ...)" when none is written
        assert not doc.startswith(f"{obj.__name__}("), \
            f"{modname}.{name} has only the generated docstring {doc!r}"


def test_the_four_main_surfaces_are_swept():
    swept = {m for m, _ in _public_names()}
    assert {"fundl", "fundl.layers", "fundl.functional", "fundl.train"} <= swept

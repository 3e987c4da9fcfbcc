"""``import fundl`` needs only JAX, NumPy and Optax (issue 15: the GPU benchmark runs on a machine
with just jax, flax, optax and torch preinstalled, plus this repository on ``PYTHONPATH``).

A subprocess installs an import hook that makes the heavy or optional packages unimportable
(the data sets, the figures, the checkpoints, the progress bars, the peer frameworks), imports
fundl and its public modules, and reports what got loaded. Any of them needed at import time
fails the import; any of them imported after all (say, behind a ``try``) is caught in
``sys.modules``.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# tqdm is blocked too: fit() and the runners import it only when they draw a progress bar.
BLOCKED = ("tensorflow_datasets", "tensorflow", "matplotlib", "orbax", "tqdm", "torch", "flax",
           "sklearn", "PIL", "safetensors")
MODULES = ("fundl", "fundl.layers", "fundl.models", "fundl.train", "fundl.functional")

SCRIPT = r"""
import importlib, importlib.abc, json, sys
blocked = set(sys.argv[1].split(","))
refused = []

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            refused.append(name)
            raise ModuleNotFoundError(f"blocked by test_import_light: {name}", name=name)
        return None

sys.meta_path.insert(0, Refuse())
sys.path.insert(0, sys.argv[2])
for name in sys.argv[3].split(","):
    importlib.import_module(name)
loaded = sorted({m.split(".")[0] for m in sys.modules} & blocked)
print(json.dumps({"fundl": sys.modules["fundl"].__file__, "loaded": loaded, "refused": refused}))
"""


def test_import_fundl_without_optional_packages():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(BLOCKED), str(ROOT),
                           ",".join(MODULES)], capture_output=True, text=True, timeout=120,
                          env=env, cwd=ROOT)
    assert done.returncode == 0, f"import fundl failed, {BLOCKED} blocked:\n{done.stderr[-3000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert pathlib.Path(report["fundl"]).resolve().parent == ROOT / "fundl"
    assert report["loaded"] == [], f"imported at `import fundl` time: {report['loaded']}"
    # Not even an attempt swallowed by a try/except ImportError (none today, in fundl or in
    # jax/optax): a new one is named here, to be made lazy or listed as harmless.
    assert not report["refused"], f"fundl or a dependency tried to import {report['refused']}"


def test_hook_catches_a_blocked_import():
    """The hook itself works: importing a blocked package in the same script fails."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, "json_blocked_probe,fundl", str(ROOT),
                           "fundl"], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode != 0
    assert "blocked by test_import_light: fundl" in done.stderr

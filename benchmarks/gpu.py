"""ResNet-50 training throughput and MFU on one GPU: fundl, flax linen, PyTorch (AMP, compiled).

On a machine with a GPU (needs only jax with CUDA, flax, optax, torch, and this
repository), from the repository root; all contestants in about 5-8 minutes,
compilation included (overall budget 450 s):

    PYTHONPATH=. python benchmarks/gpu.py                            # JSON: runs/gpu_benchmark.json
    PYTHONPATH=. python benchmarks/gpu.py --only fundl,flax --out /tmp/gpu.json
    PYTHONPATH=. python benchmarks/gpu.py --peak-tflops 989          # MFU against this peak
    PYTHONPATH=. python benchmarks/gpu.py --smoke --only fundl,flax  # tiny CPU run (CI, ~30 s)

One step: ResNet-50 (torchvision's v1.5, the same architecture in every
framework, see ``resnet_cpu.py``), batch 256, 224x224x3, forward in train mode
(batch norm on batch statistics, running statistics updated), cross-entropy,
backward, SGD (lr 0.1, momentum 0.9). Float32 parameters and optimizer state,
bfloat16 compute: fundl ``make_train_step(..., precision='bfloat16')``, flax
linen layers with ``dtype=jnp.bfloat16``, PyTorch ``torch.autocast(bfloat16)``
on a channels-last model (eager, and ``torch.compile`` of the model). The batch
is synthetic, generated once on the device (no input pipeline is measured).

Each contestant runs in its own subprocess with a deadline (at most its
``--timeout``, at most what is left of ``--budget``); one that times out or fails
is reported as such. ``compile s`` is the first step's wall time (tracing,
compilation and one step); after ``--warmup`` more steps, ``--windows`` windows
of ``--steps`` steps are timed (device synchronised at each window's end) and
the median window gives ``step ms`` and ``img/s``.

MFU (model FLOP utilisation) = img/s x training FLOPs per image / peak FLOP/s.
Training FLOPs per image = 3 x forward = 6 x MACs, with ResNet-50's analytic
4,089,184,256 MACs per 224x224 image (convolutions and the classifier; equal to
``fundl.summary``'s count). The peak is ``--peak-tflops`` or, by device name,
the dense bf16 tensor-core peak in ``PEAK_TFLOPS`` (H100 SXM / H200: 989).

``--smoke`` runs a ResNet-10 (one basic block per stage, CIFAR stem) at batch 2,
32x32, float32, 2 timed steps, on the CPU with XLA's CPU optimisation level 0
(it checks the plumbing, not the speed).

Writes a JSON (configuration, peak, per-contestant results; rewritten after
each contestant, logs beside it in ``<out>_logs/``) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

CONTESTANTS = ("fundl", "flax", "torch", "torch_compile")
LABELS = {"fundl": "fundl", "flax": "flax linen", "torch": "PyTorch eager",
          "torch_compile": "PyTorch torch.compile"}
TIMEOUT_S = {"fundl": 150, "flax": 150, "torch": 120, "torch_compile": 240}
MIN_START_S = 15  # a contestant is not started with less than this left of the budget
# Forward multiply-accumulates per image, (model, image size): conv + dense layers (fundl.summary).
MACS = {("resnet50", 224): 4_089_184_256, ("resnet18", 32): 555_422_720,
        ("resnet10", 32): 253_432_832}
# Dense (not 2:4 sparse) bf16 tensor-core peaks, TFLOP/s, matched in order against the device
# name (lower case); the more specific names first.
# (NVIDIA data sheets: the sparse figure halved.) Others: pass --peak-tflops.
PEAK_TFLOPS = (("h100 pcie", 756.0), ("h100 nvl", 835.0), ("gh200", 989.0), ("h200", 989.0),
               ("h100", 989.0), ("h800", 989.0), ("b200", 2250.0), ("a100", 312.0),
               ("a800", 312.0), ("l40s", 362.0), ("l40", 181.0), ("l4", 121.0))


@dataclasses.dataclass(frozen=True)
class Config:
    """What one contestant measures (also sent to its subprocess as JSON)."""

    model: str = "resnet50"
    batch: int = 256
    precision: str = "bfloat16"
    warmup: int = 5
    windows: int = 5
    steps: int = 10
    cpu: bool = False


SMOKE = Config(model="resnet10", batch=2, precision="float32", warmup=0, windows=1, steps=2,
               cpu=True)


# -- arithmetic ----------------------------------------------------------------------

def train_flops_per_image(model: str, size: int) -> int:
    """Training FLOPs per image: forward + backward = 3 x forward = 6 x forward MACs."""
    if (model, size) not in MACS:
        raise ValueError(f"train_flops_per_image: no MAC count for model={model!r} at "
                         f"size={size}; known: {sorted(MACS)}")
    return 6 * MACS[(model, size)]


def peak_tflops_for(device: str) -> tuple[float | None, str]:
    """``(peak TFLOP/s, matched key)`` for a device name, ``(None, '')`` if unknown."""
    name = device.lower()
    for key, peak in PEAK_TFLOPS:
        if key in name:
            return peak, key
    return None, ""


def mfu(img_per_s: float | None, flops_per_image: float, peak_tflops: float | None) -> float | None:
    """Model FLOP utilisation in [0, 1]: achieved FLOP/s over the peak; ``None`` without a peak."""
    if img_per_s is None or not peak_tflops:
        return None
    return img_per_s * flops_per_image / (peak_tflops * 1e12)


# -- one contestant, in its own process ------------------------------------------------

def _spec(cfg: Config):
    import resnet_cpu
    _, _, _, size, classes = resnet_cpu.SPECS[cfg.model]
    return size, classes


def _jax_batch(cfg: Config):
    """A synthetic batch made on JAX's default device: ``x [N, H, W, 3]`` float32, ``y [N]``."""
    import jax
    import jax.numpy as jnp
    size, classes = _spec(cfg)
    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (cfg.batch, size, size, 3), jnp.float32)
    y = jax.random.randint(ky, (cfg.batch,), 0, classes, jnp.int32)
    return jax.block_until_ready((x, y))


def jax_contestant(name: str, cfg: Config):
    """``(run, wait, device name, versions)`` for the fundl or flax linen step."""
    import jax
    import jax.numpy as jnp

    import resnet_cpu
    x, y = _jax_batch(cfg)
    bf16 = cfg.precision == "bfloat16"
    if name == "fundl":
        import fundl  # noqa: F401 (the version below)
        run = resnet_cpu.fundl_step(cfg.model, x, y, precision=cfg.precision)
    else:
        run = resnet_cpu.flax_step(cfg.model, x, y, dtype=jnp.bfloat16 if bf16 else None)[0]
    versions = {m: sys.modules[m].__version__ for m in ("jax", "jaxlib", "flax", "optax")
                if m in sys.modules and hasattr(sys.modules[m], "__version__")}
    return run, jax.block_until_ready, jax.devices()[0].device_kind, versions


def torch_contestant(cfg: Config, compiled: bool):
    """``(run, wait, device name, versions)`` for the PyTorch step (channels-last, autocast)."""
    import torch

    import resnet_cpu
    size, classes = _spec(cfg)
    dev = "cuda" if torch.cuda.is_available() and not cfg.cpu else "cpu"
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    net = resnet_cpu.torch_model(torch, cfg.model).to(dev, memory_format=torch.channels_last)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=resnet_cpu.LR, momentum=resnet_cpu.MOMENTUM)
    x = torch.randn(cfg.batch, 3, size, size, device=dev).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, classes, (cfg.batch,), device=dev)
    model = torch.compile(net) if compiled else net
    amp = cfg.precision == "bfloat16"

    def run():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        return loss.detach()

    def wait(_):
        if dev == "cuda":
            torch.cuda.synchronize()
    device = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda or "none"}
    return run, wait, device, versions


def time_steps(run, wait, cfg: Config) -> dict:
    """Time ``run`` (one step) as the module docstring says; returns the measurements."""
    t0 = time.perf_counter()
    wait(run())
    first = time.perf_counter() - t0
    for _ in range(cfg.warmup):
        out = run()
    if cfg.warmup:
        wait(out)
    windows = []
    for _ in range(cfg.windows):
        t0 = time.perf_counter()
        for _ in range(cfg.steps):
            out = run()
        wait(out)
        windows.append((time.perf_counter() - t0) / cfg.steps)
    step_s = statistics.median(windows)
    return {"compile_s": first, "step_ms": step_s * 1e3, "img_per_s": cfg.batch / step_s,
            "window_step_ms": [w * 1e3 for w in windows]}


def measure(name: str, cfg: Config) -> dict:
    """Build contestant ``name`` and time it: ``{'status': 'ok', img_per_s, step_ms, ...}``."""
    t0 = time.perf_counter()
    if name in ("fundl", "flax"):
        run, wait, device, versions = jax_contestant(name, cfg)
    elif name in ("torch", "torch_compile"):
        run, wait, device, versions = torch_contestant(cfg, compiled=name == "torch_compile")
    else:
        raise ValueError(f"measure: unknown contestant {name!r}; expected one of {CONTESTANTS}")
    setup = time.perf_counter() - t0  # imports, synthetic batch, parameter init
    return {"status": "ok", "device": device, "versions": versions, "setup_s": setup,
            **time_steps(run, wait, cfg)}


def child_main(name: str, cfg: Config, result: pathlib.Path):
    """Subprocess entry: measure ``name`` and write its result JSON to ``result``."""
    res = measure(name, cfg)
    result.write_text(json.dumps(res))
    print(f"[{name}] {res['img_per_s']:.1f} img/s, {res['step_ms']:.2f} ms/step, first step "
          f"{res['compile_s']:.1f} s on {res['device']}", file=sys.stderr, flush=True)


# -- the parent: deadlines, table, JSON ------------------------------------------------

def _tail(path: pathlib.Path, n: int = 400) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " / ".join(lines[-3:])[-n:]


def _kill_group(proc: subprocess.Popen):
    """SIGKILL the process group ``proc`` leads (it was started in a session of its own)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already
    proc.wait()


def run_subprocess(argv: list[str], timeout_s: float, result: pathlib.Path, log: pathlib.Path,
                   env: dict | None = None) -> dict:
    """Run ``argv`` (a contestant that writes its JSON to ``result``) with a deadline.

    Returns the contestant's JSON (``status 'ok'``), or ``{'status': 'timeout'}``
    (the whole process group is killed: torch.compile's workers too) or
    ``{'status': 'failed', 'error': <last lines of its output>}``; with ``wall_s``.
    Never raises for a contestant's failure.
    """
    result.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "error": f"no result within {timeout_s:.0f} s",
                    "wall_s": time.perf_counter() - t0}
        finally:  # its group, which Ctrl-C does not reach (own session): stragglers, or all of it
            _kill_group(proc)
    wall = time.perf_counter() - t0
    if code == 0 and result.exists():
        try:
            return {**json.loads(result.read_text()), "wall_s": wall}
        except json.JSONDecodeError as e:
            return {"status": "failed", "error": f"unreadable result: {e}", "wall_s": wall}
    return {"status": "failed", "error": f"exit code {code}: {_tail(log)}", "wall_s": wall}


def add_mfu(res: dict, flops_per_image: int, peak_arg: float | None) -> dict:
    """``res`` plus ``peak_tflops``, ``peak_source`` and ``mfu`` (``peak_arg`` over the table)."""
    peak, key = (peak_arg, "--peak-tflops") if peak_arg else peak_tflops_for(res.get("device", ""))
    source = key if peak_arg else (f"table: {key}" if key else "unknown device: pass --peak-tflops")
    return {**res, "peak_tflops": peak, "peak_source": source,
            "mfu": mfu(res.get("img_per_s"), flops_per_image, peak)}


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def format_table(results: dict[str, dict]) -> str:
    """A markdown table: contestant, img/s, step ms, MFU, compile s, status."""
    rows = ["| contestant | img/s | step ms | MFU | compile s | status |",
            "| --- | ---: | ---: | ---: | ---: | --- |"]
    for name, r in results.items():
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('error', '')}"
        mfu_pct = "-" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
        rows.append(f"| {LABELS.get(name, name)} | {_fmt(r.get('img_per_s'), '.1f')} | "
                    f"{_fmt(r.get('step_ms'), '.2f')} | {mfu_pct} | "
                    f"{_fmt(r.get('compile_s'), '.1f')} | {status.replace('|', '/')} |")
    return "\n".join(rows)


def report(cfg: Config, results: dict[str, dict], flops_per_image: int, wall_s: float) -> dict:
    """The JSON document written to ``--out``."""
    size, _ = _spec(cfg)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"benchmark": "benchmarks/gpu.py", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "commit": commit, "python": sys.version.split()[0],
            "config": {**dataclasses.asdict(cfg), "image_size": size},
            "train_flops_per_image": flops_per_image, "wall_s": wall_s, "results": results}


def _child_argv(name: str, cfg: Config, result: pathlib.Path) -> list[str]:
    return [sys.executable, str(pathlib.Path(__file__).resolve()), "--contestant", name,
            "--config", json.dumps(dataclasses.asdict(cfg)), "--result", str(result)]


def _child_env(cfg: Config) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if cfg.cpu:  # the smoke run checks the plumbing, not the speed: compile XLA CPU code quickly
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = " ".join(filter(None, [env.get("XLA_FLAGS"),
                                                  "--xla_backend_optimization_level=0"]))
    return env


def run_all(names: list[str], cfg: Config, out: pathlib.Path, *, budget_s: float,
            timeouts: dict[str, float], peak_arg: float | None) -> dict:
    """Run the contestants one after another within ``budget_s``; write ``out`` after each."""
    size, _ = _spec(cfg)
    flops = train_flops_per_image(cfg.model, size)
    logs = out.with_name(out.stem + "_logs")
    logs.mkdir(parents=True, exist_ok=True)
    t0, results = time.perf_counter(), {}
    for name in names:
        left = budget_s - (time.perf_counter() - t0)
        if left < MIN_START_S:
            results[name] = {"status": "skipped", "error": f"budget spent ({left:.0f} s left)"}
        else:
            res = run_subprocess(_child_argv(name, cfg, logs / f"{name}.json"),
                                 min(timeouts[name], left), logs / f"{name}.json",
                                 logs / f"{name}.log", env=_child_env(cfg))
            results[name] = add_mfu({**res, "log": str(logs / f"{name}.log")}, flops, peak_arg)
        r = results[name]
        print(f"# {name}: {r['status']} {_fmt(r.get('img_per_s'), '.1f')} img/s "
              f"{r.get('error', '')}", flush=True)
        doc = report(cfg, results, flops, time.perf_counter() - t0)
        out.write_text(json.dumps(doc, indent=1))
    return doc


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help=f"comma list of {','.join(CONTESTANTS)}")
    p.add_argument("--out", default=str(ROOT / "runs" / "gpu_benchmark.json"))
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak FLOP/s for MFU, in TFLOP/s (default: by device name)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for all contestants")
    p.add_argument("--timeout", type=float, default=None, help="seconds per contestant "
                   f"(default {TIMEOUT_S}; always capped by what is left of --budget)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny CPU run: a ResNet-10 (one basic block per stage), 32x32, batch 2, "
                   "float32, 2 steps; contestants fundl,flax,torch unless --only")
    for field in ("batch", "warmup", "windows", "steps"):
        p.add_argument(f"--{field}", type=int, default=None)
    p.add_argument("--contestant", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = _args(argv)
    if args.contestant:
        return child_main(args.contestant, Config(**json.loads(args.config)),
                          pathlib.Path(args.result))
    cfg = SMOKE if args.smoke else Config()
    cfg = dataclasses.replace(cfg, **{f: getattr(args, f) for f in ("batch", "warmup", "windows",
                                                                    "steps")
                                      if getattr(args, f) is not None})
    names = args.only.split(",") if args.only else list(CONTESTANTS[:3 if args.smoke else 4])
    unknown = sorted(set(names) - set(CONTESTANTS))
    if unknown:
        sys.exit(f"--only: unknown contestant(s) {unknown}; expected some of {CONTESTANTS}")
    timeouts = {n: args.timeout or TIMEOUT_S[n] for n in names}
    print(f"# {cfg}; budget {args.budget:.0f} s; contestants {names}", flush=True)
    t0 = time.perf_counter()
    doc = run_all(names, cfg, pathlib.Path(args.out), budget_s=args.budget, timeouts=timeouts,
                  peak_arg=args.peak_tflops)
    devices = sorted({r["device"] for r in doc["results"].values() if "device" in r}) or ["?"]
    print(f"\n## {cfg.model} train step, batch {cfg.batch}, {cfg.precision} compute, "
          f"{', '.join(devices)}\n")
    print(format_table(doc["results"]))
    print(f"\nwall {time.perf_counter() - t0:.0f} s; JSON: {args.out}")


if __name__ == "__main__":
    main()

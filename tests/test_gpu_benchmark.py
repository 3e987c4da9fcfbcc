"""benchmarks/gpu.py: the arithmetic (FLOPs, peaks, MFU), the table and JSON, the deadlines of
the contestant subprocesses, the PyTorch contestant in process, and (slow) the CPU smoke run."""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"


def _load():
    spec = importlib.util.spec_from_file_location("fundl_benchmarks_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu = _load()


def test_train_flops_per_image_is_six_times_the_forward_macs():
    assert gpu.train_flops_per_image("resnet50", 224) == 6 * 4_089_184_256 == 24_535_105_536
    with pytest.raises(ValueError, match=r"model='resnet50' at size=64"):
        gpu.train_flops_per_image("resnet50", 64)


@pytest.mark.parametrize("model,size", sorted(gpu.MACS))
def test_mac_counts_match_fundl_summary(model, size):
    """The analytic counts are those of the models the benchmark builds (conv + dense MACs)."""
    import fundl
    import resnet_cpu  # on sys.path: benchmarks/gpu.py puts its folder there
    from fundl import models
    kind, layers, stem, spec_size, classes = resnet_cpu.SPECS[model]
    assert spec_size == size
    net = models.resnet(kind, layers, classes, stem=stem)
    assert fundl.summary(net, (1, size, size, 3)).total_macs == gpu.MACS[(model, size)]


@pytest.mark.parametrize("device,peak", [
    ("NVIDIA H200", 989.0), ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.0), ("NVIDIA GH200 480GB", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0), ("NVIDIA L40S", 362.0), ("NVIDIA L40", 181.0),
    ("NVIDIA L4", 121.0), ("NVIDIA B200", 2250.0), ("cpu", None), ("Tesla T4", None)])
def test_peak_table_by_device_name(device, peak):
    assert gpu.peak_tflops_for(device)[0] == peak


def test_mfu_arithmetic():
    flops = gpu.train_flops_per_image("resnet50", 224)
    # 4,000 img/s x 24.535 GFLOP = 98.14 TFLOP/s, of 989: 9.92%
    assert gpu.mfu(4000.0, flops, 989.0) == pytest.approx(4000 * 24_535_105_536 / 989e12)
    assert gpu.mfu(4000.0, flops, 989.0) == pytest.approx(0.09923, abs=1e-5)
    assert gpu.mfu(None, flops, 989.0) is None
    assert gpu.mfu(4000.0, flops, None) is None


def test_add_mfu_takes_the_argument_over_the_table():
    flops = gpu.train_flops_per_image("resnet50", 224)
    res = {"status": "ok", "img_per_s": 1000.0, "device": "NVIDIA A100-SXM4-40GB"}
    by_table = gpu.add_mfu(res, flops, None)
    assert by_table["peak_tflops"] == 312.0 and by_table["peak_source"] == "table: a100"
    assert by_table["mfu"] == pytest.approx(1000 * flops / 312e12)
    by_arg = gpu.add_mfu(res, flops, 100.0)
    assert by_arg["peak_source"] == "--peak-tflops" and by_arg["mfu"] == pytest.approx(
        1000 * flops / 100e12)
    unknown = gpu.add_mfu({**res, "device": "cpu"}, flops, None)
    assert unknown["mfu"] is None and "--peak-tflops" in unknown["peak_source"]
    timed_out = gpu.add_mfu({"status": "timeout"}, flops, 989.0)
    assert timed_out["mfu"] is None


def test_format_table_rows_and_missing_values():
    results = {"fundl": {"status": "ok", "img_per_s": 3012.46, "step_ms": 84.98, "mfu": 0.0747,
                         "compile_s": 41.23},
               "torch_compile": {"status": "timeout", "error": "no result within 120 s"},
               "flax": {"status": "failed", "error": "exit code 1: a | b"}}
    lines = gpu.format_table(results).splitlines()
    assert lines[0] == "| contestant | img/s | step ms | MFU | compile s | status |"
    assert lines[2] == "| fundl | 3012.5 | 84.98 | 7.5% | 41.2 | ok |"
    assert lines[3] == ("| PyTorch torch.compile | - | - | - | - | "
                        "timeout: no result within 120 s |")
    assert lines[4].endswith("| failed: exit code 1: a / b |")  # a '|' would split the row
    assert all(line.count("|") == 7 for line in lines)


def test_report_is_json_with_config_and_results():
    cfg = gpu.Config()
    doc = gpu.report(cfg, {"fundl": {"status": "ok", "img_per_s": 1.0}}, 6, 1.5)
    back = json.loads(json.dumps(doc))
    assert back["config"] == {"model": "resnet50", "batch": 256, "precision": "bfloat16",
                              "warmup": 5, "windows": 5, "steps": 10, "cpu": False,
                              "image_size": 224}
    assert back["train_flops_per_image"] == 6 and back["results"]["fundl"]["img_per_s"] == 1.0


def _fake(tmp_path, code):
    return [sys.executable, "-c", code], tmp_path / "r.json", tmp_path / "r.log"


def test_run_subprocess_ok_reads_the_result(tmp_path):
    argv, result, log = _fake(tmp_path, "import json, sys; open(sys.argv[1], 'w').write("
                                        "json.dumps({'status': 'ok', 'img_per_s': 5.0}))")
    res = gpu.run_subprocess(argv + [str(tmp_path / "r.json")], 30, result, log)
    assert res["status"] == "ok" and res["img_per_s"] == 5.0 and res["wall_s"] > 0


def test_run_subprocess_failure_is_reported_with_its_last_lines(tmp_path):
    argv, result, log = _fake(tmp_path, "import sys; print('step built'); "
                                        "sys.exit('CUDA out of memory')")
    res = gpu.run_subprocess(argv, 30, result, log)
    assert res["status"] == "failed"
    assert "exit code 1" in res["error"] and "CUDA out of memory" in res["error"]


def test_run_subprocess_exit_zero_without_result_is_a_failure(tmp_path):
    argv, result, log = _fake(tmp_path, "pass")
    assert gpu.run_subprocess(argv, 30, result, log)["status"] == "failed"


def test_run_subprocess_timeout_kills_the_process_group(tmp_path):
    """A contestant that hangs (and has a child of its own, as torch.compile's workers) is
    stopped at the deadline, both processes."""
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
            "time.sleep(60)\n")
    argv, result, log = _fake(tmp_path, code)
    t0 = time.perf_counter()
    res = gpu.run_subprocess(argv, 3, result, log)
    assert res["status"] == "timeout" and "3 s" in res["error"]
    assert time.perf_counter() - t0 < 20
    pid = int(pid_file.read_text())
    for _ in range(50):  # killed; give the kernel a moment
        if not _alive(pid):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the contestant's own child {pid} survived the timeout")


def test_run_subprocess_ends_what_a_finished_contestant_left_running(tmp_path):
    """A contestant that exits but leaves a worker behind (a compile pool): the worker is ended."""
    pid_file = tmp_path / "worker.pid"
    code = ("import subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
            f"open({str(tmp_path / 'r.json')!r}, 'w').write('{{\"status\": \"ok\"}}')\n")
    argv, result, log = _fake(tmp_path, code)
    assert gpu.run_subprocess(argv, 30, result, log)["status"] == "ok"
    pid = int(pid_file.read_text())
    for _ in range(50):
        if not _alive(pid):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the finished contestant's worker {pid} is still running")


def _alive(pid):
    """Running (a zombie, dead and waiting to be reaped by whoever inherited it, is not)."""
    try:
        os.kill(pid, 0)
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def test_run_all_shares_the_budget_and_writes_json(tmp_path, monkeypatch, capsys):
    """A contestant that hangs uses up the budget: it times out, the next is skipped, and the
    JSON and table still come out."""
    monkeypatch.setattr(gpu, "MIN_START_S", 1)
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    monkeypatch.setattr(gpu, "_child_argv", lambda name, cfg, result: hang)
    out = tmp_path / "bench.json"
    doc = gpu.run_all(["fundl", "flax"], gpu.SMOKE, out, budget_s=2.0,
                      timeouts={"fundl": 100, "flax": 100}, peak_arg=None)
    assert doc["results"]["fundl"]["status"] == "timeout"
    assert doc["results"]["flax"]["status"] == "skipped"
    assert json.loads(out.read_text())["results"].keys() == {"fundl", "flax"}
    assert (tmp_path / "bench_logs" / "fundl.log").exists()
    assert "# fundl: timeout" in capsys.readouterr().out


def test_main_rejects_an_unknown_contestant(tmp_path):
    with pytest.raises(SystemExit, match=r"--only: unknown contestant\(s\) \['pytorch'\]"):
        gpu.main(["--smoke", "--only", "fundl,pytorch", "--out", str(tmp_path / "x.json")])


def test_torch_contestant_in_process_with_autocast():
    """The PyTorch step (channels-last, bf16 autocast) on the CPU: one timed step."""
    pytest.importorskip("torch")
    cfg = gpu.Config(model="resnet10", batch=1, precision="bfloat16", warmup=0, windows=1,
                     steps=1, cpu=True)
    res = gpu.measure("torch", cfg)
    assert res["status"] == "ok" and res["device"] == "cpu"
    assert res["img_per_s"] > 0 and res["step_ms"] > 0 and res["compile_s"] > 0
    assert res["versions"]["torch"]


@pytest.mark.slow
def test_smoke_run_writes_the_json_and_table(tmp_path):
    """``benchmarks/gpu.py --smoke`` end to end, fundl and flax in their subprocesses (CPU)."""
    out = tmp_path / "smoke.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--only", "fundl,flax",
                           "--out", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["config"]["model"] == "resnet10" and doc["config"]["batch"] == 2
    assert doc["train_flops_per_image"] == 6 * 253_432_832
    for name in ("fundl", "flax"):
        res = doc["results"][name]
        assert res["status"] == "ok", res
        assert res["device"] == "cpu" and res["img_per_s"] > 0 and res["compile_s"] > 0
        assert res["mfu"] is None  # no peak for a CPU
    assert "| fundl |" in done.stdout and "| flax linen |" in done.stdout

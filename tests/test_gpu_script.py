"""benchmarks/gpu/: the one-command GPU run. Without a usable device run.sh must stop at once with the probe's
reason, install nothing and say so in its results; its report, timing and col2im scripts are checked on the CPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import xpnet
from xpnet.backend import _INSTALL_HINTS
from xpnet.backends.cuda_probe import probe

REPO = Path(__file__).resolve().parents[1]
GPU = REPO / "benchmarks" / "gpu"


def load(name: str) -> ModuleType:
    """``benchmarks/gpu/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(f"gpu_{name}", GPU / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_sh_without_a_gpu_stops_at_the_probe_with_its_reason(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "XPNET_GPU_OUT": str(out), "XPNET_PYTHON": sys.executable,
           "CUDA_VISIBLE_DEVICES": ""}  # no device even where there is one, so the no-GPU path runs everywhere
    reason_run = subprocess.run([sys.executable, "-c", "from xpnet.backends.cuda_probe import probe; print(probe())"],
                                capture_output=True, text=True, env=env, timeout=60)
    reason = reason_run.stdout.strip()
    assert reason_run.returncode == 0 and reason not in ("", "None"), reason_run.stderr
    start = time.perf_counter()
    run = subprocess.run(["bash", str(GPU / "run.sh")], capture_output=True, text=True, env=env, timeout=120)
    elapsed = time.perf_counter() - start
    assert run.returncode == 2, run.stdout + run.stderr
    assert elapsed < 60
    assert f"no usable GPU: {reason}" in run.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "no-gpu" and results["probe"] == {"usable": False, "reason": reason, "device": None}
    assert [s["name"] for s in results["stages"]] == ["probe"]  # no setup stage: nothing was installed
    assert results["stages"][0]["status"] == "no usable GPU" and results["epochs"] is None
    assert f"**Status**: no usable GPU: {reason}" in (out / "results.md").read_text()


def write_stage(out: Path, name: str, status: str, rc: int, log_text: str | None, detail: str) -> None:
    """One stages.tsv line, as run.sh's ``record`` writes it, and the stage's log."""
    if log_text is not None:
        (out / f"{name}.log").write_text(log_text)
    log = f"{name}.log" if log_text is not None else ""
    with open(out / "stages.tsv", "a") as f:
        f.write(f"{name}\t{status}\t{rc}\t1.500\t{log}\t{detail}\n")


def test_report_tables_stages_epochs_and_skips(tmp_path):
    (tmp_path / "probe.json").write_text(json.dumps({"usable": True, "reason": None, "device": {"name": "H200"}}))
    write_stage(tmp_path, "gpu-tests", "passed", 0, "..s\nSKIPPED [1] tests/x.py:3: needs two GPUs\n"
                "3 passed, 1 skipped in 2.50s\n", "python -m pytest -m gpu")
    write_stage(tmp_path, "col2im-memcheck", "skipped", 0, None, "compute-sanitizer not found")
    write_stage(tmp_path, "epochs", "timed out after 150 s", 124, "", "python epochs.py | tee")
    rows = [{"framework": "xpnet", "model": "lenet5", "batch_size": 128, "epoch_s": 3.0, "first_step_s": 4.0},
            {"framework": "pytorch", "model": "lenet5", "batch_size": 128, "epoch_s": 1.5, "first_step_s": 0.5},
            {"framework": "xpnet", "model": "resnet", "batch_size": 256, "error": "not run: the time budget was spent"}]
    meta = {"backend": "cupy", "torch_device": "cuda", "data": "MNIST", "dtype": "float32", "lr": 1e-3}
    (tmp_path / "epochs.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    assert load("report").main(str(tmp_path)) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed"  # the timed-out stage
    assert [s["summary"] for s in results["stages"]] == ["3 passed, 1 skipped in 2.50s", "", ""]
    md = (tmp_path / "results.md").read_text()
    assert "| gpu-tests | passed, with skips (listed below) (exit 0) | 1.5 | 3 passed, 1 skipped in 2.50s |" in md
    assert "| col2im-memcheck | skipped (exit 0) | 1.5 | compute-sanitizer not found |" in md
    assert "| epochs | timed out after 150 s (exit 124) | 1.5 | python epochs.py \\| tee |" in md
    assert "| lenet5 | 128 | 3.00 | 1.50 | 2.00 | 4.00 | 0.50 |" in md
    assert "| resnet | 256 | not measured (not run: the time budget was spent) | not measured (no row) | - |" in md
    assert "- SKIPPED [1] tests/x.py:3: needs two GPUs" in md


def test_report_passes_only_when_every_stage_passed_or_was_skipped(tmp_path):
    (tmp_path / "probe.json").write_text(json.dumps({"usable": True, "reason": None, "device": {"name": "H200"}}))
    write_stage(tmp_path, "gpu-tests", "passed", 0, "3 passed in 2.50s\n", "python -m pytest -m gpu")
    write_stage(tmp_path, "col2im-memcheck", "skipped", 0, None, "compute-sanitizer not found")
    load("report").main(str(tmp_path))
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "passed"


def test_epochs_times_both_frameworks_on_the_cpu(tmp_path, mnist_dir):
    pytest.importorskip("torch", reason="the PyTorch twin needs torch")
    out = tmp_path / "epochs.json"
    run = subprocess.run([sys.executable, str(GPU / "epochs.py"), "--out", str(out), "--data", str(mnist_dir),
                          "--backend", "numpy", "--torch-device", "cpu", "--models", "report1", "--batch-sizes", "8",
                          "--images", "16", "--rounds", "2"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert result["meta"]["epoch_images"] == 240 and result["meta"]["backend"] == "numpy"
    assert [(r["framework"], r["device"]) for r in result["rows"]] == [("xpnet", "numpy"), ("pytorch", "cpu")]
    for row in result["rows"]:
        assert (row["model"], row["batch_size"], row["steps"], row["epoch_steps"]) == ("report1", 8, 2, 30)
        assert len(row["round_s"]) == 2 and row["epoch_s"] == pytest.approx(statistics.median(row["round_s"]) * 15)
        assert np.isfinite(row["train_loss"]) and row["first_step_s"] > 0


def test_epochs_records_a_failing_row_or_one_over_budget(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # epochs.py puts benchmarks/ on it
    epochs = load("epochs")
    row = epochs.run_row("xpnet", lambda: 1 / 0, "report1", 8, over_budget=False)
    assert row == {"framework": "xpnet", "model": "report1", "batch_size": 8,
                   "error": "ZeroDivisionError: division by zero"}
    late = epochs.run_row("pytorch", lambda: pytest.fail("ran over budget"), "report1", 8, over_budget=True)
    assert late["error"] == "not run: the time budget was spent"


class WrongCol2im:
    """The NumPy backend's col2im, one ulp off in one pixel: what the check must catch."""

    def __init__(self, backend):
        self.backend = backend

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def col2im(self, *args):
        img = self.backend.col2im(*args).copy()
        img.flat[-1] = np.nextafter(img.flat[-1], np.inf)
        return img


def test_col2im_check_finds_a_one_ulp_difference():
    check = load("col2im_check")
    rng = np.random.default_rng(0)
    numpy_backend = xpnet.get_backend("numpy")
    cases = list(check.random_cases(np.random.default_rng(1), 4))
    assert all(check.check(numpy_backend, numpy_backend, case, rng) is None for case in cases)
    assert all("max difference" in check.check(WrongCol2im(numpy_backend), numpy_backend, case, rng)
               for case in cases)


def test_cupy_install_hints_and_extras_name_cuda12_and_cuda13(monkeypatch):
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["cuda12"][0].startswith("cupy-cuda12x") and extras["cuda13"][0].startswith("cupy-cuda13x")
    assert "nvidia-cuda-nvrtc-cu12" in extras["cuda12"] and extras["cuda13"][1].startswith("nvidia-cuda-nvrtc>=13")
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    for hint in (_INSTALL_HINTS["cupy"], probe.__wrapped__()):  # the registry's hint, and the uncached probe's
        assert "'xpnet[cuda12]'" in hint and "'xpnet[cuda13]'" in hint

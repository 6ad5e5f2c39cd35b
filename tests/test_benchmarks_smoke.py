"""Every benchmark suite still runs, and the report still renders: the suites in smoke mode (``XPNET_BENCH_SMOKE=1``:
tiny sizes, one round each) in one pytest subprocess, then ``benchmarks/report.py`` on the JSON that run wrote.

The benchmarks live outside ``testpaths`` and are otherwise run only by hand, so without this they would rot
between official runs.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import xpnet

REPO = Path(__file__).resolve().parents[1]
# The pytest-benchmark suites: bench_*.py files that define tests (a bench_*.py may also be a plain script).
SUITES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "benchmarks").glob("bench_*.py")
                if "\ndef test_" in p.read_text())
MODELS = ("report1", "report2", "lenet5")
HAS_TORCH = importlib.util.find_spec("torch") is not None

pytestmark = pytest.mark.skipif(importlib.util.find_spec("pytest_benchmark") is None,
                                reason="pytest-benchmark is not installed: pip install 'xpnet[bench]'")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """(the finished pytest run over every suite, the folder holding its results.json and junit.xml)."""
    out = tmp_path_factory.mktemp("bench")
    command = [sys.executable, "-m", "pytest", *SUITES, "-q", "-p", "no:cacheprovider",
               f"--benchmark-json={out / 'results.json'}", f"--junitxml={out / 'junit.xml'}"]
    env = {**xpnet.threads.user_environment(), "XPNET_BENCH_SMOKE": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return done, out


def test_every_suite_runs(smoke_run: tuple[subprocess.CompletedProcess, Path]) -> None:
    done, out = smoke_run
    assert done.returncode == 0, f"benchmarks failed in smoke mode:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    cases = ET.parse(out / "junit.xml").getroot().iter("testcase")
    modules = {case.get("classname") for case in cases}
    for suite in SUITES:
        assert suite.removesuffix(".py").replace("/", ".") in modules, f"{suite} collected no test"


def test_report_renders_every_table(smoke_run: tuple[subprocess.CompletedProcess, Path], tmp_path: Path) -> None:
    done, out = smoke_run
    assert (out / "results.json").is_file(), f"no benchmark JSON written:\n{done.stdout[-3000:]}"
    report = tmp_path / "benchmarks.md"
    rendered = subprocess.run([sys.executable, "benchmarks/report.py", str(out / "results.json"), "--out", str(report)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    text = report.read_text()
    headings = ["## Summary", "## im2col", "## col2im", "## Seconds per training epoch", "## Machine limits",
                "## Multiple of the floor", "## Warm-up", "## Reproduce", "## Method"]
    headings += ["## Ratio to PyTorch"] if HAS_TORCH else []
    for heading in headings:
        assert heading in text, f"{heading!r} missing from the report"
    assert "Smoke run" in text
    assert "Report 1's target, at batch 64" in text
    for model in MODELS:
        assert f"| {model} | 64 | " in text, f"no batch-64 row for {model}"
    for chart in ("bench_im2col.png", "bench_col2im.png", "bench_epoch.png"):
        assert (tmp_path / chart).stat().st_size > 0
    epochs = [b for b in json.loads((out / "results.json").read_text())["benchmarks"] if b["group"] == "epoch"]
    assert {"numpy", *(["pytorch"] if HAS_TORCH else [])} <= {b["extra_info"]["backend"] for b in epochs}


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed: pip install torch==2.13.0")
def test_pytorch_runs_in_the_users_thread_environment(smoke_run: tuple[subprocess.CompletedProcess, Path]) -> None:
    """xpnet's OMP_WAIT_POLICY=passive slowed PyTorch 1.2-1.7x; the peer must not inherit it."""
    done, out = smoke_run
    peers = [b for b in json.loads((out / "results.json").read_text())["benchmarks"]
             if b["extra_info"].get("framework") == "pytorch"]
    assert peers, f"the PyTorch peer did not run:\n{done.stdout[-3000:]}"
    for peer in peers:
        for name, value in peer["extra_info"]["thread_environment"].items():
            assert value == xpnet.threads.user_environment().get(name), f"PyTorch ran with {name}={value}"

"""The benchmark smoke run: every pytest-benchmark suite with ``XPNET_BENCH_SMOKE=1`` in one pytest subprocess.

tests/conftest.py starts it as soon as collection shows that tests/test_benchmarks_smoke.py will run, so that its
~50 s (mostly PyTorch peer processes starting up) overlap the rest of the suite instead of adding to it; the
tests there wait for it with ``result()``. Nothing it measures is asserted on as a time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import xpnet

REPO = Path(__file__).resolve().parents[1]
# The pytest-benchmark suites: bench_*.py files that define tests (a bench_*.py may also be a plain script).
SUITES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "benchmarks").glob("bench_*.py")
                if "\ndef test_" in p.read_text())
TIMEOUT_S = 600
NICENESS = 10

_started: tuple[subprocess.Popen, Path] | None = None


def start() -> None:
    """Launch the smoke run in the background (once), writing its JSON, junit XML and output to a new folder."""
    global _started
    if _started is not None:
        return
    out = Path(tempfile.mkdtemp(prefix="xpnet-bench-smoke-"))
    command = [sys.executable, "-m", "pytest", *SUITES, "-q", "-p", "no:cacheprovider",
               f"--benchmark-json={out / 'results.json'}", f"--junitxml={out / 'junit.xml'}"]
    env = {**xpnet.threads.user_environment(), "XPNET_BENCH_SMOKE": "1"}
    with open(out / "stdout.txt", "w") as stdout, open(out / "stderr.txt", "w") as stderr:
        # at a lower priority: it only has to be done by the end, and competing as an equal for the two cores
        # would stall the suite's parallel Numba kernels while one of their threads waits for a core
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=stdout, stderr=stderr, text=True,
                                   preexec_fn=lambda: os.nice(NICENESS))
    _started = process, out


def result() -> tuple[subprocess.CompletedProcess, Path]:
    """(the finished run, the folder holding its results.json and junit.xml); starts it first if need be."""
    start()
    process, out = _started
    process.wait(timeout=TIMEOUT_S)
    done = subprocess.CompletedProcess(process.args, process.returncode, (out / "stdout.txt").read_text(),
                                       (out / "stderr.txt").read_text())
    return done, out


def stop() -> None:
    """End the run if it is still going (the session ended early) and remove its folder."""
    if _started is None:
        return
    process, out = _started
    if process.poll() is None:
        process.kill()
        process.wait()
    shutil.rmtree(out, ignore_errors=True)

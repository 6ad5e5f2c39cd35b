"""Acceptance 2 of issue 13: the training command SIGKILLed before every rename it makes (and after the last) leaves
files that all load, a ``best.npz`` never behind ``last.npz``, and a run that ``--resume`` finishes bit-identical to
the uninterrupted one (tests/kill_job.py does the killing, in forked children)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xpnet.checkpoint import load_checkpoint

JOB = Path(__file__).with_name("kill_job.py")
ARGS = ["--model", "report2", "--epochs", "3", "--batch-size", "60", "--val-split", "0.25", "--patience", "0",
        "--optimizer", "sgd", "--lr", "0.05"]

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill job forks")


@pytest.fixture(scope="module")
def killed(mnist_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("kills")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "XPNET_BACKEND": "numpy"}
    done = subprocess.run([sys.executable, str(JOB), str(root), "--", "--data", str(mnist_dir), *ARGS],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, json.loads(done.stdout.strip().splitlines()[-1])


def equal_weights(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_every_rename_was_a_kill_point(killed):
    _, report = killed
    # per epoch: log.jsonl, best.npz (when better), last.npz; at the end: curves, confusion, summary
    assert report["renames"] >= 3 * 2 + 3
    assert all(r["killed"] == -signal.SIGKILL for r in report["results"]), report["results"]


def test_what_a_kill_leaves_loads_and_best_is_never_behind(killed):
    _, report = killed
    for r in report["results"]:
        left = Path(r["folder"] + ".left")
        for npz in left.glob("*.npz"):
            load_checkpoint(npz)  # raises if torn
        if (left / "last.npz").exists():
            last = load_checkpoint(left / "last.npz")
            best = load_checkpoint(left / "best.npz")
            best_epoch = last.record["best"]["epoch"]
            assert best.record["epoch"] >= best_epoch, r
            if best.record["epoch"] == best_epoch:
                assert equal_weights(best.weights, last.best_weights), r


def test_every_killed_run_resumes_to_the_uninterrupted_result(killed):
    root, report = killed
    reference = root / "reference"
    ref_last, ref_best = load_checkpoint(reference / "last.npz"), load_checkpoint(reference / "best.npz")
    ref_log = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
               for line in (reference / "log.jsonl").read_text().splitlines()]
    for r in report["results"]:
        folder = Path(r["folder"])
        assert r["resumed"] == 0, r
        last, best = load_checkpoint(folder / "last.npz"), load_checkpoint(folder / "best.npz")
        assert equal_weights(last.weights, ref_last.weights), r
        assert equal_weights(best.weights, ref_best.weights) and best.record["epoch"] == ref_best.record["epoch"], r
        log = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
               for line in (folder / "log.jsonl").read_text().splitlines()]
        assert log == ref_log, r
        assert not list(folder.rglob(".*.tmp")) and not (folder / ".xpnet.lock").exists(), r
        for name in ("curves.png", "confusion.png", "summary.md"):
            assert (folder / name).is_file(), (r, name)

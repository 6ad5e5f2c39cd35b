"""Seeded fuzzing of the dataset readers: hundreds of mutations of a small IDX set (raw and gzip), a class-folder
tree of PNGs and an .npz file (bit flips, truncation, forged header fields, huge dimensions, gzip and PNG bombs,
lying zip directories). Every case must load a valid dataset or raise a DataError naming the mutated file.

Each corpus runs in one child process (tests/data_fuzz_child.py) under a 1 GiB address-space limit and a time
limit, so a reader that allocates what a header claims, or inflates a bomb, fails here instead of swapping; the
child reports as JSON.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from data_fuzz_child import FOLDER_KINDS, IDX_KINDS, NPZ_KINDS

TESTS = Path(__file__).resolve().parent
LIMIT_AS = 1 << 30
TIMEOUT_S = 90   # about 3 s each on a quiet 2-core machine; the limit only stops a hang or an unbounded read
SEED = 13
CORPORA = {"idx": (300, IDX_KINDS), "folder": (300, FOLDER_KINDS), "npz": (100, NPZ_KINDS)}


@pytest.fixture
def workdir(tmp_path):
    """Scratch space for the cases: RAM-backed /dev/shm where there is one (removing hundreds of small folders
    from a disk with online discard takes seconds), else the test's own folder."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="xpnet-fuzz-") as scratch:
            yield Path(scratch)
    else:
        yield tmp_path


def limit_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))


def run_child(corpus, cases, workdir):
    env = {k: v for k, v in os.environ.items() if k != "XPNET_DATA"}
    env.update(OPENBLAS_NUM_THREADS="1", XDG_CACHE_HOME=str(workdir / "xdg"),
               PYTHONPATH=os.pathsep.join([str(TESTS.parent), env.get("PYTHONPATH", "")]))
    command = [sys.executable, str(TESTS / "data_fuzz_child.py"), corpus, str(SEED), str(cases), str(workdir)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
                          preexec_fn=limit_address_space)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_every_mutation_loads_or_is_a_data_error_naming_the_file(corpus, workdir):
    cases, kinds = CORPORA[corpus]
    report = run_child(corpus, cases, workdir)
    assert report["rlimit_as"] == LIMIT_AS and report["cases"] == cases
    assert report["failures"] == [] and report["outcomes"]["failed"] == 0, "\n".join(report["failures"])
    assert report["outcomes"]["ok"] > 0 and report["outcomes"]["refused"] > 0, report["outcomes"]
    assert sorted(report["kinds"]) == sorted(kinds), "every kind of mutation must have been drawn"
    assert report["kinds"]["none"]["ok"] > 0 and report["kinds"]["none"]["refused"] == 0, "the intact corpus loads"

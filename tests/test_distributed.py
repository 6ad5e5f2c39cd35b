"""Data-parallel training: 2 MPI ranks reproduce the 1-process run, lone processes never import mpi4py, and a
failing rank ends the job instead of leaving the others waiting."""

import functools
import os
import shutil
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from xpnet import distributed, random
from xpnet import functional as F
from xpnet.backends.cuda_probe import probe
from xpnet.checkpoint import load_checkpoint
from xpnet.data import Dataset
from xpnet.data.npz import save_npz

JOB = Path(__file__).with_name("distributed_job.py")
MPIEXEC = shutil.which("mpiexec", path=Path(sys.executable).parent) or shutil.which("mpiexec")
LIMIT_S = 90  # per launch; a 2-rank run here takes a few seconds
needs_mpi = pytest.mark.skipif(find_spec("mpi4py") is None or MPIEXEC is None,
                               reason="needs mpi4py and mpiexec: pip install 'xpnet[mpi]'")
LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "PMI_FD", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """736 learnable 28x28 images: 50 steps of global batch 15, the last one a single image."""
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, size=(10, 28, 28))

    def make(n):
        labels = np.arange(n) % 10
        images = 0.7 * templates[labels] + 0.3 * rng.integers(0, 256, size=(n, 28, 28))
        return Dataset(images.astype(np.uint8), labels.astype(np.uint8), [str(i) for i in range(10)])

    path = tmp_path_factory.mktemp("mnist") / "tiny.npz"
    save_npz(path, make(736), make(50))
    return path


def job_env(**extra):
    """One BLAS/OpenMP thread per rank, the NumPy backend unless told otherwise, no launcher variables."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", XPNET_BACKEND="numpy", **extra)
    return env


@functools.cache
def isolation():
    """``unshare -rn`` with only loopback up, where user namespaces are allowed; else nothing (127.0.0.1 only)."""
    try:
        ok = subprocess.run(["unshare", "-rn", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"] if ok.returncode == 0 else []


def mpirun(n, args, via_mpi4py=True, **env):
    """``mpiexec -n N python -m mpi4py tests/distributed_job.py ARGS`` on 127.0.0.1 under an outer timeout."""
    python = [sys.executable, "-m", "mpi4py"] if via_mpi4py else [sys.executable]
    command = [*isolation(), "timeout", "-k", "5", str(LIMIT_S), MPIEXEC, "-hosts", "127.0.0.1", "-n", str(n),
               *python, str(JOB), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=job_env(**env), timeout=LIMIT_S + 30)


def alone(args, **env):
    return subprocess.run([sys.executable, str(JOB), *map(str, args)], capture_output=True, text=True,
                          env=job_env(**env), timeout=LIMIT_S)


def train_args(data, out, model, batch):
    return ["--", "--data", data, "--out", out, "--model", model, "--batch-size", batch, "--epochs", 1,
            "--val-split", 0, "--patience", 0, "--optimizer", "sgd", "--lr", "0.05", "--seed", 3]


def relative_error(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def check_two_ranks_reproduce_one(data, tmp_path, model, dtype, batch, tolerance, **env):
    one, two = tmp_path / "one", tmp_path / "two"
    ref = alone([dtype, *train_args(data, one, model, batch)], **env)
    assert ref.returncode == 0, ref.stderr
    run = mpirun(2, [dtype, *train_args(data, two, model, batch)], **env)
    assert run.returncode == 0, run.stderr
    a, b = load_checkpoint(two / "last.npz"), load_checkpoint(one / "last.npz")
    assert a.optimizer == b.optimizer  # SGD without momentum keeps no per-parameter state, so no step count
    assert a.weights.keys() == b.weights.keys()
    errors = {k: relative_error(a.weights[k], b.weights[k]) for k in b.weights}
    assert all(a.weights[k].dtype == np.dtype(dtype) for k in a.weights)
    assert max(errors.values()) <= tolerance, errors
    assert a.record["rng"] == b.record["rng"]  # the ranks drew what the lone process drew
    assert abs(a.record["history"][0]["train_loss"] - b.record["history"][0]["train_loss"]) < 1e-5
    assert a.record["history"][0]["train_acc"] == b.record["history"][0]["train_acc"]
    return run


@needs_mpi
@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-6), ("float64", 1e-12)])
def test_two_ranks_reproduce_the_one_process_lenet5_run(data, tmp_path, dtype, tolerance):
    """Batch 15 splits 8 + 7, and the 50th batch holds one image, so rank 1 has nothing to train on then."""
    run = check_two_ranks_reproduce_one(data, tmp_path, "lenet5", dtype, 15, tolerance)
    printed = run.stdout.splitlines()
    assert sum(line.startswith("epoch   1/1") for line in printed) == 1, run.stdout  # rank 0 alone prints
    assert sum(line.startswith("xpnet ") for line in printed) == 1, run.stdout
    for name in ("log.jsonl", "best.npz", "last.npz", "curves.png", "confusion.png", "summary.md"):
        assert (tmp_path / "two" / name).is_file(), name
    assert not list((tmp_path / "two").glob(".*.tmp"))


@needs_mpi
def test_dropout_masks_are_the_global_batch_masks(data, tmp_path):
    """report1 has dropout: each rank keeps its rows of the mask the lone process draws for the whole batch."""
    check_two_ranks_reproduce_one(data, tmp_path, "report1", "float64", 64, 1e-12)


@needs_mpi
@pytest.mark.parametrize("via_mpi4py", [True, False], ids=["python -m mpi4py", "plain python"])
def test_a_failing_rank_aborts_the_job(data, tmp_path, via_mpi4py):
    """Rank 1 raises mid-epoch while rank 0 waits in the Allreduce; xpnet aborts the job even without mpi4py's
    own ``-m mpi4py`` guard."""
    started = time.monotonic()
    run = mpirun(2, ["float32", "--fail-rank", 1, *train_args(data, tmp_path, "lenet5", 15)], via_mpi4py)
    elapsed = time.monotonic() - started
    assert run.returncode not in (0, 124, 137), (run.returncode, run.stderr)  # 124/137: the outer timeout
    assert elapsed < LIMIT_S
    assert "injected failure on rank 1" in run.stderr


@needs_mpi
def test_the_benchmark_script_reports_both_rank_counts(data):
    bench = Path(__file__).parents[1] / "benchmarks" / "bench_distributed.py"
    run = subprocess.run([*isolation(), sys.executable, str(bench), "--data", str(data), "--images", "120",
                          "--batch-size", "15"], capture_output=True, text=True, env=job_env(), timeout=LIMIT_S)
    assert run.returncode == 0, run.stderr
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines() if line.startswith("| 1 ") or
            line.startswith("| 2 ")]
    assert [r[0].strip() for r in rows] == ["1", "2"] and all(float(r[3]) > 0 for r in rows), run.stdout
    assert float(rows[1][-1]) > 0  # the bare Allreduce was timed


def test_training_alone_never_imports_mpi4py(data, tmp_path):
    code = ("import sys; from xpnet import distributed, train; "
            f"code = train.main(['--data', {str(data)!r}, '--out', {str(tmp_path)!r}, '--epochs', '1', "
            "'--batch-size', '256', '--val-split', '0', '--patience', '0']); "
            "print(code, type(distributed.world()).__name__, 'mpi4py' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=job_env(), timeout=LIMIT_S)
    assert run.stdout.splitlines()[-1] == "0 World False", run.stdout + run.stderr


@pytest.mark.parametrize("n, size", [(15, 2), (1, 2), (7, 3), (64, 4), (3, 4)])
def test_shards_are_array_split_pieces(n, size):
    pieces = np.array_split(np.arange(n), size)
    world = distributed.World()
    for rank, piece in enumerate(pieces):
        world.rank, world.size = rank, size
        lo, hi = world.bounds(n)
        assert np.array_equal(np.arange(n)[lo:hi], piece)


@pytest.fixture
def no_shard():
    """Leave the process-wide batch shard as the test found it (unset)."""
    yield
    random.clear_batch_shard()


@pytest.mark.parametrize("lo, hi, shape", [(0, 8, (8, 5)), (8, 15, (7, 3, 2)), (15, 15, (0, 4))])
def test_dropout_mask_under_a_shard_is_those_rows_of_the_global_mask(no_shard, lo, hi, shape):
    random.manual_seed(11)
    whole = F.dropout_mask((15, *shape[1:]), 0.3)
    after_whole = random.get_state()
    random.manual_seed(11)
    random.set_batch_shard(lo, hi, 15)
    assert random.batch_shard() == (lo, hi, 15)
    part = F.dropout_mask(shape, 0.3)
    assert part.shape == shape and np.array_equal(part, whole[lo:hi])
    assert random.get_state() == after_whole  # the generator moved as far as the one-process draw moved it


def test_dropout_mask_of_another_row_count_is_drawn_as_asked(no_shard):
    random.manual_seed(11)
    plain = F.dropout_mask((5, 3), 0.5)
    random.manual_seed(11)
    random.set_batch_shard(0, 8, 15)
    assert np.array_equal(F.dropout_mask((5, 3), 0.5), plain)
    random.clear_batch_shard()
    assert random.batch_shard() is None


@pytest.mark.parametrize("lo, hi, n", [(-1, 2, 4), (3, 2, 4), (0, 5, 4), (0.0, 2, 4)])
def test_set_batch_shard_rejects_rows_outside_the_batch(no_shard, lo, hi, n):
    with pytest.raises(ValueError, match="0 <= lo <= hi <= n"):
        random.set_batch_shard(lo, hi, n)
    assert random.batch_shard() is None


def test_a_lone_process_sets_no_batch_shard(no_shard):
    x, y = distributed.World().shard(np.zeros((6, 2)), np.arange(6))
    assert len(x) == len(y) == 6 and random.batch_shard() is None


def test_launcher_variables_give_the_world_size(monkeypatch):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delitem(sys.modules, "mpi4py", raising=False)
    assert distributed.launched_size() == 1
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert distributed.launched_size() == 4
    monkeypatch.setenv("PMI_SIZE", "2")
    assert distributed.launched_size() == 2


# --- on GPUs: NCCL --------------------------------------------------------------------------------------------

@pytest.fixture
def gpus():
    """How many GPUs the CuPy backend can use here; skips with the backend probe's reason when none."""
    reason = probe()
    if reason is not None:
        pytest.skip(f"no usable GPU for the CuPy backend: {reason}")
    if find_spec("mpi4py") is None or MPIEXEC is None:
        pytest.skip("needs mpi4py and mpiexec: pip install 'xpnet[mpi]'")
    import cupy
    from cupy.cuda import nccl
    if not nccl.available:
        pytest.skip("cupy cannot load NCCL: pip install 'nvidia-nccl-cu12>=2.18.1,<3' (or nvidia-nccl-cu13)")
    return cupy.cuda.runtime.getDeviceCount()


@pytest.mark.gpu
def test_nccl_reduces_and_broadcasts_device_buffers(gpus):
    """One rank over NCCL: the flat-buffer Allreduce and Bcast round-trip the gradients and weights unchanged."""
    code = """
import numpy as np, xpnet
from mpi4py import MPI
from xpnet import distributed, random
from xpnet import functional as F
from xpnet.models import build_model
from xpnet.nn import CrossEntropyLoss
xpnet.use("cupy")
world = distributed.NcclWorld(MPI.COMM_SELF, 0)
model = build_model("lenet5")
params = model.parameters()
before = [p.numpy() for p in params]
world.broadcast_parameters(params)
x, y = world.shard(np.random.default_rng(0).random((6, 1, 28, 28), dtype=np.float32), np.arange(6))
CrossEntropyLoss()(model(xpnet.Tensor(x)), y).backward()
grads = [xpnet.get_backend().to_numpy(p.grad) for p in params]
world.average_gradients(params)
assert all(np.array_equal(a, p.numpy()) for a, p in zip(before, params))
assert all(np.array_equal(g, xpnet.get_backend().to_numpy(p.grad)) for g, p in zip(grads, params))
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=job_env(XPNET_BACKEND="cupy"), timeout=LIMIT_S)
    assert run.stdout.strip() == "ok", run.stderr


@pytest.mark.gpu
def test_two_ranks_over_nccl_reproduce_one_gpu(data, tmp_path, gpus):
    if gpus < 2:
        pytest.skip(f"NCCL needs a GPU per rank; {gpus} visible")
    check_two_ranks_reproduce_one(data, tmp_path, "lenet5", "float64", 15, 1e-12, XPNET_BACKEND="cupy")

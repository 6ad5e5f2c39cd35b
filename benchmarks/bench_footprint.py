"""Inference speed, training memory and cold start, xpnet beside PyTorch in the same run (issue #15).

- **Inference** (group ``inference``): images per second of ``xpnet.train.evaluate``, the loop
  ``python -m xpnet.evaluate`` runs (``model.eval()``, ``xpnet.no_grad()``, the loss and argmax of every batch), over
  the first ``INFER_IMAGES`` images of the training set in order, in batches of ``INFER_BATCH``, on each CPU
  backend. Against it, PyTorch eager (``model.eval()``, ``torch.no_grad()``) on the twin model
  (``xpnet.interop.torch.to_torch``) in the peer process (``torch_peer.py``'s ``infer``): as in ``bench_torch.py``,
  this process keeps pytest-benchmark's clock and times one round trip per round. Each side runs one untimed pass
  first (Numba's and oneDNN's kernels, the loader's one-off float32 copy of the set), reported apart.
- **Memory** (group ``memory``): the resident memory a training step adds. Each (framework, model, batch) runs in
  a fresh process (``python benchmarks/bench_footprint.py memory ...``), so no measurement inherits another's heap.
  Once the imports, a fresh model, Adam, and the data are ready (on Numba also its kernels, loaded by
  ``warm_up()``: code, not training memory), the child resets the kernel's peak-RSS counter (``5`` written to
  ``/proc/self/clear_refs`` sets VmHWM to the current RSS; Linux only), reads VmRSS, trains ``MEMORY_STEPS`` steps
  (``xpnet.train.train_epoch``, or the peer's ``train_round`` for PyTorch; the first step, with its optimizer
  state and one-off buffers, counts), and reads VmHWM. The report shows peak minus baseline. Both frameworks run
  under xpnet's allocator setting (``xpnet/allocator.py``; the PyTorch child imports xpnet for the model, as the
  peer does) and with the same thread count.
- **Cold start** (group ``cold-start``): what the first run after install waits for Numba to compile one model's
  kernels. Seconds from process start (this process's clock just before it starts the child) to the end of the
  first training step of the model on Numba (float32, batch ``COLD_BATCH``, as ``python -m xpnet.train`` would
  run it), in a fresh process with ``NUMBA_CACHE_DIR`` a new empty folder, minus the same in a second fresh
  process once that cache is filled. In smoke mode a cold compile takes too long (about 10 s a model): only the
  warm-cache process runs, for one model, with the user's cache; its result says so.

In smoke mode (``XPNET_BENCH_SMOKE=1``) every measurement runs for one model only, on tiny data, and the memory
one on NumPy and PyTorch only (each child's code path once: a PyTorch child takes seconds to start).
"""

from __future__ import annotations

import gc
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import xpnet  # noqa: I001  (before NumPy, as in user code)
import numpy as np
import pytest

from bench_epoch import seconds, thread_info
from bench_torch import TorchPeer
from harness import MODEL_NAMES, RESNET, SEED, SMOKE, SMOKE_IMAGES, TrainSet, backend_or_skip, blas_threads, rounds
from xpnet.data import Dataset
from xpnet.models import build_model
from xpnet.optim import Adam
from xpnet.train import evaluate, make_loader, train_epoch

CPU_BACKENDS = ("numpy", "numba")
SMOKE_MODELS = ("report1",)  # smoke mode: one model per measurement, to add only seconds to the smoke run
INFER_MODELS = SMOKE_MODELS if SMOKE else MODEL_NAMES
INFER_BATCH = 32 if SMOKE else 256
INFER_IMAGES = SMOKE_IMAGES if SMOKE else 10_000  # as many as MNIST's test set
INFER_ROUNDS = rounds(5)
MEMORY_MODELS = SMOKE_MODELS if SMOKE else (*MODEL_NAMES, RESNET)
MEMORY_FRAMEWORKS = ("numpy", "pytorch") if SMOKE else (*CPU_BACKENDS, "pytorch")  # smoke: each child's code once
MEMORY_BATCH = 32 if SMOKE else 128
MEMORY_STEPS = 2 if SMOKE else 3
COLD_MODELS = SMOKE_MODELS if SMOKE else (*MODEL_NAMES, RESNET)
COLD_BATCH = 32 if SMOKE else 128
CHILD_TIMEOUT_S = 600
SELF = Path(__file__).resolve()
CLEAR_REFS, STATUS = Path("/proc/self/clear_refs"), Path("/proc/self/status")
HAS_TORCH = importlib.util.find_spec("torch") is not None
requires_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed: pip install 'xpnet[torch]'")


def data_set(request: pytest.FixtureRequest, model_name: str) -> TrainSet:
    """The training set ``model_name`` is benchmarked on: Fashion-MNIST for the ResNet, MNIST for the others."""
    return request.getfixturevalue("fashion_set" if model_name == RESNET else "train_set")


def write_npz(path: Path, data: Dataset) -> Path:
    """``data`` as an .npz (``images``, ``labels``, ``classes``) for a child process to load."""
    np.savez(path, images=data.images, labels=data.labels, classes=np.array(data.classes))
    return path


def load_npz(path: str) -> Dataset:
    with np.load(path) as data:
        return Dataset(data["images"], data["labels"], list(data["classes"]))


def run_child(*args: Any, env: dict[str, str] | None = None) -> str:
    """The last line this file prints when run as ``python bench_footprint.py *args`` in a fresh process started
    with the user's environment (without xpnet's thread settings, as ``TorchPeer``) plus ``env``."""
    done = subprocess.run([sys.executable, str(SELF), *map(str, args)], capture_output=True, text=True,
                          env={**xpnet.threads.user_environment(), **(env or {})}, timeout=CHILD_TIMEOUT_S)
    assert done.returncode == 0, f"`bench_footprint.py {' '.join(map(str, args))}` failed:\n{done.stderr[-3000:]}"
    return done.stdout.strip().splitlines()[-1]


# --- inference ------------------------------------------------------------------------------------------------------

class InferencePeer(TorchPeer):
    """The PyTorch peer, asked for no-gradient passes: ``infer()`` returns the accuracy of one."""

    def infer(self) -> float:
        return float(self._ask("infer"))


def infer_data(train_set: TrainSet) -> Dataset:
    return train_set.data.subset(np.arange(min(INFER_IMAGES, len(train_set.data))))


def infer_info(model_name: str, data: Dataset, train_set: TrainSet) -> dict[str, Any]:
    """What both frameworks' inference results record about the run."""
    return {"model": model_name, "batch_size": INFER_BATCH, "images": len(data), "data": train_set.source,
            "dataset": train_set.name}


@pytest.mark.benchmark(group="inference")
@pytest.mark.parametrize("model_name", INFER_MODELS)
@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
def test_inference(benchmark: Any, backend_name: str, model_name: str, train_set: TrainSet) -> None:
    backend = backend_or_skip(backend_name)
    xpnet.use(backend.name)
    xpnet.manual_seed(SEED)
    model = build_model(model_name)
    data = infer_data(train_set)
    loader = make_loader(data, INFER_BATCH, shuffle=False, seed=0)
    first_pass_s = seconds(backend, lambda: evaluate(model, loader))
    accuracies: list[float] = []

    def run() -> None:
        accuracies.append(evaluate(model, loader)[1])
        backend.synchronize()

    benchmark.pedantic(run, rounds=INFER_ROUNDS)
    benchmark.extra_info.update(framework="xpnet", backend=backend.name, **infer_info(model_name, data, train_set),
                                first_pass_s=first_pass_s, accuracy=accuracies[-1], **thread_info(backend))


@pytest.mark.benchmark(group="inference")
@requires_torch
@pytest.mark.parametrize("model_name", INFER_MODELS)
def test_inference_torch(benchmark: Any, model_name: str, train_set: TrainSet, tmp_path: Path) -> None:
    data = infer_data(train_set)
    peer = InferencePeer(write_npz(tmp_path / "infer.npz", data), model_name, INFER_BATCH)
    accuracies: list[float] = []
    try:
        started = time.perf_counter()
        peer.infer()
        first_pass_s = time.perf_counter() - started
        benchmark.pedantic(lambda: accuracies.append(peer.infer()), rounds=INFER_ROUNDS)
    finally:
        peer.close()
    benchmark.extra_info.update(framework="pytorch", backend="pytorch", **infer_info(model_name, data, train_set),
                                first_pass_s=first_pass_s, accuracy=accuracies[-1], blas_threads=blas_threads(),
                                **peer.info)


# --- memory ---------------------------------------------------------------------------------------------------------

def status_bytes(field: str) -> int:
    """A size line of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes."""
    for line in STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in {STATUS}")


def reset_peak_rss() -> int:
    """Set the kernel's peak-RSS counter (VmHWM) to the current RSS, and return that RSS in bytes."""
    gc.collect()
    CLEAR_REFS.write_text("5")
    return status_bytes("VmRSS")


def xpnet_step_memory(backend_name: str, data: Dataset, model_name: str, batch_size: int, seed: int) -> tuple[int, int]:
    """(RSS before, peak RSS during) ``train_epoch`` over ``data`` for a fresh model on ``backend_name``."""
    backend = xpnet.use(backend_name)
    if hasattr(backend, "warm_up"):
        backend.warm_up(("float32",))
    xpnet.manual_seed(seed)
    model = build_model(model_name)
    optimizer = Adam(model.parameters(), lr=1e-3)
    loader = make_loader(data, batch_size, shuffle=True, seed=seed)
    next(iter(loader))  # the loader's one-off float32 copy of the set, as the PyTorch child's images tensor
    loader.set_epoch(1)
    baseline = reset_peak_rss()
    train_epoch(model, optimizer, loader, "memory")
    return baseline, status_bytes("VmHWM")


def torch_step_memory(data_path: str, model_name: str, batch_size: int, seed: int, threads: int) -> tuple[int, int]:
    """(RSS before, peak RSS during) one pass of the peer's ``train_round`` over the .npz for a fresh twin model."""
    import torch_peer  # restores the user's thread settings, then imports torch (as the peer process)
    torch_peer.torch.set_num_threads(threads)
    images, labels = torch_peer.load_images(data_path)
    net = torch_peer.twin(model_name, seed)
    optimizer = torch_peer.torch.optim.Adam(net.parameters(), lr=1e-3)
    order = np.random.default_rng([seed, 1]).permutation(len(labels))  # xpnet's DataLoader order, epoch 1
    baseline = reset_peak_rss()
    torch_peer.train_round(net, optimizer, images, labels, batch_size, order)
    return baseline, status_bytes("VmHWM")


def memory_child(framework: str, data_path: str, model_name: str, batch_size: str, seed: str, threads: str) -> str:
    """``python bench_footprint.py memory ...``: one JSON line, the RSS before and the peak RSS during the steps."""
    if framework == "pytorch":
        baseline, peak = torch_step_memory(data_path, model_name, int(batch_size), int(seed), int(threads))
    else:
        baseline, peak = xpnet_step_memory(framework, load_npz(data_path), model_name, int(batch_size), int(seed))
    return json.dumps({"baseline_bytes": baseline, "peak_bytes": peak})


@pytest.mark.benchmark(group="memory")
@pytest.mark.parametrize("model_name", MEMORY_MODELS)
@pytest.mark.parametrize("framework", MEMORY_FRAMEWORKS)
def test_memory(benchmark: Any, framework: str, model_name: str, request: pytest.FixtureRequest,
                tmp_path: Path) -> None:
    if not CLEAR_REFS.exists():
        pytest.skip("peak resident memory is reset through Linux's /proc/self/clear_refs, absent here")
    if framework == "pytorch" and not HAS_TORCH:
        pytest.skip("PyTorch is not installed: pip install 'xpnet[torch]'")
    if framework != "pytorch":
        backend_or_skip(framework)
    train_set = data_set(request, model_name)
    data = write_npz(tmp_path / "steps.npz", train_set.data.subset(np.arange(MEMORY_STEPS * MEMORY_BATCH)))
    threads = blas_threads()
    reading = benchmark.pedantic(
        lambda: json.loads(run_child("memory", framework, data, model_name, MEMORY_BATCH, SEED, threads)), rounds=1)
    benchmark.extra_info.update(
        framework="pytorch" if framework == "pytorch" else "xpnet", backend=framework, model=model_name,
        batch_size=MEMORY_BATCH, steps=MEMORY_STEPS, **reading, threads=threads, data=train_set.source,
        dataset=train_set.name)


# --- cold start -----------------------------------------------------------------------------------------------------

def first_step_child(data_path: str, model_name: str, batch_size: str, seed: str, started: str) -> str:
    """``python bench_footprint.py first-step ...``: seconds since ``started`` (the parent's ``time.time()`` when
    it started this process) at the end of a fresh model's first training step on Numba."""
    backend = xpnet.use("numba")
    xpnet.manual_seed(int(seed))
    model = build_model(model_name)
    optimizer = Adam(model.parameters(), lr=1e-3)
    loader = make_loader(load_npz(data_path), int(batch_size), shuffle=True, seed=int(seed))
    train_epoch(model, optimizer, loader, "first step")
    backend.synchronize()
    return str(time.time() - float(started))


def first_step_in_new_process(data_path: Path, model_name: str, env: dict[str, str]) -> float:
    """Seconds from starting a fresh process to the end of its first training step of ``model_name``."""
    return float(run_child("first-step", data_path, model_name, COLD_BATCH, SEED, repr(time.time()), env=env))


@pytest.mark.benchmark(group="cold-start")
@pytest.mark.parametrize("model_name", COLD_MODELS)
def test_cold_start(benchmark: Any, model_name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    backend_or_skip("numba")
    train_set = data_set(request, model_name)
    data = write_npz(tmp_path / "batch.npz", train_set.data.subset(np.arange(COLD_BATCH)))
    info: dict[str, Any] = {"backend": "numba", "model": model_name, "batch_size": COLD_BATCH,
                            "data": train_set.source, "dataset": train_set.name}
    if SMOKE:
        warm_s = benchmark.pedantic(lambda: first_step_in_new_process(data, model_name, {}), rounds=1)
        info.update(cold_s=None, warm_s=warm_s, extra_s=None,
                    note="smoke mode: only the warm-cache run, with the user's Numba cache")
    else:
        with tempfile.TemporaryDirectory() as cache:
            env = {"NUMBA_CACHE_DIR": cache}
            cold_s = benchmark.pedantic(lambda: first_step_in_new_process(data, model_name, env), rounds=1)
            warm_s = first_step_in_new_process(data, model_name, env)
        info.update(cold_s=cold_s, warm_s=warm_s, extra_s=cold_s - warm_s)
    benchmark.extra_info.update(info)


CHILDREN = {"memory": memory_child, "first-step": first_step_child}

if __name__ == "__main__":
    print(CHILDREN[sys.argv[1]](*sys.argv[2:]), flush=True)

"""Seconds per training epoch: the three MNIST nets on every backend at report 1's batch sizes, and the ResNet
(``RESNET``) on Fashion-MNIST at batch ``RESNET_BATCH`` on the CPU backends, over a partial epoch scaled to a full one.

Each round runs ``xpnet.train.train_epoch`` (Adam lr 1e-3, cross-entropy, the shuffling DataLoader of
``xpnet.train.make_loader``), exactly what ``python -m xpnet.train`` times per epoch. Kept out of the timed
rounds and reported apart: the backend's ``warm_up()`` (Numba's compile, or load from its disk cache), the first
training step on a fresh model, and the loader's one-off copy of the training set to the device. The backend is
synchronized before every clock read.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np
import pytest

import xpnet
from harness import (BATCH_SIZES, IMAGE_SHAPE, MODEL_NAMES, RESNET, RESNET_BACKENDS, SEED, SMOKE, EpochPlan,
                     TrainSet, backend_or_skip, blas_threads)
from model_costs import model_cost
from xpnet.backend import Backend, backend_names
from xpnet.models import build_model
from xpnet.optim import Adam
from xpnet.train import make_loader, train_epoch

pytestmark = pytest.mark.benchmark(group="epoch")

NUMBA_WARM_UP = "from xpnet.backends.numba import NumbaBackend; print(NumbaBackend.warm_up())"

_warm_up_seconds: dict[str, float | None] = {}


def warm_up(backend: Backend) -> float | None:
    """Seconds the backend's ``warm_up()`` took the first time this process called it; None if it has none."""
    if backend.name not in _warm_up_seconds:
        method = getattr(backend, "warm_up", None)
        _warm_up_seconds[backend.name] = method() if method is not None else None
    return _warm_up_seconds[backend.name]


def seconds(backend: Backend, fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of ``fn()``, with the device synchronized before both clock reads."""
    backend.synchronize()
    start = time.perf_counter()
    fn()
    backend.synchronize()
    return time.perf_counter() - start


def thread_info(backend: Backend) -> dict[str, int]:
    """The thread counts this backend computes with."""
    info = {"blas_threads": blas_threads()}
    if backend.name == "numba":
        import numba
        info["numba_threads"] = numba.get_num_threads()
    return info


@pytest.mark.parametrize("model_name", MODEL_NAMES)
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("backend_name", backend_names())
def test_epoch(benchmark: Any, backend_name: str, batch_size: int, model_name: str, train_set: TrainSet,
               epoch_plan: Callable[[int], EpochPlan]) -> None:
    time_training(benchmark, backend_or_skip(backend_name), model_name, train_set, epoch_plan(batch_size))


@pytest.mark.parametrize("backend_name", RESNET_BACKENDS)
def test_epoch_resnet(benchmark: Any, backend_name: str, fashion_set: TrainSet, resnet_plan: EpochPlan) -> None:
    time_training(benchmark, backend_or_skip(backend_name), RESNET, fashion_set, resnet_plan)


def time_training(benchmark: Any, backend: Backend, model_name: str, train_set: TrainSet, plan: EpochPlan) -> None:
    """Time ``plan``'s rounds of ``train_epoch`` for a fresh ``model_name`` on ``train_set``, and record them."""
    batch_size = plan.batch_size
    xpnet.use(backend.name)
    warm_up_s = warm_up(backend)
    xpnet.manual_seed(SEED)
    model = build_model(model_name)
    optimizer = Adam(model.parameters(), lr=1e-3)

    first_batch = make_loader(train_set.data.subset(np.arange(batch_size)), batch_size, shuffle=True, seed=SEED)
    first_step_s = seconds(backend, lambda: train_epoch(model, optimizer, first_batch, "first step"))

    loader = make_loader(train_set.data.subset(np.arange(plan.round_images)), batch_size, shuffle=True, seed=SEED)
    preload_s = seconds(backend, lambda: next(iter(loader)))  # the first batch copies the set to the device
    epochs = itertools.count(1)
    losses = []

    def next_epoch() -> None:
        loader.set_epoch(next(epochs))
        backend.synchronize()

    def run() -> None:
        losses.append(train_epoch(model, optimizer, loader, f"{model_name} bs{batch_size}")[0])
        backend.synchronize()

    benchmark.pedantic(run, setup=next_epoch, rounds=plan.rounds)
    assert np.isfinite(losses).all(), f"training diverged: losses {losses}"
    cost = model_cost(model, IMAGE_SHAPE)
    benchmark.extra_info.update(
        framework="xpnet", backend=backend.name, model=model_name, **plan.info(), warm_up_s=warm_up_s,
        first_step_s=first_step_s, preload_s=preload_s, train_loss=losses[-1], data=train_set.source,
        dataset=train_set.name, flops_per_epoch=cost.flops(plan.epoch_images),
        bytes_per_epoch=cost.bytes(plan.epoch_images), **thread_info(backend))


@pytest.mark.benchmark(group="warm-up")
def test_numba_compile(benchmark: Any) -> None:
    """What a first run on a new machine pays: Numba compiling every kernel into an empty cache, then loading
    them from that cache in a new process (what every later run pays), each measured inside the process."""
    pytest.importorskip("numba", reason="numba is not installed: pip install 'xpnet[numba]'")
    if SMOKE:
        pytest.skip("smoke mode: a cold compile takes tens of seconds")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}

        def warm_up_in_new_process() -> float:
            done = subprocess.run([sys.executable, "-c", NUMBA_WARM_UP], env=env, capture_output=True, text=True)
            assert done.returncode == 0, f"NumbaBackend.warm_up() failed:\n{done.stderr}"
            return float(done.stdout.split()[-1])

        compile_s = benchmark.pedantic(warm_up_in_new_process, rounds=1)
        cache_load_s = warm_up_in_new_process()
    benchmark.extra_info.update(backend="numba", compile_s=compile_s, cache_load_s=cache_load_s)

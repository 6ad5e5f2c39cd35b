"""Sizes and helpers shared by the benchmark suites.

``XPNET_BENCH_SMOKE=1`` shrinks every size to a tiny one and every suite to one round, so CI can run each suite
end to end in seconds (``tests/test_benchmarks_smoke.py``) and none of them rots between official runs. Timings
taken in smoke mode mean nothing.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from xpnet.backend import Backend, BackendUnavailable, get_backend
from xpnet.data import Dataset

SMOKE = os.environ.get("XPNET_BENCH_SMOKE", "") not in ("", "0")

BATCH_SIZES = (8, 64) if SMOKE else (32, 64, 128, 256)  # smoke keeps 64, the batch report 1 targets
MODEL_NAMES = ("report1", "report2", "lenet5")  # the MNIST nets, timed at every backend and batch size
RESNET = "resnet"  # timed apart: one batch size, the CPU backends, Fashion-MNIST (its whole grid: over an hour)
RESNET_BATCH = 32 if SMOKE else 128
RESNET_BACKENDS = ("numpy", "numba")
IMAGE_SHAPE = (1, 28, 28)
EPOCH_IMAGES = 60_000  # the MNIST training set: what "one epoch" means in every table
SMOKE_IMAGES = 64      # the training set in smoke mode
SEED = 0


def rounds(full: int) -> int:
    """``full`` timed rounds, or one in smoke mode."""
    return 1 if SMOKE else full


def backend_or_skip(name: str) -> Backend:
    """The backend called ``name``, or skip the test with the registry's reason it cannot run here."""
    try:
        return get_backend(name)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))


def synchronized(backend: Backend, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` followed by ``backend.synchronize()``, so a clock read after it sees the device work finished."""
    def run(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        backend.synchronize()
        return result
    return run


def blas_threads() -> int:
    """Threads NumPy's BLAS (OpenBLAS or MKL) runs a GEMM on: the thread variable the user set, else the CPUs this
    process may run on, which is both libraries' default."""
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class TrainSet:
    """The images the training benchmarks run on, where they came from, and the data set's short name for the
    report ("MNIST", "Fashion-MNIST", with " (synthetic)" when the real one was not found)."""

    data: Dataset
    source: str
    name: str


@dataclass(frozen=True)
class EpochPlan:
    """How one (model, batch size) training epoch is timed.

    A full plan trains on the whole training set once per timed round. A partial plan trains on the first
    ``round_images`` images (whole batches) and scales the time to a full epoch by the ratio of step counts, so
    long configurations fit the time budget; the report marks those numbers.
    """

    batch_size: int
    epoch_images: int
    round_images: int
    rounds: int

    @property
    def full(self) -> bool:
        return self.round_images == self.epoch_images

    @property
    def steps(self) -> int:
        """Optimizer steps in one timed round."""
        return math.ceil(self.round_images / self.batch_size)

    @property
    def epoch_steps(self) -> int:
        """Optimizer steps in one full epoch."""
        return math.ceil(self.epoch_images / self.batch_size)

    @property
    def scale(self) -> float:
        """Factor from the time of one round to the time of one full epoch."""
        return self.epoch_steps / self.steps

    def info(self) -> dict[str, Any]:
        """The plan as ``benchmark.extra_info`` entries."""
        return {"batch_size": self.batch_size, "epoch_images": self.epoch_images, "round_images": self.round_images,
                "steps": self.steps, "epoch_steps": self.epoch_steps, "scale": self.scale, "full_epoch": self.full}


def make_plan(batch_size: int, epoch_images: int, full_batches: tuple[int, ...], images_per_round: int,
              timed_rounds: int) -> EpochPlan:
    """``timed_rounds`` rounds of a whole epoch for the batch sizes in ``full_batches``; else of about
    ``images_per_round`` images in whole batches."""
    if batch_size in full_batches:
        return EpochPlan(batch_size, epoch_images, epoch_images, timed_rounds)
    steps = max(1, math.ceil(images_per_round / batch_size))
    return EpochPlan(batch_size, epoch_images, min(steps * batch_size, epoch_images), timed_rounds)

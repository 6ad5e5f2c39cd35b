"""Options, fixtures and JSON additions shared by the benchmark suites (run explicitly: ``pytest benchmarks/...``).

- Collects ``bench_*.py`` files when a whole folder is given (pytest's default pattern is ``test_*.py``).
- ``train_set``: real MNIST when present (``--data``, ``XPNET_DATA``, else ``../shared/data/mnist`` beside the
  repository), otherwise synthetic images of the same shape, so timings never depend on the data being there.
- ``fashion_set``: the same for the ResNet's Fashion-MNIST (``--fashion-data``, else ``../shared/data/fashion-mnist``).
- ``epoch_plan``: how each batch size's epoch is timed (``--full-epochs``, ``--epoch-images``, ``--epoch-rounds``);
  ``resnet_plan``: the ResNet's, always a partial epoch of about ``--epoch-images`` images at ``RESNET_BATCH``.
- Adds to the ``--benchmark-json`` file what the report needs to say where and how it was measured: machine,
  versions, thread counts, the command, and why any test was skipped.
"""

from __future__ import annotations

import os
import platform
import shlex
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

import xpnet  # noqa: I001  (before NumPy, as in user code, so OpenBLAS loads with xpnet/threads.py's settings)
import numpy as np
import pytest

from harness import (EPOCH_IMAGES, RESNET_BATCH, SEED, SMOKE, SMOKE_IMAGES, EpochPlan, TrainSet, blas_threads,
                     make_plan)
from xpnet.data import Dataset, load_dataset, load_mnist
from xpnet.data.fashion_mnist import CLASSES as FASHION_CLASSES
from xpnet.data.mnist import CLASSES
from xpnet.reports import machine_description

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"
SHARED_FASHION = REPO.parent / "shared" / "data" / "fashion-mnist"
VERSIONS = ("numpy", "numba", "torch", "cupy-cuda12x", "cupy-cuda13x", "pytest-benchmark")
_skipped: dict[str, str] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("xpnet benchmarks")
    group.addoption("--data", default=None,
                    help="MNIST for the training benchmarks (as python -m xpnet.train --data); default $XPNET_DATA, "
                         f"else {SHARED_MNIST} if present, else synthetic images of the same shape")
    group.addoption("--fashion-data", default=None,
                    help=f"Fashion-MNIST for the ResNet benchmarks; default {SHARED_FASHION} if present, else "
                         "synthetic images of the same shape")
    group.addoption("--full-epochs", default="64" if SMOKE else "32,64,128,256",
                    help="comma-separated batch sizes timed over whole epochs (default: %(default)s)")
    group.addoption("--epoch-rounds", type=int, default=1 if SMOKE else 3,
                    help="timed rounds per training benchmark; the report shows their median (default: %(default)s)")
    group.addoption("--epoch-images", type=int, default=16 if SMOKE else 12_000,
                    help="images per timed round for the other batch sizes, scaled to a full epoch "
                         "(default: %(default)s)")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Collect ``bench_*.py`` under a folder argument; a file named on the command line pytest collects itself."""
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def synthetic(classes: list[str]) -> Dataset:
    """An epoch of seeded random uint8 28x28 images and labels, for when the real data set is not there."""
    rng = np.random.default_rng(SEED)
    return Dataset(rng.integers(0, 256, (EPOCH_IMAGES, 28, 28), dtype=np.uint8),
                   rng.integers(0, len(classes), EPOCH_IMAGES), classes)


def sized(data: Dataset, source: str, name: str) -> TrainSet:
    """The whole set, or its first ``SMOKE_IMAGES`` images in smoke mode."""
    if SMOKE:
        return TrainSet(data.subset(np.arange(SMOKE_IMAGES)), f"first {SMOKE_IMAGES} images of the {source}", name)
    return TrainSet(data, source, name)


@pytest.fixture(scope="session")
def train_set(request: pytest.FixtureRequest) -> TrainSet:
    named = request.config.getoption("--data") or os.environ.get("XPNET_DATA")
    path = named or (SHARED_MNIST if SHARED_MNIST.is_dir() else None)
    if path is None:
        return sized(synthetic(CLASSES), "synthetic uint8 images of MNIST's shape (no MNIST found)",
                     "MNIST (synthetic)")
    mnist = load_mnist(path)  # a named path must hold data, as for python -m xpnet.train
    return sized(mnist.train, f"MNIST training set ({mnist.source})", "MNIST")


@pytest.fixture(scope="session")
def fashion_set(request: pytest.FixtureRequest) -> TrainSet:
    """Fashion-MNIST for the ResNet rows (not ``XPNET_DATA``, which names MNIST for the other suites)."""
    path = request.config.getoption("--fashion-data") or (SHARED_FASHION if SHARED_FASHION.is_dir() else None)
    if path is None:
        return sized(synthetic(FASHION_CLASSES),
                     "synthetic uint8 images of Fashion-MNIST's shape (no Fashion-MNIST found)",
                     "Fashion-MNIST (synthetic)")
    fashion = load_dataset("fashion-mnist", path)  # a named path must hold data
    return sized(fashion.train, f"Fashion-MNIST training set ({fashion.source})", "Fashion-MNIST")


@pytest.fixture(autouse=True)
def _numpy_backend() -> Iterator[None]:
    """Every benchmark starts and ends on the NumPy backend; the ones that need another select it."""
    xpnet.use("numpy")
    yield
    xpnet.use("numpy")


@pytest.fixture(scope="session")
def epoch_plan(request: pytest.FixtureRequest, train_set: TrainSet) -> Callable[[int], EpochPlan]:
    """batch size -> how its epoch is timed, from ``--full-epochs``, ``--epoch-images`` and ``--epoch-rounds``."""
    config = request.config
    full = tuple(int(b) for b in config.getoption("--full-epochs").split(",") if b.strip())
    images = config.getoption("--epoch-images")
    timed_rounds = config.getoption("--epoch-rounds")
    return lambda batch_size: make_plan(batch_size, len(train_set.data), full, images, timed_rounds)


@pytest.fixture(scope="session")
def resnet_plan(request: pytest.FixtureRequest, fashion_set: TrainSet) -> EpochPlan:
    """The ResNet's epoch: about ``--epoch-images`` images at ``RESNET_BATCH`` per round, scaled to a full epoch."""
    config = request.config
    return make_plan(RESNET_BATCH, len(fashion_set.data), (), config.getoption("--epoch-images"),
                     config.getoption("--epoch-rounds"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and isinstance(report.longrepr, tuple):
        _skipped[report.nodeid] = report.longrepr[2].removeprefix("Skipped: ")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list, output_json: dict[str, Any]) -> None:
    """Record where, with what and how the run was made, under the ``xpnet`` key."""
    versions = {"python": platform.python_version(), **{name: _version(name) for name in VERSIONS}}
    output_json["xpnet"] = {
        "machine": machine_description(),
        "cpu_count": os.cpu_count(),
        "versions": {name: v for name, v in versions.items() if v is not None},
        "blas_threads": blas_threads(),
        "openblas_spin_limited": xpnet.threads.openblas_spin_limited(),
        "smoke": SMOKE,
        "command": shlex.join(["python", "-m", "pytest", *config.invocation_params.args]),
        "skipped": dict(_skipped),
    }

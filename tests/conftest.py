"""Shared fixtures: every test starts on the NumPy backend with float32 defaults and a fixed seed."""

import importlib.util
import os
import sys
import textwrap

os.environ.setdefault("XPNET_BACKEND", "numpy")  # subprocesses start on the reference backend, as each test does
import xpnet  # noqa: I001, E402  (before NumPy, as in user code: see xpnet/threads.py)
import numpy as np
import pytest

from xpnet.data import write_idx

import bench_smoke  # noqa: E402  (tests/ is on sys.path)

USER_MODELS = textwrap.dedent('''
    from xpnet import nn
    from xpnet import functional as F

    class TinyResNet(nn.Module):
        def __init__(self, in_channels, num_classes):
            super().__init__()
            self.stem = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(8)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, num_classes)

        def forward(self, x):
            x = F.relu(self.bn1(self.stem(x)))
            x = F.relu(x + self.bn2(self.conv(x)))
            return self.fc(F.flatten(self.pool(x)))

    def build(input_shape, num_classes):
        return TinyResNet(input_shape[0], num_classes)

    def no_arguments():
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

    def wrong_input(input_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes))

    def not_a_model(input_shape, num_classes):
        return "a string"
''')


@pytest.fixture(autouse=True)
def _fresh_state():
    """Isolate tests from each other's backend, dtype and seed choices."""
    xpnet.use("numpy")
    xpnet.set_default_dtype(np.float32)
    xpnet.manual_seed(0)
    yield
    xpnet.use("numpy")
    xpnet.set_default_dtype(np.float32)


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    """A tiny learnable MNIST look-alike in the four standard IDX files (gzipped, like the real ones)."""
    root = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, size=(10, 28, 28))

    def make(n):
        labels = np.arange(n) % 10
        noise = rng.integers(0, 256, size=(n, 28, 28))
        return ((0.7 * templates[labels] + 0.3 * noise)).astype(np.uint8), labels.astype(np.uint8)

    for prefix, n in (("train", 240), ("t10k", 80)):
        images, labels = make(n)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The name of a user's module on sys.path ("my_models") holding a residual model with BatchNorm, as the README
    shows, and factories that go wrong in each way a user's can."""
    (tmp_path / "my_models.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_models"
    sys.modules.pop("my_models", None)


@pytest.fixture(scope="module")
def one_torch_thread():
    """PyTorch on one thread for a test module (none installed: nothing to do). The parity tests use small tensors,
    where extra torch threads only add overhead on a shared 2-core machine (10x for the MNIST nets)."""
    try:
        import torch
    except ImportError:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_collection_modifyitems(session, config, items):
    """Run the benchmark smoke tests last: they wait for the background run (tests/bench_smoke.py), which on a
    cold Numba cache compiles for about 100 s; placed in file order they would leave the main process idle."""
    items.sort(key=lambda item: item.path.name == "test_benchmarks_smoke.py")  # stable: the rest keep their order


def pytest_collection_finish(session):
    """Start the benchmark smoke run in the background when its tests are selected (see tests/bench_smoke.py)."""
    if importlib.util.find_spec("pytest_benchmark") is not None and any(
            item.path.name == "test_benchmarks_smoke.py" for item in session.items):
        bench_smoke.start()


def pytest_sessionfinish(session, exitstatus):
    bench_smoke.stop()

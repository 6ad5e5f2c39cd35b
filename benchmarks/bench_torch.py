"""The PyTorch peer: the same three models, batch sizes, data and epoch plan as ``bench_epoch``, in PyTorch eager
mode on the CPU with as many threads as xpnet's BLAS uses.

The models are the xpnet models' twins (``xpnet.interop.torch.to_torch``: same layers and initial weights). A
round is what ``xpnet.train.train_epoch`` does, written in PyTorch: Adam lr 1e-3, cross-entropy, loss and
accuracy summed on the device; batches are gathered from the preloaded set in the order xpnet's loader draws
(``default_rng([seed, epoch])``), as xpnet's preloading DataLoader does. Warm-up (the first step on a fresh model,
where oneDNN builds its kernels) is kept out of the timed rounds and reported apart.

torch is imported by the first test here, never at collection, and ``conftest.py`` runs these tests last:
importing torch loads its own OpenMP runtime beside the system one Numba's ``omp`` threading layer uses, and that
slows the Numba backend's kernels (about 1.7x on the 2-core machine this was written on). Before importing torch
the environment variables xpnet set for its own thread pools are removed (``xpnet.threads``), so PyTorch's
OpenMP runtime starts with the user's settings: with xpnet's ``OMP_WAIT_POLICY=passive`` PyTorch ran 1.2-1.7x
slower here, which would flatter xpnet.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import time
from typing import Any, Callable, Iterator

import numpy as np
import pytest

import xpnet
from harness import BATCH_SIZES, IMAGE_SHAPE, MODEL_NAMES, SEED, EpochPlan, blas_threads
from model_costs import model_cost
from xpnet.models import build_model

pytestmark = [pytest.mark.benchmark(group="epoch"),
              pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="PyTorch is not installed: pip install 'xpnet[torch]'")]


@pytest.fixture
def threads() -> Iterator[int]:
    """Run PyTorch on as many threads as xpnet's BLAS uses, in the user's environment; restore afterwards."""
    xpnet.threads.restore_user_environment()  # before torch loads its OpenMP runtime (see the module docstring)
    import torch  # here and below: imported when the tests run, not at collection (see the module docstring)

    previous = torch.get_num_threads()
    torch.set_num_threads(blas_threads())
    yield torch.get_num_threads()
    torch.set_num_threads(previous)


def train_round(net: Any, optimizer: Any, images: Any, labels: Any, batch_size: int, order: np.ndarray) -> float:
    """One pass over ``order`` in batches; returns the mean training loss (read once, at the end)."""
    import torch

    order = torch.from_numpy(order)
    net.train()
    loss_fn = torch.nn.CrossEntropyLoss()
    loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.int64)
    for lo in range(0, len(order), batch_size):
        index = order[lo:lo + batch_size]
        x, y = images[index], labels[index]
        optimizer.zero_grad()
        logits = net(x)
        loss = loss_fn(logits, y)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(dim=1) == y).sum()
    return float(loss_sum) / len(order)


def epoch_order(n: int, epoch: int) -> np.ndarray:
    """Epoch ``epoch``'s shuffle of ``n`` examples, the same permutation xpnet's DataLoader draws."""
    return np.random.default_rng([SEED, epoch]).permutation(n)


@pytest.mark.parametrize("model_name", MODEL_NAMES)
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_epoch_torch(benchmark: Any, batch_size: int, model_name: str, train_set: Any, threads: int,
                     epoch_plan: Callable[[int], EpochPlan]) -> None:
    import torch

    from xpnet.interop.torch import to_torch

    plan = epoch_plan(batch_size)
    xpnet.manual_seed(SEED)
    model = build_model(model_name)
    net = to_torch(model)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    data = train_set.data.subset(np.arange(plan.round_images))
    images = torch.from_numpy(data.images.astype(np.float32) / np.float32(255)).reshape(-1, *IMAGE_SHAPE)
    labels = torch.from_numpy(data.labels)

    start = time.perf_counter()
    train_round(net, optimizer, images, labels, batch_size, epoch_order(batch_size, 0))
    first_step_s = time.perf_counter() - start

    epochs = itertools.count(1)
    orders, losses = [], []

    def next_epoch() -> None:
        orders.append(epoch_order(len(labels), next(epochs)))

    def run() -> None:
        losses.append(train_round(net, optimizer, images, labels, batch_size, orders[-1]))

    benchmark.pedantic(run, setup=next_epoch, rounds=plan.rounds)
    assert np.isfinite(losses).all(), f"training diverged: losses {losses}"
    cost = model_cost(model, IMAGE_SHAPE)
    benchmark.extra_info.update(
        framework="pytorch", backend="pytorch", model=model_name, **plan.info(), first_step_s=first_step_s,
        train_loss=losses[-1], data=train_set.source, flops_per_epoch=cost.flops(plan.epoch_images),
        bytes_per_epoch=cost.bytes(plan.epoch_images), torch_threads=threads, blas_threads=blas_threads(),
        torch_version=torch.__version__, thread_environment=thread_environment())


def thread_environment() -> dict[str, str | None]:
    """The thread-pool variables PyTorch ran under (the user's, once xpnet's own are removed)."""
    names = (xpnet.threads.OPENMP_WAIT[0], xpnet.threads.OPENMP_SPIN[0], xpnet.threads.OPENBLAS_SPIN[0])
    return {name: os.environ.get(name) for name in names}

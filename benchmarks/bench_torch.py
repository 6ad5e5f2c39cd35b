"""The PyTorch peer: the same models, batch sizes, data and epoch plans as ``bench_epoch`` (the three MNIST nets'
grid, and the ResNet on Fashion-MNIST at ``RESNET_BATCH``), in PyTorch eager mode on the CPU with as many threads as
xpnet's BLAS uses.

PyTorch runs in a process of its own (``torch_peer.py``), started with the user's environment (without the
thread-pool variables xpnet sets for itself, ``xpnet.threads``): in the benchmark process, after the xpnet suites,
PyTorch took up to 1.4x longer per epoch than alone, and under xpnet's ``OMP_WAIT_POLICY=passive`` 1.2-1.7x
longer. This process keeps pytest-benchmark's clock and times one command's round trip over a pipe per round
(microseconds, against epochs of seconds). The models are the xpnet models' twins
(``xpnet.interop.torch.to_torch``: same layers and initial weights), a round is what ``xpnet.train.train_epoch``
does, written in PyTorch, and batches follow xpnet's DataLoader order. PyTorch's first step (where oneDNN builds
its kernels) is kept out of the timed rounds and reported apart.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

import xpnet
from harness import BATCH_SIZES, IMAGE_SHAPE, MODEL_NAMES, RESNET, SEED, EpochPlan, TrainSet, blas_threads
from model_costs import model_cost
from xpnet.models import build_model

pytestmark = [pytest.mark.benchmark(group="epoch"),
              pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="PyTorch is not installed: pip install 'xpnet[torch]'")]

PEER = Path(__file__).with_name("torch_peer.py")


class TorchPeer:
    """A running ``torch_peer.py``: ``info`` (what it printed when ready), ``prepare(epoch)`` and ``run()``."""

    def __init__(self, data_path: Path, model_name: str, batch_size: int):
        command = [sys.executable, str(PEER), str(data_path), model_name, str(batch_size), str(SEED),
                   str(blas_threads())]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=xpnet.threads.user_environment())
        self.info = json.loads(self._reply())

    def _reply(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the PyTorch peer stopped:\n{self.process.stderr.read()[-3000:]}")
        return line

    def _ask(self, command: str) -> str:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._reply()

    def prepare(self, epoch: int) -> None:
        self._ask(f"prepare {epoch}")

    def run(self) -> float:
        return float(self._ask("run"))

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture
def peer_data() -> Iterator[Callable[[TrainSet, EpochPlan], Path]]:
    """(training set, plan) -> an .npz of the images the plan trains on, for the peer process to load."""
    with tempfile.TemporaryDirectory() as folder:
        def write(train_set: TrainSet, plan: EpochPlan) -> Path:
            data = train_set.data.subset(np.arange(plan.round_images))
            path = Path(folder) / "train.npz"
            np.savez(path, images=data.images, labels=data.labels)
            return path
        yield write


@pytest.mark.parametrize("model_name", MODEL_NAMES)
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_epoch_torch(benchmark: Any, batch_size: int, model_name: str, train_set: TrainSet,
                     peer_data: Callable[[TrainSet, EpochPlan], Path],
                     epoch_plan: Callable[[int], EpochPlan]) -> None:
    time_peer(benchmark, model_name, train_set, epoch_plan(batch_size), peer_data)


def test_epoch_torch_resnet(benchmark: Any, fashion_set: TrainSet, resnet_plan: EpochPlan,
                            peer_data: Callable[[TrainSet, EpochPlan], Path]) -> None:
    time_peer(benchmark, RESNET, fashion_set, resnet_plan, peer_data)


def time_peer(benchmark: Any, model_name: str, train_set: TrainSet, plan: EpochPlan,
              peer_data: Callable[[TrainSet, EpochPlan], Path]) -> None:
    """Time ``plan``'s rounds of the PyTorch peer training ``model_name`` on ``train_set``, and record them."""
    peer = TorchPeer(peer_data(train_set, plan), model_name, plan.batch_size)
    epochs, losses = itertools.count(1), []
    try:
        benchmark.pedantic(lambda: losses.append(peer.run()), setup=lambda: peer.prepare(next(epochs)),
                           rounds=plan.rounds)
    finally:
        peer.close()
    assert np.isfinite(losses).all(), f"training diverged: losses {losses}"
    cost = model_cost(build_model(model_name), IMAGE_SHAPE)
    benchmark.extra_info.update(
        framework="pytorch", backend="pytorch", model=model_name, **plan.info(), train_loss=losses[-1],
        data=train_set.source, dataset=train_set.name, flops_per_epoch=cost.flops(plan.epoch_images),
        bytes_per_epoch=cost.bytes(plan.epoch_images), blas_threads=blas_threads(), **peer.info)

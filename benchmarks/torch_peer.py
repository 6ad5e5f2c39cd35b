"""The PyTorch side of ``bench_torch.py``, in a process of its own that never loads Numba.

Run in the benchmark process, after the xpnet suites, PyTorch took up to 1.4x longer per epoch than alone
(report1 at batch 128: 3.65 s against 2.73 s), so the comparison would have flattered xpnet. The parent keeps
pytest-benchmark's clock: it times the round trip of one command over a pipe.

    python benchmarks/torch_peer.py DATA.npz MODEL BATCH_SIZE SEED THREADS

``DATA.npz`` holds ``images`` (uint8, N x C x H x W) and ``labels``. The peer builds the xpnet model ``MODEL`` from
``SEED``, converts it with ``xpnet.interop.torch.to_torch`` (same layers and initial weights), trains one batch
(PyTorch's warm-up), and prints one JSON line describing itself. Then, for each line on stdin:

- ``prepare E``: draw epoch E's shuffle (xpnet's DataLoader order, ``default_rng([seed, E])``); prints ``ok``;
- ``run``: train one pass over that order, as ``xpnet.train.train_epoch`` does; prints the mean loss;
- ``infer``: one no-gradient pass over all the images in order, as ``xpnet.train.evaluate`` does (for
  ``bench_footprint.py``); prints the accuracy.

``bench_footprint.py``'s memory children also use ``load_images``, ``twin`` and ``train_round``.
"""

from __future__ import annotations

import json
import os
import sys
import time

import xpnet  # noqa: I001  (first, as every xpnet process; then hand torch the user's thread settings)
import numpy as np

xpnet.threads.restore_user_environment()
import torch  # noqa: E402

from xpnet.interop.torch import to_torch  # noqa: E402
from xpnet.models import build_model  # noqa: E402


def train_round(net: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                labels: torch.Tensor, batch_size: int, order: np.ndarray) -> float:
    """One pass over ``order`` in batches: Adam steps, loss and accuracy summed on the images' device (CPU here,
    CUDA in benchmarks/gpu/epochs.py), read once."""
    order_t = torch.from_numpy(order).to(images.device)
    net.train()
    loss_fn = torch.nn.CrossEntropyLoss()
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), dtype=torch.int64, device=images.device)
    for lo in range(0, len(order_t), batch_size):
        index = order_t[lo:lo + batch_size]
        x, y = images[index], labels[index]
        optimizer.zero_grad()
        logits = net(x)
        loss = loss_fn(logits, y)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(dim=1) == y).sum()
    return float(loss_sum) / len(order_t)


def infer_round(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """What ``xpnet.train.evaluate`` does, in PyTorch: eval mode and no gradient, batches in order, the loss and the
    argmax of each; returns the accuracy (predictions brought to the host once, as xpnet's) and restores the mode."""
    was_training = net.training
    net.eval()
    loss_fn = torch.nn.CrossEntropyLoss()
    loss_sum, predictions = torch.zeros((), device=images.device), []
    with torch.no_grad():
        for lo in range(0, len(labels), batch_size):
            x, y = images[lo:lo + batch_size], labels[lo:lo + batch_size]
            logits = net(x)
            loss_sum += loss_fn(logits, y) * len(y)
            predictions.append(logits.argmax(dim=1))
    net.train(was_training)
    predicted = torch.cat(predictions).cpu().numpy()
    return float((predicted == labels.cpu().numpy()).mean())


def load_images(data_path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The .npz's images as float32 / 255 (N, C, H, W), as xpnet's DataLoader scales them, and its int64 labels."""
    with np.load(data_path) as data:
        raw, labels = data["images"], torch.from_numpy(data["labels"].astype(np.int64))
    return torch.from_numpy(raw.astype(np.float32) / np.float32(255)).reshape(len(raw), -1, *raw.shape[-2:]), labels


def twin(model_name: str, seed: int) -> torch.nn.Module:
    """The PyTorch twin of xpnet's ``model_name`` built from ``seed``: same layers and initial weights."""
    xpnet.manual_seed(seed)
    return to_torch(build_model(model_name))


def main(data_path: str, model_name: str, batch_size: str, seed: str, threads: str) -> None:
    batch, seed_value = int(batch_size), int(seed)
    torch.set_num_threads(int(threads))
    images, labels = load_images(data_path)
    net = twin(model_name, seed_value)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    start = time.perf_counter()
    train_round(net, optimizer, images, labels, batch, np.random.default_rng([seed_value, 0]).permutation(batch))
    first_step_s = time.perf_counter() - start
    names = (xpnet.threads.OPENMP_WAIT[0], xpnet.threads.OPENMP_SPIN[0], xpnet.threads.OPENBLAS_SPIN[0])
    print(json.dumps({"first_step_s": first_step_s, "torch_version": torch.__version__,
                      "torch_threads": torch.get_num_threads(),
                      "thread_environment": {name: os.environ.get(name) for name in names}}), flush=True)

    order = None
    for line in sys.stdin:
        command = line.split()
        if command[0] == "prepare":
            order = np.random.default_rng([seed_value, int(command[1])]).permutation(len(labels))
            print("ok", flush=True)
        elif command[0] == "run":
            print(train_round(net, optimizer, images, labels, batch, order), flush=True)
        elif command[0] == "infer":
            print(infer_round(net, images, labels, batch), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])

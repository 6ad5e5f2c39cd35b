"""Seconds per MNIST training epoch on a GPU: xpnet on the CuPy backend against its PyTorch twin on CUDA.

For each named net and batch size, both frameworks train the same model (``xpnet.interop.torch.to_torch``: same
layers and initial weights) with Adam lr 1e-3 and cross-entropy on the first ``--images`` training images, in
xpnet's DataLoader order, for ``--rounds`` timed passes; the median pass is scaled to a full epoch by the ratio of
step counts (``benchmarks/harness.py``'s ``EpochPlan``). xpnet's pass is ``xpnet.train.train_epoch``, what
``python -m xpnet.train`` times; PyTorch's is the same loop in eager mode with the images already on the device.
The first step on a fresh model (CuPy's kernel compiles, cuDNN's set-up) and xpnet's copy of the images to the
device are timed apart. The device is synchronized before every clock read. Rows are written to ``--out`` as
they finish, so a run stopped by its time limit keeps what it measured; rows that would start after
``--budget-s`` are recorded as not run.

    python benchmarks/gpu/epochs.py --out epochs.json [--data benchmarks/gpu/data/mnist]
    python benchmarks/gpu/epochs.py --backend numpy --torch-device cpu --models report1 --images 256 ...  # CPU dry run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import xpnet  # noqa: I001  (before NumPy, as every xpnet process)
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for harness and torch_peer
from harness import SEED, EpochPlan, make_plan  # noqa: E402
from xpnet.data import Dataset, load_mnist  # noqa: E402
from xpnet.models import build_model  # noqa: E402
from xpnet.optim import Adam  # noqa: E402
from xpnet.train import make_loader, train_epoch  # noqa: E402

MODELS = ("report1", "report2", "lenet5", "resnet")
BATCH_SIZES = (128, 256)
DATA = Path(__file__).resolve().with_name("data") / "mnist"
LR = 1e-3


def clock(synchronize: Callable[[], None], fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall-clock seconds of ``fn()``, its result), with the device synchronized before both clock reads."""
    synchronize()
    start = time.perf_counter()
    result = fn()
    synchronize()
    return time.perf_counter() - start, result


def summary(plan: EpochPlan, round_s: list[float], first_step_s: float, loss: float) -> dict[str, Any]:
    """One row's timings: every round, the median round scaled to a full epoch, and the last round's loss."""
    median = statistics.median(round_s)
    return {**plan.info(), "round_s": round_s, "epoch_s": median * plan.scale, "step_ms": 1e3 * median / plan.steps,
            "first_step_s": first_step_s, "train_loss": loss}


def time_xpnet(backend_name: str, model_name: str, train: Dataset, plan: EpochPlan) -> dict[str, Any]:
    """``plan``'s rounds of ``xpnet.train.train_epoch`` for a fresh ``model_name`` on backend ``backend_name``."""
    xpnet.use(backend_name)
    backend = xpnet.get_backend()
    xpnet.manual_seed(SEED)
    model = build_model(model_name)
    optimizer = Adam(model.parameters(), lr=LR)
    first = make_loader(train.subset(np.arange(plan.batch_size)), plan.batch_size, shuffle=True, seed=SEED)
    first_step_s, _ = clock(backend.synchronize, lambda: train_epoch(model, optimizer, first, "first step"))
    loader = make_loader(train.subset(np.arange(plan.round_images)), plan.batch_size, shuffle=True, seed=SEED)
    preload_s, _ = clock(backend.synchronize, lambda: next(iter(loader)))  # the first batch copies the set over
    round_s, loss = [], float("nan")
    for epoch in range(1, plan.rounds + 1):
        loader.set_epoch(epoch)
        seconds, (loss, _) = clock(backend.synchronize, lambda: train_epoch(model, optimizer, loader, model_name))
        round_s.append(seconds)
    return {"framework": "xpnet", "device": backend_name, "preload_s": preload_s,
            **summary(plan, round_s, first_step_s, loss)}


def time_torch(device: str, model_name: str, train: Dataset, plan: EpochPlan) -> dict[str, Any]:
    """``plan``'s rounds of the PyTorch twin of a fresh ``model_name`` on ``device``, over the same images."""
    import torch
    from torch_peer import train_round  # the CPU benchmarks' PyTorch loop, on the images' device

    from xpnet.interop.torch import to_torch

    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    xpnet.use("numpy")  # the twin's initial weights are drawn as xpnet draws them, then copied
    xpnet.manual_seed(SEED)
    torch.manual_seed(SEED)  # PyTorch's dropout masks come from its own generator
    net = to_torch(build_model(model_name)).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    data = train.subset(np.arange(plan.round_images))
    images = torch.from_numpy(data.images.astype(np.float32) / np.float32(255)).to(device)
    labels = torch.from_numpy(data.labels.astype(np.int64)).to(device)
    first_order = np.random.default_rng([SEED, 0]).permutation(plan.batch_size)
    first_step_s, _ = clock(synchronize, lambda: train_round(net, optimizer, images, labels, plan.batch_size,
                                                             first_order))
    round_s, loss = [], float("nan")
    for epoch in range(1, plan.rounds + 1):
        order = np.random.default_rng([SEED, epoch]).permutation(len(data.labels))  # xpnet's DataLoader order
        seconds, loss = clock(synchronize, lambda: train_round(net, optimizer, images, labels, plan.batch_size,
                                                               order))
        round_s.append(seconds)
    return {"framework": "pytorch", "device": device, **summary(plan, round_s, first_step_s, loss)}


def torch_settings(device: str) -> dict[str, Any]:
    """PyTorch's version and the defaults that decide its GPU speed (TF32 use, cuDNN autotuning), as run."""
    import torch

    settings: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
                                "cudnn": torch.backends.cudnn.version(),
                                "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                                "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                                "cudnn_benchmark": torch.backends.cudnn.benchmark}
    if device.startswith("cuda"):
        settings["torch_device_name"] = torch.cuda.get_device_name(torch.device(device))
    return settings


def write(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """The results so far, as one JSON file (rewritten after every row)."""
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file the rows are written to")
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding the 4 MNIST IDX files "
                        "(default: %(default)s, filled by benchmarks/gpu/prepare.sh)")
    parser.add_argument("--backend", default="cupy", help="xpnet backend (default: %(default)s)")
    parser.add_argument("--torch-device", default="cuda", help="PyTorch device (default: %(default)s)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)), help="(default: %(default)s)")
    parser.add_argument("--images", type=int, default=12_800, help="training images per timed round, scaled to "
                        "a full epoch (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per row (default: %(default)s)")
    parser.add_argument("--budget-s", type=float, default=140.0, help="start no row after this many seconds "
                        "(default: %(default)s)")
    return parser.parse_args(argv)


def run_row(framework: str, timer: Callable[[], dict[str, Any]], model_name: str, batch_size: int,
            over_budget: bool) -> dict[str, Any]:
    """One row: ``timer()``'s timings, or an ``error`` saying why there are none (over budget, or what raised)."""
    row: dict[str, Any] = {"framework": framework, "model": model_name, "batch_size": batch_size}
    if over_budget:
        return {**row, "error": "not run: the time budget was spent"}
    try:
        return {"model": model_name, **timer()}
    except Exception as exc:  # one failing row is recorded and the others still run
        return {**row, "error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    mnist = load_mnist(args.data, download=False, progress=False)
    train = mnist.train
    meta = {"data": f"MNIST training set ({mnist.source})", "epoch_images": len(train), "seed": SEED, "lr": LR,
            "dtype": "float32", "backend": args.backend, "torch_device": args.torch_device,
            "python": platform.python_version(), "numpy": np.__version__, **torch_settings(args.torch_device)}
    rows: list[dict[str, Any]] = []
    for model_name in args.models.split(","):
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            plan = make_plan(batch_size, len(train), (), args.images, args.rounds)
            timers = {"xpnet": lambda: time_xpnet(args.backend, model_name, train, plan),
                      "pytorch": lambda: time_torch(args.torch_device, model_name, train, plan)}
            for framework, timer in timers.items():
                over_budget = time.perf_counter() - start > args.budget_s
                rows.append(run_row(framework, timer, model_name, batch_size, over_budget))
                print(json.dumps(rows[-1]), flush=True)
                write(args.out, meta, rows)
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

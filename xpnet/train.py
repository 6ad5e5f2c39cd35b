"""``python -m xpnet.train``: train a named model on MNIST with the active backend, then report.

One run per batch size (several sizes make a sweep, as report 1 compared 32/64/128/256). Each epoch prints one
line; the run folder gets a JSON-lines log, ``best.npz`` and ``last.npz`` checkpoints, training curves, the
test-set confusion matrix and ``summary.md``. ``--resume`` continues from ``last.npz`` and ends with the same
weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

import xpnet
from xpnet import distributed, random
from xpnet.autograd import no_grad
from xpnet.backend import BackendUnavailable, get_backend
from xpnet.checkpoint import CheckpointError, check_fits, load_checkpoint, save_checkpoint
from xpnet.config import ConfigError, TrainConfig, load_config
from xpnet.data import DataError, DataLoader, Dataset, load_mnist, split_train_val
from xpnet.models import build_model
from xpnet.nn import CrossEntropyLoss, Module
from xpnet.optim import OPTIMIZERS, Optimizer
from xpnet.reports import (confusion_matrix, ensure_dir, machine_description, plot_confusion, plot_curves,
                           write_jsonl, write_summary)


class TrainingDiverged(RuntimeError):
    """The loss stopped being finite; the last good checkpoint is kept."""


@dataclasses.dataclass
class RunResult:
    batch_size: int
    history: list[dict[str, Any]]
    test_loss: float
    test_acc: float
    seconds: float
    epochs: int


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    backend = get_backend()
    dtype = xpnet.get_default_dtype().name
    return DataLoader(dataset, batch_size, shuffle=shuffle, seed=seed, to_device=backend.asarray, dtype=dtype)


def evaluate(model: Module, loader: DataLoader) -> tuple[float, float, np.ndarray]:
    """Mean loss, accuracy and host predictions over ``loader`` in eval mode (each rank of a distributed run
    scores its share of the set; the loss sums are added up and the predictions gathered)."""
    backend = get_backend()
    world = distributed.world()
    was_training = model.training
    model.eval()
    loss_fn = CrossEntropyLoss()
    loss_sum, predictions = 0.0, []
    with no_grad():
        for x, y in world.shard_loader(loader):
            logits = model(xpnet.Tensor(x))
            loss_sum = loss_sum + loss_fn(logits, y).data * len(y)
            predictions.append(logits.data.argmax(axis=1))
    model.train(was_training)
    local = backend.to_numpy(backend.xp.concatenate(predictions)) if predictions else np.empty(0, np.int64)
    predicted = world.gather(local)
    labels = loader.dataset.labels
    return float(world.sum([float(loss_sum)])[0]) / len(labels), float((predicted == labels).mean()), predicted


def train_epoch(model: Module, optimizer: Optimizer, loader: DataLoader, desc: str) -> tuple[float, float]:
    """One pass over ``loader``; returns mean training loss and accuracy (summed on the device, read once). In a
    distributed run each rank trains on its shard of every global batch; the statistics cover all ranks."""
    world = distributed.world()
    model.train()
    loss_fn = CrossEntropyLoss()
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y in tqdm(loader, desc=desc, leave=False, unit="batch", disable=True if world.rank else None):
        x, y = world.shard(x, y)
        optimizer.zero_grad()
        if len(y):  # a global batch with fewer rows than ranks leaves some ranks none
            logits = model(xpnet.Tensor(x))
            loss = loss_fn(logits, y)
            loss.backward()
            loss_sum = loss_sum + loss.data * len(y)
            correct = correct + (logits.data.argmax(axis=1) == y).sum()
        world.average_gradients(optimizer.params)
        optimizer.step()
        seen += len(y)
    loss_sum, correct, seen = world.sum([float(loss_sum), int(correct), seen])
    return float(loss_sum) / seen, int(correct) / seen


def run_one(config: TrainConfig, batch_size: int, train: Dataset, val: Dataset | None, test: Dataset,
            out: Path) -> RunResult:
    """Train one model at one batch size, with early stopping and checkpoints in ``out``."""
    backend = get_backend()
    random.manual_seed(config.seed)
    model = build_model(config.model)
    optimizer = OPTIMIZERS[config.optimizer](model.parameters(), lr=config.lr)
    history: list[dict[str, Any]] = []
    best = {"val_loss": math.inf, "epoch": 0, "bad_epochs": 0}
    best_weights = model.state_dict()
    start_epoch = 1
    if config.resume:
        start_epoch, history, best, best_weights = resume(config, model, optimizer)
    world = distributed.world()
    world.broadcast_parameters(model.parameters())  # every rank starts from rank 0's weights

    train_loader = make_loader(train, batch_size, shuffle=True, seed=config.seed)
    val_loader = make_loader(val, 1024, shuffle=False, seed=0) if val is not None and len(val) else None
    log_path = out / config.log_file
    seconds = sum(h["seconds"] for h in history)
    for epoch in range(start_epoch, config.epochs + 1):
        if config.patience and best["bad_epochs"] >= config.patience:
            break
        train_loader.set_epoch(epoch)
        backend.synchronize()
        started = time.perf_counter()
        train_loss, train_acc = train_epoch(model, optimizer, train_loader, f"epoch {epoch}/{config.epochs}")
        backend.synchronize()
        elapsed = time.perf_counter() - started
        if not math.isfinite(train_loss):
            raise TrainingDiverged(
                f"training loss became {train_loss} in epoch {epoch} (lr={config.lr}); stopped. The last good "
                f"checkpoint is {out / 'last.npz'} (epoch {epoch - 1}); try a smaller --lr")
        val_loss, val_acc = evaluate(model, val_loader)[:2] if val_loader else (None, None)
        seconds += elapsed
        history.append({"batch_size": batch_size, "epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                        "val_loss": val_loss, "val_acc": val_acc, "seconds": elapsed})
        improved = val_loss is None or val_loss < best["val_loss"]
        if improved:
            best = {"val_loss": math.inf if val_loss is None else val_loss, "epoch": epoch, "bad_epochs": 0}
            best_weights = model.state_dict()
        else:
            best["bad_epochs"] += 1
        print(format_epoch(history[-1], config.epochs, improved), flush=True)
        if world.rank == 0:  # the ranks hold the same state; one writes it
            write_jsonl(log_path, history)
            record = {"config": config.to_dict(), "epoch": epoch, "rng": random.get_state(), "history": history,
                      "best": best, "backend": backend.name}
            save_checkpoint(out / "last.npz", model.state_dict(), optimizer.state_dict(), record, best_weights)
            if improved:
                save_checkpoint(out / "best.npz", best_weights, optimizer.state_dict(), record)

    if val_loader is not None:
        model.load_state_dict(best_weights)  # early stopping keeps the best validation weights
    test_loss, test_acc, predicted = evaluate(model, make_loader(test, 1024, shuffle=False, seed=0))
    if world.rank == 0:
        title = f"{config.model}, batch {batch_size}, {backend.name} backend"
        plot_curves(history, out / "curves.png", title)
        counts = confusion_matrix(test.labels, predicted, len(test.classes))
        plot_confusion(counts, test.classes, out / "confusion.png", f"{title}: test accuracy {100 * test_acc:.2f}%")
    return RunResult(batch_size, history, test_loss, test_acc, seconds, len(history))


def resume(config: TrainConfig, model: Module, optimizer: Optimizer) -> tuple[int, list, dict, dict]:
    """Load ``last.npz`` (or the named file) into model, optimizer and RNG; return where to continue."""
    path = Path(config.resume)
    if path.is_dir():
        path = path / "last.npz"
    checkpoint = load_checkpoint(path)
    check_fits(checkpoint, config.model, {k: p.shape for k, p in model.named_parameters()}, path)
    model.load_state_dict(checkpoint.weights)
    optimizer.load_state_dict(checkpoint.optimizer)
    random.set_state(checkpoint.record["rng"])
    record = checkpoint.record
    return record["epoch"] + 1, list(record["history"]), dict(record["best"]), checkpoint.best_weights


def resumed_config(config: TrainConfig) -> TrainConfig:
    """A resumed run keeps the checkpoint's settings (so it replays the same run) but this command's
    --epochs, --out, --data and --patience."""
    path = Path(config.resume)
    saved = load_checkpoint(path / "last.npz" if path.is_dir() else path).record["config"]
    keep = {k: getattr(config, k) for k in ("epochs", "out", "data", "resume", "patience")}
    return TrainConfig(**{**saved, **keep})


def format_epoch(h: dict[str, Any], epochs: int, improved: bool) -> str:
    line = (f"epoch {h['epoch']:>3}/{epochs}  train loss {h['train_loss']:.4f} acc {100 * h['train_acc']:6.2f}%")
    if h["val_loss"] is not None:
        line += f"  val loss {h['val_loss']:.4f} acc {100 * h['val_acc']:6.2f}%{' *' if improved else '  '}"
    return line + f"  {h['seconds']:.1f}s"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        world = distributed.init()
        if world.rank:
            sys.stdout = open(os.devnull, "w")  # rank 0 alone prints
        config = load_config(argv)
        if config.resume:
            config = resumed_config(config)
        backend = get_backend()
        data = load_mnist(config.data, image_type=config.image_type)
        print(f"xpnet {xpnet.__version__} | backend {backend.name} | model {config.model} | "
              f"data: {data.source}", flush=True)
        if config.val_split:
            train, val = split_train_val(data.train, config.val_split, config.seed)
        else:
            train, val = data.train, None
        out = ensure_dir(config.out)
        results = []
        for batch_size in config.batch_size:
            run_out = ensure_dir(out / f"bs{batch_size}") if len(config.batch_size) > 1 else out
            result = run_one(config, batch_size, train, val, data.test, run_out)
            print(f"batch {batch_size}: test accuracy {100 * result.test_acc:.2f}%  test loss "
                  f"{result.test_loss:.4f}  ({result.epochs} epochs, {result.seconds:.1f}s)", flush=True)
            results.append(result)
        header = {"model": config.model, "optimizer": f"{config.optimizer} lr={config.lr}",
                  "backend": backend.name, "machine": machine_description(), "data": data.source,
                  "command": " ".join(["python -m xpnet.train", *(argv if argv is not None else sys.argv[1:])])}
        if world.rank == 0:
            write_summary(out / "summary.md", [dataclasses.asdict(r) for r in results], header)
        print(f"wrote {out / 'summary.md'}")
        return 0
    except (ConfigError, DataError, CheckpointError, BackendUnavailable, TrainingDiverged) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


if __name__ == "__main__":
    sys.exit(distributed.run(main))

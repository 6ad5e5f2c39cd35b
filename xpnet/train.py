"""``python -m xpnet.train``: train a model on MNIST, Fashion-MNIST, CIFAR-10 or an image-folder dataset with the
active backend, then report.

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
from types import ModuleType
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

import xpnet
from xpnet import distributed, random
from xpnet.autograd import no_grad
from xpnet.backend import BackendUnavailable, get_backend
from xpnet.checkpoint import CheckpointError, check_fits, load_checkpoint, restore_optimizer, save_checkpoint
from xpnet.config import ConfigError, TrainConfig, load_config
from xpnet.data import DataError, DataLoader, Dataset, load_dataset, split_train_val
from xpnet.data.transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip
from xpnet.models import ModelError, build_model, check_fits_data
from xpnet.nn import CrossEntropyLoss, Module
from xpnet.nn_utils import clip_grad_norm_
from xpnet.optim import OPTIMIZERS, Optimizer, lr_scheduler
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


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, transform: Any = None) -> DataLoader:
    backend = get_backend()
    dtype = xpnet.get_default_dtype().name
    return DataLoader(dataset, batch_size, shuffle=shuffle, seed=seed, to_device=backend.asarray, dtype=dtype,
                      transform=transform)


def channel_stats(dataset: Dataset) -> dict[str, list[float]]:
    """Per-channel mean and standard deviation of the images scaled to [0, 1] (for ``--normalize``)."""
    images = dataset.images.astype(np.float64) / 255
    return {"mean": images.mean(axis=(0, 2, 3)).tolist(), "std": images.std(axis=(0, 2, 3)).tolist()}


def eval_transform(stats: dict[str, list[float]] | None) -> Normalize | None:
    """What evaluation applies to every batch: the training run's normalisation, if it had one."""
    return Normalize(stats["mean"], stats["std"]) if stats else None


def train_transform(config: TrainConfig, shape: tuple[int, int, int],
                    stats: dict[str, list[float]] | None) -> Compose | None:
    """The augmentation of training batches: random crop, flip, then the normalisation evaluation also applies."""
    steps: list[Any] = []
    if config.random_crop:
        steps.append(RandomCrop(shape[1:], padding=config.random_crop))
    if config.hflip:
        steps.append(RandomHorizontalFlip())
    if stats:
        steps.append(eval_transform(stats))
    return Compose(steps) if steps else None


def make_optimizer(config: TrainConfig, model: Module) -> Optimizer:
    """The optimizer the config names, with its weight decay (and momentum for SGD)."""
    options: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.optimizer == "sgd":
        options.update(momentum=config.momentum, nesterov=config.nesterov)
    return OPTIMIZERS[config.optimizer](model.parameters(), **options)


def make_scheduler(config: TrainConfig, optimizer: Any, steps_per_epoch: int,
                   schedulers: ModuleType = lr_scheduler) -> Any:
    """The learning-rate schedule, stepped after every batch (so epochs convert to steps here), or None.

    ``schedulers`` is xpnet's lr_scheduler module, or torch's (same names and arguments) for a PyTorch twin.
    """
    total, warm = config.epochs * steps_per_epoch, config.warmup_epochs * steps_per_epoch
    main: Any = None
    if config.scheduler == "step":
        main = schedulers.StepLR(optimizer, step_size=config.step_size * steps_per_epoch, gamma=config.gamma)
    elif config.scheduler == "cosine":
        main = schedulers.CosineAnnealingLR(optimizer, T_max=max(1, total - warm))
    elif config.scheduler == "onecycle":
        main = schedulers.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    if not warm:
        return main
    warmup = schedulers.LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warm)
    return warmup if main is None else schedulers.SequentialLR(optimizer, [warmup, main], milestones=[warm])


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


def train_epoch(model: Module, optimizer: Optimizer, loader: DataLoader, desc: str, config: TrainConfig | None = None,
                scheduler: Any = None) -> tuple[float, float]:
    """One pass over ``loader``; returns mean training loss and accuracy (summed on the device, read once). In a
    distributed run each rank trains on its shard of every global batch; the statistics cover all ranks.
    ``config`` gives label smoothing and gradient clipping (defaults: none), ``scheduler`` is stepped every batch."""
    config = config or TrainConfig()
    world = distributed.world()
    model.train()
    loss_fn = CrossEntropyLoss(label_smoothing=config.label_smoothing)
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
        if config.clip_grad_norm is not None:
            clip_grad_norm_(optimizer.params, config.clip_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        seen += len(y)
    loss_sum, correct, seen = world.sum([float(loss_sum), int(correct), seen])
    return float(loss_sum) / seen, int(correct) / seen


def run_one(config: TrainConfig, batch_size: int, train: Dataset, val: Dataset | None, test: Dataset,
            out: Path) -> RunResult:
    """Train one model at one batch size, with early stopping and checkpoints in ``out``."""
    backend = get_backend()
    random.manual_seed(config.seed)
    model = build_model(config.model, train.shape, len(train.classes))
    check_fits_data(model, config.model, train.shape, len(train.classes), "the training set")
    optimizer = make_optimizer(config, model)
    stats = channel_stats(train) if config.normalize else None
    train_loader = make_loader(train, batch_size, shuffle=True, seed=config.seed,
                               transform=train_transform(config, train.shape, stats))
    scheduler = make_scheduler(config, optimizer, len(train_loader))
    history: list[dict[str, Any]] = []
    best = {"val_loss": math.inf, "epoch": 0, "bad_epochs": 0}
    best_weights = model.state_dict()
    start_epoch = 1
    if config.resume:
        start_epoch, history, best, best_weights, stats = resume(config, model, optimizer, scheduler)
    world = distributed.world()
    world.broadcast_parameters([*model.parameters(), *float_buffers(model)])  # every rank starts from rank 0's

    val_loader = (make_loader(val, 1024, shuffle=False, seed=0, transform=eval_transform(stats))
                  if val is not None and len(val) else None)
    log_path = out / config.log_file
    seconds = sum(h["seconds"] for h in history)
    for epoch in range(start_epoch, config.epochs + 1):
        if config.patience and best["bad_epochs"] >= config.patience:
            break
        train_loader.set_epoch(epoch)
        backend.synchronize()
        started = time.perf_counter()
        train_loss, train_acc = train_epoch(model, optimizer, train_loader, f"epoch {epoch}/{config.epochs}", config,
                                            scheduler)
        backend.synchronize()
        elapsed = time.perf_counter() - started
        if not math.isfinite(train_loss):
            raise TrainingDiverged(
                f"training loss became {train_loss} in epoch {epoch} (lr={config.lr}); stopped. The last good "
                f"checkpoint is {out / 'last.npz'} (epoch {epoch - 1}); try a smaller --lr")
        if float_buffers(model):  # BatchNorm statistics: rank 0's for every rank (each rank saw its shard)
            world.broadcast_parameters(float_buffers(model))
        val_loss, val_acc = evaluate(model, val_loader)[:2] if val_loader else (None, None)
        seconds += elapsed
        history.append({"batch_size": batch_size, "epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                        "val_loss": val_loss, "val_acc": val_acc, "lr": optimizer.lr, "seconds": elapsed})
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
                      "best": best, "backend": backend.name, "input_shape": list(train.shape),
                      "classes": train.classes, "normalize": stats,
                      "scheduler": scheduler.state_dict() if scheduler is not None else None}
            save_checkpoint(out / "last.npz", model.state_dict(), optimizer.state_dict(), record, best_weights)
            if improved:
                save_checkpoint(out / "best.npz", best_weights, optimizer.state_dict(), record)

    if val_loader is not None:
        model.load_state_dict(best_weights)  # early stopping keeps the best validation weights
    test_loss, test_acc, predicted = evaluate(model, make_loader(test, 1024, shuffle=False, seed=0,
                                                                 transform=eval_transform(stats)))
    if world.rank == 0:
        title = f"{config.model}, batch {batch_size}, {backend.name} backend"
        plot_curves(history, out / "curves.png", title)
        counts = confusion_matrix(test.labels, predicted, len(test.classes))
        plot_confusion(counts, test.classes, out / "confusion.png", f"{title}: test accuracy {100 * test_acc:.2f}%")
    return RunResult(batch_size, history, test_loss, test_acc, seconds, len(history))


def float_buffers(model: Module) -> list[Any]:
    """The model's floating-point buffers (BatchNorm's running statistics), which ranks keep in step."""
    return [b for _, b in model.named_buffers() if b is not None and b.dtype.kind == "f"]


def resume(config: TrainConfig, model: Module, optimizer: Optimizer,
           scheduler: Any) -> tuple[int, list, dict, dict, dict | None]:
    """Load ``last.npz`` (or the named file) into model, optimizer, schedule and RNG; return where to continue."""
    path = Path(config.resume)
    if path.is_dir():
        path = path / "last.npz"
    checkpoint = load_checkpoint(path)
    check_fits(checkpoint, config.model, {k: v.shape for k, v in model.state_dict().items()}, path)
    model.load_state_dict(checkpoint.weights)
    restore_optimizer(optimizer, checkpoint, path)
    record = checkpoint.record
    if scheduler is not None:
        scheduler.load_state_dict(record["scheduler"])
    random.set_state(record["rng"])
    return (record["epoch"] + 1, list(record["history"]), dict(record["best"]), checkpoint.best_weights,
            record.get("normalize"))


def resumed_config(config: TrainConfig) -> TrainConfig:
    """A resumed run keeps the checkpoint's settings (so it replays the same run) but this command's
    --epochs, --out, --data and --patience; a learning-rate schedule fixes the number of epochs too."""
    path = Path(config.resume)
    saved = load_checkpoint(path / "last.npz" if path.is_dir() else path).record["config"]
    keep = {k: getattr(config, k) for k in ("epochs", "out", "data", "resume", "patience")}
    resumed = TrainConfig(**{**saved, **keep})
    if resumed.scheduler != "none" or resumed.warmup_epochs:
        if resumed.epochs != saved["epochs"]:
            raise ConfigError(f"--epochs: the checkpoint's learning-rate schedule ({resumed.scheduler}) was planned "
                              f"for {saved['epochs']} epochs; resume with --epochs {saved['epochs']}")
    return resumed


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
        data = load_dataset(config.dataset, config.data, grayscale=config.grayscale, image_type=config.image_type)
        shape = "x".join(map(str, data.train.shape))
        print(f"xpnet {xpnet.__version__} | backend {backend.name} | model {config.model} | "
              f"data: {data.source} ({shape}, {len(data.train.classes)} classes)", flush=True)
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
    except (ConfigError, DataError, CheckpointError, BackendUnavailable, ModelError, TrainingDiverged) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


if __name__ == "__main__":
    sys.exit(distributed.run(main))

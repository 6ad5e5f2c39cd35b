"""``python -m xpnet.train``: train a model on MNIST, Fashion-MNIST, CIFAR-10 or an image-folder dataset with the
active backend, then report.

One run per batch size (several sizes make a sweep, as report 1 compared 32/64/128/256). Each epoch prints one
line; the run folder gets a JSON-lines log, ``best.npz`` and ``last.npz`` checkpoints, training curves, the
test-set confusion matrix and ``summary.md``. ``--resume`` continues from ``last.npz`` and ends with the same
weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
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
from xpnet import distributed, random, runs
from xpnet.autograd import no_grad
from xpnet.backend import BackendUnavailable, get_backend
from xpnet.checkpoint import (Checkpoint, CheckpointError, check_fits, load_checkpoint, restore_optimizer,
                              save_checkpoint)
from xpnet.config import ConfigError, TrainConfig, load_settings, make_config
from xpnet.data import DataError, DataLoader, Dataset, load_dataset, split_train_val
from xpnet.data.transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip
from xpnet.models import ModelError, build_model, check_fits_data
from xpnet.nn import CrossEntropyLoss, Module
from xpnet.nn_utils import clip_grad_norm_
from xpnet.optim import OPTIMIZERS, Optimizer, lr_scheduler
from xpnet.reports import (confusion_matrix, ensure_dir, machine_description, plot_confusion, plot_curves,
                           plot_sweep, write_jsonl, write_summary)


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
    confusion: np.ndarray | None = None  # test-set counts[true, predicted], for the sweep's charts


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
    model = build_model(config.model, train.shape, len(train.classes), **config.model_options)
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
            kept = (f"the last good checkpoint is {out / 'last.npz'} (epoch {epoch - 1})" if epoch > 1
                    else "no checkpoint was written")
            raise TrainingDiverged(f"training loss became {train_loss} in epoch {epoch} (lr={config.lr}); stopped: "
                                   f"{kept}; try a smaller --lr")
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
            if improved:  # best.npz first: a kill between the two writes leaves last.npz behind, never best.npz
                save_checkpoint(out / "best.npz", best_weights, optimizer.state_dict(), record)
            save_checkpoint(out / "last.npz", model.state_dict(), optimizer.state_dict(), record, best_weights)

    if val_loader is not None:
        model.load_state_dict(best_weights)  # early stopping keeps the best validation weights
    test_loss, test_acc, predicted = evaluate(model, make_loader(test, 1024, shuffle=False, seed=0,
                                                                 transform=eval_transform(stats)))
    counts = confusion_matrix(test.labels, predicted, len(test.classes))  # every rank has the gathered predictions
    if world.rank == 0:
        title = f"{config.model}, batch {batch_size}, {backend.name} backend"
        plot_curves(history, out / "curves.png", title)
        plot_confusion(counts, test.classes, out / "confusion.png", f"{title}: test accuracy {100 * test_acc:.2f}%")
    return RunResult(batch_size, history, test_loss, test_acc, seconds, len(history), counts)


def float_buffers(model: Module) -> list[Any]:
    """The model's floating-point buffers (BatchNorm's running statistics), which ranks keep in step."""
    return [b for _, b in model.named_buffers() if b is not None and b.dtype.kind == "f"]


RESUME_FIELDS = ("config", "epoch", "rng", "history", "best")
FREE_ON_RESUME = ("epochs", "patience", "data", "resume", "out", "name")  # may differ from the checkpoint's


def checkpoint_path(resume: str | os.PathLike) -> Path:
    """The checkpoint ``--resume`` names: the file itself, or the newer of ``last.npz`` and ``best.npz`` in the
    named run folder (``best.npz`` is written first, so a kill between the two leaves it one epoch ahead, holding
    everything ``last.npz`` would)."""
    path = Path(resume)
    if not path.is_dir():
        return path
    if not (path / "last.npz").exists() and any(path.glob("bs*/last.npz")):
        runs = ", ".join(str(p.parent) for p in sorted(path.glob("bs*/last.npz")))
        raise ConfigError(f"--resume: {path} holds a sweep; resume one of its runs: {runs}")
    last, best = path / "last.npz", path / "best.npz"
    if best.exists() and saved_epoch(best) > (saved_epoch(last) if last.exists() else 0):
        return best
    return last


def saved_epoch(path: Path) -> int:
    return int(load_checkpoint(path).record.get("epoch", 0))


def resumable(path: Path) -> Checkpoint:
    """The checkpoint at ``path``, refused unless its record has what resuming needs."""
    checkpoint = load_checkpoint(path)
    missing = [k for k in RESUME_FIELDS if k not in checkpoint.record]
    if missing:
        raise CheckpointError(f"{path} cannot be resumed: its record has no {', '.join(missing)}")
    unknown = set(checkpoint.record["config"]) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise CheckpointError(f"{path} cannot be resumed: its config has keys this xpnet does not know: "
                              f"{', '.join(sorted(unknown))}")
    return checkpoint


def resume(config: TrainConfig, model: Module, optimizer: Optimizer,
           scheduler: Any) -> tuple[int, list, dict, dict, dict | None]:
    """Load the checkpoint into model, optimizer, schedule and RNG; return where to continue."""
    path = checkpoint_path(config.resume)
    checkpoint = resumable(path)
    check_fits(checkpoint, config.model, {k: v.shape for k, v in model.state_dict().items()}, path)
    model.load_state_dict(checkpoint.weights)
    restore_optimizer(optimizer, checkpoint, path)
    record = checkpoint.record
    if scheduler is not None:
        scheduler.load_state_dict(record["scheduler"])
    random.set_state(record["rng"])
    return (record["epoch"] + 1, list(record["history"]), dict(record["best"]),
            checkpoint.best_weights or checkpoint.weights, record.get("normalize"))


def resumed_config(settings: dict[str, Any]) -> TrainConfig:
    """A resumed run replays the checkpoint's settings; this command may change only --epochs, --patience, --data
    (where the same data now lives) and where to write. Any other setting given that differs is refused, naming
    both values; a learning-rate schedule fixes the number of epochs too."""
    path = checkpoint_path(settings["resume"])
    saved = resumable(path).record["config"]
    conflicts = [f"--{k.replace('_', '-')} {_shown(v)} (the checkpoint has {_shown(saved.get(k))})"
                 for k, v in settings.items() if k not in FREE_ON_RESUME and v != saved.get(k)]
    if conflicts:
        raise ConfigError(f"--resume {settings['resume']}: the run continues with its own settings, but this command "
                          f"changes them: {'; '.join(conflicts)}. Drop those flags, or start a new run")
    where = {"out": None, "name": None}  # the checkpoint's own folder unless this command names another
    resumed = make_config({**saved, **where, **{k: v for k, v in settings.items() if k in FREE_ON_RESUME}})
    if resumed.scheduler != "none" or resumed.warmup_epochs:
        if resumed.epochs != saved["epochs"]:
            raise ConfigError(f"--epochs: the checkpoint's learning-rate schedule ({resumed.scheduler}) was planned "
                              f"for {saved['epochs']} epochs; resume with --epochs {saved['epochs']}")
    return resumed


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def format_epoch(h: dict[str, Any], epochs: int, improved: bool) -> str:
    line = (f"epoch {h['epoch']:>3}/{epochs}  train loss {h['train_loss']:.4f} acc {100 * h['train_acc']:6.2f}%")
    if h["val_loss"] is not None:
        line += f"  val loss {h['val_loss']:.4f} acc {100 * h['val_acc']:6.2f}%{' *' if improved else '  '}"
    return line + f"  {h['seconds']:.1f}s"


def choose_folder(config: TrainConfig, settings: dict[str, Any]) -> Path:
    """The run's folder (see ``xpnet.runs``): a resumed run continues in its checkpoint's folder unless --out or
    --name names a new one; a folder that holds another run is refused."""
    asked = Path(config.out) if config.out else runs.RUNS_ROOT / config.name if config.name else None
    flag = "--out" if config.out else "--name"
    if config.resume:
        path = checkpoint_path(config.resume)
        home = Path(os.path.realpath(path.parent))
        if asked is None or Path(os.path.realpath(asked)) == home:
            last = home / "last.npz"
            if last.exists() and saved_epoch(last) > saved_epoch(path):
                raise ConfigError(f"--resume {config.resume}: continuing from it (epoch {saved_epoch(path)}) in {home} "
                                  f"would overwrite {last} (epoch {saved_epoch(last)}); give --out NEW_FOLDER to "
                                  f"continue from it there")
            return home
    elif asked is None:
        return runs.default_folder(config.model)
    if runs.holds_run(asked):
        raise ConfigError(f"{flag}: {asked} already holds a run; continue it with --resume {asked}, or choose another "
                          f"{flag}")
    return asked


def interrupted(folder: Path | None) -> str:
    """What Ctrl-C left behind and how to continue."""
    last = folder / "last.npz" if folder is not None else None
    if last is None or not last.exists():
        return "interrupted before the first epoch ended: nothing was saved"
    try:
        epoch = load_checkpoint(last).record["epoch"]
    except (CheckpointError, KeyError):
        return f"interrupted; {last} could not be read"
    return f"interrupted: {last} holds epoch {epoch}; continue with: python -m xpnet.train --resume {folder}"


USER_ERRORS = (ConfigError, DataError, CheckpointError, BackendUnavailable, ModelError, TrainingDiverged, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    """The command: one message and a non-zero exit for any error a user can cause (``--debug`` adds the
    traceback); Ctrl-C stops with the command that resumes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    progress: dict[str, Path] = {}
    try:
        return train_command(argv, progress)
    except KeyboardInterrupt:
        print(f"\n{interrupted(progress.get('folder'))}", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if "--debug" in argv:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


def train_command(argv: list[str], progress: dict[str, Path]) -> int:
    """Parse, load the data, take the run folder and train one run per batch size; ``progress['folder']`` names
    the run in progress."""
    world = distributed.init()
    if world.rank:
        sys.stdout = open(os.devnull, "w")  # rank 0 alone prints
    settings = load_settings(argv)
    config = resumed_config(settings) if settings.get("resume") else make_config(settings)
    backend = get_backend()
    data = load_dataset(config.dataset, config.data, grayscale=config.grayscale, image_type=config.image_type,
                        image_size=config.image_size and tuple(config.image_size))
    for part, dataset in (("training", data.train), ("test", data.test)):
        if not len(dataset):
            raise DataError(f"{data.source}: the {part} set is empty")
    shape = "x".join(map(str, data.train.shape))
    print(f"xpnet {xpnet.__version__} | backend {backend.name} | model {config.model} | "
          f"data: {data.source} ({shape}, {len(data.train.classes)} classes)", flush=True)
    if config.val_split:
        train, val = split_train_val(data.train, config.val_split, config.seed)
    else:
        train, val = data.train, None
    # a model that cannot be built with its options or does not fit the data fails here, before a run folder is
    # taken (and runs/latest moved to it); run_one builds it again from the seed and does not check it again
    check_fits_data(build_model(config.model, train.shape, len(train.classes), **config.model_options),
                    config.model, train.shape, len(train.classes), "the training set")
    out = Path(world.broadcast_text(str(choose_folder(config, settings)) if world.rank == 0 else ""))
    config = dataclasses.replace(config, out=str(out))
    if world.rank == 0:
        runs.make_folder(out)
    with runs.locked(out) if world.rank == 0 else contextlib.nullcontext():
        if world.rank == 0:
            runs.remove_temporaries(out)
            if Path(os.path.realpath(out)).parent == Path(os.path.realpath(runs.RUNS_ROOT)):
                runs.point_latest(out)
        print(f"run folder {out}", flush=True)
        results = []
        for batch_size in config.batch_size:
            run_out = out / f"bs{batch_size}" if len(config.batch_size) > 1 else out
            if world.rank == 0:
                ensure_dir(run_out)
            progress["folder"] = run_out
            # a diverging run overflows long before its epoch ends; run_one reports that as one message (the loss
            # is not finite), so NumPy's per-operation warnings would only bury it
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                result = run_one(config, batch_size, train, val, data.test, run_out)
            print(f"batch {batch_size}: test accuracy {100 * result.test_acc:.2f}%  test loss "
                  f"{result.test_loss:.4f}  ({result.epochs} epochs, {result.seconds:.1f}s)", flush=True)
            results.append(result)
        header = {"model": config.model, "optimizer": f"{config.optimizer} lr={config.lr}",
                  "backend": backend.name, "machine": machine_description(), "data": data.source,
                  "command": " ".join(["python -m xpnet.train", *argv])}
        if world.rank == 0:
            rows = [dataclasses.asdict(r) for r in results]
            write_summary(out / "summary.md", rows, header, plot_sweep(out, rows, data.test.classes))
        print(f"wrote {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(distributed.run(main))

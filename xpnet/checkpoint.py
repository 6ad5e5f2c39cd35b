"""Checkpoints: one ``.npz`` holding weights, optimizer state (hyper-parameters as JSON, buffers as arrays) and a
JSON record (epoch, RNG state, config, a learning-rate scheduler's state...).

Only plain arrays are stored (loaded with ``allow_pickle=False``), and every write goes to a temporary file that
is renamed into place, so a killed run never leaves a torn checkpoint.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from xpnet.data.files import atomic_write

if TYPE_CHECKING:
    from xpnet.optim import Optimizer


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model it is loaded into."""


@dataclass
class Checkpoint:
    weights: dict[str, np.ndarray]
    optimizer: dict[str, Any]
    record: dict[str, Any]
    best_weights: dict[str, np.ndarray]


def save_checkpoint(path: str | os.PathLike, weights: dict[str, np.ndarray], optimizer: dict[str, Any],
                    record: dict[str, Any], best_weights: dict[str, np.ndarray] | None = None) -> None:
    """Write weights, the optimizer's ``state_dict()`` and a JSON-able ``record`` to ``path`` atomically."""
    arrays: dict[str, np.ndarray] = {f"weights/{k}": v for k, v in weights.items()}
    arrays.update({f"best/{k}": v for k, v in (best_weights or {}).items()})
    optimizer_meta, optimizer_arrays = _split_optimizer_state(optimizer)
    arrays.update(optimizer_arrays)
    meta = {"record": record, "optimizer": optimizer_meta}
    try:
        arrays["meta.json"] = np.array(json.dumps(meta))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: its record or optimizer hyper-parameters hold a value "
                              f"JSON cannot store ({exc})") from None
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; a clear error names the file otherwise."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single .npy array, not an .npz archive")
        with loaded as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays.pop("meta.json")))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not an xpnet checkpoint (.npz with meta.json): {exc}") from None
    if not {"param_groups", "state"} <= set(meta.get("optimizer", {})):
        raise CheckpointError(f"{path} was written by an older xpnet (its optimizer state has no param_groups); "
                              "it cannot be resumed")

    def section(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    optimizer = _join_optimizer_state(meta["optimizer"], section("optim/"))
    return Checkpoint(section("weights/"), optimizer, meta["record"], section("best/"))


def restore_optimizer(optimizer: Optimizer, checkpoint: Checkpoint, path: str | os.PathLike) -> None:
    """Load the checkpoint's optimizer state, or raise CheckpointError naming the file and what does not fit
    (group count, parameter count, buffer shapes, optimizer type)."""
    try:
        optimizer.load_state_dict(checkpoint.optimizer)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: its optimizer state does not fit this {type(optimizer).__name__}: "
                              f"{exc}") from None


def _split_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """An optimizer ``state_dict()`` as JSON (param_groups, scalar state such as ``step``) plus its buffers as
    arrays named ``optim/<parameter index>/<buffer>``."""
    scalars: dict[str, dict[str, Any]] = {}
    arrays: dict[str, np.ndarray] = {}
    for index, buffers in state_dict["state"].items():
        scalars[str(index)] = {}
        for name, value in buffers.items():
            if isinstance(value, np.ndarray):
                arrays[f"optim/{index}/{name}"] = value
            else:
                scalars[str(index)][name] = value.item() if isinstance(value, np.generic) else value
    return {"param_groups": state_dict["param_groups"], "state": scalars}, arrays


def _join_optimizer_state(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The inverse of ``_split_optimizer_state``: the optimizer ``state_dict()`` with integer parameter indices."""
    state: dict[int, dict[str, Any]] = {int(index): dict(scalars) for index, scalars in meta["state"].items()}
    for key, value in arrays.items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": dict(sorted(state.items())), "param_groups": meta["param_groups"]}


def check_fits(checkpoint: Checkpoint, model_name: str, own_shapes: dict[str, tuple[int, ...]],
               path: str | os.PathLike) -> None:
    """Refuse a checkpoint of another model with a message naming both models and the file."""
    saved = checkpoint.record.get("config", {}).get("model")
    shapes = {k: tuple(v.shape) for k, v in checkpoint.weights.items()}
    if saved != model_name or shapes != own_shapes:
        raise CheckpointError(f"checkpoint {path} holds model {saved!r} with parameters {shapes}; it cannot be "
                              f"loaded into model {model_name!r} with parameters {own_shapes}")

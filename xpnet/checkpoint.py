"""Checkpoints: one ``.npz`` holding weights, optimizer state and a JSON record (epoch, RNG state, config...).

Only plain arrays are stored (loaded with ``allow_pickle=False``), and every write goes to a temporary file that
is renamed into place, so a killed run never leaves a torn checkpoint.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from xpnet.data.files import atomic_write


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
    for i, state in enumerate(optimizer["state"]):
        arrays.update({f"optim/{i}/{k}": v for k, v in state.items()})
    meta = {"record": record, "optimizer": {"hyper": optimizer["hyper"], "step_count": optimizer["step_count"],
                                            "n_params": len(optimizer["state"])}}
    arrays["meta.json"] = np.array(json.dumps(meta))
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; a clear error names the file otherwise."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays.pop("meta.json")))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not an xpnet checkpoint (.npz with meta.json): {exc}") from None

    def section(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    optim_state: list[dict[str, np.ndarray]] = [{} for _ in range(meta["optimizer"]["n_params"])]
    for key, value in section("optim/").items():
        index, name = key.split("/", 1)
        optim_state[int(index)][name] = value
    optimizer = {"hyper": meta["optimizer"]["hyper"], "step_count": meta["optimizer"]["step_count"],
                 "state": optim_state}
    return Checkpoint(section("weights/"), optimizer, meta["record"], section("best/"))


def check_fits(checkpoint: Checkpoint, model_name: str, own_shapes: dict[str, tuple[int, ...]],
               path: str | os.PathLike) -> None:
    """Refuse a checkpoint of another model with a message naming both models and the file."""
    saved = checkpoint.record.get("config", {}).get("model")
    shapes = {k: tuple(v.shape) for k, v in checkpoint.weights.items()}
    if saved != model_name or shapes != own_shapes:
        raise CheckpointError(f"checkpoint {path} holds model {saved!r} with parameters {shapes}; it cannot be "
                              f"loaded into model {model_name!r} with parameters {own_shapes}")

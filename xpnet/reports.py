"""What a training run leaves behind for people: curves and confusion-matrix PNGs, a JSON-lines epoch log and a
``summary.md`` table like report 1's. Every file is written to a temporary name and renamed into place."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xpnet.data.files import atomic_write


def machine_description() -> str:
    """CPU model, core count, OS and Python: enough to say where a timing came from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (labels, predictions), 1)
    return counts


def write_jsonl(path: str | os.PathLike, records: Sequence[dict[str, Any]]) -> None:
    """Rewrite the whole log with ``records`` (atomic; the log is small), one JSON object per line."""
    with atomic_write(path) as f:
        f.write("".join(json.dumps(r) + "\n" for r in records).encode())


def _save_figure(fig: Any, path: str | os.PathLike) -> None:
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")


def plot_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike, title: str) -> None:
    """Loss and accuracy per epoch, training and validation, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        if history and history[0].get(f"{split}_loss") is not None:
            ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
            ax_acc.plot(epochs, [100 * h[f"{split}_acc"] for h in history], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    _save_figure(fig, path)
    plt.close(fig)


def plot_confusion(counts: np.ndarray, classes: Sequence[str], path: str | os.PathLike, title: str) -> None:
    """The test-set confusion matrix with counts in each cell."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ticks = range(len(classes))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=classes, yticklabels=classes, xlabel="predicted",
           ylabel="true", title=title)
    threshold = counts.max() / 2
    for (i, j), value in np.ndenumerate(counts):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                color="white" if value > threshold else "black")
    _save_figure(fig, path)
    plt.close(fig)


def write_summary(path: str | os.PathLike, rows: Sequence[dict[str, Any]], header: dict[str, str]) -> None:
    """Report 1's comparison table: one row per batch size, plus how and where it was run."""
    lines = ["# Training summary", ""]
    lines += [f"- **{k}**: {v}" for k, v in header.items()]
    lines += ["", "| batch size | test accuracy | test loss | total time (s) | epochs | time per epoch (s) |",
              "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['batch_size']} | {100 * r['test_acc']:.2f}% | {r['test_loss']:.4f} | "
                     f"{r['seconds']:.1f} | {r['epochs']} | {r['seconds'] / max(r['epochs'], 1):.2f} |")
    with atomic_write(path) as f:
        f.write(("\n".join(lines) + "\n").encode())


def ensure_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path

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
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, {system}, Python {platform.python_version()}"


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
    _label_curve_axes(ax_loss, ax_acc, "")
    fig.suptitle(title)
    _save_figure(fig, path)
    plt.close(fig)


def _label_curve_axes(ax_loss: Any, ax_acc: Any, split: str) -> None:
    """Titles, grids and legends of a loss / accuracy pair, with whole-number epoch ticks (matplotlib would put
    ticks at 1.25, 1.5, ... for a run of two epochs; ``min_n_ticks=1`` keeps them whole for a run of one too)."""
    from matplotlib.ticker import MaxNLocator

    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title=f"{split} loss".strip())
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{split} accuracy".strip())
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        ax.legend()


def plot_confusion(counts: np.ndarray, classes: Sequence[str], path: str | os.PathLike, title: str) -> None:
    """The test-set confusion matrix with counts in each cell."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    image = _draw_confusion(ax, counts, classes, title, int(counts.max()))
    _confusion_colorbar(fig, image, ax)
    _save_figure(fig, path)
    plt.close(fig)


CONFUSION_UNIT = "images"  # what a confusion-matrix cell counts, the label of its colour bar
CELL_TEXT_MAX_CLASSES = 20  # more classes than this and the cells are too small for their counts


def _confusion_colorbar(fig: Any, image: Any, ax: Any, **options: Any) -> None:
    """The colour bar of confusion-matrix panels: labelled with what a cell counts, ticked at whole counts."""
    from matplotlib.ticker import MaxNLocator

    fig.colorbar(image, ax=ax, label=CONFUSION_UNIT, ticks=MaxNLocator(integer=True), **options)


def _draw_confusion(ax: Any, counts: np.ndarray, classes: Sequence[str], title: str, vmax: int) -> Any:
    """One confusion matrix on ``ax`` (colours scaled to ``vmax``, so that several panels compare), counts in the
    cells while they fit; returns the image for the colour bar."""
    image = ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(vmax, 1))
    ticks = range(len(classes))
    long_names = max((len(str(c)) for c in classes), default=0) > 3
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(classes, rotation=45 if long_names else 0, ha="right" if long_names else "center")
    ax.set_yticklabels(classes)
    if len(classes) <= CELL_TEXT_MAX_CLASSES:
        for (i, j), value in np.ndenumerate(counts):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                    color="white" if value > vmax / 2 else "black")
    return image


def write_summary(path: str | os.PathLike, rows: Sequence[dict[str, Any]], header: dict[str, str],
                  charts: Sequence[tuple[str, str]] = ()) -> None:
    """Report 1's comparison table: one row per batch size, plus how and where it was run, then the ``charts``
    ((caption, path relative to the summary) pairs, as ``plot_sweep`` returns them) as embedded images."""
    lines = ["# Training summary", ""]
    lines += [f"- **{k}**: {v}" for k, v in header.items()]
    lines += ["", "| batch size | test accuracy | test loss | total time (s) | epochs | time per epoch (s) |",
              "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['batch_size']} | {100 * r['test_acc']:.2f}% | {r['test_loss']:.4f} | "
                     f"{r['seconds']:.1f} | {r['epochs']} | {r['seconds'] / max(r['epochs'], 1):.2f} |")
    if charts:
        lines += ["", "## Comparison", ""]
        lines += [f"![{caption}]({file})\n" for caption, file in charts]
    with atomic_write(path) as f:
        f.write(("\n".join(lines) + "\n").encode())


EPOCH_TIME_CHART = ("Seconds per epoch by batch size", "sweep_epoch_time.png")  # (caption, file name)
CURVES_CHART = ("Curves of every batch size", "sweep_curves.png")
CONFUSION_CHART = ("Test-set confusion matrices by batch size", "sweep_confusion.png")


def plot_sweep(out: str | os.PathLike, rows: Sequence[dict[str, Any]],
               classes: Sequence[str]) -> list[tuple[str, str]]:
    """Charts comparing the runs of a batch-size sweep, written into ``out`` beside ``summary.md``: epoch time,
    curves and confusion matrices (rows as ``RunResult`` dicts; the matrices need each row's ``confusion``).
    Returns (caption, file name) pairs for ``write_summary``; a single run has nothing to compare and gets none."""
    if len(rows) < 2:
        return []
    out = Path(out)
    plot_epoch_times(rows, out / EPOCH_TIME_CHART[1])
    plot_sweep_curves(rows, out / CURVES_CHART[1])
    charts = [EPOCH_TIME_CHART, CURVES_CHART]
    if all(r.get("confusion") is not None for r in rows):
        plot_sweep_confusion(rows, classes, out / CONFUSION_CHART[1])
        charts.append(CONFUSION_CHART)
    return charts


def plot_epoch_times(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """A bar per batch size: mean seconds per training epoch, with each epoch's time as a dot (the first epoch of
    a compiled backend includes compilation)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 2.5, 4))
    positions = np.arange(len(rows))
    means = [r["seconds"] / max(r["epochs"], 1) for r in rows]
    bars = ax.bar(positions, means, width=0.6, color="tab:blue", label="mean")
    ax.bar_label(bars, labels=[f"{m:.2f} s" for m in means], label_type="center", color="white")
    for x, r in zip(positions, rows):
        epoch_seconds = [h["seconds"] for h in r["history"]]
        ax.plot([x] * len(epoch_seconds), epoch_seconds, "o", color="black", markersize=4,
                label="one epoch" if x == 0 else None)
    ax.set_xticks(positions, [str(r["batch_size"]) for r in rows])
    ax.set(xlabel="batch size", ylabel="seconds per epoch", title="training time per epoch")
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    _save_figure(fig, path)
    plt.close(fig)


def plot_sweep_curves(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Loss and accuracy per epoch of every batch size on one figure: validation curves, or training curves when
    the runs had no validation set."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = "val" if all(h.get("val_loss") is not None for r in rows for h in r["history"]) else "train"
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for r in rows:
        epochs = [h["epoch"] for h in r["history"]]
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in r["history"]], marker="o", label=f"batch {r['batch_size']}")
        ax_acc.plot(epochs, [100 * h[f"{split}_acc"] for h in r["history"]], marker="o",
                    label=f"batch {r['batch_size']}")
    _label_curve_axes(ax_loss, ax_acc, "validation" if split == "val" else "training")
    fig.suptitle("batch-size sweep")
    _save_figure(fig, path)
    plt.close(fig)


def plot_sweep_confusion(rows: Sequence[dict[str, Any]], classes: Sequence[str], path: str | os.PathLike,
                         columns: int = 4) -> None:
    """The test-set confusion matrices of every batch size side by side (``columns`` to a line), on one colour
    scale so that their cells compare."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(columns, len(rows))
    lines = -(-len(rows) // columns)
    side = 3.2 + 0.12 * len(classes)
    fig, axes = plt.subplots(lines, columns, figsize=(side * columns + 1, side * lines + 0.7), squeeze=False,
                             layout="constrained")
    vmax = max(int(np.max(r["confusion"])) for r in rows)
    for ax, r in zip(axes.flat, rows):
        title = f"batch {r['batch_size']}: {100 * r['test_acc']:.2f}%"
        image = _draw_confusion(ax, np.asarray(r["confusion"]), classes, title, vmax)
    for ax in axes.flat[len(rows):]:
        ax.set_axis_off()
    _confusion_colorbar(fig, image, axes, shrink=0.8)
    _save_figure(fig, path)
    plt.close(fig)


def ensure_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path

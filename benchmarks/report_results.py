"""The benchmark JSON as the report reads it: results indexed by what they vary over, the machine's limits, and
the derived numbers (speed-ups, floors) every table and chart shares."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

COLUMN_ORDER = ("loops", "strided", "slices", "add_at", "numpy", "numba", "cupy", "pytorch")
TARGET_BATCH, TARGET_SPEEDUP = 64, 50  # report 1's im2col target: strided >= 50x faster than loops at batch 64
MEMORY_SLACK = 0.01  # tracemalloc also counts the few hundred bytes of Python objects each version creates
INFERENCE_TARGET = 2.0     # issue #15: xpnet's inference images/s at least 2x PyTorch's at batch 256
STEP_MEMORY_TARGET = 1.0   # issue #15: the memory a training step adds at most PyTorch's
COLD_START_TARGET_S = 10.0  # issue #15: the first run after install waits at most this much longer per model


@dataclass(frozen=True)
class Result:
    """One benchmark: its name and group, its ``extra_info`` and the median of its timed rounds in seconds."""

    name: str
    group: str
    info: dict[str, Any]
    median: float

    @property
    def epoch_s(self) -> float:
        """Seconds per full epoch (a partial round scaled by the step ratio)."""
        return self.median * self.info["scale"]


def load(path: Path) -> tuple[dict[str, Any], list[Result]]:
    """The run's ``xpnet`` header (plus pytest-benchmark's ``datetime``) and its benchmarks."""
    raw = json.loads(path.read_text())
    results = [Result(b["name"], b["group"] or "", b["extra_info"], b["stats"]["median"]) for b in raw["benchmarks"]]
    return {**raw.get("xpnet", {}), "datetime": raw.get("datetime", "?")}, results


def ordered(names: Iterable[str]) -> list[str]:
    """Variant and backend names in the report's column order, unknown ones last."""
    return sorted(set(names), key=lambda n: (COLUMN_ORDER.index(n) if n in COLUMN_ORDER else len(COLUMN_ORDER), n))


def in_group(results: list[Result], group: str) -> list[Result]:
    return [r for r in results if r.group == group]


@dataclass(frozen=True)
class KernelGrid:
    """A kernel suite: its variants (columns), (batch, channels) shapes (rows) and results by (variant, batch,
    channels)."""

    variants: list[str]
    shapes: list[tuple[int, int]]
    cells: dict[tuple[str, int, int], Result]


def kernel_grid(results: list[Result], group: str) -> KernelGrid:
    cells = {(r.info["variant"], r.info["batch_size"], r.info["channels"]): r for r in in_group(results, group)}
    return KernelGrid(ordered(k[0] for k in cells), sorted({k[1:] for k in cells}), cells)


def loops_vs_strided(grid: KernelGrid, batch: int, channels: int) -> tuple[float, float] | None:
    """(strided im2col's speed-up over loops, its peak memory / loops') for one shape, if both ran."""
    loops, strided = grid.cells.get(("loops", batch, channels)), grid.cells.get(("strided", batch, channels))
    if loops is None or strided is None:
        return None
    return loops.median / strided.median, strided.info["peak_bytes"] / loops.info["peak_bytes"]


def target_checks(grid: KernelGrid) -> list[tuple[int, float, float, bool]]:
    """(channels, speed-up, memory ratio, target met) at report 1's target batch, per input channel count."""
    checks = [(c, ratios) for b, c in grid.shapes if b == TARGET_BATCH and (ratios := loops_vs_strided(grid, b, c))]
    return [(c, speedup, memory, speedup >= TARGET_SPEEDUP and memory <= 1 + MEMORY_SLACK)
            for c, (speedup, memory) in checks]


@dataclass(frozen=True)
class EpochGrid:
    """The training suites: backends incl. ``pytorch`` (columns), (model, batch) rows ordered by the model's
    FLOPs, and results by (backend, model, batch)."""

    backends: list[str]
    rows: list[tuple[str, int]]
    cells: dict[tuple[str, str, int], Result]

    def models(self) -> list[str]:
        return list(dict.fromkeys(m for m, _ in self.rows))

    def batches(self, model: str) -> list[int]:
        return [b for m, b in self.rows if m == model]

    def any_of(self, model: str) -> Result:
        """A result of ``model`` (they share its FLOPs and bytes per epoch)."""
        return next(r for (_, m, _), r in self.cells.items() if m == model)

    def dataset(self, model: str) -> str:
        """The short name of the data set ``model`` trained on (runs before that was recorded: its source)."""
        info = self.any_of(model).info
        return info.get("dataset", info["data"])

    def apart(self) -> list[str]:
        """Models timed apart from the grid: on another data set or at other batch sizes than most models."""
        footing = {m: (self.dataset(m), tuple(self.batches(m))) for m in self.models()}
        common = Counter(footing.values()).most_common(1)[0][0] if footing else None
        return [m for m, f in footing.items() if f != common]


def epoch_grid(results: list[Result]) -> EpochGrid:
    epochs = in_group(results, "epoch")
    cells = {(r.info["backend"], r.info["model"], r.info["batch_size"]): r for r in epochs}
    flops = {r.info["model"]: r.info["flops_per_epoch"] for r in epochs}
    rows = sorted({k[1:] for k in cells}, key=lambda mb: (flops[mb[0]], mb[0], mb[1]))
    return EpochGrid(ordered(k[0] for k in cells), rows, cells)


@dataclass(frozen=True)
class Limits:
    """The machine's measured float32 GEMM rate and copy bandwidth."""

    gemm_flops_per_s: float
    copy_bytes_per_s: float

    def compute_floor(self, r: Result) -> float:
        return r.info["flops_per_epoch"] / self.gemm_flops_per_s

    def memory_floor(self, r: Result) -> float:
        return r.info["bytes_per_epoch"] / self.copy_bytes_per_s

    def floor(self, r: Result) -> float:
        """The fastest an epoch could run here: its FLOPs at the GEMM rate or its bytes at copy bandwidth."""
        return max(self.compute_floor(r), self.memory_floor(r))


def limits_of(results: list[Result]) -> Limits | None:
    """The limits, if the run measured both."""
    by_limit = {r.info["limit"]: r for r in in_group(results, "limits")}
    if {"gemm", "copy"} - set(by_limit):
        return None
    gemm, copy = by_limit["gemm"], by_limit["copy"]
    return Limits(gemm.info["flops"] / gemm.median, copy.info["bytes"] / copy.median)


@dataclass(frozen=True)
class FrameworkGrid:
    """One footprint group (``inference``, ``memory``): backends incl. ``pytorch`` (columns), (model, batch) rows in
    the order measured, and results by (backend, model, batch)."""

    backends: list[str]
    rows: list[tuple[str, int]]
    cells: dict[tuple[str, str, int], Result]

    def xpnet_backends(self) -> list[str]:
        return [k for k in self.backends if k != "pytorch"]

    def to_pytorch(self, backend: str, model: str, batch: int, value: Callable[[Result], float]) -> float | None:
        """``value`` of the (backend, model, batch) result divided by PyTorch's, if both were measured."""
        mine, peer = self.cells.get((backend, model, batch)), self.cells.get(("pytorch", model, batch))
        return value(mine) / value(peer) if mine is not None and peer is not None else None


def framework_grid(results: list[Result], group: str) -> FrameworkGrid:
    cells = {(r.info["backend"], r.info["model"], r.info["batch_size"]): r for r in in_group(results, group)}
    return FrameworkGrid(ordered(k[0] for k in cells), list(dict.fromkeys(k[1:] for k in cells)), cells)


def images_per_s(r: Result) -> float:
    """An inference result's images per second: the images of one pass over the median pass's seconds."""
    return r.info["images"] / r.median


def step_bytes(r: Result) -> int:
    """A memory result's peak resident bytes during the training steps minus the resident bytes before them."""
    return r.info["peak_bytes"] - r.info["baseline_bytes"]

"""The report's result sections as Markdown lines: the two kernel suites, seconds per epoch, the ratio to
PyTorch, the machine's limits and each epoch as a multiple of its floor, warm-up, and the footprint suite's
inference speed, training-step memory and cold start. Each section is empty when the run did not measure it."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Iterable, Sequence

from report_results import (COLD_START_TARGET_S, INFERENCE_TARGET, MEMORY_SLACK, STEP_MEMORY_TARGET, TARGET_BATCH,
                            TARGET_SPEEDUP, EpochGrid, FrameworkGrid, KernelGrid, Limits, Result, images_per_s,
                            loops_vs_strided, step_bytes, target_checks)

MIB = 1 << 20


def num(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant figures, without an exponent."""
    if value == 0 or not math.isfinite(value):
        return str(value)
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:,.{decimals}f}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], text_columns: int = 1) -> list[str]:
    """A Markdown table; the first ``text_columns`` columns left-aligned, the rest right-aligned."""
    align = ["---" if i < text_columns else "---:" for i in range(len(header))]
    return ["| " + " | ".join(row) + " |" for row in (header, align, *rows)] + [""]


def kernel_table(grid: KernelGrid, cell: Callable[[Result], str],
                 extra: tuple[str, Callable[[int, int], str]] | None = None) -> list[str]:
    """Rows (batch, input shape), a column per variant, and optionally one more column (title, batch, channels ->
    cell)."""
    header = ["batch", "input", *grid.variants] + ([extra[0]] if extra else [])
    rows = []
    for b, c in grid.shapes:
        row = [str(b), f"({b}, {c}, 28, 28)"]
        row += [cell(grid.cells[v, b, c]) if (v, b, c) in grid.cells else "—" for v in grid.variants]
        rows.append(row + ([extra[1](b, c)] if extra else []))
    return table(header, rows, 2)


def im2col_section(grid: KernelGrid) -> list[str]:
    if not grid.shapes:
        return []

    def ratio(index: int, suffix: str) -> Callable[[int, int], str]:
        return lambda b, c: (f"{num(r[index])}{suffix}" if (r := loops_vs_strided(grid, b, c)) else "—")

    ways = defaultdict(list)
    for (variant, _, _), r in grid.cells.items():
        ways[r.info["memory_measured_by"]].append(variant)
    measured_by = "; ".join(f"{way} for {', '.join(dict.fromkeys(variants))}" for way, variants in ways.items())
    lines = ["## im2col: Python loops vs `as_strided` vs the backends", "",
             "Kernel 3, stride 1, padding 1, float32. *strided* is the NumPy backend's im2col "
             "(`xpnet.kernels.im2col`: an `as_strided` view copied once, a whole output plane per run for "
             "these same-width windows); *loops* copies one window per (sample, output pixel) in Python, as report 1 "
             "started. A loop iteration copies all C channels of its window at once, so the loops' time barely "
             "grows with C while every other version's grows in proportion: the speed-up is smaller for 6 "
             "channels than for 1. Milliseconds per call:", ""]
    lines += kernel_table(grid, lambda r: num(r.median * 1e3), ("strided speed-up over loops", ratio(0, "×")))
    lines += [f"Peak memory allocated by one call (MiB; {measured_by}):", ""]
    lines += kernel_table(grid, lambda r: num(r.info["peak_bytes"] / MIB), ("strided / loops", ratio(1, "")))
    checks = target_checks(grid)
    if not checks:
        lines += [f"Report 1's target (batch {TARGET_BATCH}) was not measured in this run.", ""]
    else:
        lines += [f"Report 1's target, at batch {TARGET_BATCH}: strided at least {TARGET_SPEEDUP}× faster than "
                  f"loops, with no more memory (within {MEMORY_SLACK:.0%}, for the Python objects tracemalloc also "
                  "counts):", ""]
        lines += [f"- {c} input channel(s): {num(speedup)}× faster, {num(memory)}× the memory: "
                  f"**{'met' if met else 'not met'}**" for c, speedup, memory, met in checks] + [""]
    return lines + ["![im2col times](bench_im2col.png)", ""]


def col2im_section(grid: KernelGrid) -> list[str]:
    if not grid.shapes:
        return []
    lines = ["## col2im: slice-adds vs `np.add.at` vs the backends", "",
             "The adjoint of im2col, in every convolution's backward pass; same shapes. *slices* is "
             "`xpnet.kernels.col2im` on NumPy (KH×KW strided slice-adds, the NumPy backend's kernel); *add_at* "
             "scatters with `np.add.at`, the tests' reference. Milliseconds per call:", ""]
    return lines + kernel_table(grid, lambda r: num(r.median * 1e3)) + ["![col2im times](bench_col2im.png)", ""]


def epoch_table(grid: EpochGrid, backends: list[str], cell: Callable[[Result, str, int], str]) -> list[str]:
    """Rows (model, batch), a column per backend; ``cell(result, model, batch)`` formats one measurement."""
    return table(["model", "batch", *backends],
                 [[m, str(b), *(cell(grid.cells[k, m, b], m, b) if (k, m, b) in grid.cells else "—"
                                for k in backends)] for m, b in grid.rows], 2)


def apart_note(grid: EpochGrid) -> str:
    """A sentence naming the models timed apart from the grid, with their data set and batch sizes; or ""."""
    apart = [f"{m} ({grid.dataset(m)}, batch {', '.join(map(str, grid.batches(m)))} only)" for m in grid.apart()]
    return f" Rows apart from the grid: {'; '.join(apart)}." if apart else ""


def training_sections(grid: EpochGrid, limits: Limits | None) -> list[str]:
    if not grid.rows:
        return []
    info = next(iter(grid.cells.values())).info
    sources = "; ".join(dict.fromkeys(r.info["data"] for r in grid.cells.values()))
    lines = ["## Seconds per training epoch", "",
             f"One epoch = {info['epoch_images']:,} images; data: {sources}. Adam lr 1e-3, cross-entropy, "
             "shuffled batches, float32; xpnet through `xpnet.train.train_epoch`, PyTorch eager on the CPU with the "
             "same models, initial weights and batch order. † = timed on part of an epoch and scaled (see "
             f"*Method*); the others are whole epochs.{apart_note(grid)}", ""]
    lines += epoch_table(grid, grid.backends, lambda r, m, b: num(r.epoch_s) + ("" if r.info["full_epoch"] else " †"))
    lines += ["![seconds per epoch](bench_epoch.png)", ""]
    xpnet_backends = [k for k in grid.backends if k != "pytorch"]
    if "pytorch" in grid.backends:
        def ratio(r: Result, m: str, b: int) -> str:
            peer = grid.cells.get(("pytorch", m, b))
            return f"{num(r.epoch_s / peer.epoch_s)}×" if peer else "—"

        lines += ["## Ratio to PyTorch", "", "xpnet's seconds per epoch divided by PyTorch's on the same images (below "
                  f"1: xpnet is faster).{apart_note(grid)}", ""] + epoch_table(grid, xpnet_backends, ratio)
    return lines + (floor_sections(grid, limits) if limits is not None else [])


def floor_sections(grid: EpochGrid, limits: Limits) -> list[str]:
    lines = ["## Machine limits and each model's floor", "",
             f"- float32 GEMM rate: **{num(limits.gemm_flops_per_s / 1e9)} GFLOP/s** (NumPy matmul of two large "
             "square matrices)",
             f"- copy bandwidth: **{num(limits.copy_bytes_per_s / 1e9)} GB/s** (a large array copied, read + write "
             "counted)", "",
             "Floor = max(FLOPs per epoch / GEMM rate, bytes per epoch / copy bandwidth): the fastest any "
             "implementation could run an epoch on this machine (see *Method* for how FLOPs and bytes are "
             "counted).", ""]
    rows = []
    for model in grid.models():
        r = grid.any_of(model)
        rows.append([model, num(r.info["flops_per_epoch"] / 1e9), num(limits.compute_floor(r)),
                     num(r.info["bytes_per_epoch"] / 1e9), num(limits.memory_floor(r)), num(limits.floor(r))])
    lines += table(["model", "GFLOP per epoch", "compute floor (s)", "GB per epoch", "memory floor (s)",
                    "floor (s)"], rows)
    lines += ["## Multiple of the floor", "", "Seconds per epoch divided by the model's floor.", ""]
    return lines + epoch_table(grid, grid.backends, lambda r, m, b: f"{num(r.epoch_s / limits.floor(r))}×")


def warm_up_section(grid: EpochGrid, compiles: list[Result]) -> list[str]:
    if not grid.rows and not compiles:
        return []
    lines = ["## Warm-up (kept out of the epoch times)", ""]
    lines += [f"- {r.info['backend']}: compiling every kernel into an empty cache took **{num(r.info['compile_s'])} "
              f"s** (once per machine); loading them from that cache in a new process took "
              f"{num(r.info['cache_load_s'])} s (every later run)." for r in compiles]
    warm_ups = {k: r.info["warm_up_s"] for (k, _, _), r in grid.cells.items() if r.info.get("warm_up_s") is not None}
    lines += [f"- {k}: `warm_up()` in the benchmark process took {num(s)} s." for k, s in warm_ups.items()]
    preloads = defaultdict(list)
    for (k, _, _), r in grid.cells.items():
        if r.info["full_epoch"] and "preload_s" in r.info:
            preloads[k].append(r.info["preload_s"])
    lines += [f"- {k}: the DataLoader's one-off conversion of the whole training set to float32 on the device took "
              f"{num(min(s))}–{num(max(s))} s per model." for k, s in preloads.items()]
    lines.append("")
    if grid.rows:
        lines += ["First training step on a fresh model (milliseconds; one-off allocations, BLAS and oneDNN "
                  "set-up):", ""] + epoch_table(grid, grid.backends, lambda r, m, b: num(r.info["first_step_s"] * 1e3))
    return lines


def sources(results: Iterable[Result]) -> str:
    """The data sources of ``results``, each once."""
    return "; ".join(dict.fromkeys(r.info["data"] for r in results))


def framework_table(grid: FrameworkGrid, value: Callable[[Result], float]) -> list[str]:
    """Rows (model, batch): ``value`` of each backend's result, then each xpnet backend's value ÷ PyTorch's."""
    ratios = [k for k in grid.xpnet_backends() if "pytorch" in grid.backends]
    rows = []
    for m, b in grid.rows:
        row = [m, str(b)] + [num(value(grid.cells[k, m, b])) if (k, m, b) in grid.cells else "—"
                             for k in grid.backends]
        rows.append(row + [f"{num(x)}×" if (x := grid.to_pytorch(k, m, b, value)) is not None else "—"
                           for k in ratios])
    return table(["model", "batch", *grid.backends, *(f"{k} ÷ PyTorch" for k in ratios)], rows, 2)


def inference_section(grid: FrameworkGrid) -> list[str]:
    if not grid.rows:
        return []
    images = next(iter(grid.cells.values())).info["images"]
    lines = ["## Inference throughput", "",
             f"Images per second of a no-gradient pass over the first {images:,} images of the data, in order "
             f"(data: {sources(grid.cells.values())}): xpnet through `xpnet.train.evaluate`, what "
             "`python -m xpnet.evaluate` runs (`model.eval()`, `xpnet.no_grad()`, the loss and argmax of every batch); PyTorch eager with `model.eval()` and "
             "`torch.no_grad()` on the same model and weights, in a process of its own. Median of the timed passes, "
             "after one untimed pass. ÷ PyTorch above 1: xpnet is faster.", ""]
    lines += framework_table(grid, images_per_s)
    checks = [(m, b, max(found)) for m, b in grid.rows
              if (found := [(x, k) for k in grid.xpnet_backends()
                            if (x := grid.to_pytorch(k, m, b, images_per_s)) is not None])]
    if not checks:
        return lines + ["PyTorch was not measured in this run: no target check.", ""]
    lines += [f"Target (issue #15): xpnet's fastest backend at least {INFERENCE_TARGET:g}× PyTorch's images per "
              "second at batch 256:", ""]
    return lines + [f"- {m}, batch {b}: {k} {num(x)}×: **{'met' if x >= INFERENCE_TARGET else 'not met'}**"
                    for m, b, (x, k) in checks] + [""]


def memory_section(grid: FrameworkGrid) -> list[str]:
    if not grid.rows:
        return []
    steps = next(iter(grid.cells.values())).info["steps"]
    lines = ["## Peak memory of a training step", "",
             f"Resident memory (MiB) that {steps} Adam steps from a fresh model add, the first step "
             "included: the process's peak RSS during the steps (VmHWM, reset just before them) minus its RSS once "
             "the imports, model, optimizer and data were ready (on Numba, with its kernels loaded). Each "
             "measurement in a fresh process; both frameworks under xpnet's allocator setting and the same thread "
             f"count. Data: {sources(grid.cells.values())}. ÷ PyTorch below 1: xpnet needs less.", ""]
    lines += framework_table(grid, lambda r: step_bytes(r) / MIB)
    baselines = []
    for k in grid.backends:
        mib = [c.info["baseline_bytes"] / MIB for (k2, _, _), c in grid.cells.items() if k2 == k]
        baselines.append(f"{k} {num(min(mib))}–{num(max(mib))}" if len(mib) > 1 else f"{k} {num(mib[0])}")
    lines += [f"The resident memory before the steps (MiB): {', '.join(baselines)}.", ""]
    checks = [(m, b, found) for m, b in grid.rows
              if (found := [(k, x) for k in grid.xpnet_backends()
                            if (x := grid.to_pytorch(k, m, b, step_bytes)) is not None])]
    if not checks:
        return lines + ["PyTorch was not measured in this run: no target check.", ""]
    lines += ["Target (issue #15): a training step adds no more memory with xpnet than with PyTorch:", ""]
    return lines + [f"- {m}, batch {b}: " + ", ".join(
        f"{k} {num(x)}× (**{'met' if x <= STEP_MEMORY_TARGET else 'not met'}**)" for k, x in found)
        for m, b, found in checks] + [""]


def cold_start_section(results: list[Result]) -> list[str]:
    if not results:
        return []

    def seconds(value: float | None) -> str:
        return "—" if value is None else num(value)

    lines = ["## Cold start", "",
             "Seconds from process start to the end of a fresh model's first training step on the Numba backend "
             "(float32): in a new process whose Numba cache is an empty folder (the first run after install), then "
             "in another once that run has filled it; *extra* is what the first run waits for Numba to compile the "
             f"model's kernels. Data: {sources(results)}.", ""]
    lines += table(["model", "batch", "empty cache (s)", "filled cache (s)", "extra (s)"],
                   [[r.info["model"], str(r.info["batch_size"]), seconds(r.info["cold_s"]), seconds(r.info["warm_s"]),
                     seconds(r.info["extra_s"])] for r in results], 2)
    unmeasured = [f"Not measured for {r.info['model']}: {r.info['note']}." for r in results
                  if r.info["extra_s"] is None]
    lines += [*unmeasured, ""] if unmeasured else []
    measured = [r for r in results if r.info["extra_s"] is not None]
    if not measured:
        return lines
    lines += [f"Target (issue #15): at most {COLD_START_TARGET_S:g} s extra per model:", ""]
    return lines + [f"- {r.info['model']}: {num(r.info['extra_s'])} s: "
                    f"**{'met' if r.info['extra_s'] <= COLD_START_TARGET_S else 'not met'}**" for r in measured] + [""]

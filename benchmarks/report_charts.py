"""PNG charts for ``report.py``: one figure per suite, one panel per input channel count or model, log-log axes."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from report_results import Result, epoch_grid, kernel_grid, limits_of  # noqa: E402

# One panel: series label -> [(batch size, value)]; series are drawn in the order given.
Panel = Mapping[str, Sequence[tuple[int, float]]]


def line_chart(panels: Mapping[str, Panel], path: Path, ylabel: str, title: str,
               dashed: Sequence[str] = ()) -> None:
    """Side-by-side panels of value against batch size (log y axis); series named in ``dashed`` are dashed."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
    for ax, (panel_title, series) in zip(axes[0], panels.items()):
        for label, points in series.items():
            if points:
                xs, ys = zip(*sorted(points))
                if label in dashed:  # a dashed series of one point (a model timed at one batch size) is a tick
                    style = {"marker": "_" if len(xs) == 1 else "", "markersize": 14, "linestyle": "--"}
                else:
                    style = {"marker": "o", "linestyle": "-"}
                ax.plot(xs, ys, label=label, **style)
        batches = sorted({x for points in series.values() for x, _ in points})
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel=ylabel, title=panel_title)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_charts(results: list[Result], folder: Path) -> None:
    """bench_im2col.png, bench_col2im.png and bench_epoch.png in ``folder``, for the suites the run measured."""
    for group in ("im2col", "col2im"):
        grid = kernel_grid(results, group)
        if grid.shapes:
            panels = {f"{c} input channel{'s' if c > 1 else ''}":
                      {v: [(b, grid.cells[v, b, c].median * 1e3) for b, c2 in grid.shapes
                           if c2 == c and (v, b, c) in grid.cells] for v in grid.variants}
                      for c in sorted({c for _, c in grid.shapes})}
            line_chart(panels, folder / f"bench_{group}.png", "ms per call", f"{group}, kernel 3, padding 1, float32")
    grid, limits = epoch_grid(results), limits_of(results)
    if grid.rows:
        panels, apart = {}, grid.apart()
        for model in grid.models():
            batches = grid.batches(model)
            series = {k: [(b, grid.cells[k, model, b].epoch_s) for b in batches if (k, model, b) in grid.cells]
                      for k in grid.backends}
            if limits is not None:
                series["floor"] = [(b, limits.floor(grid.any_of(model))) for b in batches]
            panels[f"{model} ({grid.dataset(model)})" if model in apart else model] = series
        line_chart(panels, folder / "bench_epoch.png", "seconds per epoch", "Seconds per training epoch",
                   dashed=("floor",))

"""xpnet.reports: a batch-size sweep's comparison charts beside its summary.md, and what every curve plot and
confusion matrix shows (whole-number epoch ticks, labelled colour bars)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from xpnet import reports
from xpnet import train as train_cli
from xpnet.data import write_idx

SIZES = (16, 32)
EPOCHS = 2
TEST_IMAGES = 30


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A small learnable MNIST look-alike in IDX files (as tests/test_train_cli.py builds it, fewer images)."""
    root = tmp_path_factory.mktemp("digits")
    rng = np.random.default_rng(1)
    templates = rng.integers(0, 256, size=(10, 28, 28))
    for prefix, n in (("train", 80), ("t10k", TEST_IMAGES)):
        labels = np.arange(n) % 10
        images = (0.7 * templates[labels] + 0.3 * rng.integers(0, 256, size=(n, 28, 28))).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root


def capture_figures(monkeypatch: pytest.MonkeyPatch) -> dict[Path, object]:
    """Every figure xpnet.reports saves from now on, by the path it is saved to (the figure is saved as before)."""
    figures: dict[Path, object] = {}
    save = reports._save_figure

    def recording(fig, path):
        figures[Path(path)] = fig
        save(fig, path)

    monkeypatch.setattr(reports, "_save_figure", recording)
    return figures


@pytest.fixture(scope="module")
def sweep(digits, tmp_path_factory):
    """One sweep of two batch sizes through ``xpnet.train.main``: its folder and the figures it saved."""
    out = tmp_path_factory.mktemp("sweep") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        figures = capture_figures(monkeypatch)
        code = train_cli.main(["--data", str(digits), "--epochs", str(EPOCHS), "--batch-size", *map(str, SIZES),
                               "--val-split", "0.25", "--patience", "0", "--out", str(out)])
    assert code == 0
    return out, {path.relative_to(out).as_posix(): fig for path, fig in figures.items()}


def visible_ticks(ax) -> list[float]:
    lo, hi = sorted(ax.get_xlim())
    return [t for t in ax.get_xticks() if lo - 1e-9 <= t <= hi + 1e-9]


def assert_integer_epoch_ticks(fig) -> None:
    epoch_axes = [ax for ax in fig.axes if ax.get_xlabel() == "epoch"]
    assert len(epoch_axes) == 2
    for ax in epoch_axes:
        ticks = visible_ticks(ax)
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def log(out: Path, size: int) -> list[dict]:
    return [json.loads(line) for line in (out / f"bs{size}" / "log.jsonl").read_text().splitlines()]


def test_the_sweep_writes_its_charts_and_summary_embeds_them(sweep):
    out, _ = sweep
    summary = (out / "summary.md").read_text()
    images = re.findall(r"!\[([^\]]+)\]\(([^)]+)\)", summary)
    assert [file for _, file in images] == ["sweep_epoch_time.png", "sweep_curves.png", "sweep_confusion.png"]
    for _, file in images:
        assert not Path(file).is_absolute()
        assert (out / file).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", file
    assert summary.index("| 32 |") < summary.index("## Comparison")
    for size in SIZES:
        assert (out / f"bs{size}" / "curves.png").stat().st_size and (out / f"bs{size}" / "confusion.png").exists()
    assert not list(out.glob(".*.tmp"))


def test_epoch_time_bars_are_each_sizes_mean_epoch(sweep):
    out, figures = sweep
    ax = figures["sweep_epoch_time.png"].axes[0]
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == pytest.approx([sum(r["seconds"] for r in log(out, s)) / EPOCHS for s in SIZES])
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(s) for s in SIZES]
    assert ax.get_xlabel() == "batch size" and ax.get_ylabel() == "seconds per epoch"


def test_sweep_curves_show_every_sizes_validation_curves(sweep):
    out, figures = sweep
    fig = figures["sweep_curves.png"]
    loss_ax, acc_ax = fig.axes
    assert (loss_ax.get_title(), acc_ax.get_title()) == ("validation loss", "validation accuracy")
    assert [line.get_label() for line in acc_ax.get_lines()] == [f"batch {s}" for s in SIZES]
    for size, loss_line, acc_line in zip(SIZES, loss_ax.get_lines(), acc_ax.get_lines()):
        records = log(out, size)
        assert list(acc_line.get_xdata()) == [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
        assert list(loss_line.get_ydata()) == pytest.approx([r["val_loss"] for r in records])
        assert list(acc_line.get_ydata()) == pytest.approx([100 * r["val_acc"] for r in records])
    assert_integer_epoch_ticks(fig)


def test_confusion_matrices_sit_side_by_side_on_one_labelled_scale(sweep):
    _, figures = sweep
    fig = figures["sweep_confusion.png"]
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title().split(":")[0] for ax in panels] == [f"batch {s}" for s in SIZES]
    assert all(ax.images[0].get_array().sum() == TEST_IMAGES for ax in panels)
    assert len({ax.images[0].get_clim() for ax in panels}) == 1  # one colour scale for all panels
    colorbars = [ax.images[0].colorbar for ax in panels if ax.images[0].colorbar is not None]
    assert len(colorbars) == 1 and colorbars[0].ax.get_ylabel() == "images"


def test_every_run_of_the_sweep_has_integer_epoch_ticks_and_a_labelled_colour_bar(sweep):
    _, figures = sweep
    for size in SIZES:
        assert_integer_epoch_ticks(figures[f"bs{size}/curves.png"])
        (image,) = figures[f"bs{size}/confusion.png"].axes[0].images
        assert image.colorbar.ax.get_ylabel() == "images"


def history(epochs: int, validation: bool = True) -> list[dict]:
    return [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.5 + e / 100, "val_loss": 1.1 / e if validation else None,
             "val_acc": 0.4 + e / 100 if validation else None, "seconds": 0.5 + e / 10} for e in range(1, epochs + 1)]


def row(size: int, epochs: int, validation: bool = True) -> dict:
    runs = history(epochs, validation)
    return {"batch_size": size, "history": runs, "test_loss": 0.5, "test_acc": 0.75, "epochs": epochs,
            "seconds": sum(h["seconds"] for h in runs), "confusion": np.diag([3, 4, 5])}


@pytest.mark.parametrize("epochs", [1, 2, 3])
def test_curve_plots_tick_whole_epochs_for_short_runs(epochs, tmp_path, monkeypatch):
    figures = capture_figures(monkeypatch)
    reports.plot_curves(history(epochs), tmp_path / "curves.png", "run")
    reports.plot_sweep_curves([row(16, epochs), row(32, epochs)], tmp_path / "sweep.png")
    assert len(figures) == 2
    for fig in figures.values():
        assert_integer_epoch_ticks(fig)


def test_sweep_without_validation_compares_training_curves(tmp_path, monkeypatch):
    figures = capture_figures(monkeypatch)
    reports.plot_sweep_curves([row(16, 2, validation=False), row(32, 2, validation=False)], tmp_path / "c.png")
    loss_ax, acc_ax = next(iter(figures.values())).axes
    assert (loss_ax.get_title(), acc_ax.get_title()) == ("training loss", "training accuracy")
    assert list(loss_ax.get_lines()[0].get_ydata()) == pytest.approx([1.0, 0.5])


def test_a_single_run_has_no_comparison(tmp_path):
    assert reports.plot_sweep(tmp_path, [row(64, 2)], ["a", "b", "c"]) == []
    assert not list(tmp_path.iterdir())
    reports.write_summary(tmp_path / "summary.md", [row(64, 2)], {"model": "m"})
    assert "## Comparison" not in (tmp_path / "summary.md").read_text()


def test_a_sweep_without_confusion_counts_leaves_that_chart_out(tmp_path):
    rows = [{**row(16, 1), "confusion": None}, row(32, 1)]
    charts = reports.plot_sweep(tmp_path, rows, ["a", "b", "c"])
    assert [file for _, file in charts] == ["sweep_epoch_time.png", "sweep_curves.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep_curves.png", "sweep_epoch_time.png"]


def test_many_sizes_wrap_onto_lines_of_four_panels(tmp_path, monkeypatch):
    figures = capture_figures(monkeypatch)
    reports.plot_sweep_confusion([row(s, 1) for s in (8, 16, 32, 64, 128)], ["a", "b", "c"], tmp_path / "m.png")
    fig = next(iter(figures.values()))
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 5 and len({round(ax.get_position().y0, 3) for ax in panels}) == 2

"""Every benchmark suite still runs, and the report still renders: the suites in smoke mode (``XPNET_BENCH_SMOKE=1``:
tiny sizes, one round each) in one pytest subprocess, then ``benchmarks/report.py`` on the JSON that run wrote.

The benchmarks live outside ``testpaths`` and are otherwise run only by hand, so without this they would rot
between official runs.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import xpnet
from xpnet import nn
from xpnet.models import MODELS as NAMED_MODELS
from xpnet.models import build_model

import bench_smoke  # tests/ is on sys.path, as for local_http
from bench_smoke import REPO, SUITES
GRID_MODELS = ("report1", "report2", "lenet5")  # timed at every batch size; the ResNet at one, on Fashion-MNIST
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_NUMBA = importlib.util.find_spec("numba") is not None
HAS_CLEAR_REFS = Path("/proc/self/clear_refs").exists()  # bench_footprint's memory tests reset peak RSS through it
MIB = 1 << 20

requires_benchmark = pytest.mark.skipif(importlib.util.find_spec("pytest_benchmark") is None,
                                        reason="pytest-benchmark is not installed: pip install 'xpnet[bench]'")


def group_results(out: Path, group: str) -> list[dict]:
    """The smoke run's benchmarks of one pytest-benchmark group."""
    return [b for b in json.loads((out / "results.json").read_text())["benchmarks"] if b["group"] == group]


def epoch_results(out: Path) -> list[dict]:
    """The training benchmarks of the smoke run."""
    return group_results(out, "epoch")


@pytest.fixture(scope="module")
def smoke_run() -> tuple[subprocess.CompletedProcess, Path]:
    """(the finished pytest run over every suite, the folder holding its results.json and junit.xml): started in
    the background when collection ended (tests/bench_smoke.py), awaited here."""
    return bench_smoke.result()


@requires_benchmark
def test_every_suite_runs(smoke_run: tuple[subprocess.CompletedProcess, Path]) -> None:
    done, out = smoke_run
    assert done.returncode == 0, f"benchmarks failed in smoke mode:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    cases = ET.parse(out / "junit.xml").getroot().iter("testcase")
    modules = {case.get("classname") for case in cases}
    for suite in SUITES:
        assert suite.removesuffix(".py").replace("/", ".") in modules, f"{suite} collected no test"


@pytest.fixture(scope="module")
def report(smoke_run: tuple[subprocess.CompletedProcess, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """benchmarks/report.py's Markdown from the smoke run's JSON, in a folder of its own with the charts."""
    done, out = smoke_run
    assert (out / "results.json").is_file(), f"no benchmark JSON written:\n{done.stdout[-3000:]}"
    path = tmp_path_factory.mktemp("report") / "benchmarks.md"
    rendered = subprocess.run([sys.executable, "benchmarks/report.py", str(out / "results.json"), "--out", str(path)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    return path


@requires_benchmark
def test_report_renders_every_table(smoke_run: tuple[subprocess.CompletedProcess, Path], report: Path) -> None:
    _, out = smoke_run
    text = report.read_text()
    headings = ["## Summary", "## im2col", "## col2im", "## Seconds per training epoch", "## Machine limits",
                "## Multiple of the floor", "## Warm-up", "## Reproduce", "## Method"]
    headings += ["## Inference throughput", *(["## Peak memory of a training step"] if HAS_CLEAR_REFS else []),
                 *(["## Cold start"] if HAS_NUMBA else [])]
    headings += ["## Ratio to PyTorch"] if HAS_TORCH else []
    for heading in headings:
        assert heading in text, f"{heading!r} missing from the report"
    assert "Smoke run" in text
    assert "Report 1's target, at batch 64" in text
    for model in GRID_MODELS:
        assert f"| {model} | 64 | " in text, f"no batch-64 row for {model}"
    for chart in ("bench_im2col.png", "bench_col2im.png", "bench_epoch.png"):
        assert (report.parent / chart).stat().st_size > 0
    epochs = epoch_results(out)
    assert {"numpy", *(["pytorch"] if HAS_TORCH else [])} <= {b["extra_info"]["backend"] for b in epochs}
    resnet = next(b["extra_info"] for b in epochs if b["extra_info"]["model"] == "resnet")
    # "Fashion-MNIST", or "Fashion-MNIST (synthetic)" where ../shared is absent (a fresh clone)
    assert resnet["dataset"].startswith("Fashion-MNIST")
    assert f"| resnet | {resnet['batch_size']} | " in text, "no row for the resnet"
    note = f"Rows apart from the grid: resnet ({resnet['dataset']}, batch {resnet['batch_size']} only)."
    assert text.count(note) == (2 if HAS_TORCH else 1), "the resnet rows' data set and batch are not noted"
    assert f"- **resnet** ({resnet['dataset']}), batch" in text


@requires_benchmark
def test_every_named_model_is_timed(smoke_run: tuple[subprocess.CompletedProcess, Path]) -> None:
    """Each model of xpnet.models.MODELS has epoch rows, the ResNet's on the CPU backends and PyTorch, all with a
    positive cost (model_costs counts every model)."""
    _, out = smoke_run
    epochs = [b["extra_info"] for b in epoch_results(out)]
    assert {e["model"] for e in epochs} == set(NAMED_MODELS)
    resnet = {e["backend"] for e in epochs if e["model"] == "resnet"}
    has_numba = importlib.util.find_spec("numba") is not None
    assert resnet == {"numpy", *(["numba"] if has_numba else []), *(["pytorch"] if HAS_TORCH else [])}
    assert all(e["flops_per_epoch"] > 0 and e["bytes_per_epoch"] > 0 for e in epochs)


@requires_benchmark
@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed: pip install torch==2.13.0")
def test_pytorch_runs_in_the_users_thread_environment(smoke_run: tuple[subprocess.CompletedProcess, Path]) -> None:
    """xpnet's OMP_WAIT_POLICY=passive slowed PyTorch 1.2-1.7x; the peer must not inherit it."""
    done, out = smoke_run
    peers = [b for b in epoch_results(out) + group_results(out, "inference")
             if b["extra_info"].get("framework") == "pytorch"]
    assert peers, f"the PyTorch peer did not run:\n{done.stdout[-3000:]}"
    for peer in peers:
        for name, value in peer["extra_info"]["thread_environment"].items():
            assert value == xpnet.threads.user_environment().get(name), f"PyTorch ran with {name}={value}"


# --- benchmarks/bench_footprint.py: inference speed, training-step memory, cold start --------------------------------

def section(text: str, heading: str) -> str:
    """The report's section under ``heading``, up to the next heading of its level."""
    assert heading in text, f"{heading!r} missing from the report"
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


def row(text: str, model: str, batch: int) -> list[str]:
    """The cells of the table row of (model, batch) in ``text``, which must hold exactly one."""
    rows = [line for line in text.splitlines() if line.startswith(f"| {model} | {batch} | ")]
    assert len(rows) == 1, f"{len(rows)} rows for {model} at batch {batch} in:\n{text}"
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def shown(cell: str) -> float:
    """A number as the report prints it (3 significant figures, thousands commas, maybe a trailing ×)."""
    return float(cell.removesuffix("×").replace(",", ""))


def by_backend(out: Path, group: str) -> dict[str, dict]:
    results = group_results(out, group)
    assert len({b["extra_info"]["model"] for b in results}) == 1, "smoke mode measures one model"
    return {b["extra_info"]["backend"]: b for b in results}


@requires_benchmark
def test_inference_results_and_table(smoke_run: tuple[subprocess.CompletedProcess, Path], report: Path) -> None:
    """One row per model: each backend's images per second and xpnet's ratio to PyTorch, as the JSON gives them."""
    _, out = smoke_run
    results = by_backend(out, "inference")
    assert set(results) == {"numpy", *(["numba"] if HAS_NUMBA else []), *(["pytorch"] if HAS_TORCH else [])}
    for b in results.values():
        info = b["extra_info"]
        assert info["images"] > 0 and info["batch_size"] > 0 and b["stats"]["median"] > 0
        assert 0 <= info["accuracy"] <= 1 and info["first_pass_s"] > 0
    rate = {k: b["extra_info"]["images"] / b["stats"]["median"] for k, b in results.items()}
    info = results["numpy"]["extra_info"]
    text = section(report.read_text(), "## Inference throughput")
    cells = dict(zip(["model", "batch", *sorted(rate, key=["numpy", "numba", "pytorch"].index)],
                     row(text, info["model"], info["batch_size"])))
    for backend, value in rate.items():
        assert shown(cells[backend]) == pytest.approx(value, rel=0.01)
    if HAS_TORCH:
        ratio = row(text, info["model"], info["batch_size"])[len(rate) + 2]  # the numpy ÷ PyTorch column
        assert shown(ratio) == pytest.approx(rate["numpy"] / rate["pytorch"], rel=0.01)
        assert "Target (issue #15): xpnet's fastest backend at least 2× PyTorch's" in text
        assert f"- {info['model']}, batch {info['batch_size']}: " in text and "met**" in text


@requires_benchmark
@pytest.mark.skipif(not HAS_CLEAR_REFS, reason="the memory benchmarks need Linux's /proc/self/clear_refs")
def test_memory_results_and_table(smoke_run: tuple[subprocess.CompletedProcess, Path], report: Path) -> None:
    """Each framework's step memory (peak minus baseline RSS) and xpnet's ratio to PyTorch's."""
    _, out = smoke_run
    results = by_backend(out, "memory")
    assert set(results) == {"numpy", *(["pytorch"] if HAS_TORCH else [])}  # smoke mode: NumPy and PyTorch
    assert {b["extra_info"]["framework"] for b in results.values()} == {"xpnet", *(["pytorch"] if HAS_TORCH else [])}
    step = {}
    for backend, b in results.items():
        info = b["extra_info"]
        assert info["peak_bytes"] > info["baseline_bytes"] > 0, f"{backend}: a step allocated nothing?"
        assert info["steps"] >= 1 and info["batch_size"] > 0
        step[backend] = (info["peak_bytes"] - info["baseline_bytes"]) / MIB
    info = results["numpy"]["extra_info"]
    text = section(report.read_text(), "## Peak memory of a training step")
    cells = row(text, info["model"], info["batch_size"])
    assert shown(cells[2]) == pytest.approx(step["numpy"], rel=0.01)
    assert "The resident memory before the steps (MiB): numpy" in text
    if HAS_TORCH:
        assert shown(cells[3]) == pytest.approx(step["pytorch"], rel=0.01)
        assert shown(cells[4]) == pytest.approx(step["numpy"] / step["pytorch"], rel=0.01)
        assert f"- {info['model']}, batch {info['batch_size']}: numpy " in text


@pytest.mark.skipif(not HAS_CLEAR_REFS, reason="needs Linux's /proc/self/clear_refs")
def test_peak_rss_reset_forgets_an_earlier_peak() -> None:
    """What the memory numbers rest on: after ``reset_peak_rss`` VmHWM no longer counts memory freed before it."""
    code = ("import numpy as np\nfrom bench_footprint import reset_peak_rss, status_bytes\n"
            "a = np.ones(300 << 20, np.uint8)\ndel a\nbefore = status_bytes('VmHWM')\nbase = reset_peak_rss()\n"
            "print(before, base, status_bytes('VmHWM'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO / "benchmarks", capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    before, base, after = map(int, done.stdout.split())
    assert before - after > 250 * MIB, "the 300 MiB array freed before the reset still counts in the peak"
    assert abs(after - base) < 8 * MIB


@requires_benchmark
def test_cold_start_results_and_table(smoke_run: tuple[subprocess.CompletedProcess, Path], report: Path) -> None:
    """Smoke mode runs only the warm-cache process, for one model, and the report says so."""
    _, out = smoke_run
    if not HAS_NUMBA:
        assert not group_results(out, "cold-start")
        return
    (result,) = group_results(out, "cold-start")
    info = result["extra_info"]
    assert info["cold_s"] is None and info["extra_s"] is None and info["warm_s"] > 0
    assert info["backend"] == "numba" and "smoke mode" in info["note"]
    text = section(report.read_text(), "## Cold start")
    cells = row(text, info["model"], info["batch_size"])
    assert cells[2] == "—" and shown(cells[3]) == pytest.approx(info["warm_s"], rel=0.01) and cells[4] == "—"
    assert f"Not measured for {info['model']}: smoke mode" in text


# --- benchmarks/model_costs.py: the work per image the report's floors are built on ---------------------------------

@functools.cache
def load_model_costs():
    """benchmarks/model_costs.py as a module (the benchmarks folder is not a package; its dataclass needs the
    module registered in sys.modules, under a name no other module uses)."""
    spec = importlib.util.spec_from_file_location("_bench_model_costs", REPO / "benchmarks" / "model_costs.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def conv_macs(out_channels: int, out_h: int, out_w: int, in_per_group: int, kernel: int) -> int:
    return out_channels * out_h * out_w * in_per_group * kernel * kernel


def test_model_cost_of_the_mnist_nets_is_unchanged():
    """MACs by hand from the layer shapes; activation elements as the Sequential walker counted them before."""
    model_cost = load_model_costs().model_cost
    report1 = model_cost(build_model("report1"), (1, 28, 28))
    assert report1.macs == conv_macs(8, 28, 28, 1, 3) + 1568 * 10
    # conv 784 -> 6272, relu, pool -> 1568, dropout, flatten, linear -> 10: inputs + outputs of each
    assert report1.activations == (784 + 6272) + 2 * 6272 + (6272 + 1568) + 2 * 1568 + 2 * 1568 + (1568 + 10)
    report2 = model_cost(build_model("report2"), (1, 28, 28))
    assert report2.macs == sum(conv_macs(o, 28, 28, c, 3) for c, o in ((1, 3), (3, 6), (6, 9))) + 1764 * 10
    lenet5 = model_cost(build_model("lenet5"), (1, 28, 28))
    assert lenet5.macs == conv_macs(6, 28, 28, 1, 5) + conv_macs(16, 10, 10, 6, 5) + 400 * 120 + 120 * 84 + 84 * 10
    assert (report2.activations, lenet5.activations) == (64_298, 30_778)  # the walker's counts before tracing


def test_model_cost_traces_the_resnet():
    """ResNet-8 at 28x28: stem, layer1 (two 16-wide convs), layer2/3 (stride 2 with 1x1 shortcuts), fc."""
    cost = load_model_costs().model_cost(build_model("resnet"), (1, 28, 28))
    stages = [conv_macs(16, 28, 28, 1, 3), 2 * conv_macs(16, 28, 28, 16, 3),
              conv_macs(32, 14, 14, 16, 3), conv_macs(32, 14, 14, 32, 3), conv_macs(32, 14, 14, 16, 1),
              conv_macs(64, 7, 7, 32, 3), conv_macs(64, 7, 7, 64, 3), conv_macs(64, 7, 7, 32, 1), 64 * 10]
    assert cost.macs == sum(stages)
    a, b, c = 16 * 28 * 28, 32 * 14 * 14, 64 * 7 * 7  # the three stages' maps
    stem = (784 + a) + 2 * a  # conv1, bn1
    layer1 = 4 * 2 * a  # conv1, bn1, conv2, bn2 at one size
    layer2 = (a + b) + 3 * 2 * b + (a + b) + 2 * b  # conv1 (stride 2), bn1, conv2, bn2, downsample conv and bn
    layer3 = (b + c) + 3 * 2 * c + (b + c) + 2 * c
    head = (c + 64) + (64 + 10)  # avgpool, fc
    assert cost.activations == stem + layer1 + layer2 + layer3 + head


class Twice(nn.Module):
    """One grouped, strided, dilated convolution called twice (not a Sequential), then an unknown leaf."""

    def __init__(self, tail: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2, groups=2)
        self.tail = tail

    def forward(self, x):
        return self.tail(self.conv(self.conv(x)))


def test_model_cost_counts_every_call_with_groups_stride_dilation():
    model = Twice(nn.Identity())
    cost = load_model_costs().model_cost(model, (4, 9, 9))
    first_h = (9 + 2 * 2 - 2 * (3 - 1) - 1) // 2 + 1  # 5
    second_h = (first_h + 2 * 2 - 2 * (3 - 1) - 1) // 2 + 1  # 3
    assert cost.macs == conv_macs(4, first_h, first_h, 2, 3) + conv_macs(4, second_h, second_h, 2, 3)
    first, second = 4 * first_h**2, 4 * second_h**2
    assert cost.activations == (4 * 81 + first) + (first + second) + 2 * second


def test_model_cost_refuses_a_leaf_it_cannot_count_and_restores_the_model():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(xpnet.tensor([2.0]).data)

        def forward(self, x):
            return x * self.weight

    model = Twice(Scale())
    model.conv.eval()
    with pytest.raises(TypeError, match="cannot count the multiply-adds of a Scale layer"):
        load_model_costs().model_cost(model, (4, 9, 9))
    assert model.training and not model.conv.training and model.tail.training
    assert not any(m._forward_hooks for _, m in model.named_modules())

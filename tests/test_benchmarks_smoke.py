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

requires_benchmark = pytest.mark.skipif(importlib.util.find_spec("pytest_benchmark") is None,
                                        reason="pytest-benchmark is not installed: pip install 'xpnet[bench]'")


def epoch_results(out: Path) -> list[dict]:
    """The training benchmarks of the smoke run."""
    return [b for b in json.loads((out / "results.json").read_text())["benchmarks"] if b["group"] == "epoch"]


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


@requires_benchmark
def test_report_renders_every_table(smoke_run: tuple[subprocess.CompletedProcess, Path], tmp_path: Path) -> None:
    done, out = smoke_run
    assert (out / "results.json").is_file(), f"no benchmark JSON written:\n{done.stdout[-3000:]}"
    report = tmp_path / "benchmarks.md"
    rendered = subprocess.run([sys.executable, "benchmarks/report.py", str(out / "results.json"), "--out", str(report)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    text = report.read_text()
    headings = ["## Summary", "## im2col", "## col2im", "## Seconds per training epoch", "## Machine limits",
                "## Multiple of the floor", "## Warm-up", "## Reproduce", "## Method"]
    headings += ["## Ratio to PyTorch"] if HAS_TORCH else []
    for heading in headings:
        assert heading in text, f"{heading!r} missing from the report"
    assert "Smoke run" in text
    assert "Report 1's target, at batch 64" in text
    for model in GRID_MODELS:
        assert f"| {model} | 64 | " in text, f"no batch-64 row for {model}"
    for chart in ("bench_im2col.png", "bench_col2im.png", "bench_epoch.png"):
        assert (tmp_path / chart).stat().st_size > 0
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
    peers = [b for b in epoch_results(out) if b["extra_info"].get("framework") == "pytorch"]
    assert peers, f"the PyTorch peer did not run:\n{done.stdout[-3000:]}"
    for peer in peers:
        for name, value in peer["extra_info"]["thread_environment"].items():
            assert value == xpnet.threads.user_environment().get(name), f"PyTorch ran with {name}={value}"


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

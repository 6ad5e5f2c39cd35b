"""``Module.summary`` / ``xpnet.summary``: the traced layer table, its totals, and ``python -m xpnet.summary``."""

import subprocess
import sys

import pytest

import xpnet
from xpnet import nn
from xpnet.models import MODELS, build_model
from xpnet.summary import layer_macs, main, summarize


def small_net() -> nn.Sequential:
    """A strided grouped convolution and a dense layer whose multiply-adds are easy to count by hand."""
    return nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5))


class Twice(nn.Module):
    """One convolution called twice (shared weights), then a layer of the user's own with a parameter."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.scale = Scale()

    def forward(self, x):
        return self.scale(self.conv(self.conv(x)))


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(xpnet.tensor([2.0]).data)

    def forward(self, x):
        return x * self.weight


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_totals_are_the_sum_of_the_parameters(name):
    model = build_model(name, (3, 32, 32), 7)
    model.parameters()[0].requires_grad = False
    frozen = model.parameters()[0].size
    s = summarize(model, (3, 32, 32))
    total = sum(p.size for p in model.parameters())
    assert s.total_params == total and s.trainable_params == total - frozen
    assert sum(r.params for r in s.rows) == total  # the named nets keep every parameter in a leaf
    assert s.param_bytes == 4 * total and s.buffer_values == sum(b.size for b in model.buffers())
    text = model.summary((3, 32, 32))
    assert f"Total params: {total:,} (" in text and f"Trainable params: {total - frozen:,}" in text
    assert f"Non-trainable params: {frozen:,}" in text


def test_macs_and_shapes_of_conv_and_linear_by_hand():
    s = summarize(small_net(), (2, 8, 8))
    conv_macs = 4 * 4 * 4 * (2 // 2) * 3 * 3  # OC * OH * OW * C/groups * KH * KW, output 4x4 at stride 2
    linear_macs = 64 * 5
    assert [(r.name, r.type, r.output_shape, r.macs) for r in s.rows] == [
        ("0", "Conv2d", (1, 4, 4, 4), conv_macs), ("1", "ReLU", (1, 4, 4, 4), 0), ("2", "Flatten", (1, 64), 0),
        ("3", "Linear", (1, 5), linear_macs)]
    assert [r.params for r in s.rows] == [4 * 1 * 9 + 4, 0, 0, 64 * 5 + 5]
    assert s.macs == conv_macs + linear_macs == 896
    text = str(s)
    assert text.splitlines()[-1] == "Multiply-adds per image (forward): 896"
    assert "(N, 4, 4, 4)" in text and "(N, 64)" in text and "not counted" not in text


def test_resnet_rows_follow_the_forward_pass():
    s = summarize(build_model("resnet"), (1, 28, 28))
    shapes = {r.name: r.output_shape for r in s.rows}
    assert [r.name for r in s.rows][:3] == ["conv1", "bn1", "layer1.0.conv1"]
    assert shapes["conv1"] == shapes["layer1.0.bn2"] == (1, 16, 28, 28)
    assert shapes["layer2.0.conv1"] == shapes["layer2.0.downsample.1"] == (1, 32, 14, 14)
    assert shapes["layer3.0.conv2"] == shapes["layer3.0.downsample.0"] == (1, 64, 7, 7)
    assert (shapes["avgpool"], shapes["fc"]) == ((1, 64, 1, 1), (1, 10))
    assert s.rows[-1].name == "fc" and len(s.rows) == 20  # 9 convolutions, 9 BatchNorms, the pool and fc
    assert s.total_params == 77_754 and s.buffer_values == sum(b.size for b in build_model("resnet").buffers())


def test_a_shared_layer_is_listed_per_call_and_counted_once():
    model = Twice()
    model.conv.eval()
    s = summarize(model, (3, 5, 5))
    assert [r.name for r in s.rows] == ["conv", "conv (call 2)", "scale"]
    assert [r.params for r in s.rows] == [3 * 3 * 9 + 3, 0, 1]
    assert s.total_params == 3 * 3 * 9 + 3 + 1
    conv_macs = 3 * 5 * 5 * 3 * 9
    assert [r.macs for r in s.rows] == [conv_macs, conv_macs, None] and s.macs == 2 * conv_macs
    assert s.unknown_cost == ["scale"]
    scale_row = next(line for line in str(s).splitlines() if line.startswith("scale "))
    assert scale_row.endswith("?") and "not counted: scale" in str(s)
    assert model.training and not model.conv.training and model.scale.training  # modes restored
    assert not any(m._forward_hooks for _, m in model.named_modules())  # hooks removed


def test_layer_macs_of_a_layer_it_does_not_know_is_none():
    out = xpnet.tensor([[1.0, 2.0]])
    assert layer_macs(Scale(), out) is None
    assert layer_macs(nn.BatchNorm1d(2), out) == 0 and layer_macs(nn.ReLU(), out) == 0


def test_a_model_that_fails_on_the_shape_says_so_and_is_restored():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(ValueError, match=r"Sequential fails on inputs of shape \(N, 3, 5\)"):
        summarize(model, (3, 5))
    assert model.training and not any(m._forward_hooks for _, m in model.named_modules())
    assert "(N, 2)" in model.summary((3, 4))


@pytest.mark.parametrize("shape", [(), (1, 0, 28), (1.0, 28, 28), "1,28,28", 28, (True, 4)])
def test_bad_input_shapes_are_refused_by_name(shape):
    with pytest.raises(ValueError, match="input_shape: expected"):
        summarize(small_net(), shape)


def test_cli_prints_the_table_of_a_named_model_or_a_factory(capsys):
    assert main(["--model", "report1"]) == 0
    out = capsys.readouterr().out
    total = sum(p.size for p in build_model("report1").parameters())
    assert out.startswith("Model: Sequential, input (N, 1, 28, 28), float32")
    assert f"Total params: {total:,}" in out and "(N, 8, 28, 28)" in out
    assert main(["--model", "xpnet.models:lenet5", "--input-shape", "3,32,32", "--classes", "7"]) == 0
    out = capsys.readouterr().out
    assert "input (N, 3, 32, 32)" in out and "(N, 7)" in out


@pytest.mark.parametrize("args, message", [
    (["--model", "nope"], "error: unknown model 'nope'; choose one of report1"),
    (["--model", "lenet5", "--input-shape", "1,8,8"], "error: model 'lenet5' cannot be built for 1x8x8 inputs"),
    (["--model", "report1", "--input-shape", "5"], "error: model 'report1' cannot be built for 5 inputs"),
    (["--model", "tests.test_summary:small_net"], "error: summary: Sequential fails on inputs of shape (N, 1, 28, 28)"),
])
def test_cli_errors_are_one_line_without_a_traceback(args, message):
    done = subprocess.run([sys.executable, "-m", "xpnet.summary", *args], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr


def test_cli_refuses_a_malformed_shape(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "report1", "--input-shape", "1,x,28"])
    assert exit_info.value.code == 2
    assert "argument --input-shape: expected positive integers separated by commas" in capsys.readouterr().err

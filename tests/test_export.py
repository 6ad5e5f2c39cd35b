"""xpnet.export: ONNX by tracing (checked in onnxruntime against xpnet's eval-mode output), safetensors round trips
(bitwise, and into the PyTorch twin), and the ``python -m xpnet.export`` command on a freshly trained checkpoint."""

import importlib.util
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import xpnet
from xpnet import functional as F
from xpnet import nn
from xpnet.autograd import Function
from xpnet.export import ExportError, export_onnx, load_safetensors, main, save_safetensors, to_onnx
from xpnet.models import build_model

HAVE_ONNX = importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("onnxruntime") is not None
HAVE_SAFETENSORS = importlib.util.find_spec("safetensors") is not None
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="onnx and onnxruntime are not installed: pip install "
                                                      "'xpnet[onnx]' (CI installs them)")
needs_safetensors = pytest.mark.skipif(not HAVE_SAFETENSORS, reason="safetensors is not installed: pip install "
                                                                    "'xpnet[safetensors]' (CI installs it)")
TOLERANCE = 1e-5


def randomise_state(model, seed=1):
    """Non-trivial BatchNorm statistics and affine parameters and biases, so that an export that ignored any of
    them would fail."""
    rng = np.random.default_rng(seed)
    norms = {name for name, m in model.named_modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))}
    state = model.state_dict()
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf == "running_var":
            state[key] = rng.uniform(0.5, 2.0, value.shape).astype(value.dtype)
        elif leaf == "num_batches_tracked":
            state[key] = np.array(rng.integers(1, 1000), dtype=np.int64)
        elif leaf in ("running_mean", "bias") or (leaf == "weight" and prefix in norms):
            state[key] = rng.normal(0, 0.5, value.shape).astype(value.dtype)
    model.load_state_dict(state)
    return model


def xpnet_output(model, x):
    model.eval()
    with xpnet.no_grad():
        out = model(xpnet.tensor(x))
    return [t.numpy() for t in out] if isinstance(out, tuple) else [out.numpy()]


def onnx_output(proto, x):
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})


def assert_exports(model, input_shape, batch=5, seed=7):
    """The ONNX graph run in onnxruntime gives xpnet's eval-mode output to 1e-5, at a batch size not traced."""
    proto = to_onnx(model, input_shape)
    x = np.random.default_rng(seed).standard_normal((batch, *input_shape)).astype(np.float32)
    expected, got = xpnet_output(model, x), onnx_output(proto, x)
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g, e, rtol=TOLERANCE, atol=TOLERANCE)
    return proto


# --- the named models -------------------------------------------------------------------------------------------

@needs_onnx
@pytest.mark.parametrize("name", ["report1", "report2", "lenet5", "resnet"])
def test_named_models_match_onnxruntime(name):
    model = randomise_state(build_model(name))
    proto = assert_exports(model, (1, 28, 28))
    initializers = {i.name for i in proto.graph.initializer}
    assert set(model.state_dict()) - initializers <= {k for k in model.state_dict() if "num_batches" in k}


@needs_onnx
def test_resnet_on_colour_images_exports_its_residual_adds():
    model = randomise_state(build_model("resnet", (3, 16, 16), 4, widths=(4, 8), blocks=(2, 1)))
    proto = assert_exports(model, (3, 16, 16), batch=2)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Add") == 3 and ops.count("BatchNormalization") == 8


# --- one small model per layer, with options away from the defaults ----------------------------------------------

class Residual(nn.Module):
    """A user Module with its own forward: a ModuleList, a residual add, scalar arithmetic and tensor methods."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 3, 3, padding=1) for _ in range(2)])
        self.scale = nn.Parameter(np.full((1, 3, 1, 1), 0.5, dtype=np.float32))

    def forward(self, x):
        for conv in self.convs:
            x = x + F.relu(conv(x)) * self.scale
        centred = x - x.mean(axis=(2, 3), keepdims=True)
        return (-centred / 2.0).exp().log() + (x @ x.transpose(0, 1, 3, 2)).sum(axis=3, keepdims=True) * 0.1


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(48, 6))

    def forward(self, x):
        h = self.body(x)
        return h.sigmoid(), h.T.T


LAYER_MODELS = {
    "conv_stride_padding_dilation_groups": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=(2, 1), dilation=2,
                                                              groups=2), (4, 9, 8)),
    "conv_no_bias_depthwise": (lambda: nn.Conv2d(4, 8, (3, 2), stride=(1, 2), groups=4, bias=False), (4, 7, 7)),
    "conv_same_even_kernel": (lambda: nn.Conv2d(3, 2, 4, padding="same", dilation=(1, 2)), (3, 7, 9)),
    "conv_valid": (lambda: nn.Conv2d(3, 2, 3, padding="valid"), (3, 5, 5)),
    "linear": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), (3, 2, 2)),
    "linear_3d_no_bias": (lambda: nn.Sequential(nn.Flatten(2), nn.Linear(6, 4, bias=False)), (3, 2, 3)),
    "linear_3d_bias": (lambda: nn.Sequential(nn.Flatten(2), nn.Linear(6, 4)), (3, 2, 3)),
    "batchnorm1d_2d_input": (lambda: nn.Sequential(nn.Flatten(), nn.BatchNorm1d(12, eps=1e-3)), (3, 2, 2)),
    "batchnorm1d_3d_input": (lambda: nn.Sequential(nn.Flatten(2), nn.BatchNorm1d(3, momentum=None)), (3, 2, 2)),
    "batchnorm2d": (lambda: nn.BatchNorm2d(3, eps=0.1), (3, 4, 4)),
    "batchnorm2d_no_affine": (lambda: nn.BatchNorm2d(3, affine=False), (3, 4, 4)),
    "batchnorm2d_no_bias": (lambda: nn.BatchNorm2d(3, bias=False), (3, 4, 4)),
    "relu": (lambda: nn.ReLU(inplace=True), (2, 3, 3)),
    "sigmoid": (lambda: nn.Sigmoid(), (2, 3, 3)),
    "tanh": (lambda: nn.Tanh(), (2, 3, 3)),
    "leaky_relu": (lambda: nn.LeakyReLU(0.2), (2, 3, 3)),
    "gelu": (lambda: nn.GELU(), (2, 3, 3)),
    "gelu_tanh": (lambda: nn.GELU(approximate="tanh"), (2, 3, 3)),
    "softmax_dim2": (lambda: nn.Softmax(dim=2), (2, 3, 3)),
    "log_softmax_dim_last": (lambda: nn.Sequential(nn.Flatten(), nn.LogSoftmax(dim=-1)), (2, 3, 3)),
    "identity": (lambda: nn.Identity(54, unused=True), (2, 3, 3)),
    "max_pool_padding_ceil": (lambda: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), (2, 8, 7)),
    "max_pool_stride_over_kernel_ceil": (lambda: nn.MaxPool2d(2, stride=3, ceil_mode=True), (2, 7, 8)),
    "max_pool_rectangular": (lambda: nn.MaxPool2d((3, 2), stride=(1, 2), padding=(1, 0)), (2, 5, 6)),
    "avg_pool_include_pad_ceil": (lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True), (2, 8, 7)),
    "avg_pool_exclude_pad_ceil": (lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), (2, 8, 7)),
    "avg_pool_include_pad_ceil_no_padding": (lambda: nn.AvgPool2d(2, 3, ceil_mode=True), (2, 7, 8)),
    "avg_pool_exclude_pad": (lambda: nn.AvgPool2d((2, 3), padding=(1, 1), count_include_pad=False), (2, 5, 7)),
    "avg_pool_divisor_override": (lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, divisor_override=5), (2, 8, 7)),
    "avg_pool_divisor_override_no_padding": (lambda: nn.AvgPool2d(2, divisor_override=3), (2, 4, 6)),
    "adaptive_avg_pool_global": (lambda: nn.AdaptiveAvgPool2d(1), (2, 5, 7)),
    "adaptive_avg_pool_blocks": (lambda: nn.AdaptiveAvgPool2d((2, 3)), (2, 6, 9)),
    "adaptive_avg_pool_overlapping_bins": (lambda: nn.AdaptiveAvgPool2d((3, None)), (2, 7, 5)),
    "flatten_middle": (lambda: nn.Flatten(1, 2), (2, 3, 4)),
    "dropout": (lambda: nn.Sequential(nn.Dropout(0.5), nn.Conv2d(2, 2, 1)), (2, 3, 3)),
    "sequential_nested": (lambda: nn.Sequential(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)),
                                                nn.Sequential(nn.ReLU(), nn.Identity())), (2, 4, 4)),
    "module_list_residual": (Residual, (3, 4, 4)),
    "two_outputs": (TwoHeads, (3, 4, 4)),
}


@needs_onnx
@pytest.mark.parametrize("case", LAYER_MODELS)
def test_each_layer_matches_onnxruntime(case):
    factory, shape = LAYER_MODELS[case]
    assert_exports(randomise_state(factory()), shape)


@needs_onnx
def test_a_model_that_only_returns_its_input_exports_an_identity():
    proto = assert_exports(nn.Sequential(nn.Identity(), nn.Dropout()), (2, 3))
    assert [n.op_type for n in proto.graph.node] == ["Identity"]


@needs_onnx
def test_export_leaves_the_train_mode_and_state_as_they_were():
    model = build_model("resnet", widths=(2, 2, 2))
    model.layer2.eval()  # a mixed-mode model keeps its modes
    modes = [m.training for _, m in model.named_modules()]
    before = model.state_dict()
    patched = Function.__dict__["apply"], nn.Module.__dict__["__call__"]
    to_onnx(model, (1, 28, 28))
    assert [m.training for _, m in model.named_modules()] == modes and not all(modes)
    assert all(np.array_equal(v, model.state_dict()[k]) for k, v in before.items())
    assert (Function.__dict__["apply"], nn.Module.__dict__["__call__"]) == patched


@needs_onnx
def test_onnx_file_has_metadata_and_declares_a_free_batch(tmp_path):
    import onnx

    path = tmp_path / "m.onnx"
    export_onnx(build_model("report1"), str(path), (1, 28, 28), metadata={"classes": "[0, 1]"})
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 17
    assert {p.key: p.value for p in proto.metadata_props} == {"classes": "[0, 1]"}
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [1, 28, 28]


# --- what cannot be exported ---------------------------------------------------------------------------------------

class Square(Function):
    @staticmethod
    def forward(ctx, a):
        return a * a

    @staticmethod
    def backward(ctx, g):
        return g


class SquareLayer(nn.Module):
    def forward(self, x):
        return Square.apply(x)


class RawMath(nn.Module):
    """Computes outside Functions: the trace would freeze the result as a constant."""

    def forward(self, x):
        return x + xpnet.tensor(x.data * 2)


class BatchMean(nn.Module):
    def forward(self, x):
        return x - x.mean()


class TrainingBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        return F.batch_norm(x, self.bn.running_mean, self.bn.running_var, training=True)


@needs_onnx
@pytest.mark.parametrize("model, message", [
    (nn.Sequential(nn.Conv2d(2, 2, 1), SquareLayer()), r"layer '1'.*test_export\.Square.*no ONNX conversion"),
    (RawMath(), "changes with the input"),
    (BatchMean(), "batch size"),
    (nn.Flatten(0, -1), "batch size"),
    (TrainingBatchNorm(), "batch statistics"),
])
def test_unexportable_models_raise_one_clear_error(model, message):
    with pytest.raises(ExportError, match=message):
        to_onnx(model, (2, 3, 3))


@needs_onnx
def test_a_forward_returning_no_tensor_is_refused():
    class Strange(nn.Module):
        def forward(self, x):
            return {"logits": x}

    with pytest.raises(ExportError, match="must return a Tensor"):
        to_onnx(Strange(), (2,))


# --- safetensors ------------------------------------------------------------------------------------------------

@needs_safetensors
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_safetensors_round_trip_is_bitwise_with_buffers(tmp_path, dtype):
    xpnet.set_default_dtype(dtype)
    model = randomise_state(build_model("resnet", widths=(2, 4, 4)))
    path = tmp_path / "w.safetensors"
    save_safetensors(model, str(path))
    loaded = load_safetensors(str(path))
    state = model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape, key
        assert loaded[key].tobytes() == value.tobytes(), key
    assert loaded["bn1.num_batches_tracked"].dtype == np.int64 and loaded["bn1.num_batches_tracked"].shape == ()
    fresh = build_model("resnet", widths=(2, 4, 4))
    fresh.load_state_dict(loaded)
    assert all(np.array_equal(v, fresh.state_dict()[k]) for k, v in state.items())


@needs_safetensors
def test_safetensors_of_a_state_dict_and_its_errors(tmp_path):
    path = tmp_path / "s.safetensors"
    save_safetensors({"a": np.arange(6, dtype=np.int32).reshape(2, 3), "b": xpnet.tensor([1.5])}, str(path))
    loaded = load_safetensors(str(path))
    assert loaded["a"].dtype == np.int32 and loaded["a"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert loaded["b"].dtype == np.float32 and loaded["b"].tolist() == [1.5]
    with pytest.raises(ExportError, match="does not exist"):
        load_safetensors(str(tmp_path / "missing.safetensors"))
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ExportError, match="not a safetensors file"):
        load_safetensors(str(tmp_path / "bad.safetensors"))
    with pytest.raises(ExportError, match="'text'.*not a number type"):
        save_safetensors({"text": np.array(["a"])}, str(path))


@needs_safetensors
def test_torch_twin_loads_the_safetensors_file(tmp_path, one_torch_thread):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    import safetensors.torch

    from xpnet.interop.torch import to_torch

    model = randomise_state(build_model("resnet", widths=(4, 4, 8))).eval()
    path = tmp_path / "resnet.safetensors"
    save_safetensors(model, str(path))
    twin = to_torch(build_model("resnet", widths=(4, 4, 8))).eval()
    twin.load_state_dict(safetensors.torch.load_file(str(path)))  # as a torch user would load it
    assert twin.bn1.num_batches_tracked.dtype == torch.int64
    again = to_torch(build_model("resnet", widths=(4, 4, 8))).eval()
    again.load_state_dict({k: torch.from_numpy(v) for k, v in load_safetensors(str(path)).items()})
    x = np.random.default_rng(3).standard_normal((2, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        for torch_model in (twin, again):
            np.testing.assert_allclose(torch_model(torch.from_numpy(x)).numpy(), xpnet_output(model, x)[0],
                                       rtol=TOLERANCE, atol=TOLERANCE)


# --- the command ------------------------------------------------------------------------------------------------

def trained_checkpoint(mnist_dir, folder, *flags):
    """last.npz of a one-epoch training run of report 1 on the tiny generated digits, with extra ``flags``."""
    from xpnet import train

    xpnet.use("numpy")
    xpnet.manual_seed(0)
    assert train.main(["--data", str(mnist_dir), "--epochs", "1", "--batch-size", "64", "--out", str(folder),
                       "--val-split", "0", "--patience", "0", *flags]) == 0
    return folder / "last.npz"


@pytest.fixture(scope="module")
def checkpoint(mnist_dir, tmp_path_factory):
    return trained_checkpoint(mnist_dir, tmp_path_factory.mktemp("run"))


@needs_onnx
@needs_safetensors
def test_cli_exports_a_trained_checkpoint(checkpoint, tmp_path, capsys):
    from xpnet.checkpoint import load_checkpoint

    onnx_path, weights_path = tmp_path / "model.onnx", tmp_path / "weights.safetensors"
    assert main([str(checkpoint), "--onnx", str(onnx_path), "--safetensors", str(weights_path)]) == 0
    printed = capsys.readouterr().out
    assert "model.onnx" in printed and "weights.safetensors" in printed
    saved = load_checkpoint(checkpoint)
    loaded = load_safetensors(str(weights_path))
    assert set(loaded) == set(saved.weights)
    assert all(loaded[k].tobytes() == v.tobytes() and loaded[k].dtype == v.dtype for k, v in saved.weights.items())

    import onnx

    proto = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == saved.record["classes"] and meta["model"] == "report1"
    model = build_model("report1")
    model.load_state_dict(saved.weights)
    x = np.random.default_rng(0).random((6, 1, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(onnx_output(proto, x)[0], xpnet_output(model, x)[0], rtol=TOLERANCE, atol=TOLERANCE)


@pytest.fixture(scope="module")
def normalized_checkpoint(mnist_dir, tmp_path_factory):
    return trained_checkpoint(mnist_dir, tmp_path_factory.mktemp("run_normalized"), "--normalize")


@needs_onnx
def test_cli_include_normalize_puts_the_statistics_into_the_graph(normalized_checkpoint, tmp_path):
    import onnx

    from xpnet.checkpoint import load_checkpoint
    from xpnet.data.transforms import Normalize

    saved = load_checkpoint(normalized_checkpoint)
    stats = saved.record["normalize"]
    assert stats and stats["std"][0] != 1
    plain, baked = tmp_path / "plain.onnx", tmp_path / "baked.onnx"
    assert main([str(normalized_checkpoint), "--onnx", str(plain)]) == 0
    assert main([str(normalized_checkpoint), "--onnx", str(baked), "--include-normalize"]) == 0
    model = build_model("report1")
    model.load_state_dict(saved.weights)
    images = np.random.default_rng(0).random((6, 1, 28, 28), dtype=np.float32)  # images / 255
    normalized = Normalize(stats["mean"], stats["std"])(images)
    expected = xpnet_output(model, normalized)[0]
    baked_proto, plain_proto = onnx.load(str(baked)), onnx.load(str(plain))
    np.testing.assert_allclose(onnx_output(baked_proto, images)[0], expected, rtol=TOLERANCE, atol=TOLERANCE)
    np.testing.assert_allclose(onnx_output(plain_proto, normalized)[0], expected, rtol=TOLERANCE, atol=TOLERANCE)
    assert [n.op_type for n in baked_proto.graph.node[:2]] == ["Sub", "Div"]
    assert len(baked_proto.graph.node) == len(plain_proto.graph.node) + 2
    for proto, in_graph in ((baked_proto, True), (plain_proto, False)):
        meta = {p.key: p.value for p in proto.metadata_props}
        assert json.loads(meta["normalize_in_graph"]) is in_graph and json.loads(meta["normalize"]) == stats


def test_cli_include_normalize_without_statistics_is_one_line(checkpoint, tmp_path):
    assert_one_line_error(run_cli(checkpoint, "--onnx", tmp_path / "m.onnx", "--include-normalize"),
                          "last.npz", "without --normalize")
    assert not (tmp_path / "m.onnx").exists()


@needs_onnx
def test_normalize_must_match_the_input_channels():
    with pytest.raises(ExportError, match="2 values for an input of 1 channels"):
        to_onnx(build_model("report1"), (1, 28, 28), normalize={"mean": [0.1, 0.2], "std": [1.0, 1.0]})
    with pytest.raises(ValueError, match="non-zero"):
        to_onnx(build_model("report1"), (1, 28, 28), normalize={"mean": [0.1], "std": [0.0]})


def run_cli(*args, env_path=None):
    env = None
    if env_path is not None:
        import os

        env = {**os.environ, "PYTHONPATH": f"{env_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "xpnet.export", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


def assert_one_line_error(result, *words):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0]


def test_cli_missing_checkpoint_is_one_line(tmp_path):
    assert_one_line_error(run_cli(tmp_path / "nope.npz", "--onnx", tmp_path / "m.onnx"), "nope.npz",
                          "no such checkpoint file or run folder")


def test_cli_without_an_output_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "x.npz")])
    assert exit_info.value.code == 2 and "--onnx" in capsys.readouterr().err


@needs_onnx
def test_cli_unsupported_layer_is_one_line(tmp_path):
    from xpnet.checkpoint import save_checkpoint

    (tmp_path / "odd_models.py").write_text(textwrap.dedent('''
        from xpnet import nn
        from xpnet.autograd import Function

        class Cube(Function):
            @staticmethod
            def forward(ctx, a):
                return a * a * a

        class CubeLayer(nn.Module):
            def forward(self, x):
                return Cube.apply(x)

        def build(input_shape, num_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(4, num_classes), CubeLayer())
    '''))
    sys.path.insert(0, str(tmp_path))
    try:
        import odd_models

        weights = odd_models.build((1, 2, 2), 3).state_dict()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("odd_models", None)
    record = {"config": {"model": "odd_models:build"}, "input_shape": [1, 2, 2], "classes": ["a", "b", "c"],
              "epoch": 1}
    save_checkpoint(tmp_path / "odd.npz", weights, {"param_groups": [], "state": {}}, record)
    result = run_cli(tmp_path / "odd.npz", "--onnx", tmp_path / "odd.onnx", env_path=tmp_path)
    assert_one_line_error(result, "layer '2'", "odd_models.Cube", "no ONNX conversion")
    assert not (tmp_path / "odd.onnx").exists()

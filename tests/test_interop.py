"""Moving models and arrays between xpnet and the rest: to_torch/from_torch/load_state_dict and DLPack."""

import numpy as np
import pytest

import xpnet
from xpnet import nn
from xpnet.autograd import from_dlpack

try:
    import torch

    from xpnet.interop import torch as xt
except ImportError:
    torch = xt = None

requires_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed (pip install 'xpnet[torch]')")
MODELS = ["report1", "report2", "lenet5", "resnet"]


def weights(model) -> dict:
    return {k: np.asarray(v) for k, v in model.state_dict().items()}


@pytest.fixture
def float64():
    """Layers built in float64 (the autouse fixture in conftest.py restores float32 afterwards)."""
    xpnet.set_default_dtype(np.float64)


@pytest.fixture
def own_twin_registry(monkeypatch):
    """A private copy of the twin registry, so a test's registrations do not outlive it."""
    monkeypatch.setattr(xt, "_TWINS", dict(xt._TWINS))
    monkeypatch.setattr(xt, "_TWINS_FROM_TORCH", dict(xt._TWINS_FROM_TORCH))


def randomise(model, seed: int = 0) -> None:
    """Random parameters and buffers (running variances positive, batch counts small integers), so that copying
    a default value by accident cannot pass for copying the value."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, value in model.state_dict().items():
        if value.dtype.kind == "i":
            state[key] = rng.integers(1, 9, value.shape).astype(value.dtype)
        elif key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 2.0, value.shape).astype(value.dtype)
        else:
            state[key] = rng.standard_normal(value.shape).astype(value.dtype)
    model.load_state_dict(state)


def torch_state(module) -> dict:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def assert_same_state(ours: dict, theirs: dict, atol: float = 0.0) -> None:
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype, key
        np.testing.assert_allclose(ours[key], value, rtol=0, atol=atol, err_msg=key)


def as_pair(value):
    return (value, value) if isinstance(value, int) and not isinstance(value, bool) else value


def settings(layer, names=None) -> dict:
    """A layer's constructor arguments ``names`` (default: all its own) read back from its attributes, as the
    interop reads them; ints as pairs, so that torch's and xpnet's spellings compare equal."""
    names = xt._settings(type(layer)) if names is None else names
    return {name: as_pair(xt._setting(layer, name, "")) for name in names}


# --- every layer, both ways ----------------------------------------------------------------------------------------

# (id, xpnet layer, input shape); losses get (logits, targets) with the shape as logits.
LAYERS = [
    ("conv", lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2, bias=False),
     (2, 4, 9, 8)),
    ("conv_same", lambda: nn.Conv2d(3, 4, 4, padding="same", dilation=2), (2, 3, 9, 9)),
    ("conv_alias", lambda: nn.Conv2D(2, 3, 3, padding=1), (2, 2, 6, 6)),
    ("linear", lambda: nn.Linear(5, 3), (4, 5)),
    ("dense_no_bias", lambda: nn.Dense(5, 3, bias=False), (4, 5)),
    ("batchnorm1d", lambda: nn.BatchNorm1d(5, eps=1e-3, momentum=0.2), (6, 5)),
    ("batchnorm1d_ncl", lambda: nn.BatchNorm1d(3), (4, 3, 7)),
    ("batchnorm2d", lambda: nn.BatchNorm2d(3), (4, 3, 5, 5)),
    ("batchnorm2d_cumulative", lambda: nn.BatchNorm2d(3, momentum=None), (4, 3, 5, 5)),
    ("batchnorm2d_plain", lambda: nn.BatchNorm2d(3, affine=False, track_running_stats=False), (4, 3, 5, 5)),
    ("maxpool", lambda: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), (2, 3, 8, 8)),
    ("maxpool_alias", lambda: nn.MaxPool2D(2), (2, 3, 8, 8)),
    ("avgpool", lambda: nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False), (2, 3, 8, 8)),
    ("avgpool_default", lambda: nn.AvgPool2d(2), (2, 3, 8, 8)),
    ("adaptive_avgpool", lambda: nn.AdaptiveAvgPool2d((2, 3)), (2, 3, 7, 8)),
    ("adaptive_avgpool_global", lambda: nn.AdaptiveAvgPool2d(1), (2, 3, 5, 5)),
    ("dropout", lambda: nn.Dropout(0.3), (4, 6)),
    ("flatten", lambda: nn.Flatten(2, 3), (2, 3, 4, 5, 2)),
    ("flatten_default", lambda: nn.Flatten(), (2, 3, 4, 5)),
    ("relu", lambda: nn.ReLU(), (3, 4)),
    ("sigmoid", lambda: nn.Sigmoid(), (3, 4)),
    ("tanh", lambda: nn.Tanh(), (3, 4)),
    ("leaky_relu", lambda: nn.LeakyReLU(0.2), (3, 4)),
    ("gelu", lambda: nn.GELU(), (3, 4)),
    ("gelu_tanh", lambda: nn.GELU(approximate="tanh"), (3, 4)),
    ("softmax", lambda: nn.Softmax(dim=1), (3, 4, 2)),
    ("log_softmax", lambda: nn.LogSoftmax(dim=-1), (3, 4)),
    ("identity", lambda: nn.Identity(), (3, 4)),
    ("nll_loss", lambda: nn.NLLLoss(), (5, 4)),
    ("cross_entropy", lambda: nn.CrossEntropyLoss(label_smoothing=0.1), (5, 4)),
    ("sequential", lambda: nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3), nn.ReLU(),
                                         nn.Sequential(nn.AvgPool2d(2), nn.Flatten()), nn.Linear(12, 4)),
     (3, 2, 6, 6)),
]
LOSSES = ("nll_loss", "cross_entropy")


def run(layer, x, targets):
    """The layer's output on ``x`` (and ``targets`` for a loss) in either framework, as a NumPy array."""
    if isinstance(layer, torch.nn.Module):
        args = (torch.from_numpy(x.copy()),) + (() if targets is None else (torch.from_numpy(targets),))  # inplace
        with torch.no_grad():
            return layer(*args).numpy()
    args = (xpnet.tensor(x),) + (() if targets is None else (targets,))
    return layer(*args).numpy()


@requires_torch
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case, build, shape", LAYERS, ids=[case for case, *_ in LAYERS])
def test_every_layer_round_trips_with_settings_state_and_outputs(float64, case, build, shape, training):
    layer = build().train(training)
    randomise(layer)
    twin = xt.to_torch(layer)
    back = xt.from_torch(twin)
    assert type(back) is type(layer) and type(twin).__name__ == type(layer).__name__.replace("Dense", "Linear")
    for ours, theirs in zip(layer.named_modules(), twin.named_modules()):
        assert ours[0] == theirs[0] and ours[1].training == theirs[1].training == training
    theirs = dict(twin.named_modules())
    for (path, a), (_, b) in zip(layer.named_modules(), back.named_modules()):
        names = xt._settings(type(a)) if type(a) in xt._LAYERS else {}
        assert settings(b, names) == settings(a, names) == settings(theirs[path], names), path
    assert_same_state(weights(layer), torch_state(twin))
    assert_same_state(weights(back), weights(layer))
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    targets = rng.integers(0, shape[1], shape[0]) if case in LOSSES else None
    if case in LOSSES:
        x = run(nn.LogSoftmax(dim=1), x, None) if case == "nll_loss" else x
    state = xpnet.random.get_state()
    expected = run(layer, x, targets)
    xpnet.random.set_state(state)
    np.testing.assert_array_equal(run(back, x, targets), expected)  # same code, same numbers
    if not (training and case == "dropout"):  # torch draws its own dropout masks (xpnet.check replays them)
        np.testing.assert_allclose(run(twin, x, targets), expected, rtol=0, atol=1e-12 * max(1, np.abs(expected).max()))
        assert_same_state(weights(layer), torch_state(twin), atol=1e-12)  # running statistics moved alike
    assert_same_state(weights(back), weights(layer), atol=1e-12)


@requires_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", MODELS)
def test_round_trip_keeps_weights_outputs_and_dtype(name, dtype):
    xpnet.set_default_dtype(dtype)
    model = xpnet.build_model(name).eval()
    twin = xt.to_torch(model)
    back = xt.from_torch(twin)
    assert not twin.training and not back.training
    assert [k for k, _ in twin.named_parameters()] == [k for k, _ in model.named_parameters()]
    assert [k for k, _ in twin.named_buffers()] == [k for k, _ in model.named_buffers()]
    assert all(p.dtype == torch.from_numpy(np.zeros(0, dtype)).dtype for p in twin.parameters())
    assert_same_state(weights(back), weights(model))
    assert_same_state(torch_state(twin), weights(model))
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(dtype)
    out = model(xpnet.tensor(x)).numpy()
    np.testing.assert_array_equal(back(xpnet.tensor(x)).numpy(), out)
    with torch.no_grad():
        theirs = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(theirs, out, rtol=0, atol=(1e-6 if dtype == np.float32 else 1e-13) * np.abs(out).max())


@requires_torch
def test_to_torch_copies_rather_than_shares():
    model = xpnet.build_model("resnet")
    twin = xt.to_torch(model)
    with torch.no_grad():
        twin.conv1.weight.zero_()
        twin.bn1.running_var.zero_()
    assert np.abs(model.conv1.weight.numpy()).sum() > 0
    assert np.all(weights(model)["bn1.running_var"] == 1)
    back = xt.from_torch(twin)
    back.bn1.load_state_dict({**weights(back.bn1), "running_mean": np.full(16, 5.0, np.float32)})
    assert np.all(twin.bn1.running_mean.numpy() == 0)


@requires_torch
def test_each_module_keeps_its_own_mode():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2).eval(), nn.Dropout(0.5))
    twin = xt.to_torch(model)
    assert [m.training for m in twin.modules()] == [True, True, False, True]
    back = xt.from_torch(twin.eval())
    assert not any(m.training for _, m in back.named_modules())


@requires_torch
def test_module_list_round_trips():
    model = nn.ModuleList([nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ModuleList([nn.Tanh()])])
    twin = xt.to_torch(model)
    assert isinstance(twin, torch.nn.ModuleList) and isinstance(twin[2], torch.nn.ModuleList)
    assert isinstance(twin[2][0], torch.nn.Tanh) and len(twin) == 3
    assert [k for k, _ in twin.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    back = xt.from_torch(twin)
    assert isinstance(back, nn.ModuleList) and isinstance(back[2][0], nn.Tanh)
    assert_same_state(weights(back), weights(model))


@requires_torch
def test_nested_sequential_and_layers_without_bias():
    model = nn.Sequential(nn.Sequential(nn.Conv2D(2, 3, 3, stride=2, padding=1, bias=False), nn.ReLU()),
                          nn.MaxPool2D(2), nn.Dropout(0.25), nn.Flatten(), nn.Dense(12, 5, bias=False))
    twin = xt.to_torch(model)
    assert isinstance(twin[0], torch.nn.Sequential) and twin[0][0].bias is None and twin[4].bias is None
    assert (twin[0][0].stride, twin[0][0].padding, twin[2].p) == ((2, 2), (1, 1), 0.25)
    assert [k for k, _ in twin.named_parameters()] == ["0.0.weight", "4.weight"]
    back = xt.from_torch(twin).eval()
    x = np.random.default_rng(1).standard_normal((2, 2, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(back(xpnet.tensor(x)).numpy(), model.eval()(xpnet.tensor(x)).numpy())


# --- torch-built layers into xpnet ---------------------------------------------------------------------------------

def _torch_batchnorm(cls, features, **options):
    """A torch BatchNorm with random affine parameters and running statistics, as after some training."""
    layer = cls(features, **options).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p))
        if layer.track_running_stats:
            layer.running_mean.copy_(torch.randn(features, dtype=torch.float64))
            layer.running_var.copy_(torch.rand(features, dtype=torch.float64) + 0.5)
            layer.num_batches_tracked.fill_(4)
    return layer


TORCH_LAYERS = [
    ("batchnorm2d", lambda: _torch_batchnorm(torch.nn.BatchNorm2d, 3, eps=1e-4, momentum=0.3), (4, 3, 5, 5)),
    ("batchnorm2d_cumulative", lambda: _torch_batchnorm(torch.nn.BatchNorm2d, 3, momentum=None), (4, 3, 5, 5)),
    ("batchnorm2d_no_affine", lambda: _torch_batchnorm(torch.nn.BatchNorm2d, 3, affine=False), (4, 3, 5, 5)),
    ("batchnorm1d", lambda: _torch_batchnorm(torch.nn.BatchNorm1d, 4, momentum=0.05), (6, 4)),
    ("batchnorm1d_no_stats", lambda: _torch_batchnorm(torch.nn.BatchNorm1d, 4, track_running_stats=False),
     (6, 4, 3)),
    ("maxpool", lambda: torch.nn.MaxPool2d((3, 2), stride=(2, 1), padding=1, ceil_mode=True), (2, 3, 9, 8)),
    ("avgpool", lambda: torch.nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (2, 3, 9, 8)),
    ("avgpool_ceil", lambda: torch.nn.AvgPool2d(2, ceil_mode=True), (2, 3, 9, 8)),
    ("adaptive_avgpool", lambda: torch.nn.AdaptiveAvgPool2d((3, 2)), (2, 3, 7, 5)),
    ("sigmoid", lambda: torch.nn.Sigmoid(), (3, 5)),
    ("tanh", lambda: torch.nn.Tanh(), (3, 5)),
    ("leaky_relu", lambda: torch.nn.LeakyReLU(0.3, inplace=True), (3, 5)),
    ("gelu_tanh", lambda: torch.nn.GELU(approximate="tanh"), (3, 5)),
    ("softmax", lambda: torch.nn.Softmax(dim=0), (3, 5)),
    ("log_softmax", lambda: torch.nn.LogSoftmax(dim=1), (3, 5)),
    ("identity", lambda: torch.nn.Identity(), (3, 5)),
    ("flatten", lambda: torch.nn.Flatten(0, 1), (3, 5, 2)),
    ("conv_grouped", lambda: torch.nn.Conv2d(4, 2, 3, padding="same", dilation=(2, 1), groups=2).double(),
     (2, 4, 7, 6)),
]


@requires_torch
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case, build, shape", TORCH_LAYERS, ids=[case for case, *_ in TORCH_LAYERS])
def test_torch_built_layers_compute_the_same_in_xpnet(case, build, shape, training):
    torch.manual_seed(0)
    layer = build().train(training)
    ours = xt.from_torch(layer)
    assert type(ours).__name__ == type(layer).__name__ and ours.training == training
    assert settings(layer, xt._settings(type(ours))) == settings(ours)
    assert_same_state(weights(ours), torch_state(layer))
    x = np.random.default_rng(2).standard_normal(shape)
    expected = run(layer, x, None)
    np.testing.assert_allclose(run(ours, x, None), expected, rtol=0, atol=1e-12 * max(1, np.abs(expected).max()))
    assert_same_state(weights(ours), torch_state(layer), atol=1e-12)  # running statistics after the step


@requires_torch
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_built_losses_compute_the_same_in_xpnet(reduction):
    rng = np.random.default_rng(3)
    logits, targets = rng.standard_normal((6, 5)), rng.integers(0, 5, 6)
    for layer in (torch.nn.CrossEntropyLoss(label_smoothing=0.2, reduction=reduction),
                  torch.nn.NLLLoss(reduction=reduction)):
        ours = xt.from_torch(layer)
        assert type(ours).__name__ == type(layer).__name__
        np.testing.assert_allclose(run(ours, logits, targets), run(layer, logits, targets), rtol=0, atol=1e-12)


@requires_torch
def test_class_weights_of_losses_travel_as_copies():
    rng = np.random.default_rng(4)
    logits, targets = rng.standard_normal((7, 3)), np.array([0, 1, 2, 2, 1, -1, 0])
    weight = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64)
    for layer in (torch.nn.CrossEntropyLoss(weight, ignore_index=-1, label_smoothing=0.1),
                  torch.nn.NLLLoss(weight, ignore_index=-1)):
        ours = xt.from_torch(layer)
        np.testing.assert_array_equal(xt.to_numpy(ours.weight), weight.numpy())
        np.testing.assert_allclose(run(ours, logits, targets), run(layer, logits, targets), rtol=0, atol=1e-12)
        again = xt.to_torch(ours)
        assert torch.equal(again.weight, weight) and not np.shares_memory(again.weight.numpy(), weight.numpy())
        assert again.ignore_index == -1 and list(again.state_dict()) == list(ours.state_dict()) == ["weight"]


@requires_torch
def test_from_torch_builds_a_model_that_computes_what_torch_does():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, (3, 3), padding=(1, 1)), torch.nn.ReLU(),
                              torch.nn.MaxPool2d((2, 2)), torch.nn.Flatten(), torch.nn.Linear(64, 10)).double()
    model = xt.from_torch(net)
    assert isinstance(model[0], nn.Conv2d) and model[0].weight.dtype == np.float64
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    np.testing.assert_allclose(model(xpnet.tensor(x.numpy())).numpy(), net(x).detach().numpy(), atol=1e-12)


@requires_torch
def test_from_torch_leaves_xpnet_generator_alone():
    net = xt.to_torch(xpnet.build_model("resnet"))
    xpnet.manual_seed(5)
    expected = xpnet.random.generator().random(3)
    xpnet.manual_seed(5)
    xt.from_torch(net)
    np.testing.assert_array_equal(xpnet.random.generator().random(3), expected)


@requires_torch
def test_to_torch_leaves_torch_generator_alone():
    model = xpnet.build_model("resnet")
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    xt.to_torch(model)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


@requires_torch
def test_from_torch_names_the_unsupported_layer():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.Sequential(torch.nn.LSTM(3, 3)))
    with pytest.raises(TypeError, match=r"'1\.0' of type LSTM.*register_twin"):
        xt.from_torch(net)


@requires_torch
@pytest.mark.parametrize("layer, message", [
    (lambda: torch.nn.Conv2d(1, 3, 3, padding_mode="reflect"), "padding_mode"),
    (lambda: torch.nn.MaxPool2d(2, return_indices=True), "return_indices"),
    (lambda: torch.nn.MaxPool2d(2, dilation=2), "dilation"),
])
def test_from_torch_rejects_settings_xpnet_lacks(layer, message):
    with pytest.raises(ValueError, match=message):
        xt.from_torch(torch.nn.Sequential(layer()))


# --- twins of composite modules ------------------------------------------------------------------------------------

class Gate(nn.Module):
    """A custom composite: x * sigmoid(proj(x)) * scale."""

    def __init__(self, features: int, scale: float):
        super().__init__()
        self.proj = nn.Linear(features, features)
        self.scale = scale

    def forward(self, x):
        return x * nn.Sigmoid()(self.proj(x)) * self.scale


class TorchGate(torch.nn.Module if torch is not None else object):
    def forward(self, x):
        return x * torch.sigmoid(self.proj(x)) * self.scale


@requires_torch
def test_unknown_custom_module_is_named_with_how_to_register_it():
    with pytest.raises(TypeError, match=r"layer '1' of type Gate.*register_twin\(xpnet_class, torch_class\)"
                                        r" for test_interop\.Gate"):
        xt.to_torch(nn.Sequential(nn.ReLU(), Gate(3, 2.0)))


@requires_torch
def test_registered_twin_carries_children_attributes_and_forward(own_twin_registry, float64):
    xt.register_twin(Gate, TorchGate)
    model = nn.Sequential(Gate(3, 0.5), nn.Linear(3, 2))
    twin = xt.to_torch(model)
    assert isinstance(twin[0], TorchGate) and twin[0].scale == 0.5 and isinstance(twin[0].proj, torch.nn.Linear)
    x = np.random.default_rng(4).standard_normal((4, 3))
    np.testing.assert_allclose(run(twin, x, None), run(model, x, None), rtol=0, atol=1e-12)
    back = xt.from_torch(twin)
    assert isinstance(back[0], Gate) and back[0].scale == 0.5
    np.testing.assert_array_equal(run(back, x, None), run(model, x, None))


@requires_torch
def test_register_twin_checks_its_arguments(own_twin_registry):
    with pytest.raises(TypeError, match="xpnet_class"):
        xt.register_twin(TorchGate, TorchGate)
    with pytest.raises(TypeError, match="torch_class"):
        xt.register_twin(Gate, Gate)
    with pytest.raises(ValueError, match="built-in layer"):
        xt.register_twin(nn.Conv2d, TorchGate)


# --- load_state_dict -----------------------------------------------------------------------------------------------

@requires_torch
@pytest.mark.parametrize("as_numpy", [False, True])
def test_load_state_dict_from_torch(as_numpy):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                              torch.nn.Linear(400, 120), torch.nn.ReLU(), torch.nn.Linear(120, 84), torch.nn.ReLU(),
                              torch.nn.Linear(84, 10)).double()
    state = {k: v.numpy() for k, v in net.state_dict().items()} if as_numpy else net.state_dict()
    model = xpnet.build_model("lenet5")  # float32: loading casts to the model's dtype
    xt.load_state_dict(model, state)
    for key, value in net.state_dict().items():
        assert weights(model)[key].dtype == np.float32
        np.testing.assert_array_equal(weights(model)[key], value.numpy().astype(np.float32))


@requires_torch
def test_load_state_dict_loads_buffers():
    torch.manual_seed(0)
    net = xt.TorchResNet()
    net.train()
    net(torch.randn(4, 1, 28, 28))  # running statistics move, num_batches_tracked becomes 1
    model = xpnet.build_model("resnet")
    xt.load_state_dict(model, net.state_dict())
    assert_same_state(weights(model), {k: v.astype(np.float32) if v.dtype.kind == "f" else v
                                       for k, v in torch_state(net).items()})
    assert weights(model)["layer2.0.downsample.1.num_batches_tracked"] == 1


@requires_torch
@pytest.mark.parametrize("edit, error, key", [
    (lambda s: s.pop("5.bias"), KeyError, "5.bias"),
    (lambda s: s.update({"6.weight": torch.zeros(3)}), KeyError, "6.weight"),
    (lambda s: s.update({"0.weight": torch.zeros(8, 1, 5, 5)}), ValueError, "0.weight"),
])
def test_load_state_dict_errors_name_the_key_and_write_nothing(edit, error, key):
    model = xpnet.build_model("report1")
    before = weights(model)
    state = xt.to_torch(xpnet.build_model("report1")).state_dict()
    edit(state)
    with pytest.raises(error, match=key):
        xt.load_state_dict(model, state)
    for k, value in weights(model).items():
        np.testing.assert_array_equal(value, before[k])


@requires_torch
def test_load_state_dict_missing_buffer_is_named():
    state = xt.to_torch(xpnet.build_model("resnet")).state_dict()
    state.pop("bn1.running_var")
    with pytest.raises(KeyError, match="bn1.running_var"):
        xt.load_state_dict(xpnet.build_model("resnet"), state)


# --- DLPack --------------------------------------------------------------------------------------------------------

def test_dlpack_numpy_both_ways_share_memory():
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    t = from_dlpack(a)
    assert np.shares_memory(t.data, a) and t.dtype == np.float64 and t.shape == (3, 4)
    back = np.from_dlpack(t)
    assert np.shares_memory(back, a)
    assert t.__dlpack_device__() == a.__dlpack_device__()


def test_from_dlpack_tensor_is_a_trainable_leaf():
    t = from_dlpack(np.ones(3, dtype=np.float32), requires_grad=True)
    (t * 2.0).sum().backward()
    np.testing.assert_array_equal(t.grad, [2.0, 2.0, 2.0])


@requires_torch
def test_dlpack_torch_both_ways_without_copies():
    src = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    t = from_dlpack(src)
    src[0, 0] = 42.0
    assert t.data[0, 0] == 42.0 and t.dtype == np.float32
    out = torch.from_dlpack(xpnet.tensor(np.zeros((2, 2))))
    assert out.dtype == torch.float64
    x = xpnet.tensor(np.zeros((2, 2)))
    torch.from_dlpack(x)[1, 1] = 7.0
    assert x.data[1, 1] == 7.0


@pytest.mark.gpu
def test_dlpack_cupy_without_copies():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    try:
        xpnet.use("cupy")
    except xpnet.BackendUnavailable as exc:
        pytest.skip(str(exc))
    src = cupy.arange(6, dtype=cupy.float32)
    t = from_dlpack(src)
    assert t.data.data.ptr == src.data.ptr
    assert cupy.from_dlpack(t).data.ptr == src.data.ptr

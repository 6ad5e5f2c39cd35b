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
MODELS = ["report1", "report2", "lenet5"]


def weights(model) -> dict:
    return {k: np.asarray(v) for k, v in model.state_dict().items()}


# --- to_torch / from_torch -------------------------------------------------------------------------------------

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
    assert all(p.dtype == torch.from_numpy(np.zeros(0, dtype)).dtype for p in twin.parameters())
    for key, value in weights(model).items():
        np.testing.assert_array_equal(weights(back)[key], value)
        assert weights(back)[key].dtype == dtype
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(dtype)
    out = model(xpnet.tensor(x)).numpy()
    np.testing.assert_array_equal(back(xpnet.tensor(x)).numpy(), out)
    with torch.no_grad():
        theirs = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(theirs, out, rtol=0, atol=(1e-6 if dtype == np.float32 else 1e-13) * np.abs(out).max())


@requires_torch
def test_to_torch_copies_rather_than_shares():
    model = xpnet.build_model("lenet5")
    twin = xt.to_torch(model)
    with torch.no_grad():
        twin[0].weight.zero_()
    assert np.abs(model[0].weight.numpy()).sum() > 0


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


@requires_torch
def test_from_torch_builds_a_model_that_computes_what_torch_does():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, (3, 3), padding=(1, 1)), torch.nn.ReLU(),
                              torch.nn.MaxPool2d((2, 2)), torch.nn.Flatten(), torch.nn.Linear(64, 10)).double()
    model = xt.from_torch(net)
    assert isinstance(model[0], nn.Conv2D) and model[0].weight.dtype == np.float64
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    np.testing.assert_allclose(model(xpnet.tensor(x.numpy())).numpy(), net(x).detach().numpy(), atol=1e-12)


@requires_torch
def test_from_torch_leaves_xpnet_generator_alone():
    net = xt.to_torch(xpnet.build_model("lenet5"))
    xpnet.manual_seed(5)
    expected = xpnet.random.generator().random(3)
    xpnet.manual_seed(5)
    xt.from_torch(net)
    np.testing.assert_array_equal(xpnet.random.generator().random(3), expected)


@requires_torch
def test_from_torch_names_the_unsupported_layer():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3))
    with pytest.raises(TypeError, match=r"'1' of type BatchNorm2d"):
        xt.from_torch(net)


@requires_torch
@pytest.mark.parametrize("layer, message", [
    (lambda: torch.nn.Conv2d(1, 3, 3, dilation=2), "dilation"),
    (lambda: torch.nn.Conv2d(1, 3, (3, 5)), "kernel_size"),
    (lambda: torch.nn.Conv2d(2, 4, 3, groups=2), "groups"),
    (lambda: torch.nn.MaxPool2d(2, ceil_mode=True), "ceil_mode"),
])
def test_from_torch_rejects_settings_xpnet_lacks(layer, message):
    with pytest.raises(ValueError, match=message):
        xt.from_torch(torch.nn.Sequential(layer()))


@requires_torch
def test_to_torch_names_a_layer_without_equivalent():
    class Custom(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match=r"'1' of type Custom"):
        xt.to_torch(nn.Sequential(nn.ReLU(), Custom()))


# --- load_state_dict ---------------------------------------------------------------------------------------------

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


# --- DLPack ------------------------------------------------------------------------------------------------------

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

"""The layers xpnet shares with PyTorch, module against module in float64 on every backend: forward and input
gradient to 1e-10 (pooling with padding and ceil mode, adaptive pooling, activations, Flatten, Linear on
3-D input), and the containers' naming, indexing and state_dict keys."""

from __future__ import annotations

import zlib
from collections import OrderedDict

import numpy as np
import pytest
from backend_fixtures import backend_name  # noqa: F401  (a fixture)

import xpnet
from xpnet import nn

torch = pytest.importorskip("torch", reason="PyTorch is the reference these parity tests compare against")

LAYERS = [
    ("MaxPool2d 2", lambda m: m.MaxPool2d(2), (2, 3, 8, 8)),
    ("MaxPool2d 2 odd", lambda m: m.MaxPool2d(2), (1, 2, 7, 9)),
    ("MaxPool2d 3 s2", lambda m: m.MaxPool2d(3, 2), (2, 2, 9, 8)),
    ("MaxPool2d 3 s2 p1", lambda m: m.MaxPool2d(3, 2, 1), (2, 2, 9, 8)),
    ("MaxPool2d 3 s2 p1 ceil", lambda m: m.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 2, 8, 7)),
    ("MaxPool2d 2 ceil", lambda m: m.MaxPool2d(2, ceil_mode=True), (1, 3, 5, 7)),
    ("MaxPool2d 3 s3 p1 ceil", lambda m: m.MaxPool2d(3, 3, 1, ceil_mode=True), (2, 1, 6, 8)),
    ("MaxPool2d (2, 3) s (1, 2) p (1, 1)", lambda m: m.MaxPool2d((2, 3), (1, 2), (1, 1)), (2, 2, 5, 6)),
    ("MaxPool2d unbatched", lambda m: m.MaxPool2d(3, 2, 1), (3, 7, 7)),
    ("AvgPool2d 2", lambda m: m.AvgPool2d(2), (2, 3, 8, 7)),
    ("AvgPool2d 3 s2 p1", lambda m: m.AvgPool2d(3, 2, 1), (2, 2, 9, 8)),
    ("AvgPool2d 3 s2 p1 exclude pad", lambda m: m.AvgPool2d(3, 2, 1, count_include_pad=False), (2, 2, 9, 8)),
    ("AvgPool2d 3 s2 p1 ceil", lambda m: m.AvgPool2d(3, 2, 1, ceil_mode=True), (2, 2, 8, 7)),
    ("AvgPool2d 3 s2 p1 ceil exclude pad", lambda m: m.AvgPool2d(3, 2, 1, True, False), (2, 2, 8, 7)),
    ("AvgPool2d 2 ceil", lambda m: m.AvgPool2d(2, ceil_mode=True), (1, 3, 5, 7)),
    ("AvgPool2d 2 ceil exclude pad", lambda m: m.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
     (1, 3, 5, 7)),
    ("AvgPool2d 3 s3 p1 ceil", lambda m: m.AvgPool2d(3, 3, 1, ceil_mode=True), (2, 1, 6, 8)),
    ("AvgPool2d divisor 5", lambda m: m.AvgPool2d(3, 2, 1, ceil_mode=True, divisor_override=5), (2, 2, 8, 7)),
    ("AvgPool2d (3, 2) s 1 p (1, 0)", lambda m: m.AvgPool2d((3, 2), 1, (1, 0)), (2, 2, 5, 6)),
    ("AvgPool2d unbatched", lambda m: m.AvgPool2d(2, 1, 1), (3, 5, 4)),
    ("AdaptiveAvgPool2d 1", lambda m: m.AdaptiveAvgPool2d(1), (4, 3, 7, 7)),
    ("AdaptiveAvgPool2d (1, 1)", lambda m: m.AdaptiveAvgPool2d((1, 1)), (2, 3, 5, 6)),
    ("AdaptiveAvgPool2d 3", lambda m: m.AdaptiveAvgPool2d(3), (2, 2, 7, 8)),
    ("AdaptiveAvgPool2d (4, 3)", lambda m: m.AdaptiveAvgPool2d((4, 3)), (2, 2, 10, 5)),
    ("AdaptiveAvgPool2d (None, 2)", lambda m: m.AdaptiveAvgPool2d((None, 2)), (2, 2, 5, 5)),
    ("AdaptiveAvgPool2d larger", lambda m: m.AdaptiveAvgPool2d((6, 5)), (1, 2, 4, 3)),
    ("AdaptiveAvgPool2d dividing", lambda m: m.AdaptiveAvgPool2d((2, 3)), (2, 2, 8, 9)),
    ("AdaptiveAvgPool2d unbatched", lambda m: m.AdaptiveAvgPool2d(2), (3, 5, 5)),
    ("Sigmoid", lambda m: m.Sigmoid(), (3, 4, 5)),
    ("Tanh", lambda m: m.Tanh(), (3, 4, 5)),
    ("ReLU", lambda m: m.ReLU(), (3, 4, 5)),
    ("LeakyReLU", lambda m: m.LeakyReLU(), (3, 4, 5)),
    ("LeakyReLU 0.3", lambda m: m.LeakyReLU(0.3), (3, 4, 5)),
    ("GELU", lambda m: m.GELU(), (3, 4, 5)),
    ("GELU tanh", lambda m: m.GELU(approximate="tanh"), (3, 4, 5)),
    ("Softmax 1", lambda m: m.Softmax(dim=1), (3, 4, 5)),
    ("Softmax -1", lambda m: m.Softmax(-1), (3, 4, 5)),
    ("LogSoftmax 0", lambda m: m.LogSoftmax(0), (3, 4, 5)),
    ("LogSoftmax 1", lambda m: m.LogSoftmax(dim=1), (3, 4, 2, 2)),
    ("Identity", lambda m: m.Identity(), (3, 4)),
    ("Flatten", lambda m: m.Flatten(), (2, 3, 4, 5)),
    ("Flatten 0", lambda m: m.Flatten(0), (2, 3, 4)),
    ("Flatten 1..2", lambda m: m.Flatten(1, 2), (2, 3, 4, 5)),
    ("Flatten -3..-2", lambda m: m.Flatten(-3, -2), (2, 3, 4, 5)),
]


@pytest.mark.parametrize("name, make, shape", LAYERS, ids=[layer[0] for layer in LAYERS])
def test_layer_forward_and_input_gradient_match_torch(backend_name, name, make, shape):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    x = rng.standard_normal(shape) * 2
    ours, theirs = make(nn), make(torch.nn)
    assert repr(ours) == repr(theirs)
    xt = xpnet.tensor(x, requires_grad=True)
    out = ours(xt)
    tx = torch.tensor(x, requires_grad=True)
    tout = theirs(tx)
    assert out.shape == tuple(tout.shape)
    g = rng.standard_normal(out.shape)
    out.backward(xpnet.get_backend().asarray(g))
    tout.backward(torch.from_numpy(g))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(xpnet.get_backend().to_numpy(xt.grad), tx.grad.numpy(), rtol=0, atol=1e-10)


def test_linear_on_3d_input_matches_torch(backend_name):
    rng = np.random.default_rng(0)
    ours = nn.Linear(6, 4).double()
    theirs = torch.nn.Linear(6, 4).double()
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(ours.state_dict()["weight"]))
        theirs.bias.copy_(torch.from_numpy(ours.state_dict()["bias"]))
    assert repr(ours) == repr(theirs)
    x = rng.standard_normal((2, 3, 6))
    g = rng.standard_normal((2, 3, 4))
    xt = xpnet.tensor(x, requires_grad=True)
    out = ours(xt)
    out.backward(xpnet.get_backend().asarray(g))
    tx = torch.tensor(x, requires_grad=True)
    theirs(tx).backward(torch.from_numpy(g))
    np.testing.assert_allclose(out.numpy(), theirs(tx).detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(xpnet.get_backend().to_numpy(xt.grad), tx.grad.numpy(), rtol=0, atol=1e-12)
    backend = xpnet.get_backend()
    for key, param in (("weight", ours.weight), ("bias", ours.bias)):
        np.testing.assert_allclose(backend.to_numpy(param.grad), getattr(theirs, key).grad.numpy(), rtol=0,
                                   atol=1e-12)
    assert nn.Dense is nn.Linear


def build_lists(m):
    """The same ModuleList edits in either framework."""
    layers = m.ModuleList([m.Linear(2, 3), m.ReLU()])
    layers.append(m.Linear(3, 4))
    layers.extend([m.Tanh(), m.Linear(4, 1)])
    layers.insert(1, m.Sigmoid())
    layers.insert(5, m.Identity())
    del layers[2]
    layers[0] = m.Linear(2, 3, bias=False)
    layers += [m.GELU()]
    return layers


def test_module_list_names_and_indexing_follow_torch():
    ours, theirs = build_lists(nn), build_lists(torch.nn)
    assert [name for name, _ in ours.named_parameters()] == [name for name, _ in theirs.named_parameters()]
    assert list(ours._modules) == [str(i) for i in range(len(ours))] == list(theirs._modules)
    assert [type(m).__name__ for m in ours] == [type(m).__name__ for m in theirs]
    assert repr(ours) == repr(theirs)
    assert [type(m).__name__ for m in ours[1:4]] == [type(m).__name__ for m in theirs[1:4]]
    assert isinstance(ours[1:4], nn.ModuleList) and list(ours[1:4]._modules) == ["0", "1", "2"]
    assert type(ours[-1]).__name__ == "GELU" and len(ours) == len(theirs) == 7
    with pytest.raises(IndexError, match="out of range"):
        ours[7]
    with pytest.raises(TypeError, match="is not a Module subclass"):
        ours.append(np.zeros(3))
    with pytest.raises(TypeError, match="iterable"):
        ours.extend(5)


def test_module_list_in_a_model_gives_torchs_state_dict_keys():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            for block in self.blocks:
                x = block(x).relu()
            return self.head(x)

    class TorchNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(3)])
            self.head = torch.nn.Linear(4, 2)

    ours = Net()
    assert list(ours.state_dict()) == list(TorchNet().state_dict())
    assert ours(xpnet.tensor(np.ones((5, 4), np.float32))).shape == (5, 2)
    with pytest.raises(NotImplementedError):
        ours.blocks(xpnet.tensor(np.ones((5, 4), np.float32)))


def test_sequential_slices_keep_names_like_torch():
    def build(m):
        return m.Sequential(OrderedDict([("conv", m.Conv2d(1, 2, 3)), ("act", m.ReLU()),
                                         ("pool", m.MaxPool2d(2)), ("flat", m.Flatten())]))

    ours, theirs = build(nn), build(torch.nn)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["conv.weight", "conv.bias"]
    assert list(ours[1:3]._modules) == list(theirs[1:3]._modules) == ["act", "pool"]
    assert type(ours[-1]).__name__ == "Flatten"
    plain = nn.Sequential(nn.ReLU(), nn.Tanh(), nn.Sigmoid())
    assert list(plain[1:]._modules) == list(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Tanh(),
                                                                torch.nn.Sigmoid())[1:]._modules) == ["1", "2"]

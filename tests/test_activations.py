"""Activations: erf against math.erf, numerically stable sigmoid, the softmax dimension rules, and every
activation against PyTorch in float64 (forward and input gradient to 1e-10) on every backend."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from backend_fixtures import backend_name  # noqa: F401  (a fixture)

import xpnet
from xpnet import functional as F
from xpnet import nn, special

torch = pytest.importorskip("torch", reason="PyTorch is the reference for the activations")


def erf_points() -> np.ndarray:
    """Normal and uniform draws, both tails, every branch boundary of Cody's approximation, tiny and huge."""
    rng = np.random.default_rng(0)
    boundaries = np.array([0.46875, 4.0, 26.543])
    near = (boundaries[:, None] * (1 + np.array([-1e-15, -1e-9, 0, 1e-9, 1e-15]))).ravel()
    magnitudes = np.concatenate([rng.standard_normal(20000) * 2, rng.uniform(0, 8, 20000), rng.uniform(8, 40, 2000),
                                 np.logspace(-320, 2, 4000), near, [0.0, 5e-324, 1e-300, 1e300, 1.7e308]])
    return np.concatenate([magnitudes, -magnitudes])


def test_erf_matches_math_erf_to_1e_15_relative():
    x = erf_points()
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        ours = special.erf(np, x)
    reference = np.array([math.erf(v) for v in x])
    relative = np.abs(ours - reference) / np.maximum(np.abs(reference), np.finfo(float).tiny)
    worst = int(np.argmax(relative))
    assert relative[worst] <= 1e-15, f"erf({x[worst]!r}) = {ours[worst]!r}, math.erf gives {reference[worst]!r}"
    assert np.all(np.signbit(ours) == np.signbit(reference))  # erf(-0.0) is -0.0


def test_erf_special_values_and_dtype():
    out = special.erf(np, np.array([np.nan, np.inf, -np.inf, -0.0]))
    assert np.isnan(out[0]) and out[1] == 1.0 and out[2] == -1.0 and out[3] == 0.0 and np.signbit(out[3])
    x32 = np.linspace(-5, 5, 101, dtype=np.float32)
    out32 = special.erf(np, x32)
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, [math.erf(v) for v in x32.astype(float)], rtol=2e-6, atol=1e-7)


def test_sigmoid_is_stable_at_large_magnitudes():
    x = np.array([-1e308, -1000.0, -745.0, -40.0, 0.0, 40.0, 1000.0, 1e308, np.inf, -np.inf])
    with np.errstate(all="raise", under="ignore"):
        out = xpnet.tensor(x).sigmoid().numpy()
    # sigmoid(-745) is 5e-324; PyTorch's 1 / (1 + exp(745)) rounds it to 0
    np.testing.assert_allclose(out, torch.sigmoid(torch.from_numpy(x)).numpy(), rtol=1e-15, atol=1e-323)
    assert out[0] == 0.0 and out[-3] == 1.0 and np.isnan(xpnet.tensor(np.array([np.nan])).sigmoid().numpy()[0])
    xt = xpnet.tensor(x, requires_grad=True)
    with np.errstate(all="raise", under="ignore"):
        xt.sigmoid().sum().backward()
    assert np.all(np.isfinite(xt.grad))


ACTIVATIONS = [
    ("relu", lambda t: F.relu(t), torch.nn.functional.relu),
    ("sigmoid", lambda t: F.sigmoid(t), torch.sigmoid),
    ("sigmoid method", lambda t: t.sigmoid(), torch.sigmoid),
    ("tanh", lambda t: F.tanh(t), torch.tanh),
    ("tanh method", lambda t: t.tanh(), torch.tanh),
    ("leaky_relu", lambda t: F.leaky_relu(t), torch.nn.functional.leaky_relu),
    ("leaky_relu 0.2", lambda t: F.leaky_relu(t, 0.2), lambda t: torch.nn.functional.leaky_relu(t, 0.2)),
    ("gelu", lambda t: F.gelu(t), torch.nn.functional.gelu),
    ("gelu tanh", lambda t: F.gelu(t, approximate="tanh"),
     lambda t: torch.nn.functional.gelu(t, approximate="tanh")),
    ("softmax dim 1", lambda t: F.softmax(t, dim=1), lambda t: torch.softmax(t, dim=1)),
    ("softmax dim -1", lambda t: F.softmax(t, -1), lambda t: torch.softmax(t, -1)),
    ("softmax axis 0", lambda t: F.softmax(t, axis=0), lambda t: torch.softmax(t, 0)),
    ("log_softmax dim 2", lambda t: F.log_softmax(t, dim=2), lambda t: torch.log_softmax(t, 2)),
    ("log_softmax axis -1", lambda t: F.log_softmax(t, axis=-1), lambda t: torch.log_softmax(t, -1)),
]


@pytest.mark.parametrize("name, ours, theirs", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_matches_torch_float64(backend_name, name, ours, theirs):
    rng = np.random.default_rng(len(name))
    x = rng.standard_normal((3, 4, 5)) * 4
    g = rng.standard_normal(x.shape)
    xt = xpnet.tensor(x, requires_grad=True)
    out = ours(xt)
    out.backward(xpnet.get_backend().asarray(g))
    tx = torch.tensor(x, requires_grad=True)
    tout = theirs(tx)
    tout.backward(torch.from_numpy(g))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(xpnet.get_backend().to_numpy(xt.grad), tx.grad.numpy(), rtol=0, atol=1e-10)
    assert out.dtype == np.float64


@pytest.mark.parametrize("name, ours, theirs", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_keeps_float32(name, ours, theirs):
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    xt = xpnet.tensor(x, requires_grad=True)
    out = ours(xt)
    out.sum().backward()
    assert out.dtype == np.float32 and xt.grad.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), theirs(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)


def test_leaky_relu_gradient_at_zero_is_the_slope_as_torch():
    x = np.array([-1.0, 0.0, 1.0])
    xt = xpnet.tensor(x, requires_grad=True)
    F.leaky_relu(xt, 0.3).sum().backward()
    tx = torch.tensor(x, requires_grad=True)
    torch.nn.functional.leaky_relu(tx, 0.3).sum().backward()
    np.testing.assert_array_equal(xt.grad, tx.grad.numpy())


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4), (2, 3, 4, 5)])
def test_softmax_without_dim_takes_torchs_implicit_dim_and_warns(shape):
    x = np.random.default_rng(2).standard_normal(shape)
    with pytest.warns(UserWarning, match="Implicit dimension choice for softmax"):
        ours = F.softmax(xpnet.tensor(x)).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = torch.nn.functional.softmax(torch.from_numpy(x), dim=None).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-15)
    with pytest.warns(UserWarning, match="log_softmax"):
        nn.LogSoftmax()(xpnet.tensor(x))


def test_softmax_dimension_errors():
    x = xpnet.tensor(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="dim or axis, not both"):
        F.softmax(x, dim=1, axis=1)
    with pytest.raises(IndexError, match="dim 2 is out of range"):
        F.log_softmax(x, dim=2)
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(x, approximate="erf")
    with pytest.raises(ValueError, match="approximate"):
        nn.GELU("fast")


def test_softmax_of_a_scalar_is_one():
    out = F.softmax(xpnet.tensor(np.array(3.0)), dim=0)
    assert out.shape == () and out.item() == 1.0


def test_softmax_survives_huge_logits():
    x = np.array([[1000.0, 0.0, -1000.0], [1e300, 1e300, 0.0]])
    with np.errstate(all="raise", under="ignore"):
        out = F.softmax(xpnet.tensor(x), dim=1).numpy()
    np.testing.assert_allclose(out, [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], rtol=0, atol=1e-300)


MODULES = [
    (lambda: nn.ReLU(), lambda: torch.nn.ReLU()),
    (lambda: nn.ReLU(inplace=True), lambda: torch.nn.ReLU(inplace=True)),
    (lambda: nn.LeakyReLU(), lambda: torch.nn.LeakyReLU()),
    (lambda: nn.LeakyReLU(0.1, True), lambda: torch.nn.LeakyReLU(0.1, True)),
    (lambda: nn.Sigmoid(), lambda: torch.nn.Sigmoid()),
    (lambda: nn.Tanh(), lambda: torch.nn.Tanh()),
    (lambda: nn.GELU(), lambda: torch.nn.GELU()),
    (lambda: nn.GELU("tanh"), lambda: torch.nn.GELU("tanh")),
    (lambda: nn.Softmax(dim=1), lambda: torch.nn.Softmax(dim=1)),
    (lambda: nn.LogSoftmax(-1), lambda: torch.nn.LogSoftmax(-1)),
    (lambda: nn.Identity(54, unused="x"), lambda: torch.nn.Identity(54, unused="x")),
]


@pytest.mark.parametrize("make_ours, make_theirs", MODULES)
def test_activation_modules_match_torch(make_ours, make_theirs):
    ours, theirs = make_ours(), make_theirs()
    assert repr(ours) == repr(theirs)
    x = np.random.default_rng(3).standard_normal((4, 6))
    got = ours(xpnet.tensor(x)).numpy()
    np.testing.assert_allclose(got, theirs(torch.from_numpy(x.copy())).numpy(), rtol=0, atol=1e-12)
    assert not ours.parameters() and ours.state_dict() == {}


@pytest.mark.parametrize("make", [m for m, _ in MODULES], ids=[type(m()).__name__ for m, _ in MODULES])
def test_activations_do_not_loop_over_elements(make):
    from test_no_python_loops import step_lines

    assert step_lines(make(), (2, 3, 4, 4)) == step_lines(make(), (16, 5, 8, 8)) > 0

"""Bad arguments are refused with one clear error on every backend, before any compiled kernel sees them; mixed
dtypes are refused alike everywhere; NaN goes through max pooling and ReLU as in PyTorch (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest

import xpnet
from backend_fixtures import backend_name  # noqa: F401  (a fixture)
from xpnet import Tensor, nn
from xpnet import functional as F
from xpnet.autograd import Function

torch = pytest.importorskip("torch")


def _tensor(shape, dtype=np.float64, requires_grad=False, seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(dtype), requires_grad=requires_grad,
                  dtype=dtype)


# --- Tensor.backward(grad) and Function.backward results --------------------------------------------------------

@pytest.mark.parametrize("op", ["relu", "max_pool", "avg_pool", "conv_direct", "conv_gemm", "conv_depthwise"])
def test_backward_refuses_a_gradient_of_the_wrong_shape(backend_name, op):
    x = _tensor((2, 4, 6, 6), requires_grad=True)
    layers = {
        "relu": F.relu,
        "max_pool": lambda t: F.max_pool2d(t, 2),
        "avg_pool": lambda t: F.avg_pool2d(t, 3, 1, 1),
        "conv_direct": lambda t: F.conv2d(t, _tensor((3, 4, 3, 3))),
        "conv_gemm": lambda t: F.conv2d(t, _tensor((3, 4, 3, 3)), stride=2),
        "conv_depthwise": lambda t: F.conv2d(t, _tensor((4, 1, 3, 3)), groups=4),
    }
    out = layers[op](x)
    wrong = np.ones((*out.shape[:-1], out.shape[-1] + 1))
    with pytest.raises(ValueError, match=rf"backward: grad has shape \({', '.join(map(str, wrong.shape))}\), "
                                         rf"expected \({', '.join(map(str, out.shape))}\)"):
        out.backward(wrong)
    with pytest.raises(ValueError, match="backward: grad has shape"):
        out.backward(np.ones(out.shape[1:]))  # would broadcast on NumPy
    assert x.grad is None


def test_backward_casts_the_gradient_to_the_outputs_dtype(backend_name):
    """As PyTorch: a float64 gradient into a float32 graph gives float32 gradients on every backend."""
    x = _tensor((2, 3, 4, 4), np.float32, requires_grad=True)
    w = _tensor((2, 3, 3, 3), np.float32, requires_grad=True)
    out = F.relu(F.conv2d(x, w, padding=1))
    out.backward(np.ones(out.shape, dtype=np.float64))
    assert x.grad.dtype == np.float32 and w.grad.dtype == np.float32


class _WrongShape(Function):
    @staticmethod
    def forward(ctx, a):
        return a * 2

    @staticmethod
    def backward(ctx, g):
        return g.sum(axis=0)  # (3,) for an input (2, 3): broadcasting would hide it


class _TooFew(Function):
    @staticmethod
    def forward(ctx, a, b):
        return a + b

    @staticmethod
    def backward(ctx, g):
        return g


def test_a_functions_backward_result_is_checked_against_its_inputs():
    a, b = _tensor((2, 3), requires_grad=True), _tensor((2, 3), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"_WrongShape.backward returned a gradient of shape \(3,\) for input 0, "
                                           r"expected \(2, 3\)"):
        _WrongShape.apply(a).sum().backward()
    with pytest.raises(RuntimeError, match="_TooFew.backward returned 1 gradients, expected 2"):
        _TooFew.apply(a, b).sum().backward()


# --- window settings: refused at construction and at every boundary -------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: nn.MaxPool2d(0), "MaxPool2d: kernel_size must be an int >= 1"),
    (lambda: nn.MaxPool2d((2, 0)), "MaxPool2d: kernel_size must be an int >= 1"),
    (lambda: nn.MaxPool2d(2, stride=0), "MaxPool2d: stride must be an int >= 1"),
    (lambda: nn.MaxPool2d(2, padding=-1), "MaxPool2d: padding must be an int >= 0"),
    (lambda: nn.MaxPool2d(2.0), "MaxPool2d: kernel_size must be an int"),
    (lambda: nn.AvgPool2d(0), "AvgPool2d: kernel_size must be an int >= 1"),
    (lambda: nn.AvgPool2d(2, stride=(1, 0)), "AvgPool2d: stride must be an int >= 1"),
    (lambda: nn.Conv2d(1, 1, 0), "kernel_size must be an int >= 1"),
    (lambda: nn.Conv2d(1, 1, 3, stride=0), "stride must be an int >= 1"),
    (lambda: nn.Conv2d(1, 1, 3, dilation=0), "dilation must be an int >= 1"),
    (lambda: nn.Conv2d(1, 1, 3, padding=-1), "padding must be an int >= 0"),
    (lambda: nn.Conv2d(2, 4, 3, groups=3), r"in_channels \(2\) must be divisible by groups \(3\)"),
    (lambda: nn.Conv2d(3, 4, 3, groups=3), r"out_channels \(4\) must be divisible by groups \(3\)"),
    (lambda: nn.Conv2d(2, 4, 3, groups=0), "groups must be a positive int"),
    (lambda: nn.Linear(0, 3), "Linear: in_features must be a positive int, got 0"),
    (lambda: nn.Linear(3, 2.5), "Linear: out_features must be a positive int, got 2.5"),
])
def test_layers_refuse_bad_settings_when_built(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("call, message", [
    (lambda x: F.max_pool2d(x, 0), "max_pool2d: kernel_size must be an int >= 1"),
    (lambda x: F.max_pool2d(x, 2, stride=0), "max_pool2d: stride must be an int >= 1"),
    (lambda x: F.avg_pool2d(x, 2, stride=0), "avg_pool2d: stride must be an int >= 1"),
    (lambda x: F.max_pool2d(x, 6), "pooling window 6 with stride 6 and padding 0 does not fit an input of size 5"),
    (lambda x: F.avg_pool2d(x, (2, 6), 1), "pooling window 6 with stride 1 and padding 0 does not fit an input "
                                           "of size 5"),
    (lambda x: F.conv2d(x, _tensor((1, 3, 3, 3)), stride=0), "conv2d: stride must be an int >= 1"),
    (lambda x: F.conv2d(x, _tensor((1, 3, 3, 3)), dilation=(1, 0)), "conv2d: dilation must be an int >= 1"),
    (lambda x: F.conv2d(x, _tensor((1, 3, 0, 3))), "conv2d: weight must be a non-empty 4-D array"),
    (lambda x: F.conv2d(x, _tensor((1, 3, 6, 3))),
     r"conv2d: kernel_size \(6, 3\) with dilation \(1, 1\) spans 6 along the height, more than the padded input's "
     r"5 \(input \(5, 5\), padding \(0, 0\)\)"),
    (lambda x: F.conv2d(x, _tensor((1, 3, 3, 8)), padding=1),
     r"conv2d: kernel_size \(3, 8\) with dilation \(1, 1\) spans 8 along the width, more than the padded input's 7"),
    (lambda x: F.conv2d(x, _tensor((2, 1, 3, 3)), groups=3),
     r"conv2d: weight.shape\[0\] \(out_channels 2\) must be divisible by groups \(3\)"),
    (lambda x: F.conv2d(x, _tensor((4, 1, 3, 3)), groups=2),
     r"conv2d: input has 3 channels, but weight.shape\[1\] \* groups = 1 \* 2 = 2"),
])
def test_functions_refuse_bad_windows_on_every_backend(backend_name, call, message):
    """Kernel or stride 0 is a ValueError (not ZeroDivisionError), a kernel one larger than the padded input names
    both, on every backend."""
    with pytest.raises(ValueError, match=message):
        call(_tensor((2, 3, 5, 5)))


def test_numba_kernel_wrappers_check_their_own_arguments():
    """Called directly (not through a layer), the Numba backend's wrappers still refuse what would make a compiled
    loop read or write out of bounds."""
    pytest.importorskip("numba", reason="the numba backend needs numba")
    nb = xpnet.get_backend("numba")
    x, w = np.zeros((2, 3, 6, 6)), np.zeros((4, 3, 3, 3))
    with pytest.raises(ValueError, match="conv2d_forward: input has 2 channels"):
        nb.conv2d_forward(x[:, :2], w, None, (1, 1), (0, 0), (1, 1), 1)
    with pytest.raises(ValueError, match=r"conv2d_forward: kernel_size \(3, 3\) with dilation \(1, 1\) spans 3 .* "
                                         r"padded input's 2"):
        nb.conv2d_forward(x[:, :, :2], w, None, (1, 1), (0, 0), (1, 1), 1)
    with pytest.raises(ValueError, match="conv2d_forward: stride must be an int >= 1"):
        nb.conv2d_forward(x, w, None, (0, 1), (0, 0), (1, 1), 1)
    with pytest.raises(ValueError, match=r"conv2d_forward: bias must have shape \(4,\), got \(3,\)"):
        nb.conv2d_forward(x, w, np.zeros(3), (1, 1), (0, 0), (1, 1), 1)
    with pytest.raises(TypeError, match="conv2d_forward: w has dtype float32 but x has float64"):
        nb.conv2d_forward(x, w.astype(np.float32), None, (1, 1), (0, 0), (1, 1), 1)
    out, residual = nb.conv2d_forward(x, w, None, (1, 1), (0, 0), (1, 1), 1)
    with pytest.raises(ValueError, match=r"conv2d_backward g has shape \(2, 4, 4, 5\), expected \(2, 4, 4, 4\)"):
        nb.conv2d_backward(residual, w, np.zeros((2, 4, 4, 5)), x.shape, (1, 1), (0, 0), (1, 1), 1,
                           (True, True, True))
    with pytest.raises(TypeError, match="conv2d_backward: g has dtype float32 but w has float64"):
        nb.conv2d_backward(residual, w, out.astype(np.float32), x.shape, (1, 1), (0, 0), (1, 1), 1,
                           (True, True, True))
    with pytest.raises(ValueError, match="max_pool_forward: x must be 4-D"):
        nb.max_pool_forward(np.zeros((3, 6, 6)), (2, 2), (2, 2))
    with pytest.raises(ValueError, match="max_pool_forward: kernel_size must be an int >= 1"):
        nb.max_pool_forward(x, (0, 2), (2, 2))
    with pytest.raises(ValueError, match="does not fit an input of size 6"):
        nb.max_pool_forward(x, (7, 7), (1, 1))


# --- class-index targets ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["cross_entropy", "nll_loss"])
def test_targets_must_be_integer_classes_in_range(backend_name, loss):
    fn = getattr(F, loss)
    z = _tensor((3, 4))
    with pytest.raises(IndexError, match=rf"{loss}: target -1 is out of bounds for 4 classes"):
        fn(z, np.array([0, -1, 2]))  # not the last class
    with pytest.raises(IndexError, match=rf"{loss}: target 4 is out of bounds for 4 classes"):
        fn(z, np.array([0, 4, 2]))
    with pytest.raises(TypeError, match=rf"{loss}: target must hold integer class indices, got dtype float64"):
        fn(z, np.array([0.0, 1.0, 2.0]))  # not truncated
    with pytest.raises(TypeError, match="got dtype float32"):
        fn(z, Tensor(np.array([0.0, 1.7, 2.0], dtype=np.float32)))
    kept = fn(z, np.array([0, -1, 2]), ignore_index=-1).item()  # -1 is fine as the ignore_index
    np.testing.assert_allclose(kept, fn(_rows(z, [0, 2]), np.array([0, 2])).item(), rtol=1e-12)


def _rows(z: Tensor, rows: list[int]) -> Tensor:
    return Tensor(z.numpy()[rows])


# --- dtypes: one rule on every backend path ---------------------------------------------------------------------

CONV_PATHS = [  # (input shape, layer): the Numba backend's direct, one-GEMM, depthwise and grouped paths
    ((2, 4, 9, 9), lambda: nn.Conv2d(4, 8, 3)),
    ((2, 4, 9, 9), lambda: nn.Conv2d(4, 8, 3, stride=2)),
    ((2, 4, 9, 9), lambda: nn.Conv2d(4, 4, 3, groups=4)),
    ((2, 4, 9, 9), lambda: nn.Conv2d(4, 8, 3, groups=2)),
    ((2, 4), lambda: nn.Linear(4, 3)),
]


@pytest.mark.parametrize("shape, make", CONV_PATHS)
def test_a_float32_input_into_a_float64_layer_is_refused_everywhere(backend_name, shape, make):
    """As PyTorch: no silent promotion (which gave float64 on one backend path and float32 on another)."""
    xpnet.set_default_dtype(np.float64)
    layer = make()
    with pytest.raises(TypeError, match=r"(conv2d|linear): weight has dtype float64 but input has float32; "
                                        r"expected both to be the same dtype"):
        layer(_tensor(shape, np.float32))
    assert layer(_tensor(shape, np.float64)).dtype == np.float64
    assert layer.to(np.float32)(_tensor(shape, np.float32)).dtype == np.float32


# --- NaN as in PyTorch ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel, stride, padding, ceil_mode", [
    (2, 2, 0, False), (3, 2, 1, False), (3, 1, 1, False), (2, 3, 0, True), ((2, 3), (1, 2), (1, 0), True)])
def test_max_pooling_propagates_nan_as_pytorch(backend_name, kernel, stride, padding, ceil_mode):
    """A window holding NaN gives NaN and its LAST NaN (row-major) gets the gradient: measured on torch 2.13 CPU,
    whose kernel takes ``val > max || isnan(val)``."""
    rng = np.random.default_rng(1)
    x = rng.integers(-2, 3, size=(2, 3, 7, 8)).astype(np.float64)
    x[rng.random(x.shape) < 0.25] = np.nan
    g = rng.standard_normal(F.max_pool2d(xpnet.tensor(x), kernel, stride, padding, ceil_mode=ceil_mode).shape)
    xt = xpnet.tensor(x, requires_grad=True)
    out = F.max_pool2d(xt, kernel, stride, padding, ceil_mode=ceil_mode)
    out.backward(g)
    tx = torch.tensor(x, requires_grad=True)
    tout = torch.nn.functional.max_pool2d(tx, kernel, stride, padding, ceil_mode=ceil_mode)
    tout.backward(torch.from_numpy(g))
    assert np.isnan(out.numpy()).any()
    np.testing.assert_array_equal(out.numpy(), tout.detach().numpy())
    # overlapping windows sum in another order than PyTorch's: equal to rounding; a misrouted gradient is O(1) off
    np.testing.assert_allclose(xpnet.get_backend().to_numpy(xt.grad), tx.grad.numpy(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_propagates_nan_and_its_gradient_as_pytorch(backend_name, dtype):
    """relu(NaN) = NaN, and PyTorch's gradient there is the incoming gradient (``out <= 0 ? 0 : g``)."""
    x = np.array([np.nan, -1.0, -0.0, 0.0, 2.0, np.inf, -np.inf, -np.nan], dtype=dtype).reshape(2, 4)
    g = np.arange(1, 9, dtype=dtype).reshape(2, 4)
    xt = xpnet.tensor(x, requires_grad=True)
    out = F.relu(xt)
    out.backward(g)
    tx = torch.tensor(x, requires_grad=True)
    tout = torch.relu(tx)
    tout.backward(torch.from_numpy(g))
    np.testing.assert_array_equal(out.numpy(), tout.detach().numpy())
    np.testing.assert_array_equal(xpnet.get_backend().to_numpy(xt.grad), tx.grad.numpy())
    assert xt.grad[0, 0] == 1 and xt.grad.dtype == dtype

"""Float64 central-difference gradient checks for every op and Function (max relative error < 1e-6)."""

import numpy as np
import pytest

import xpnet
from xpnet import functional as F
from xpnet.gradcheck import max_relative_error
from op_cases import OPS

TOL = 1e-6
rng = np.random.default_rng(1234)


def randn(*shape):
    return rng.standard_normal(shape)


@pytest.mark.parametrize("name, fn, shapes", OPS, ids=[case[0] for case in OPS])
def test_op_gradients(name, fn, shapes):
    assert max_relative_error(fn, [randn(*s) for s in shapes]) < TOL


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", [0, 1, 2])
def test_conv2d_gradients(kernel, stride, padding, backend):
    """On NumPy (im2col + matmul) and Numba (direct convolution at stride 1 when padding < kernel)."""
    if backend == "numba":
        pytest.importorskip("numba", reason="the numba backend needs numba: pip install 'xpnet[numba]'")
    xpnet.use(backend)
    x = randn(2, 3, 7, 9)  # non-square input
    w = randn(4, 3, kernel, kernel)
    b = randn(4)
    err = max_relative_error(lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding), [x, w, b])
    assert err < TOL


def test_tensor_used_twice_accumulates():
    assert max_relative_error(lambda a: a * a + (a @ a.T).sum(axis=1, keepdims=True) + a.exp() * a, [randn(3, 3)]) < TOL


def test_gradcheck_detects_a_wrong_backward():
    """The checker itself must be able to fail: a Function with a deliberately wrong backward is caught."""

    class WrongSquare(xpnet.Function):
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return a * a

        @staticmethod
        def backward(ctx, g):
            (a,) = ctx.saved
            return g * a  # should be 2 * g * a

    assert max_relative_error(lambda a: WrongSquare.apply(a), [randn(4)]) > 0.1

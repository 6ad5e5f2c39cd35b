"""Float64 central-difference gradient checks for every op and Function (max relative error < 1e-6)."""

import numpy as np
import pytest

import xpnet
from xpnet import functional as F
from xpnet.gradcheck import max_relative_error

TOL = 1e-6
rng = np.random.default_rng(1234)


def randn(*shape):
    return rng.standard_normal(shape)


@pytest.mark.parametrize("name, fn, shapes", [
    ("add", lambda a, b: a + b, [(3, 4), (3, 4)]),
    ("add broadcast", lambda a, b: a + b, [(2, 3, 4), (4,)]),
    ("add broadcast keepdim", lambda a, b: a + b, [(2, 3, 4), (2, 1, 4)]),
    ("sub broadcast", lambda a, b: a - b, [(3, 1), (1, 5)]),
    ("mul broadcast", lambda a, b: a * b, [(2, 3, 4), (3, 1)]),
    ("div", lambda a, b: a / (b * b + 1.0), [(3, 4), (3, 4)]),
    ("rdiv scalar", lambda a: 2.0 / (a * a + 1.0), [(5,)]),
    ("neg", lambda a: -a, [(3, 2)]),
    ("matmul 2d", lambda a, b: a @ b, [(3, 4), (4, 5)]),
    ("matmul batched", lambda a, b: a @ b, [(2, 3, 4), (2, 4, 5)]),
    ("matmul broadcast batch", lambda a, b: a @ b, [(2, 1, 3, 4), (3, 4, 2)]),
    ("matmul matrix @ batch", lambda a, b: a @ b, [(3, 4), (5, 4, 2)]),
    ("matmul vector @ matrix", lambda a, b: a @ b, [(4,), (4, 3)]),
    ("matmul batch @ vector", lambda a, b: a @ b, [(2, 3, 4), (4,)]),
    ("sum all", lambda a: a.sum(), [(3, 4)]),
    ("sum axis", lambda a: a.sum(axis=1), [(3, 4, 2)]),
    ("sum axes keepdims", lambda a: a.sum(axis=(0, 2), keepdims=True), [(3, 4, 2)]),
    ("mean all", lambda a: a.mean(), [(3, 4)]),
    ("mean axis", lambda a: a.mean(axis=-1), [(3, 4)]),
    ("reshape", lambda a: a.reshape(4, 3) * 1.0, [(3, 4)]),
    ("transpose", lambda a: a.transpose(2, 0, 1), [(2, 3, 4)]),
    ("T", lambda a: a.T, [(2, 3)]),
    ("exp", lambda a: a.exp(), [(3, 4)]),
    ("log", lambda a: (a * a + 0.5).log(), [(3, 4)]),
    ("relu", lambda a: a.relu(), [(4, 5)]),
    ("linear", lambda x, w, b: F.linear(x, w, b), [(4, 6), (3, 6), (3,)]),
    ("flatten", lambda x: F.flatten(x), [(2, 3, 4, 5)]),
    ("log_softmax", lambda x: F.log_softmax(x), [(4, 7)]),
    ("log_softmax axis 0", lambda x: F.log_softmax(x, axis=0), [(4, 7)]),
    ("max_pool2d 2x2", lambda x: F.max_pool2d(x, 2), [(2, 3, 6, 8)]),
    ("max_pool2d odd size", lambda x: F.max_pool2d(x, 2), [(2, 2, 7, 5)]),
    ("max_pool2d overlapping k3 s2", lambda x: F.max_pool2d(x, 3, 2), [(2, 2, 7, 9)]),
    ("max_pool2d k3 s1", lambda x: F.max_pool2d(x, 3, 1), [(1, 2, 5, 6)]),
])
def test_op_gradients(name, fn, shapes):
    assert max_relative_error(fn, [randn(*s) for s in shapes]) < TOL


@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", [0, 1, 2])
def test_conv2d_gradients(kernel, stride, padding):
    x = randn(2, 3, 7, 9)  # non-square input
    w = randn(4, 3, kernel, kernel)
    b = randn(4)
    err = max_relative_error(lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding), [x, w, b])
    assert err < TOL


def test_conv2d_rectangular_stride_and_padding():
    err = max_relative_error(lambda x, w: F.conv2d(x, w, None, stride=(2, 1), padding=(0, 2)),
                             [randn(2, 2, 6, 5), randn(3, 2, 3, 2)])
    assert err < TOL


def test_dropout_gradient_with_fixed_mask():
    mask = rng.random((3, 5)) > 0.3
    assert max_relative_error(lambda x: F.dropout(x, 0.3, mask=mask), [randn(3, 5)]) < TOL


def test_softmax_cross_entropy_gradient():
    targets = np.array([0, 3, 2, 3, 1])
    err = max_relative_error(lambda z: F.softmax_cross_entropy(z, targets), [randn(5, 4)])
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

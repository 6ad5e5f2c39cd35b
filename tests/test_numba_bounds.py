"""Every compiled Numba kernel, once, on the edge geometries where an index is most likely off by one: a window as
large as the padded input, strides and dilations that leave a remainder, ceil-mode overhang, one-pixel planes.
Each result must equal the NumPy backend's (to rounding where the summation order differs).

CI runs this module a second time with ``NUMBA_BOUNDSCHECK=1`` (and a cache directory of its own, since Numba's
cache does not tell boundschecked code apart), where a read or write past a buffer raises IndexError instead of
returning garbage. It is float64 only and small so that the recompilation stays short.
"""

from __future__ import annotations

import numpy as np
import pytest

from xpnet.backend import get_backend

pytest.importorskip("numba", reason="the numba backend needs numba")

NEEDS = (True, True, True)


@pytest.fixture(scope="module")
def backends():
    return get_backend("numba"), get_backend("numpy")


def _random(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def assert_close(actual, expected) -> None:
    for a, e in zip(actual if isinstance(actual, tuple) else (actual,), expected if isinstance(expected, tuple)
                    else (expected,)):
        if e is None:
            assert a is None
            continue
        assert a.shape == e.shape and a.dtype == e.dtype
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)


# kernel, stride, padding, dilation on a (2, 3, 5, 6) input: the last ones span the whole padded input
WINDOWS = [((3, 3), (1, 1), (0, 0), (1, 1)), ((5, 6), (1, 1), (0, 0), (1, 1)), ((7, 8), (2, 3), (1, 1), (1, 1)),
           ((3, 2), (2, 2), (0, 1), (2, 5)), ((1, 1), (3, 4), (0, 0), (1, 1))]


@pytest.mark.parametrize("kernel, stride, padding, dilation", WINDOWS)
def test_im2col_col2im_and_the_gemm_path(backends, kernel, stride, padding, dilation):
    nb, ref = backends
    x = _random(2, 3, 5, 6)
    cols = nb.im2col(x, kernel, stride, padding, dilation)
    assert_close(cols, ref.im2col(x, kernel, stride, padding, dilation))
    assert_close(nb.col2im(cols, x.shape, stride, padding, dilation), ref.col2im(cols, x.shape, stride, padding, dilation))
    w = _random(4, 3, *kernel, seed=1)
    out, residual = nb.conv2d_forward(x, w, _random(4, seed=2), stride, padding, dilation, 1)
    expected, ref_residual = ref.conv2d_forward(x, w, _random(4, seed=2), stride, padding, dilation, 1)
    assert_close(out, expected)
    g = _random(*out.shape, seed=3)
    assert_close(nb.conv2d_backward(residual, w, g, x.shape, stride, padding, dilation, 1, NEEDS),
           ref.conv2d_backward(ref_residual, w, g, x.shape, stride, padding, dilation, 1, NEEDS))


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation, groups", [
    ((2, 3, 5, 6), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1),   # direct
    ((2, 3, 5, 6), (2, 3, 5, 6), (1, 1), (0, 0), (1, 1), 1),   # direct, the kernel is the whole input
    ((2, 3, 1, 1), (5, 3, 1, 1), (1, 1), (0, 0), (1, 1), 1),   # direct, one pixel
    ((2, 3, 5, 6), (6, 1, 3, 3), (1, 1), (2, 1), (1, 2), 3),   # depthwise, unit stride
    ((2, 3, 5, 6), (3, 1, 5, 6), (1, 1), (0, 0), (1, 1), 3),   # depthwise, the kernel is the whole input
    ((2, 3, 5, 6), (3, 1, 3, 2), (2, 3), (1, 0), (2, 1), 3),   # depthwise, strided
])
def test_direct_and_depthwise_convolutions(backends, x_shape, w_shape, stride, padding, dilation, groups):
    nb, ref = backends
    x, w, b = _random(*x_shape), _random(*w_shape, seed=1), _random(w_shape[0], seed=2)
    out, residual = nb.conv2d_forward(x, w, b, stride, padding, dilation, groups)
    expected, ref_residual = ref.conv2d_forward(x, w, b, stride, padding, dilation, groups)
    assert_close(out, expected)
    g = _random(*out.shape, seed=3)
    assert_close(nb.conv2d_backward(residual, w, g, x_shape, stride, padding, dilation, groups, NEEDS),
           ref.conv2d_backward(ref_residual, w, g, x_shape, stride, padding, dilation, groups, NEEDS))


@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 2, 2, 3), (1, 1, 3, 2)])
def test_max_pool_2x2_odd_borders(backends, shape):
    """The 2x2 backward kernel zeroes the odd last row and column no window covers (floor mode)."""
    nb, ref = backends
    x = _random(*shape, seed=4)
    out, argmax = nb.max_pool_forward(x, (2, 2), (2, 2))
    g = _random(*out.shape, seed=5)
    assert_close(nb.max_pool_backward(g, argmax, x.shape, (2, 2), (2, 2)),
           ref.max_pool_backward(g, *ref.max_pool_forward(x, (2, 2), (2, 2))[1:], x.shape, (2, 2), (2, 2)))


@pytest.mark.parametrize("kernel, stride, padding, ceil_mode", [
    ((2, 2), (2, 2), (0, 0), False), ((2, 2), (2, 2), (1, 1), True), ((5, 6), (5, 6), (0, 0), False),
    ((3, 3), (2, 2), (1, 1), True), ((3, 2), (1, 3), (1, 0), False), ((5, 6), (2, 2), (2, 3), True)])
def test_pooling(backends, kernel, stride, padding, ceil_mode):
    nb, ref = backends
    x = _random(2, 3, 5, 6)
    x[0, 0, :2, :2] = np.nan
    out, argmax = nb.max_pool_forward(x, kernel, stride, padding, ceil_mode)
    ref_out, ref_argmax = ref.max_pool_forward(x, kernel, stride, padding, ceil_mode)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(argmax, ref_argmax)
    g = _random(*out.shape, seed=1)
    assert_close(nb.max_pool_backward(g, argmax, x.shape, kernel, stride, padding, ceil_mode),
           ref.max_pool_backward(g, argmax, x.shape, kernel, stride, padding, ceil_mode))
    for include in (True, False):
        options = (ceil_mode, include, None)
        assert_close(nb.avg_pool_forward(x, kernel, stride, padding, *options),
               ref.avg_pool_forward(x, kernel, stride, padding, *options))
        assert_close(nb.avg_pool_backward(g, x.shape, kernel, stride, padding, *options),
               ref.avg_pool_backward(g, x.shape, kernel, stride, padding, *options))


def test_relu_and_batch_norm(backends):
    nb, ref = backends
    x = _random(3, 4, 1, 5)
    x[0, 0, 0, :2] = np.nan, 0.0
    out = nb.relu_forward(x)
    np.testing.assert_array_equal(out, ref.relu_forward(x))
    g = _random(*x.shape, seed=1)
    np.testing.assert_array_equal(nb.relu_backward(out, g), ref.relu_backward(out, g))
    x = _random(2, 3, 1500)  # more than one statistics block per channel
    w, b = _random(3, seed=2), _random(3, seed=3)
    out, mean, var, residual = nb.batch_norm_forward(x, w, b, 1e-5)
    ref_out, ref_mean, ref_var, ref_residual = ref.batch_norm_forward(x, w, b, 1e-5)
    assert_close((out, mean, var), (ref_out, ref_mean, ref_var))
    g = _random(*x.shape, seed=4)
    assert_close(nb.batch_norm_backward(residual, g, NEEDS), ref.batch_norm_backward(ref_residual, g, NEEDS))


def test_erf(backends):
    """The compiled erf is the C library's: math.erf's value on every element, special values included, and the
    generic one's to rounding."""
    import math

    nb, ref = backends
    x = np.concatenate([[np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-300, 0.46875, 4.0, 26.6, -30.0], _random(60)])
    out = nb.erf(x)
    assert out.dtype == x.dtype and out.shape == x.shape
    expected = np.array([math.erf(v) for v in x])
    assert out.tobytes() == expected.tobytes()
    np.testing.assert_allclose(out, ref.erf(x), rtol=1e-15, atol=1e-16)
    assert nb.erf(x.astype(np.float32)).dtype == np.float32

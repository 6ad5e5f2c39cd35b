"""The Numba backend's direct convolution against a by-definition reference (one slice per kernel tap), on random
shapes, paddings, rectangular kernels and odd channel counts; and when it is used instead of im2col + matmul."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba", reason="the numba backend needs numba: pip install 'xpnet[numba]'")

from xpnet.backend import get_backend  # noqa: E402
from xpnet.backends import numba_conv  # noqa: E402
from xpnet.models import MODELS  # noqa: E402
from xpnet.nn import Conv2D  # noqa: E402

TOL = {"float32": 2e-5, "float64": 1e-12}
ALL_GRADS = (True, True, True)


@pytest.fixture(scope="module")
def nb():
    return get_backend("numba")


def reference_conv(x, w, b, padding):
    """Stride-1 convolution and its three gradients under upstream ``g``, tap by tap, in float64."""
    (ph, pw), (_, _, kh, kw) = padding, w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
    out = np.zeros((x.shape[0], w.shape[0], oh, ow)) + b.reshape(1, -1, 1, 1)
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + oh, j:j + ow], w[:, :, i, j])

    def grads(g):
        gxp, gw = np.zeros_like(xp), np.zeros(w.shape)
        for i in range(kh):
            for j in range(kw):
                gxp[:, :, i:i + oh, j:j + ow] += np.einsum("nohw,oc->nchw", g, w[:, :, i, j])
                gw[:, :, i, j] = np.einsum("nohw,nchw->oc", g, xp[:, :, i:i + oh, j:j + ow])
        return gxp[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]], gw, g.sum(axis=(0, 2, 3))
    return out, grads


def random_case(rng):
    """A random stride-1 convolution the direct kernels accept: any kernel up to 5x5, padding below it."""
    kh, kw = (int(k) for k in rng.integers(1, 6, 2))
    ph, pw = int(rng.integers(0, kh)), int(rng.integers(0, kw))
    h, w = int(rng.integers(max(1, kh - 2 * ph), 15)), int(rng.integers(max(1, kw - 2 * pw), 15))
    n, c, oc = int(rng.integers(1, 5)), int(rng.integers(1, 7)), int(rng.integers(1, 10))
    return (n, c, h, w), (oc, c, kh, kw), (ph, pw)


def _assert_close(actual, expected, dtype, what):
    assert actual.dtype == np.dtype(dtype) and actual.shape == expected.shape, what
    scale = max(float(np.abs(expected).max()), 1.0)
    np.testing.assert_allclose(actual, expected, rtol=TOL[dtype], atol=TOL[dtype] * scale, err_msg=what)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("seed", range(25))
def test_direct_convolution_matches_reference(nb, seed, dtype):
    rng = np.random.default_rng(seed)
    x_shape, w_shape, padding = random_case(rng)
    assert numba_conv.direct_pays(x_shape, w_shape, (1, 1), padding)
    x, w = rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    expected, expected_grads = reference_conv(x, w, b, padding)

    out, residual = nb.conv2d_forward(x, w, b, (1, 1), padding)
    _assert_close(out, expected, dtype, f"output {x_shape} * {w_shape} pad {padding}")
    g = rng.standard_normal(out.shape).astype(dtype)
    grads = nb.conv2d_backward(residual, w, g, x_shape, (1, 1), padding, ALL_GRADS)
    for name, got, want in zip(("gx", "gw", "gb"), grads, expected_grads(g.astype(np.float64))):
        _assert_close(got, want, dtype, f"{name} {x_shape} * {w_shape} pad {padding}")


def test_no_bias_and_only_the_gradients_asked_for(nb):
    rng = np.random.default_rng(99)
    x, w = rng.standard_normal((3, 2, 8, 7)), rng.standard_normal((5, 2, 3, 3))
    out, residual = nb.conv2d_forward(x, w, None, (1, 1), (1, 1))
    expected, grads = reference_conv(x, w, np.zeros(5), (1, 1))
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(out.shape)
    gx, gw, gb = nb.conv2d_backward(residual, w, g, x.shape, (1, 1), (1, 1), (False, True, False))
    assert gx is None and gb is None
    np.testing.assert_allclose(gw, grads(g)[1], rtol=1e-12, atol=1e-12)
    gx, gw, gb = nb.conv2d_backward(residual, w, g, x.shape, (1, 1), (1, 1), (True, False, False))
    assert gw is None and gb is None
    np.testing.assert_allclose(gx, grads(g)[0], rtol=1e-12, atol=1e-12)


def test_non_contiguous_input(nb):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 7, 3, 2)).transpose(3, 2, 1, 0)  # (2, 3, 7, 9), not contiguous
    w, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    out, _ = nb.conv2d_forward(x, w, b, (1, 1), (1, 1))
    np.testing.assert_allclose(out, reference_conv(x, w, b, (1, 1))[0], rtol=1e-12, atol=1e-12)


def test_every_layer_of_the_named_models_runs_direct():
    for name, build in MODELS.items():
        for layer in build():
            if isinstance(layer, Conv2D):
                k, p = layer.kernel_size, layer.padding
                shape = (1, layer.in_channels, 28, 28)
                assert numba_conv.direct_pays(shape, layer.weight.shape, (1, 1), (p, p)), (name, layer)
                # the input gradient runs as a direct convolution too: channels swapped, padding K - 1 - P
                swapped = (layer.in_channels, layer.out_channels, k, k)
                assert numba_conv.direct_pays(shape, swapped, (1, 1), (k - 1 - p, k - 1 - p)), (name, layer)


@pytest.mark.parametrize("x_shape, w_shape, stride, padding", [
    ((2, 3, 9, 8), (4, 3, 3, 3), (2, 2), (1, 1)),        # stride 2
    ((2, 3, 9, 8), (4, 3, 3, 3), (1, 1), (3, 3)),        # padding as large as the kernel
    ((2, 32, 6, 6), (32, 32, 3, 3), (1, 1), (1, 1)),     # 9216 multiply-adds per output pixel
])
def test_other_convolutions_take_im2col_and_match_numpy(nb, x_shape, w_shape, stride, padding):
    assert not numba_conv.direct_pays(x_shape, w_shape, stride, padding)
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    generic = get_backend("numpy")
    out, cols = nb.conv2d_forward(x, w, b, stride, padding)
    expected, expected_cols = generic.conv2d_forward(x, w, b, stride, padding)
    assert cols.shape == expected_cols.shape  # the residual is the im2col columns
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(out.shape)
    for got, want in zip(nb.conv2d_backward(cols, w, g, x_shape, stride, padding, ALL_GRADS),
                         generic.conv2d_backward(expected_cols, w, g, x_shape, stride, padding, ALL_GRADS)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)

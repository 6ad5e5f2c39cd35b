"""The Numba backend's direct, depthwise and one-GEMM convolutions against by-definition references, on random
shapes, strides, paddings, dilations, rectangular kernels and odd channel counts; and when each is used."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba", reason="the numba backend needs numba: pip install 'xpnet[numba]'")

from test_kernels import CASES, fitting_size, naive_conv, naive_im2col  # noqa: E402

from xpnet import functional as F  # noqa: E402
from xpnet import kernels  # noqa: E402
from xpnet.backend import get_backend  # noqa: E402
from xpnet.backends import numba_conv, numba_depthwise  # noqa: E402
from xpnet.gradcheck import max_relative_error  # noqa: E402
from xpnet.models import MODELS  # noqa: E402
from xpnet.nn import Conv2d  # noqa: E402

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

    out, residual = nb.conv2d_forward(x, w, b, (1, 1), padding, (1, 1), 1)
    _assert_close(out, expected, dtype, f"output {x_shape} * {w_shape} pad {padding}")
    g = rng.standard_normal(out.shape).astype(dtype)
    grads = nb.conv2d_backward(residual, w, g, x_shape, (1, 1), padding, (1, 1), 1, ALL_GRADS)
    for name, got, want in zip(("gx", "gw", "gb"), grads, expected_grads(g.astype(np.float64))):
        _assert_close(got, want, dtype, f"{name} {x_shape} * {w_shape} pad {padding}")


def test_no_bias_and_only_the_gradients_asked_for(nb):
    rng = np.random.default_rng(99)
    x, w = rng.standard_normal((3, 2, 8, 7)), rng.standard_normal((5, 2, 3, 3))
    out, residual = nb.conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1), 1)
    expected, grads = reference_conv(x, w, np.zeros(5), (1, 1))
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(out.shape)
    gx, gw, gb = nb.conv2d_backward(residual, w, g, x.shape, (1, 1), (1, 1), (1, 1), 1, (False, True, False))
    assert gx is None and gb is None
    np.testing.assert_allclose(gw, grads(g)[1], rtol=1e-12, atol=1e-12)
    gx, gw, gb = nb.conv2d_backward(residual, w, g, x.shape, (1, 1), (1, 1), (1, 1), 1, (True, False, False))
    assert gw is None and gb is None
    np.testing.assert_allclose(gx, grads(g)[0], rtol=1e-12, atol=1e-12)


def test_non_contiguous_input(nb):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 7, 3, 2)).transpose(3, 2, 1, 0)  # (2, 3, 7, 9), not contiguous
    w, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    out, _ = nb.conv2d_forward(x, w, b, (1, 1), (1, 1), (1, 1), 1)
    np.testing.assert_allclose(out, reference_conv(x, w, b, (1, 1))[0], rtol=1e-12, atol=1e-12)


def test_every_layer_of_the_three_small_models_runs_direct():
    for name in ("report1", "report2", "lenet5"):
        for layer in MODELS[name]():
            if isinstance(layer, Conv2d):
                (kh, kw), (ph, pw) = layer.kernel_size, layer.padding
                shape = (1, layer.in_channels, 28, 28)
                assert numba_conv.direct_pays(shape, layer.weight.shape, layer.stride, layer.padding,
                                              layer.dilation, layer.groups), (name, layer)
                # the input gradient runs as a direct convolution too: channels swapped, padding K - 1 - P
                swapped = (layer.in_channels, layer.out_channels, kh, kw)
                assert numba_conv.direct_pays(shape, swapped, (1, 1), (kh - 1 - ph, kw - 1 - pw)), (name, layer)


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation, groups, path", [
    ((2, 3, 9, 8), (4, 3, 3, 3), (2, 2), (1, 1), (1, 1), 1, "gemm"),      # stride 2
    ((2, 3, 9, 8), (4, 3, 3, 3), (1, 1), (3, 3), (1, 1), 1, "gemm"),      # padding as large as the kernel
    ((2, 32, 6, 6), (32, 32, 3, 3), (1, 1), (1, 1), (1, 1), 1, "gemm"),   # 9216 multiply-adds, a small plane
    ((2, 3, 9, 8), (4, 3, 3, 3), (1, 1), (2, 2), (2, 2), 1, "gemm"),      # dilation
    ((2, 1, 9, 8), (3, 1, 3, 2), (2, 1), (1, 0), (1, 2), 1, "gemm"),      # one channel: not depthwise
    ((2, 4, 9, 8), (6, 2, 3, 3), (1, 1), (1, 1), (1, 1), 2, "generic"),   # two groups
])
def test_other_convolutions_take_a_gemm_path_and_match_numpy(nb, x_shape, w_shape, stride, padding, dilation,
                                                             groups, path):
    """One group: one GEMM over the whole batch, its residual the (C*KH*KW, N*OH*OW) columns; other groupings:
    the generic im2col + batched matmul, its residual the (N, G, C/G*KH*KW, OH*OW) columns."""
    assert not numba_conv.direct_pays(x_shape, w_shape, stride, padding, dilation, groups)
    assert not numba_depthwise.depthwise_pays(x_shape, groups)
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    generic = get_backend("numpy")
    options = (stride, padding, dilation, groups)
    out, cols = nb.conv2d_forward(x, w, b, *options)
    expected, expected_cols = generic.conv2d_forward(x, w, b, *options)
    columns = (w[0].size * groups, out.shape[0] * out.shape[2] * out.shape[3])
    assert cols.shape == (columns if path == "gemm" else expected_cols.shape)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(out.shape)
    for got, want in zip(nb.conv2d_backward(cols, w, g, x_shape, *options, ALL_GRADS),
                         generic.conv2d_backward(expected_cols, w, g, x_shape, *options, ALL_GRADS)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_resnet8_layers_take_the_measured_paths():
    """ResNet-8 at 28x28: direct up to 16 channels and for 32 -> 32 on 14x14 (long rows), one GEMM for the
    strided layers and for 64 -> 64 on 7x7 (docs/performance.md, section 8)."""
    direct = [((1, 1, 28, 28), (16, 1, 3, 3)), ((1, 16, 28, 28), (16, 16, 3, 3)), ((1, 32, 14, 14), (32, 32, 3, 3))]
    for x_shape, w_shape in direct:
        assert numba_conv.direct_pays(x_shape, w_shape, (1, 1), (1, 1)), (x_shape, w_shape)
    assert not numba_conv.direct_pays((1, 64, 7, 7), (64, 64, 3, 3), (1, 1), (1, 1))
    strided = [((1, 16, 28, 28), (32, 16, 3, 3), (1, 1)), ((1, 16, 28, 28), (32, 16, 1, 1), (0, 0)),
               ((1, 32, 14, 14), (64, 32, 3, 3), (1, 1))]
    for x_shape, w_shape, padding in strided:
        assert not numba_conv.direct_pays(x_shape, w_shape, (2, 2), padding), (x_shape, w_shape)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_wide_direct_convolution_matches_reference(nb, dtype):
    """The direct kernels on a wide layer they now take (32 -> 32 channels on a 12x12 plane, 9216 multiply-adds
    per pixel) and on an odd channel count."""
    rng = np.random.default_rng(17)
    for x_shape, w_shape in [((2, 32, 12, 12), (32, 32, 3, 3)), ((2, 21, 13, 12), (35, 21, 3, 3))]:
        assert numba_conv.direct_pays(x_shape, w_shape, (1, 1), (1, 1))
        x, w = rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)
        b = rng.standard_normal(w_shape[0]).astype(dtype)
        expected, expected_grads = reference_conv(x, w, b, (1, 1))
        out, residual = nb.conv2d_forward(x, w, b, (1, 1), (1, 1), (1, 1), 1)
        _assert_close(out, expected, dtype, f"output {x_shape} * {w_shape}")
        g = rng.standard_normal(out.shape).astype(dtype)
        grads = nb.conv2d_backward(residual, w, g, x_shape, (1, 1), (1, 1), (1, 1), 1, ALL_GRADS)
        for name, got, want in zip(("gx", "gw", "gb"), grads, expected_grads(g.astype(np.float64))):
            _assert_close(got, want, dtype, f"{name} {x_shape} * {w_shape}")


# --- one GEMM over the batch: (C*KH*KW, N*OH*OW) columns ----------------------------------------------------------

def rows_layout(cols):
    """Chainer-layout columns (N, C, KH, KW, OH, OW) as the GEMM path's (C*KH*KW, N*OH*OW) matrix."""
    n, c, kh, kw, oh, ow = cols.shape
    return cols.transpose(1, 2, 3, 0, 4, 5).reshape(c * kh * kw, n * oh * ow)


@pytest.mark.parametrize("shape, kernel, stride, padding, dilation", CASES)
def test_im2col_rows_and_col2im_rows_match_the_references(shape, kernel, stride, padding, dilation):
    """Bit for bit the naive loops' columns, and the generic col2im's sums (same order), on random geometries."""
    rng = np.random.default_rng(sum(shape) + 7 * sum(kernel) + sum(stride))
    x = rng.standard_normal(shape)
    cols = numba_conv.im2col_rows(x, kernel, stride, padding, dilation)
    np.testing.assert_array_equal(cols, rows_layout(naive_im2col(x, kernel, stride, padding, dilation)))
    g6 = rng.standard_normal(naive_im2col(x, kernel, stride, padding, dilation).shape)
    np.testing.assert_array_equal(numba_conv.col2im_rows(rows_layout(g6), shape, kernel, stride, padding, dilation),
                                  kernels.col2im(np, g6, shape, stride, padding, dilation))


def test_im2col_rows_reads_a_non_contiguous_float32_input():
    x = np.random.default_rng(4).standard_normal((5, 3, 8, 2 * 9)).astype(np.float32)[..., ::2]
    cols = numba_conv.im2col_rows(x, (3, 2), (2, 1), (1, 1), (1, 2))
    assert cols.dtype == np.float32
    np.testing.assert_array_equal(cols, rows_layout(naive_im2col(x, (3, 2), (2, 1), (1, 1), (1, 2))))


def test_rows_kernels_refuse_what_they_would_misread():
    with pytest.raises(ValueError, match="im2col_rows: stride must be an int >= 1"):
        numba_conv.im2col_rows(np.zeros((1, 1, 5, 5)), (2, 2), (0, 1), (0, 0), (1, 1))
    with pytest.raises(ValueError, match="col2im_rows: padding must be an int >= 0"):
        numba_conv.col2im_rows(np.zeros((4, 16)), (1, 1, 5, 5), (2, 2), (1, 1), (-1, 0), (1, 1))
    with pytest.raises(ValueError, match=r"cols has shape \(4, 15\), expected \(4, 16\)"):
        numba_conv.col2im_rows(np.zeros((4, 15)), (1, 1, 5, 5), (2, 2), (1, 1), (0, 0), (1, 1))
    with pytest.raises(ValueError, match=r"gemm_backward: cols has shape \(9, 15\), expected \(9, 16\)"):
        numba_conv.gemm_backward(np.zeros((9, 15)), np.zeros((2, 1, 3, 3)), np.zeros((1, 2, 4, 4)), (1, 1, 6, 6),
                                 (1, 1), (0, 0), (1, 1), ALL_GRADS)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("seed", range(12))
def test_gemm_convolution_matches_naive(seed, dtype):
    """gemm_forward / gemm_backward against the definition: random strides, paddings (also beyond the kernel),
    dilations, rectangular kernels, with and without bias, and only the gradients asked for."""
    r = np.random.default_rng(300 + seed)
    kh, kw = (int(k) for k in r.integers(1, 5, 2))
    stride, dilation = tuple(int(v) for v in r.integers(1, 4, 2)), tuple(int(v) for v in r.integers(1, 3, 2))
    padding = tuple(int(v) for v in r.integers(0, 4, 2))
    h, w = (fitting_size(r, k, p, d) for k, p, d in zip((kh, kw), padding, dilation))
    x_shape = (int(r.integers(1, 4)), int(r.integers(1, 5)), h, w)
    w_shape = (int(r.integers(1, 7)), x_shape[1], kh, kw)
    x, wt = r.standard_normal(x_shape).astype(dtype), r.standard_normal(w_shape).astype(dtype)
    b = r.standard_normal(w_shape[0]).astype(dtype) if seed % 3 else None
    expected, grads = naive_conv(x.astype(np.float64), wt.astype(np.float64),
                                 None if b is None else b.astype(np.float64), stride, padding, dilation, 1)
    what = f"{x_shape} * {w_shape} stride {stride} pad {padding} dilation {dilation}"
    out, cols = numba_conv.gemm_forward(x, wt, b, stride, padding, dilation)
    _assert_close(out, expected, dtype, f"output {what}")
    g = r.standard_normal(out.shape).astype(dtype)
    needs = (seed % 2 == 0, seed % 4 != 1, b is not None)
    got = numba_conv.gemm_backward(cols, wt, g, x_shape, stride, padding, dilation, needs)
    for name, need, a, e in zip(("gx", "gw", "gb"), needs, got, grads(g.astype(np.float64))):
        if not need:
            assert a is None, name
            continue
        _assert_close(a, e, dtype, f"{name} {what}")


@pytest.mark.parametrize("shape, kernel, stride, padding, dilation", [case for case in CASES if case[4] != (1, 1)])
def test_dilated_im2col_and_col2im_are_the_generic_kernels_bit_for_bit(nb, shape, kernel, stride, padding, dilation):
    rng = np.random.default_rng(sum(shape) + sum(dilation))
    x = rng.standard_normal(shape)
    cols = nb.im2col(x, kernel, stride, padding, dilation)
    np.testing.assert_array_equal(cols, kernels.im2col(np, x, kernel, stride, padding, dilation))
    gcols = rng.standard_normal(cols.shape)
    np.testing.assert_array_equal(nb.col2im(gcols, shape, stride, padding, dilation),
                                  kernels.col2im(np, gcols, shape, stride, padding, dilation))


@pytest.mark.parametrize("stride, padding, dilation", [((0, 1), (0, 0), (1, 1)), ((1, 1), (-1, 0), (1, 1)),
                                                       ((1, 1), (0, 0), (1, 0))])
def test_im2col_and_col2im_refuse_what_the_loops_would_misread(nb, stride, padding, dilation):
    with pytest.raises(ValueError, match=r"im2col: (stride|padding|dilation) must be an int >= [01]"):
        nb.im2col(np.zeros((1, 1, 5, 5)), (2, 2), stride, padding, dilation)
    with pytest.raises(ValueError, match=r"col2im: (stride|padding|dilation) must be an int >= [01]"):
        nb.col2im(np.zeros((1, 1, 2, 2, 4, 4)), (1, 1, 5, 5), stride, padding, dilation)


# --- depthwise -------------------------------------------------------------------------------------------------

def depthwise_case(rng, unit_stride):
    """A random depthwise convolution: 2-5 channels, multiplier 1-2, kernel up to 4x4, stride, dilation and
    padding up to 3 (padding may exceed the kernel); ``unit_stride`` takes the long-row kernels."""
    c, multiplier = int(rng.integers(2, 6)), int(rng.integers(1, 3))
    kh, kw = (int(k) for k in rng.integers(1, 5, 2))
    stride = (1, 1) if unit_stride else tuple(int(s) for s in rng.integers(1, 4, 2))
    dilation, padding = tuple(int(d) for d in rng.integers(1, 4, 2)), tuple(int(p) for p in rng.integers(0, 4, 2))
    h, w = (max(1, d * (k - 1) + 1 - 2 * p) + int(rng.integers(0, 9)) for d, k, p in zip(dilation, (kh, kw), padding))
    return (int(rng.integers(1, 4)), c, h, w), (c * multiplier, 1, kh, kw), stride, padding, dilation


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("seed", range(20))
def test_depthwise_convolution_matches_reference(nb, seed, dtype):
    rng = np.random.default_rng(100 + seed)
    x_shape, w_shape, stride, padding, dilation = depthwise_case(rng, unit_stride=seed % 2 == 0)
    groups = x_shape[1]
    assert numba_depthwise.depthwise_pays(x_shape, groups)
    x, w = rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    expected, expected_grads = naive_conv(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), stride,
                                          padding, dilation, groups)
    options = (stride, padding, dilation, groups)
    what = f"{x_shape} * {w_shape} stride {stride} pad {padding} dilation {dilation}"

    out, residual = nb.conv2d_forward(x, w, b, *options)
    assert residual is x or np.shares_memory(residual, x)  # the depthwise kernels keep the input, not columns
    _assert_close(out, expected, dtype, f"output {what}")
    g = rng.standard_normal(out.shape).astype(dtype)
    grads = nb.conv2d_backward(residual, w, g, x_shape, *options, ALL_GRADS)
    for name, got, want in zip(("gx", "gw", "gb"), grads, expected_grads(g.astype(np.float64))):
        _assert_close(got, want, dtype, f"{name} {what}")


def test_depthwise_only_the_gradients_asked_for(nb):
    rng = np.random.default_rng(8)
    x, w = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((3, 1, 3, 3))
    options = ((1, 1), (1, 1), (1, 1), 3)
    out, residual = nb.conv2d_forward(x, w, None, *options)
    g = rng.standard_normal(out.shape)
    _, grads = naive_conv(x, w, None, *options)
    gx, gw, gb = nb.conv2d_backward(residual, w, g, x.shape, *options, (True, False, False))
    assert gw is None and gb is None
    np.testing.assert_allclose(gx, grads(g)[0], rtol=1e-12, atol=1e-12)
    gx, gw, gb = nb.conv2d_backward(residual, w, g, x.shape, *options, (False, True, False))
    assert gx is None and gb is None
    np.testing.assert_allclose(gw, grads(g)[1], rtol=1e-12, atol=1e-12)


def test_depthwise_kernels_refuse_what_they_would_misread():
    x, g = np.zeros((2, 3, 6, 6)), np.zeros((2, 3, 6, 6))
    with pytest.raises(ValueError, match=r"needs weight \(multiplier \* C, 1, KH, KW\)"):
        numba_depthwise.depthwise_forward(x, np.zeros((3, 2, 3, 3)), None, (1, 1), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="needs weight"):
        numba_depthwise.depthwise_forward(x, np.zeros((4, 1, 3, 3)), None, (1, 1), (1, 1), (1, 1))
    with pytest.raises(ValueError, match=r"bias has shape \(2,\), expected \(3,\)"):
        numba_depthwise.depthwise_forward(x, np.zeros((3, 1, 3, 3)), np.zeros(2), (1, 1), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="depthwise convolution: dilation must be an int >= 1"):
        numba_depthwise.depthwise_forward(x, np.zeros((3, 1, 3, 3)), None, (1, 1), (1, 1), (0, 1))
    with pytest.raises(ValueError, match=r"gradient has shape \(2, 3, 6, 6\), expected \(2, 3, 4, 4\)"):
        numba_depthwise.depthwise_input_grad(g, np.zeros((3, 1, 3, 3)), x.shape, (1, 1), (0, 0), (1, 1))
    with pytest.raises(ValueError, match="gradient has shape"):
        numba_depthwise.depthwise_param_grads(x, g[:, :, 1:], (3, 1, 3, 3), (1, 1), (1, 1), (1, 1))


@pytest.mark.parametrize("stride, padding, dilation, groups, w_shape", [
    (1, 1, 1, 4, (4, 1, 3, 3)),          # depthwise, long rows
    (2, 1, 1, 4, (8, 1, 3, 3)),          # depthwise with multiplier 2, strided
    (1, "same", 2, 4, (4, 1, 2, 3)),     # depthwise, dilated, even kernel: asymmetric "same"
    (1, 2, 2, 1, (3, 4, 3, 3)),          # dilated, one GEMM
    (2, 1, 1, 1, (5, 4, 3, 2)),          # strided, one GEMM
    (2, 1, 1, 2, (6, 2, 3, 2)),          # grouped, generic path
])
def test_numba_convolution_gradients(stride, padding, dilation, groups, w_shape):
    """Float64 central differences through the Numba kernels (depthwise, one-GEMM and generic paths)."""
    import xpnet
    xpnet.use("numba")
    rng = np.random.default_rng(21)
    arrays = [rng.standard_normal((2, 4, 7, 6)), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])]
    err = max_relative_error(lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation,
                                                      groups=groups), arrays)
    assert err < 1e-6

"""The generic kernels against naive loop references: im2col/col2im (with dilation) as exact adjoints, convolution
with dilation and groups on the NumPy and Numba backends, and max pooling."""

from importlib.util import find_spec

import numpy as np
import pytest

import xpnet
from xpnet import functional as F
from xpnet import kernels
from xpnet.kernels import out_size

rng = np.random.default_rng(7)
CONV_BACKENDS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    find_spec("numba") is None, reason="the numba backend needs numba: pip install 'xpnet[numba]'"))]


def naive_im2col(x, kernel, stride, padding, dilation=(1, 1)):
    n, c, h, w = x.shape
    (kh, kw), (sy, sx), (ph, pw), (dy, dx) = kernel, stride, padding, dilation
    oh, ow = out_size(h, kh, sy, ph, dy), out_size(w, kw, sx, pw, dx)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.zeros((n, c, kh, kw, oh, ow), x.dtype)
    for i in range(kh):
        for j in range(kw):
            for oy in range(oh):
                for ox in range(ow):
                    cols[:, :, i, j, oy, ox] = xp[:, :, oy * sy + i * dy, ox * sx + j * dx]
    return cols


def add_at_col2im(cols, x_shape, stride, padding, dilation=(1, 1)):
    """Reference col2im: scatter every column entry with np.add.at (correct under any overlap)."""
    n, c, h, w = x_shape
    _, _, kh, kw, oh, ow = cols.shape
    (sy, sx), (ph, pw), (dy, dx) = stride, padding, dilation
    img = np.zeros((n, c, h + 2 * ph, w + 2 * pw), cols.dtype)
    i, j, oy, ox = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(oh), np.arange(ow), indexing="ij")
    rows, colsx = (oy * sy + i * dy).ravel(), (ox * sx + j * dx).ravel()
    np.add.at(img, (slice(None), slice(None), rows, colsx), cols.reshape(n, c, -1))
    return img[:, :, ph:ph + h, pw:pw + w]


def naive_conv(x, w, b, stride, padding, dilation, groups):
    """Convolution and its gradients under ``g`` by definition, one output pixel of one channel at a time."""
    (sy, sx), (ph, pw), (dy, dx) = stride, padding, dilation
    oc, c_group, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = out_size(x.shape[2], kh, sy, ph, dy), out_size(x.shape[3], kw, sx, pw, dx)

    def window(o, oy, ox):
        first = o // (oc // groups) * c_group
        return (slice(None), slice(first, first + c_group), slice(oy * sy, oy * sy + dy * (kh - 1) + 1, dy),
                slice(ox * sx, ox * sx + dx * (kw - 1) + 1, dx))

    out = np.zeros((x.shape[0], oc, oh, ow))
    for o in range(oc):
        for oy in range(oh):
            for ox in range(ow):
                out[:, o, oy, ox] = (xp[window(o, oy, ox)] * w[o]).sum(axis=(1, 2, 3)) + (0 if b is None else b[o])

    def grads(g):
        gxp, gw = np.zeros_like(xp), np.zeros_like(w)
        for o in range(oc):
            for oy in range(oh):
                for ox in range(ow):
                    gxp[window(o, oy, ox)] += g[:, o, oy, ox, None, None, None] * w[o]
                    gw[o] += np.tensordot(g[:, o, oy, ox], xp[window(o, oy, ox)], axes=1)
        return gxp[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]], gw, g.sum(axis=(0, 2, 3))
    return out, grads


def fitting_size(r, k, p, d, most=12):
    """A random input length, below ``most`` where possible, that a window of ``k`` taps ``d`` apart fits when
    padded by ``p``."""
    least = max(1, d * (k - 1) + 1 - 2 * p)
    return int(r.integers(least, max(least + 1, most)))


def random_case(seed, dilated=False):
    r = np.random.default_rng(seed)
    kh, kw = int(r.integers(1, 6)), int(r.integers(1, 6))
    sy, sx = int(r.integers(1, 4)), int(r.integers(1, 4))
    ph, pw = int(r.integers(0, 3)), int(r.integers(0, 3))
    dy, dx = (int(d) for d in r.integers(1, 4, 2)) if dilated else (1, 1)
    h, w = fitting_size(r, kh, ph, dy), fitting_size(r, kw, pw, dx)
    n, c = int(r.integers(1, 4)), int(r.integers(1, 4))
    return (n, c, h, w), (kh, kw), (sy, sx), (ph, pw), (dy, dx)


def same_width_case(seed, dilated=False):
    """A case for the whole-plane im2col path: stride 1 across and an output as wide as the input."""
    (n, c, h, _), (kh, _), (sy, _), (ph, _), (dy, _) = random_case(seed, dilated)
    r = np.random.default_rng(1000 + seed)
    dx = int(r.integers(1, 4)) if dilated else 1
    kw = 2 * int(r.integers(0, 3)) + 1
    pw = dx * (kw - 1) // 2
    return (n, c, h, int(r.integers(1, 12))), (kh, kw), (sy, 1), (ph, pw), (dy, dx)


CASES = ([random_case(s) for s in range(40)] + [random_case(s, dilated=True) for s in range(40, 70)]
         + [same_width_case(s) for s in range(20)] + [same_width_case(s, dilated=True) for s in range(20, 35)])


def test_dilated_window_output_size():
    assert out_size(10, 3, 1, 0, 2) == 6 and out_size(10, 3, 2, 1, 3) == 3
    with pytest.raises(ValueError, match="window 3 and dilation 5 with stride 1 and padding 0 does not fit"):
        out_size(10, 3, 1, 0, 5)


@pytest.mark.parametrize("shape, kernel, stride, padding, dilation", CASES)
def test_im2col_matches_naive(shape, kernel, stride, padding, dilation):
    x = rng.standard_normal(shape)
    got = xpnet.get_backend().im2col(x, kernel, stride, padding, dilation)
    np.testing.assert_array_equal(got, naive_im2col(x, kernel, stride, padding, dilation))
    assert got.flags.c_contiguous


@pytest.mark.parametrize("shape, kernel, stride, padding, dilation",
                         [same_width_case(s) for s in range(5)] + [same_width_case(s, True) for s in range(5, 10)])
def test_im2col_same_width_reads_strided_input(shape, kernel, stride, padding, dilation):
    """The whole-plane path copies a non-contiguous input (every other column of a wider array) exactly."""
    n, c, h, w = shape
    x = rng.standard_normal((n, c, h, 2 * w))[..., ::2]
    got = xpnet.get_backend().im2col(x, kernel, stride, padding, dilation)
    np.testing.assert_array_equal(got, naive_im2col(x, kernel, stride, padding, dilation))


@pytest.mark.parametrize("dilation", [(1, 1), (2, 2)])
@pytest.mark.parametrize("samples_per_pass", [1, 2, 3])
def test_im2col_same_width_in_several_passes(samples_per_pass, dilation):
    """Copying a few samples per pass (the last pass shorter) gives the same columns as one pass."""
    x = rng.standard_normal((7, 3, 9, 10))
    padding = dilation  # kernel 3: "same" padding is the dilation
    per_sample = 3 * 3 * 3 * out_size(9, 3, 1, padding[0], dilation[0]) * 10 * x.itemsize
    got = kernels.im2col(np, x, (3, 3), (1, 1), padding, dilation, pass_bytes=samples_per_pass * per_sample + 5)
    np.testing.assert_array_equal(got, naive_im2col(x, (3, 3), (1, 1), padding, dilation))


@pytest.mark.parametrize("shape, kernel, stride, padding, dilation", CASES)
def test_col2im_matches_add_at(shape, kernel, stride, padding, dilation):
    oh, ow = (out_size(size, k, s, p, d) for size, k, s, p, d in zip(shape[2:], kernel, stride, padding, dilation))
    cols = rng.standard_normal(shape[:2] + kernel + (oh, ow))
    got = xpnet.get_backend().col2im(cols, shape, stride, padding, dilation)
    np.testing.assert_allclose(got, add_at_col2im(cols, shape, stride, padding, dilation), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("shape, kernel, stride, padding, dilation", CASES)
def test_im2col_col2im_adjoint(shape, kernel, stride, padding, dilation):
    """<im2col(x), c> == <x, col2im(c)> in float64: col2im is exactly the transpose of im2col."""
    backend = xpnet.get_backend()
    x = rng.standard_normal(shape)
    cols = backend.im2col(x, kernel, stride, padding, dilation)
    c = rng.standard_normal(cols.shape)
    lhs = float(np.vdot(cols, c))
    rhs = float(np.vdot(x, backend.col2im(c, shape, stride, padding, dilation)))
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


def slice_add_col2im(cols, x_shape, stride, padding, dilation):
    """Reference col2im in the generic order: one strided slice-add per kernel offset, (i, j) ascending."""
    n, c, h, w = x_shape
    _, _, kh, kw, oh, ow = cols.shape
    (sy, sx), (ph, pw), (dy, dx) = stride, padding, dilation
    img = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            img[:, :, i * dy:i * dy + sy * (oh - 1) + 1:sy, j * dx:j * dx + sx * (ow - 1) + 1:sx] += cols[:, :, i, j]
    return img[:, :, ph:ph + h, pw:pw + w]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel, stride, padding, dilation",
                         [same_width_case(s) for s in range(20)] + [same_width_case(s, True) for s in range(20, 35)])
def test_col2im_same_width_equals_the_slice_adds_bit_for_bit(shape, kernel, stride, padding, dilation, dtype):
    """The whole-plane path (stride 1, same width) sums in the generic order, and drops the wrapped columns' values
    (even inf and NaN there, which belong to no pixel)."""
    oh, ow = (out_size(size, k, s, p, d) for size, k, s, p, d in zip(shape[2:], kernel, stride, padding, dilation))
    cols = rng.standard_normal(shape[:2] + kernel + (oh, ow)).astype(dtype)
    flat = cols.reshape(-1)
    flat[::7] = np.resize(np.array([np.inf, np.nan, -0.0, 1e30], dtype=dtype), flat[::7].size)
    got = kernels.col2im(np, cols, shape, stride, padding, dilation)
    np.testing.assert_array_equal(got, slice_add_col2im(cols, shape, stride, padding, dilation))
    assert got.dtype == dtype


def test_col2im_overlap_counts_every_window():
    """All-ones columns with overlapping 3x3 windows at stride 1: each pixel gets the number of windows covering it."""
    cols = np.ones((1, 1, 3, 3, 3, 3))
    img = xpnet.get_backend().col2im(cols, (1, 1, 5, 5), (1, 1), (0, 0))
    coverage = np.array([1, 2, 3, 2, 1])
    np.testing.assert_array_equal(img[0, 0], np.outer(coverage, coverage))


def conv_case(seed):
    """A random convolution: groups 1, 2, 3 or depthwise (with a channel multiplier), any stride, padding and
    dilation, rectangular kernels, sometimes no bias."""
    r = np.random.default_rng(seed)
    groups = int(r.choice([1, 2, 3]))
    c = groups * int(r.integers(1, 3))
    depthwise = seed % 4 == 3
    if depthwise:
        groups = c = int(r.integers(2, 5))
    oc = groups * int(r.integers(1, 3))
    kh, kw = (int(k) for k in r.integers(1, 4, 2))
    stride, dilation = tuple(int(v) for v in r.integers(1, 3, 2)), tuple(int(v) for v in r.integers(1, 3, 2))
    padding = tuple(int(v) for v in r.integers(0, 3, 2))
    h, w = (fitting_size(r, k, p, d, most=10) for d, k, p in zip(dilation, (kh, kw), padding))
    return (int(r.integers(1, 4)), c, h, w), (oc, c // groups, kh, kw), stride, padding, dilation, groups, seed % 5 != 0


CONV_CASES = [conv_case(s) for s in range(24)]


@pytest.mark.parametrize("backend", CONV_BACKENDS)
@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation, groups, bias", CONV_CASES)
def test_conv2d_kernels_match_naive(backend, x_shape, w_shape, stride, padding, dilation, groups, bias):
    """The backend's conv2d_forward / conv2d_backward pair against the definition, in float64."""
    be = xpnet.get_backend(backend)
    r = np.random.default_rng(hash((x_shape, w_shape)) % 2**32)
    x, w = r.standard_normal(x_shape), r.standard_normal(w_shape)
    b = r.standard_normal(w_shape[0]) if bias else None
    expected, grads = naive_conv(x, w, b, stride, padding, dilation, groups)
    out, residual = be.conv2d_forward(x, w, b, stride, padding, dilation, groups)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    g = r.standard_normal(out.shape)
    got = be.conv2d_backward(residual, w, g, x_shape, stride, padding, dilation, groups, (True, True, bias))
    for name, a, e in zip(("gx", "gw", "gb"), got, grads(g)):
        if name == "gb" and not bias:
            assert a is None
            continue
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("backend", CONV_BACKENDS)
@pytest.mark.parametrize("w_shape, dilation, groups", [((4, 2, 4, 2), (1, 1), 1), ((4, 1, 3, 4), (2, 1), 2),
                                                       ((4, 1, 2, 2), (3, 2), 2), ((6, 1, 3, 3), (2, 2), 2)])
def test_conv2d_same_padding_matches_naive_on_the_padded_input(backend, w_shape, dilation, groups):
    """padding="same": a dilated span d*(k-1) split as total // 2 before and the rest after (PyTorch's rule), so
    an even span pads one more zero at the bottom and right; the input gradient is cropped back."""
    xpnet.use(backend)
    r = np.random.default_rng(11)
    x, w = r.standard_normal((2, 2, 7, 8)), r.standard_normal(w_shape)
    totals = [d * (k - 1) for d, k in zip(dilation, w_shape[2:])]
    padded = np.pad(x, ((0, 0), (0, 0), *((t // 2, t - t // 2) for t in totals)))
    expected, grads = naive_conv(padded, w, None, (1, 1), (0, 0), dilation, groups)
    xt, wt = xpnet.tensor(x, requires_grad=True), xpnet.tensor(w, requires_grad=True)
    out = F.conv2d(xt, wt, padding="same", dilation=dilation, groups=groups)
    assert out.shape == (2, w_shape[0], 7, 8)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)
    g = r.standard_normal(out.shape)
    out.backward(g)
    gx, gw, _ = grads(g)
    (top, _), (left, _) = ((t // 2, t - t // 2) for t in totals)
    np.testing.assert_allclose(xt.grad, gx[:, :, top:top + 7, left:left + 8], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(wt.grad, gw, rtol=1e-12, atol=1e-12)


def naive_max_pool(x, kernel, stride):
    n, c, h, w = x.shape
    (kh, kw), (sy, sx) = kernel, stride
    oh, ow = out_size(h, kh, sy, 0), out_size(w, kw, sx, 0)
    out = np.empty((n, c, oh, ow), x.dtype)
    arg = np.empty((n, c, oh, ow), np.int64)
    for a in range(n):
        for b in range(c):
            for oy in range(oh):
                for ox in range(ow):
                    win = x[a, b, oy * sy:oy * sy + kh, ox * sx:ox * sx + kw].ravel()
                    arg[a, b, oy, ox] = int(np.argmax(win))
                    out[a, b, oy, ox] = win.max()
    return out, arg


@pytest.mark.parametrize("kernel, stride", [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((3, 2), (1, 2)), ((2, 2), (1, 1))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_forward_matches_naive(kernel, stride, dtype):
    x = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
    out, arg = xpnet.get_backend().max_pool_forward(x, kernel, stride)
    ref_out, ref_arg = naive_max_pool(x, kernel, stride)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(arg, ref_arg)


def test_max_pool_ties_pick_first_and_route_gradient_there():
    x = np.zeros((1, 1, 4, 4))
    out, arg = xpnet.get_backend().max_pool_forward(x, (2, 2), (2, 2))
    np.testing.assert_array_equal(arg, 0)
    gx = xpnet.get_backend().max_pool_backward(np.ones_like(out), arg, x.shape, (2, 2), (2, 2))
    expected = np.zeros((4, 4))
    expected[::2, ::2] = 1
    np.testing.assert_array_equal(gx[0, 0], expected)


def test_max_pool_backward_sums_overlapping_windows():
    x = rng.standard_normal((2, 2, 7, 7))
    out, arg = xpnet.get_backend().max_pool_forward(x, (3, 3), (2, 2))
    g = rng.standard_normal(out.shape)
    gx = xpnet.get_backend().max_pool_backward(g, arg, x.shape, (3, 3), (2, 2))
    ref = np.zeros_like(x)
    for a in range(2):
        for b in range(2):
            for oy in range(out.shape[2]):
                for ox in range(out.shape[3]):
                    dy, dx = divmod(int(arg[a, b, oy, ox]), 3)
                    ref[a, b, oy * 2 + dy, ox * 2 + dx] += g[a, b, oy, ox]
    np.testing.assert_allclose(gx, ref, rtol=1e-14, atol=1e-14)


def test_window_that_does_not_fit_is_a_clear_error():
    with pytest.raises(ValueError, match="does not fit"):
        xpnet.get_backend().im2col(np.zeros((1, 1, 2, 2)), (3, 3), (1, 1), (0, 0))


def test_max_pool_nan_wins_its_window_and_gets_the_gradient():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    x[0, 0, 1, 0] = np.nan
    out, arg = xpnet.get_backend().max_pool_forward(x, (2, 2), (2, 2))
    assert np.isnan(out[0, 0, 0, 0]) and arg[0, 0, 0, 0] == 2
    gx = xpnet.get_backend().max_pool_backward(np.ones_like(out), arg, x.shape, (2, 2), (2, 2))
    assert gx[0, 0, 1, 0] == 1 and gx[0, 0, 1, 1] == 0


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int64])
def test_select_gives_the_same_bits_as_where(dtype):
    a = rng.standard_normal((3, 4, 5, 6)).astype(dtype)
    b = rng.standard_normal(a.shape).astype(dtype)
    if a.dtype.kind == "f":  # every special value on both sides of the mask, in both operands
        specials = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0]
        a.flat[:12] = specials * 2
        b.flat[:12] = specials[::-1] * 2
    keep = rng.random(a.shape) < 0.5
    keep.flat[:6], keep.flat[6:12] = True, False
    for other in (None, b, 1, -2.5):
        expected = np.where(keep, a, np.zeros((), dtype) if other is None else other)
        actual = kernels.select(np, keep, a, other)
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        assert actual.tobytes() == expected.tobytes()
    strided = a[:, ::2]  # a view: the bits are read through its strides
    assert kernels.select(np, keep[:, ::2], strided).tobytes() == np.where(keep[:, ::2], strided, 0).tobytes()


def test_select_broadcasts_like_where():
    a = rng.standard_normal((2, 3)).astype(np.float32)
    keep = np.array([True, False, True])
    assert np.array_equal(kernels.select(np, keep, a), np.where(keep, a, 0))
    assert np.array_equal(kernels.select(np, keep, a, np.float32(2)), np.where(keep, a, 2))
    wide = keep[:, None, None] & np.ones((3, 2, 3), bool)
    assert np.array_equal(kernels.select(np, wide, a), np.where(wide, a, 0))

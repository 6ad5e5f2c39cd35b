"""The NumPy backend's kernels against naive loop references, and im2col/col2im as exact adjoints."""

import numpy as np
import pytest

import xpnet
from xpnet import kernels
from xpnet.kernels import out_size

rng = np.random.default_rng(7)


def naive_im2col(x, kernel, stride, padding):
    n, c, h, w = x.shape
    (kh, kw), (sy, sx), (ph, pw) = kernel, stride, padding
    oh, ow = out_size(h, kh, sy, ph), out_size(w, kw, sx, pw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.zeros((n, c, kh, kw, oh, ow), x.dtype)
    for i in range(kh):
        for j in range(kw):
            for oy in range(oh):
                for ox in range(ow):
                    cols[:, :, i, j, oy, ox] = xp[:, :, oy * sy + i, ox * sx + j]
    return cols


def add_at_col2im(cols, x_shape, stride, padding):
    """Reference col2im: scatter every column entry with np.add.at (correct under any overlap)."""
    n, c, h, w = x_shape
    _, _, kh, kw, oh, ow = cols.shape
    (sy, sx), (ph, pw) = stride, padding
    img = np.zeros((n, c, h + 2 * ph, w + 2 * pw), cols.dtype)
    i, j, oy, ox = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(oh), np.arange(ow), indexing="ij")
    rows, colsx = (oy * sy + i).ravel(), (ox * sx + j).ravel()
    np.add.at(img, (slice(None), slice(None), rows, colsx), cols.reshape(n, c, -1))
    return img[:, :, ph:ph + h, pw:pw + w]


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


def random_case(seed):
    r = np.random.default_rng(seed)
    kh, kw = int(r.integers(1, 6)), int(r.integers(1, 6))
    sy, sx = int(r.integers(1, 4)), int(r.integers(1, 4))
    ph, pw = int(r.integers(0, 3)), int(r.integers(0, 3))
    h, w = int(r.integers(kh, 12)), int(r.integers(kw, 12))
    n, c = int(r.integers(1, 4)), int(r.integers(1, 4))
    return (n, c, h, w), (kh, kw), (sy, sx), (ph, pw)


def same_width_case(seed):
    """A case for the whole-plane im2col path: stride 1 across and an output as wide as the input."""
    (n, c, h, _), (kh, _), (sy, _), (ph, _) = random_case(seed)
    r = np.random.default_rng(1000 + seed)
    pw = int(r.integers(0, 3))
    kw = 2 * pw + 1
    return (n, c, h, int(r.integers(kw, 12))), (kh, kw), (sy, 1), (ph, pw)


CASES = [random_case(s) for s in range(40)] + [same_width_case(s) for s in range(20)]


@pytest.mark.parametrize("shape, kernel, stride, padding", CASES)
def test_im2col_matches_naive(shape, kernel, stride, padding):
    x = rng.standard_normal(shape)
    got = xpnet.get_backend().im2col(x, kernel, stride, padding)
    np.testing.assert_array_equal(got, naive_im2col(x, kernel, stride, padding))
    assert got.flags.c_contiguous


@pytest.mark.parametrize("shape, kernel, stride, padding", [same_width_case(s) for s in range(5)])
def test_im2col_same_width_reads_strided_input(shape, kernel, stride, padding):
    """The whole-plane path copies a non-contiguous input (every other column of a wider array) exactly."""
    n, c, h, w = shape
    x = rng.standard_normal((n, c, h, 2 * w))[..., ::2]
    got = xpnet.get_backend().im2col(x, kernel, stride, padding)
    np.testing.assert_array_equal(got, naive_im2col(x, kernel, stride, padding))


@pytest.mark.parametrize("samples_per_pass", [1, 2, 3])
def test_im2col_same_width_in_several_passes(samples_per_pass):
    """Copying a few samples per pass (the last pass shorter) gives the same columns as one pass."""
    x = rng.standard_normal((7, 3, 9, 10))
    per_sample = 3 * 3 * 3 * 9 * 10 * x.itemsize
    got = kernels.im2col(np, x, (3, 3), (1, 1), (1, 1), pass_bytes=samples_per_pass * per_sample + 5)
    np.testing.assert_array_equal(got, naive_im2col(x, (3, 3), (1, 1), (1, 1)))


@pytest.mark.parametrize("shape, kernel, stride, padding", CASES)
def test_col2im_matches_add_at(shape, kernel, stride, padding):
    oh, ow = out_size(shape[2], kernel[0], stride[0], padding[0]), out_size(shape[3], kernel[1], stride[1], padding[1])
    cols = rng.standard_normal(shape[:2] + kernel + (oh, ow))
    got = xpnet.get_backend().col2im(cols, shape, stride, padding)
    np.testing.assert_allclose(got, add_at_col2im(cols, shape, stride, padding), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("shape, kernel, stride, padding", CASES)
def test_im2col_col2im_adjoint(shape, kernel, stride, padding):
    """<im2col(x), c> == <x, col2im(c)> in float64: col2im is exactly the transpose of im2col."""
    backend = xpnet.get_backend()
    x = rng.standard_normal(shape)
    cols = backend.im2col(x, kernel, stride, padding)
    c = rng.standard_normal(cols.shape)
    lhs = float(np.vdot(cols, c))
    rhs = float(np.vdot(x, backend.col2im(c, shape, stride, padding)))
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


def test_col2im_overlap_counts_every_window():
    """All-ones columns with overlapping 3x3 windows at stride 1: each pixel gets the number of windows covering it."""
    cols = np.ones((1, 1, 3, 3, 3, 3))
    img = xpnet.get_backend().col2im(cols, (1, 1, 5, 5), (1, 1), (0, 0))
    coverage = np.array([1, 2, 3, 2, 1])
    np.testing.assert_array_equal(img[0, 0], np.outer(coverage, coverage))


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

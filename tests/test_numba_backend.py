"""The Numba kernels against references: im2col and max pooling equal the generic NumPy kernels exactly; col2im
equals a naive gather loop exactly and ``np.add.at`` to float tolerance; plus ties, NaNs, layouts and caching."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("numba", reason="the numba backend needs numba: pip install 'xpnet[numba]'")

from xpnet import kernels  # noqa: E402
from xpnet.backend import get_backend  # noqa: E402

DTYPES = ["float32", "float64"]
GRID = list(itertools.product((1, 2, 3, 5), (1, 2, 3), (0, 1, 2)))  # kernel, stride, padding


@pytest.fixture(scope="module")
def nb():
    return get_backend("numba")


def _shape(rng: np.random.Generator, kernel: int, padding: int) -> tuple[int, int, int, int]:
    """A random non-square (N, C, H, W) that the kernel fits."""
    h = int(rng.integers(max(kernel - 2 * padding, 1), 12))
    return int(rng.integers(1, 4)), int(rng.integers(1, 4)), h, h + int(rng.integers(1, 4))


def _col2im_add_at(cols: np.ndarray, x_shape: tuple[int, ...], stride: tuple[int, int],
                   padding: tuple[int, int]) -> np.ndarray:
    """col2im by one unbuffered scatter-add of every column entry onto its padded pixel."""
    n, c, h, w = x_shape
    _, _, kh, kw, oh, ow = cols.shape
    (sy, sx), (ph, pw) = stride, padding
    img = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    rows = np.arange(kh)[:, None, None, None] + sy * np.arange(oh)[None, None, :, None]
    cols_ix = np.arange(kw)[None, :, None, None] + sx * np.arange(ow)[None, None, None, :]
    np.add.at(img, (slice(None), slice(None), rows, cols_ix), cols)
    return img[:, :, ph:ph + h, pw:pw + w]


def _col2im_gather(cols: np.ndarray, x_shape: tuple[int, ...], stride: tuple[int, int],
                   padding: tuple[int, int]) -> np.ndarray:
    """col2im pixel by pixel: each sums the entries covering it, offsets (i, j) ascending, from zero."""
    _, _, h, w = x_shape
    _, _, kh, kw, oh, ow = cols.shape
    (sy, sx), (ph, pw) = stride, padding
    img = np.zeros(x_shape, dtype=cols.dtype)
    for y, x in itertools.product(range(h), range(w)):
        for i, j in itertools.product(range(kh), range(kw)):
            oy, ry = divmod(y + ph - i, sy)
            ox, rx = divmod(x + pw - j, sx)
            if ry == 0 and rx == 0 and 0 <= oy < oh and 0 <= ox < ow:
                img[:, :, y, x] += cols[:, :, i, j, oy, ox]
    return img


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel,stride,padding", GRID)
def test_im2col_and_col2im(nb, kernel, stride, padding, dtype):
    rng = np.random.default_rng([kernel, stride, padding])
    x = rng.standard_normal(_shape(rng, kernel, padding)).astype(dtype)
    k, s, p = (kernel, kernel), (stride, stride), (padding, padding)

    cols = nb.im2col(x, k, s, p)
    expected = kernels.im2col(np, x, k, s, p)
    assert cols.dtype == x.dtype and cols.flags.c_contiguous
    np.testing.assert_array_equal(cols, expected)

    gcols = rng.standard_normal(cols.shape).astype(dtype)
    img = nb.col2im(gcols, x.shape, s, p)
    assert img.dtype == x.dtype and img.shape == x.shape
    np.testing.assert_array_equal(img, _col2im_gather(gcols, x.shape, s, p))
    np.testing.assert_array_equal(img, kernels.col2im(np, gcols, x.shape, s, p))
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(img, _col2im_add_at(gcols, x.shape, s, p), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_im2col_col2im_rectangular(nb, dtype):
    """Different kernel, stride and padding per axis."""
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 13)).astype(dtype)
    k, s, p = (3, 2), (2, 1), (1, 0)
    cols = nb.im2col(x, k, s, p)
    np.testing.assert_array_equal(cols, kernels.im2col(np, x, k, s, p))
    np.testing.assert_array_equal(nb.col2im(cols, x.shape, s, p), _col2im_gather(cols, x.shape, s, p))


def _check_pool(nb, x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]) -> None:
    out, argmax = nb.max_pool_forward(x, kernel, stride)
    expected_out, expected_arg = kernels.max_pool_forward(np, x, kernel, stride)
    assert out.dtype == x.dtype and argmax.dtype == np.int64
    np.testing.assert_array_equal(out, expected_out)
    np.testing.assert_array_equal(argmax, expected_arg)
    gout = np.random.default_rng(2).standard_normal(out.shape).astype(x.dtype)
    gx = nb.max_pool_backward(gout, argmax, x.shape, kernel, stride)
    assert gx.dtype == x.dtype and gx.shape == x.shape
    np.testing.assert_array_equal(gx, kernels.max_pool_backward(np, gout, expected_arg, x.shape, kernel, stride))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel,stride", list(itertools.product((1, 2, 3, 5), (1, 2, 3))))
def test_max_pool(nb, kernel, stride, dtype):
    """Continuous values, and small integers so that most windows hold ties."""
    rng = np.random.default_rng([kernel, stride])
    shape = _shape(rng, kernel, 0)
    _check_pool(nb, rng.standard_normal(shape).astype(dtype), (kernel, kernel), (stride, stride))
    _check_pool(nb, rng.integers(-2, 3, size=shape).astype(dtype), (kernel, kernel), (stride, stride))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel,stride", [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((3, 2), (1, 2))])
def test_max_pool_constant_input_first_index_wins(nb, kernel, stride, dtype):
    x = np.full((2, 3, 9, 8), 0.5, dtype=dtype)
    out, argmax = nb.max_pool_forward(x, kernel, stride)
    assert (argmax == 0).all() and (out == 0.5).all()
    _check_pool(nb, x, kernel, stride)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_overlapping_windows_sum_gradients(nb, dtype):
    """Kernel 3 stride 2: a pixel winning two windows gets both gradients."""
    x = np.zeros((1, 1, 5, 5), dtype=dtype)
    x[0, 0, 2, 2] = 1.0  # the centre is in all four windows
    out, argmax = nb.max_pool_forward(x, (3, 3), (2, 2))
    np.testing.assert_array_equal(argmax[0, 0], [[8, 6], [2, 0]])
    gx = nb.max_pool_backward(np.ones_like(out), argmax, x.shape, (3, 3), (2, 2))
    assert gx[0, 0, 2, 2] == 4 and gx.sum() == 4
    _check_pool(nb, np.random.default_rng(3).integers(0, 3, size=(3, 4, 11, 10)).astype(dtype), (3, 3), (2, 2))


@pytest.mark.parametrize("kernel", [(2, 2), (2, 3)])  # the branch-free 2x2 kernel and the general one
def test_max_pool_nan_wins_and_the_last_nan_is_the_argmax(nb, kernel):
    """A NaN is the maximum of its window and the last NaN is the argmax (PyTorch's CPU rule); elsewhere the
    first maximum, as ``np.argmax``."""
    x = np.random.default_rng(4).standard_normal((1, 2, 6, 6))
    x[0, 0, 1, 1] = x[0, 1, 0, 1] = x[0, 1, 1, 0] = np.nan
    out, argmax = nb.max_pool_forward(x, kernel, kernel)
    (kh, kw), (oh, ow) = kernel, (6 // kernel[0], 6 // kernel[1])
    windows = x.reshape(1, 2, oh, kh, ow, kw).transpose(0, 1, 2, 4, 3, 5).reshape(1, 2, oh, ow, kh * kw)
    last_nan = kh * kw - 1 - np.isnan(windows[..., ::-1]).argmax(axis=-1)
    expected = np.where(np.isnan(windows).any(axis=-1), last_nan, windows.argmax(axis=-1))
    assert (expected != windows.argmax(axis=-1)).any()  # the window holding two NaNs tells the rules apart
    np.testing.assert_array_equal(argmax, expected)
    np.testing.assert_array_equal(out, windows.max(axis=-1))


def test_floor_mode_borders_get_zero_gradient(nb):
    """Rows and columns no window covers (floor mode) are written as zero, not left uninitialised."""
    x = np.random.default_rng(5).standard_normal((2, 2, 7, 9))
    out, argmax = nb.max_pool_forward(x, (2, 2), (2, 2))
    gx = nb.max_pool_backward(np.ones_like(out), argmax, x.shape, (2, 2), (2, 2))
    assert (gx[:, :, 6, :] == 0).all() and (gx[:, :, :, 8] == 0).all()
    assert gx.sum() == out.size


def test_non_contiguous_inputs(nb):
    x = np.random.default_rng(6).standard_normal((7, 6, 3, 2)).transpose(3, 2, 1, 0)
    np.testing.assert_array_equal(nb.im2col(x, (3, 3), (1, 1), (1, 1)), kernels.im2col(np, x, (3, 3), (1, 1), (1, 1)))
    _check_pool(nb, x, (2, 2), (2, 2))


def test_mismatched_shapes_are_refused(nb):
    """The compiled loops do not bounds-check, so a wrong shape must raise before they run."""
    cols = np.zeros((2, 3, 3, 3, 5, 5))
    with pytest.raises(ValueError, match="col2im cols"):
        nb.col2im(cols, (2, 3, 6, 5), (1, 1), (1, 1))
    gout, argmax = np.zeros((2, 3, 3, 3)), np.zeros((2, 3, 3, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="max-pool gradient"):
        nb.max_pool_backward(gout, argmax, (2, 3, 8, 6), (2, 2), (2, 2))
    with pytest.raises(ValueError, match="max-pool argmax"):
        nb.max_pool_backward(gout, argmax[:, :, :2], (2, 3, 6, 6), (2, 2), (2, 2))


def test_warm_up_returns_seconds():
    from xpnet.backends.numba import NumbaBackend

    seconds = NumbaBackend.warm_up(dtypes=("float64",))
    assert isinstance(seconds, float) and seconds >= 0


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout


def test_importing_xpnet_does_not_import_numba():
    assert _run("import sys, xpnet; print('numba' in sys.modules)").strip() == "False"


def test_kernels_load_from_the_disk_cache_in_a_new_process(nb):
    nb.warm_up()  # compiles and saves anything this process has not yet
    misses = _run(
        "from xpnet.backends import numba as m\n"
        "m.NumbaBackend.warm_up()\n"
        "kernels = [m._im2col, m._col2im, m._max_pool_forward, m._max_pool_backward, m._max_pool_backward_tiled,\n"
        "           m._max_pool_forward_2x2, m._relu_forward, m._relu_backward,\n"
        "           m.numba_conv._conv_forward, m.numba_conv._conv_weight_grad]\n"
        "print(sum(sum(k.stats.cache_misses.values()) for k in kernels))\n")
    assert misses.strip() == "0"


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_equals_the_generic_kernels_including_nan_and_signed_zero(nb, dtype):
    generic = get_backend("numpy")
    x = np.random.default_rng(8).standard_normal((3, 4, 5, 6)).astype(dtype)
    x.reshape(-1)[:6] = [np.nan, -np.inf, np.inf, -0.0, 0.0, -np.nan]
    x = x.transpose(0, 2, 1, 3)  # not contiguous
    out = nb.relu_forward(x)
    np.testing.assert_array_equal(out, generic.relu_forward(x))  # NaN where x is NaN, as numpy.maximum
    assert out.dtype == x.dtype and np.isnan(out).sum() == 2 and not np.signbit(out[~np.isnan(out)]).any()
    g = np.random.default_rng(9).standard_normal(out.shape).astype(dtype)
    np.testing.assert_array_equal(nb.relu_backward(out, g), generic.relu_backward(out, g))
    with pytest.raises(ValueError, match="relu gradient"):
        nb.relu_backward(out, g[:1])

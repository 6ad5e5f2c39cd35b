"""Max, average and adaptive average pooling against naive loop references, on every backend: padding, ceil
mode (PyTorch's output size and last-window rule), ties, windows of padding only, odd sizes, batch 1.

Forward results must equal the references exactly; gradients too, with integer-valued upstream gradients
(scaled by each window's divisor for average pooling) so that sums are exact in any order.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from backend_fixtures import backend_name  # noqa: F401  (a fixture)

import xpnet
from xpnet import functional as F
from xpnet import kernels, nn

torch = pytest.importorskip("torch", reason="PyTorch gives the reference output sizes")


def naive_starts(size: int, k: int, s: int, p: int, ceil_mode: bool) -> list[int]:
    """Window starts (in input coordinates, negative inside the leading padding), in words: windows that fit in
    the padded input; in ceil mode also a last partial one, if it starts inside the input and the window one
    stride before it (even one before the first) ends before the padded input does."""
    starts, t = [], -p
    while True:
        fits = t + k <= size + p
        partial = ceil_mode and t < size and t - s + k < size + p
        if not (fits or partial):
            return starts
        starts.append(t)
        t += s


def windows(x_shape, kernel, stride, padding, ceil_mode):
    """((row starts, column starts), every (n, c, oy, ox) index) for a pooling configuration."""
    _, _, h, w = x_shape
    rows = naive_starts(h, kernel[0], stride[0], padding[0], ceil_mode)
    cols = naive_starts(w, kernel[1], stride[1], padding[1], ceil_mode)
    return rows, cols


def naive_max_pool(x, kernel, stride, padding, ceil_mode):
    """Output and argmax (flat in-window index) by loops: the first maximum among real pixels wins, a NaN beats
    numbers and earlier NaNs (the last NaN wins), as PyTorch's CPU kernel."""
    n, c, h, w = x.shape
    rows, cols = windows(x.shape, kernel, stride, padding, ceil_mode)
    out = np.empty((n, c, len(rows), len(cols)), x.dtype)
    arg = np.empty(out.shape, np.int64)
    for a in range(n):
        for b in range(c):
            for oy, ty in enumerate(rows):
                for ox, tx in enumerate(cols):
                    best, index = None, None
                    for i in range(kernel[0]):
                        for j in range(kernel[1]):
                            y, xx = ty + i, tx + j
                            if not (0 <= y < h and 0 <= xx < w):
                                continue
                            v = x[a, b, y, xx]
                            if best is None or v > best or np.isnan(v):
                                best, index = v, i * kernel[1] + j
                    out[a, b, oy, ox], arg[a, b, oy, ox] = best, index
    return out, arg


def naive_max_pool_grad(g, arg, x_shape, kernel, stride, padding, ceil_mode):
    gx = np.zeros(x_shape, g.dtype)
    rows, cols = windows(x_shape, kernel, stride, padding, ceil_mode)
    for a, b, oy, ox in np.ndindex(g.shape):
        i, j = divmod(int(arg[a, b, oy, ox]), kernel[1])
        gx[a, b, rows[oy] + i, cols[ox] + j] += g[a, b, oy, ox]
    return gx


def naive_divisor(x_shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """Per output window: the override, else its size within the padding (not the overhang), else its real
    pixels."""
    _, _, h, w = x_shape
    rows, cols = windows(x_shape, kernel, stride, padding, ceil_mode)
    div = np.empty((len(rows), len(cols)))
    for oy, ty in enumerate(rows):
        for ox, tx in enumerate(cols):
            if divisor_override is not None:
                div[oy, ox] = divisor_override
            elif count_include_pad:
                div[oy, ox] = ((min(ty + kernel[0], h + padding[0]) - ty) *
                               (min(tx + kernel[1], w + padding[1]) - tx))
            else:
                div[oy, ox] = ((min(ty + kernel[0], h) - max(ty, 0)) * (min(tx + kernel[1], w) - max(tx, 0)))
    return div


def naive_avg_pool(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """Window sums in row-major order (PyTorch's loop) divided by ``naive_divisor``."""
    n, c, h, w = x.shape
    rows, cols = windows(x.shape, kernel, stride, padding, ceil_mode)
    div = naive_divisor(x.shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
    out = np.empty((n, c, len(rows), len(cols)), x.dtype)
    for a, b, oy, ox in np.ndindex(out.shape):
        total = x.dtype.type(0)
        for i in range(kernel[0]):
            for j in range(kernel[1]):
                y, xx = rows[oy] + i, cols[ox] + j
                if 0 <= y < h and 0 <= xx < w:
                    total += x[a, b, y, xx]
        out[a, b, oy, ox] = total / x.dtype.type(div[oy, ox])
    return out


def naive_avg_pool_grad(g, x_shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    gx = np.zeros(x_shape, g.dtype)
    _, _, h, w = x_shape
    rows, cols = windows(x_shape, kernel, stride, padding, ceil_mode)
    div = naive_divisor(x_shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
    for a, b, oy, ox in np.ndindex(g.shape):
        for i in range(kernel[0]):
            for j in range(kernel[1]):
                y, xx = rows[oy] + i, cols[ox] + j
                if 0 <= y < h and 0 <= xx < w:
                    gx[a, b, y, xx] += g[a, b, oy, ox] / g.dtype.type(div[oy, ox])
    return gx


def random_config(seed):
    """A pooling configuration PyTorch accepts: padding at most half the kernel, output at least 1."""
    r = np.random.default_rng(seed)
    while True:
        kernel = (int(r.integers(1, 5)), int(r.integers(1, 5)))
        stride = (int(r.integers(1, 4)), int(r.integers(1, 4)))
        padding = (int(r.integers(0, kernel[0] // 2 + 1)), int(r.integers(0, kernel[1] // 2 + 1)))
        shape = (int(r.integers(1, 3)), int(r.integers(1, 4)), int(r.integers(1, 10)), int(r.integers(1, 10)))
        ceil_mode = bool(r.integers(0, 2))
        if all(naive_starts(size, k, s, p, ceil_mode) for size, k, s, p in zip(shape[2:], kernel, stride, padding)):
            return shape, kernel, stride, padding, ceil_mode


CONFIGS = [random_config(seed) for seed in range(20)] + [
    ((1, 1, 7, 7), (3, 3), (2, 2), (1, 1), True),   # ceil mode adds a last window over the padding
    ((2, 2, 8, 8), (3, 3), (2, 2), (0, 0), True),   # ceil mode adds a partial last window
    ((1, 2, 6, 6), (3, 3), (3, 3), (1, 1), True),   # ceil mode's last window would start in the trailing pad
    ((2, 3, 5, 7), (2, 2), (2, 2), (0, 0), False),  # odd sizes, floor mode drops the last row/column
    ((1, 1, 5, 5), (2, 2), (2, 2), (1, 1), True),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("config", CONFIGS, ids=[str(i) for i in range(len(CONFIGS))])
def test_max_pool_matches_naive_loops(backend_name, config, dtype):
    shape, kernel, stride, padding, ceil_mode = config
    rng = np.random.default_rng(sum(shape) + sum(kernel))
    x = rng.standard_normal(shape).astype(dtype)
    backend = xpnet.get_backend()
    out, arg = backend.max_pool_forward(backend.asarray(x), kernel, stride, padding, ceil_mode)
    ref_out, ref_arg = naive_max_pool(x, kernel, stride, padding, ceil_mode)
    np.testing.assert_array_equal(backend.to_numpy(out), ref_out)
    np.testing.assert_array_equal(backend.to_numpy(arg), ref_arg)
    g = rng.integers(-4, 5, ref_out.shape).astype(dtype)
    gx = backend.max_pool_backward(backend.asarray(g), arg, shape, kernel, stride, padding, ceil_mode)
    np.testing.assert_array_equal(backend.to_numpy(gx),
                                  naive_max_pool_grad(g, ref_arg, shape, kernel, stride, padding, ceil_mode))


@pytest.mark.parametrize("count_include_pad, divisor_override", [(True, None), (False, None), (True, 3), (False, -2)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("config", CONFIGS, ids=[str(i) for i in range(len(CONFIGS))])
def test_avg_pool_matches_naive_loops(backend_name, config, dtype, count_include_pad, divisor_override):
    shape, kernel, stride, padding, ceil_mode = config
    options = (ceil_mode, count_include_pad, divisor_override)
    rng = np.random.default_rng(sum(shape) * 7 + sum(kernel))
    x = rng.standard_normal(shape).astype(dtype)
    backend = xpnet.get_backend()
    out = backend.avg_pool_forward(backend.asarray(x), kernel, stride, padding, *options)
    ref = naive_avg_pool(x, kernel, stride, padding, *options)
    np.testing.assert_array_equal(backend.to_numpy(out), ref)
    div = naive_divisor(shape, kernel, stride, padding, *options)
    g = (rng.integers(-4, 5, ref.shape) * div).astype(dtype)  # g / divisor is an integer: exact sums
    gx = backend.avg_pool_backward(backend.asarray(g), shape, kernel, stride, padding, *options)
    np.testing.assert_array_equal(backend.to_numpy(gx), naive_avg_pool_grad(g, shape, kernel, stride, padding,
                                                                            *options))


def test_output_sizes_are_pytorchs():
    """Every small configuration: the same output size as PyTorch, or an error where PyTorch has one."""
    for size in range(1, 10):
        for k in range(1, 5):
            for s in range(1, 4):
                for p in range(0, k // 2 + 1):
                    for ceil_mode in (False, True):
                        x = torch.zeros(1, 1, size, size, dtype=torch.float64)
                        try:
                            expected = torch.nn.functional.max_pool2d(x, k, s, p, ceil_mode=ceil_mode).shape[-1]
                        except RuntimeError:
                            expected = None
                        what = f"size {size} kernel {k} stride {s} padding {p} ceil_mode {ceil_mode}"
                        if expected is None:
                            with pytest.raises(ValueError, match="does not fit"):
                                kernels.pool_out_size(size, k, s, p, ceil_mode)
                            assert not naive_starts(size, k, s, p, ceil_mode), what
                        else:
                            assert kernels.pool_out_size(size, k, s, p, ceil_mode) == expected, what
                            assert len(naive_starts(size, k, s, p, ceil_mode)) == expected, what


def test_ties_route_to_the_first_maximum_on_every_backend(backend_name):
    """Integer inputs with many equal maxima, overlapping padded windows: the same routing as PyTorch."""
    x = np.random.default_rng(5).integers(0, 3, (2, 2, 7, 8)).astype(np.float64)
    g = np.random.default_rng(6).standard_normal((2, 2, 4, 5))
    xt = xpnet.tensor(x, requires_grad=True)
    out = F.max_pool2d(xt, 3, 2, 1, ceil_mode=True)
    out.backward(xpnet.get_backend().asarray(g))
    tx = torch.tensor(x, requires_grad=True)
    tout = torch.nn.functional.max_pool2d(tx, 3, 2, 1, ceil_mode=True)
    tout.backward(torch.from_numpy(g))
    np.testing.assert_array_equal(out.numpy(), tout.detach().numpy())
    np.testing.assert_allclose(xpnet.get_backend().to_numpy(xt.grad), tx.grad.numpy(), rtol=0, atol=1e-15)


@pytest.mark.parametrize("fill", [-np.inf, np.finfo(np.float64).min])
def test_padding_never_wins_even_against_the_lowest_value(backend_name, fill):
    """Windows whose real pixels all equal the padding value: the gradient goes to the first real pixel of each
    window (PyTorch's index), never to the padding."""
    x = np.full((1, 2, 5, 6), fill)
    g = np.arange(1.0, 1.0 + 2 * 3 * 4).reshape(1, 2, 3, 4)
    xt = xpnet.tensor(x, requires_grad=True)
    out = F.max_pool2d(xt, (3, 2), 2, 1)
    out.backward(xpnet.get_backend().asarray(g))
    tx = torch.tensor(x, requires_grad=True)
    tout = torch.nn.functional.max_pool2d(tx, (3, 2), 2, 1)
    tout.backward(torch.from_numpy(g))
    np.testing.assert_array_equal(out.numpy(), tout.detach().numpy())
    grad = xpnet.get_backend().to_numpy(xt.grad)
    np.testing.assert_array_equal(grad, tx.grad.numpy())
    assert grad.sum() == g.sum()  # every output's gradient reached a real pixel


def test_nan_wins_its_window_with_padding(backend_name):
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 0, 0], x[0, 0, 3, 3] = np.nan, np.nan
    out, arg = xpnet.get_backend().max_pool_forward(xpnet.get_backend().asarray(x), (3, 3), (2, 2), (1, 1), True)
    ref_out, ref_arg = naive_max_pool(x, (3, 3), (2, 2), (1, 1), True)
    np.testing.assert_array_equal(xpnet.get_backend().to_numpy(out), ref_out)
    np.testing.assert_array_equal(xpnet.get_backend().to_numpy(arg), ref_arg)


@pytest.mark.parametrize("output_size", [1, (1, 1), 3, (2, 5), (None, 2), (4, None), (5, 7), 2, (6, 1)])
def test_adaptive_avg_pool_matches_naive_bins(backend_name, output_size):
    """PyTorch's bins start floor(i*H/o), end ceil((i+1)*H/o): non-dividing sizes give unequal, overlapping bins."""
    x = np.random.default_rng(8).standard_normal((2, 3, 5, 7))
    xt = xpnet.tensor(x, requires_grad=True)
    out = F.adaptive_avg_pool2d(xt, output_size)
    pair = output_size if isinstance(output_size, tuple) else (output_size, output_size)
    oh, ow = (5 if pair[0] is None else pair[0]), (7 if pair[1] is None else pair[1])
    ref = np.empty((2, 3, oh, ow))
    jac = np.zeros((oh, ow, 5, 7))  # d out[i, j] / d x[y, z]
    for i in range(oh):
        for j in range(ow):
            r0, r1 = math.floor(i * 5 / oh), math.ceil((i + 1) * 5 / oh)
            c0, c1 = math.floor(j * 7 / ow), math.ceil((j + 1) * 7 / ow)
            ref[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
            jac[i, j, r0:r1, c0:c1] = 1.0 / ((r1 - r0) * (c1 - c0))
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-14, atol=1e-15)
    g = np.random.default_rng(9).standard_normal(ref.shape)
    out.backward(xpnet.get_backend().asarray(g))
    np.testing.assert_allclose(xpnet.get_backend().to_numpy(xt.grad), np.einsum("ncij,ijyz->ncyz", g, jac),
                               rtol=1e-14, atol=1e-15)


def test_global_average_pooling_is_one_mean():
    """Output size 1 (a ResNet head) takes the mean path: no window passes, no bin matrices."""
    x = xpnet.tensor(np.random.default_rng(3).standard_normal((4, 6, 7, 7)), requires_grad=True)
    out = F.adaptive_avg_pool2d(x, 1)
    assert out._node.fn is F.GlobalAvgPool2d
    np.testing.assert_allclose(out.numpy(), x.numpy().mean(axis=(2, 3), keepdims=True), rtol=1e-15)
    out.sum().backward()
    np.testing.assert_array_equal(x.grad, np.full(x.shape, 1 / 49))


def test_unbatched_inputs_pool_like_a_batch_of_one():
    x = np.random.default_rng(4).standard_normal((3, 7, 6))
    for pool in (lambda t: F.max_pool2d(t, 3, 2, 1, ceil_mode=True), lambda t: F.avg_pool2d(t, 2, padding=1),
                 lambda t: F.adaptive_avg_pool2d(t, (2, 4))):
        single = pool(xpnet.tensor(x))
        batched = pool(xpnet.tensor(x[None]))
        assert single.shape == batched.shape[1:]
        np.testing.assert_array_equal(single.numpy(), batched.numpy()[0])


@pytest.mark.parametrize("call, message", [
    (lambda x: F.max_pool2d(x, 3, padding=2), "at most half"),
    (lambda x: F.avg_pool2d(x, 2, padding=(0, 2)), "at most half"),
    (lambda x: F.max_pool2d(x, 0), "kernel_size must be an int >= 1"),
    (lambda x: F.max_pool2d(x, 2, stride=0), "stride must be an int >= 1"),
    (lambda x: F.max_pool2d(x, (2, 2, 2)), "kernel_size"),
    (lambda x: F.max_pool2d(x, 2, padding=-1), "padding must be an int >= 0"),
    (lambda x: F.max_pool2d(x, 2, dilation=2), "dilation"),
    (lambda x: F.max_pool2d(x, 2, return_indices=True), "return_indices"),
    (lambda x: F.max_pool2d(x, 9), "does not fit"),
    (lambda x: F.avg_pool2d(x, 2, divisor_override=0), "divisor_override"),
    (lambda x: F.avg_pool2d(x.reshape(2, -1), 2), "3-D .* or 4-D"),
    (lambda x: F.adaptive_avg_pool2d(x, 0), "output_size"),
    (lambda x: F.adaptive_avg_pool2d(x, (2, 2, 2)), "output_size"),
    (lambda x: nn.MaxPool2d(2, padding=2), "at most half"),
    (lambda x: nn.AvgPool2d(2, divisor_override=0), "divisor_override"),
])
def test_bad_arguments_are_refused_clearly(call, message):
    with pytest.raises(ValueError, match=message):
        call(xpnet.tensor(np.zeros((2, 3, 5, 5))))


def test_numba_kernels_refuse_what_they_cannot_index():
    pytest.importorskip("numba", reason="the numba backend needs numba")
    nb = xpnet.get_backend("numba")
    x = np.zeros((1, 2, 6, 6))
    with pytest.raises(ValueError, match="avg_pool_forward: kernel_size must be an int >= 1"):
        nb.avg_pool_forward(x, (0, 2), (2, 2), (0, 0), False, True, None)
    with pytest.raises(ValueError, match="max_pool_forward: padding must be an int >= 0"):
        nb.max_pool_forward(x, (2, 2), (2, 2), (-1, 0))
    with pytest.raises(ValueError, match="avg-pool gradient"):
        nb.avg_pool_backward(np.zeros((1, 2, 2, 3)), x.shape, (2, 2), (2, 2), (0, 0), False, True, None)
    with pytest.raises(ValueError, match="max-pool gradient"):
        nb.max_pool_backward(np.zeros((1, 2, 4, 4)), np.zeros((1, 2, 4, 4), np.int64), x.shape, (3, 3), (2, 2),
                             (1, 1), False)


def test_pooling_modules_keep_pytorchs_attributes_and_repr():
    pairs = [(nn.MaxPool2d(3, 2, 1, ceil_mode=True), torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
             (nn.MaxPool2d((2, 3)), torch.nn.MaxPool2d((2, 3))),
             (nn.AvgPool2d(3, 2, 1, True, False, 2), torch.nn.AvgPool2d(3, 2, 1, True, False, 2)),
             (nn.AdaptiveAvgPool2d((None, 3)), torch.nn.AdaptiveAvgPool2d((None, 3)))]
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)
        for name in ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "count_include_pad",
                     "divisor_override", "output_size"):
            assert getattr(ours, name, None) == getattr(theirs, name, None), name
    assert nn.MaxPool2D is nn.MaxPool2d


@pytest.mark.parametrize("make", [lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), lambda: nn.AvgPool2d(2),
                                  lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
                                  lambda: nn.AdaptiveAvgPool2d(1), lambda: nn.AdaptiveAvgPool2d((3, 5)),
                                  lambda: nn.AdaptiveAvgPool2d((2, 4))],
                         ids=["max padded ceil", "avg", "avg padded ceil", "adaptive 1", "adaptive uneven",
                              "adaptive dividing"])
def test_pooling_layers_do_not_loop_over_batch_channels_or_pixels(make):
    from test_no_python_loops import step_lines

    small = step_lines(make(), (2, 2, 8, 8))
    assert small > 0
    assert step_lines(make(), (16, 2, 8, 8)) == small, "lines grew with the batch size"
    assert step_lines(make(), (2, 5, 8, 8)) == small, "lines grew with the channel count"
    assert step_lines(make(), (2, 2, 16, 24)) == small, "lines grew with the image size"

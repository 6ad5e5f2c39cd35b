"""Generic hot kernels written against an array module ``xp`` (NumPy or CuPy).

These are the defaults every backend inherits: im2col by an ``as_strided`` window view copied once (whole output
planes at a time when the output is as wide as the input), col2im by KH*KW strided slice-adds (exact when windows
overlap, unlike ``as_strided(...) += cols``), and max pooling through the same window view. See
``xpnet.backend.Backend`` for the layouts.
"""

from __future__ import annotations

from typing import Any


def out_size(size: int, k: int, s: int, p: int) -> int:
    """Output length of a window of ``k`` sliding with stride ``s`` over ``size`` padded by ``p`` each side."""
    n = (size + 2 * p - k) // s + 1
    if n < 1:
        raise ValueError(f"window {k} with stride {s} and padding {p} does not fit an input of size {size}")
    return n


def window_view(xp: Any, x: Any, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> Any:
    """A read-only ``(N, C, KH, KW, OH, OW)`` view of the (padded) windows of ``x``; no copy beyond the pad."""
    n, c, h, w = x.shape
    (kh, kw), (sy, sx), (ph, pw) = kernel, stride, padding
    oh, ow = out_size(h, kh, sy, ph), out_size(w, kw, sx, pw)
    if ph or pw:
        x = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    x = xp.ascontiguousarray(x)
    s_n, s_c, s_h, s_w = x.strides
    return xp.lib.stride_tricks.as_strided(
        x, shape=(n, c, kh, kw, oh, ow), strides=(s_n, s_c, s_h, s_w, s_h * sy, s_w * sx))


def im2col(xp: Any, x: Any, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
           pass_bytes: int | None = None) -> Any:
    """Windows of ``x`` as a contiguous ``(N, C, KH, KW, OH, OW)`` array: one strided view, one copy.

    ``pass_bytes`` bounds the output one pass of the same-width path writes (see ``_im2col_same_width``); None
    writes it all in one pass.
    """
    (_, kw), (_, sx), (_, pw) = kernel, stride, padding
    if sx == 1 and kw == 2 * pw + 1:
        return _im2col_same_width(xp, x, kernel, stride, padding, pass_bytes)
    return xp.ascontiguousarray(window_view(xp, x, kernel, stride, padding))


def _im2col_same_width(xp: Any, x: Any, kernel: tuple[int, int], stride: tuple[int, int],
                       padding: tuple[int, int], pass_bytes: int | None) -> Any:
    """im2col when the output is as wide as the input (stride 1, "same" width): copies of whole output planes.

    The image is padded only above and below (plus ``pw`` spare elements at each end), so that for a kernel
    offset (i, j) the window pixels of a whole output plane are one contiguous run of memory. The generic copy
    moves rows of OW elements; this one moves runs of OH*OW (2.4x faster for (64, 6, 28, 28), kernel 3). A run
    wraps around at the row ends, where horizontal padding would have been, so those columns are zeroed after
    the copy, a few samples at a time (``pass_bytes`` of output) so that the zeroing finds them still in cache.
    """
    n, c, h, w = x.shape
    (kh, kw), (sy, _), (ph, pw) = kernel, stride, padding
    oh = out_size(h, kh, sy, ph)
    plane = (h + 2 * ph) * w + 2 * pw
    rows = xp.zeros((n, c, plane), dtype=x.dtype)
    start = pw + ph * w
    rows[:, :, start:start + h * w] = x.reshape(n, c, h * w)  # a slice assignment always writes in place
    s_n, s_c, item = rows.strides[0], rows.strides[1], rows.itemsize
    windows = xp.lib.stride_tricks.as_strided(
        rows, shape=(n, c, kh, kw, oh, w), strides=(s_n, s_c, w * item, item, sy * w * item, item))
    cols = xp.empty(windows.shape, dtype=x.dtype)
    per_sample = c * kh * kw * oh * w * item
    step = n if pass_bytes is None else max(1, pass_bytes // per_sample)
    for first in range(0, n, step):
        block = cols[first:first + step]
        block[...] = windows[first:first + step]
        for j in range(kw):
            if j < pw:
                block[:, :, :, j, :, :pw - j] = 0
            elif j > pw:
                block[:, :, :, j, :, w + pw - j:] = 0
    return cols


def col2im(xp: Any, cols: Any, x_shape: tuple[int, ...], stride: tuple[int, int], padding: tuple[int, int]) -> Any:
    """Adjoint of im2col: sum each window's values back onto the pixels it covers.

    One strided slice-add per kernel offset (KH*KW of them), each writing a non-overlapping set of pixels, so
    overlapping windows accumulate correctly.
    """
    n, c, h, w = x_shape
    _, _, kh, kw, oh, ow = cols.shape
    (sy, sx), (ph, pw) = stride, padding
    img = xp.zeros((n, c, h + 2 * ph + sy - 1, w + 2 * pw + sx - 1), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            img[:, :, i:i + sy * oh:sy, j:j + sx * ow:sx] += cols[:, :, i, j]
    return img[:, :, ph:ph + h, pw:pw + w]


def _offset_slices(kernel: tuple[int, int], stride: tuple[int, int], out_hw: tuple[int, int]):
    """(flat offset, row slice, column slice) selecting, for each kernel offset, that pixel of every window."""
    (kh, kw), (sy, sx), (oh, ow) = kernel, stride, out_hw
    for i in range(kh):
        for j in range(kw):
            yield i * kw + j, slice(i, i + sy * oh, sy), slice(j, j + sx * ow, sx)


def max_pool_forward(xp: Any, x: Any, kernel: tuple[int, int], stride: tuple[int, int]) -> tuple[Any, Any]:
    """Max over each window and the flat in-window index of the first maximum (PyTorch's tie rule).

    One pass per kernel offset over output-sized strided slices: far cheaper than an argmax over a 5-D window
    view, and a strict ``>`` keeps the first maximum.
    """
    n, c, h, w = x.shape
    out_hw = out_size(h, kernel[0], stride[0], 0), out_size(w, kernel[1], stride[1], 0)
    out = argmax = None
    for index, rows, cols in _offset_slices(kernel, stride, out_hw):
        candidate = x[:, :, rows, cols]
        if out is None:
            out = candidate.copy()
            argmax = xp.zeros(out.shape, dtype=xp.int64)
            continue
        # a NaN wins over numbers and the first NaN wins over later ones, as np.argmax and the Numba kernel
        wins = (candidate > out) | (xp.isnan(candidate) & ~xp.isnan(out))
        argmax = xp.where(wins, index, argmax)
        xp.maximum(out, candidate, out=out)
    return out, argmax


def max_pool_backward(xp: Any, gout: Any, argmax: Any, x_shape: tuple[int, ...], kernel: tuple[int, int],
                      stride: tuple[int, int]) -> Any:
    """Route each output gradient to the input pixel that won its window (summed where windows overlap)."""
    gx = xp.zeros(x_shape, dtype=gout.dtype)
    for index, rows, cols in _offset_slices(kernel, stride, tuple(gout.shape[2:])):
        gx[:, :, rows, cols] += xp.where(argmax == index, gout, 0)
    return gx

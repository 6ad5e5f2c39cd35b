"""Generic hot kernels written against an array module ``xp`` (NumPy or CuPy).

These are the defaults every backend inherits: im2col by an ``as_strided`` window view copied once, col2im by
KH*KW strided slice-adds (exact when windows overlap, unlike ``as_strided(...) += cols``), and max pooling
through the same window view. See ``xpnet.backend.Backend`` for the layouts.
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


def im2col(xp: Any, x: Any, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> Any:
    """Windows of ``x`` as a contiguous ``(N, C, KH, KW, OH, OW)`` array: one strided view, one copy."""
    return xp.ascontiguousarray(window_view(xp, x, kernel, stride, padding))


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


def max_pool_forward(xp: Any, x: Any, kernel: tuple[int, int], stride: tuple[int, int]) -> tuple[Any, Any]:
    """Max over each window and the flat in-window index of the first maximum (PyTorch's tie rule)."""
    n, c, h, w = x.shape
    windows = window_view(xp, x.reshape(n * c, 1, h, w), kernel, stride, (0, 0))
    kh, kw, oh, ow = windows.shape[2:]
    windows = windows.reshape(n, c, kh * kw, oh, ow)
    argmax = windows.argmax(axis=2)
    out = xp.take_along_axis(windows, argmax[:, :, None], axis=2)[:, :, 0]
    return out, argmax


def max_pool_backward(xp: Any, gout: Any, argmax: Any, x_shape: tuple[int, ...], kernel: tuple[int, int],
                      stride: tuple[int, int]) -> Any:
    """Route each output gradient to the input pixel that won its window (summed where windows overlap)."""
    n, c, h, w = x_shape
    kh, kw = kernel
    oh, ow = gout.shape[2:]
    offsets = xp.arange(kh * kw).reshape(1, 1, kh * kw, 1, 1)
    gcols = (offsets == argmax[:, :, None]) * gout[:, :, None]
    gx = col2im(xp, gcols.reshape(n * c, 1, kh, kw, oh, ow), (n * c, 1, h, w), stride, (0, 0))
    return gx.reshape(n, c, h, w)

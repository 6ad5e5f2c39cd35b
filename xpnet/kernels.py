"""Generic hot kernels written against an array module ``xp`` (NumPy or CuPy).

These are the defaults every backend inherits: im2col by an ``as_strided`` window view copied once (whole output
planes at a time when the output is as wide as the input), col2im by KH*KW strided slice-adds (exact when windows
overlap, unlike ``as_strided(...) += cols``), and max and average pooling by one strided slice per kernel offset
over the input padded to PyTorch's window geometry (``pool_geometry``). Convolution windows
may be dilated: kernel offset (i, j) then reads the input ``(i * dy, j * dx)`` from the window's corner. See
``xpnet.backend.Backend`` for the layouts.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def out_size(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    """Output length of a window of ``k`` taps ``d`` apart sliding with stride ``s`` over ``size`` padded by ``p``
    each side."""
    span = d * (k - 1) + 1
    n = (size + 2 * p - span) // s + 1
    if n < 1:
        dilated = f" and dilation {d}" if d != 1 else ""
        raise ValueError(f"window {k}{dilated} with stride {s} and padding {p} does not fit an input of size {size}")
    return n


def select(xp: Any, keep: Any, a: Any, b: Any = None) -> Any:
    """``where(keep, a, b)``, with b = +0.0 when None: the selects of ReLU, LeakyReLU, max pooling, sigmoid and erf.

    NumPy's ``where`` branches per element and runs about 10x slower than bitwise operations on the random masks
    those passes have, so on NumPy the mask is widened to the values' bits (all ones where kept) and combined with
    them, ``a & m`` or ``b ^ ((a ^ b) & m)``: the same bits ``where`` gives, NaN and signed zeros included. ``b``
    may be an array like ``a`` or a Python number that ``where`` would cast to a's dtype. Other array modules
    (CuPy fuses ``where`` into one kernel), and arguments whose shapes or dtypes differ, use ``where``.
    """
    number = isinstance(b, (int, float)) and not isinstance(b, bool) and np.result_type(a, b) == a.dtype
    if xp is not np or a.shape != keep.shape or a.dtype.kind not in "fiu" or not (
            b is None or number or (isinstance(b, np.ndarray) and b.shape == a.shape and b.dtype == a.dtype)):
        return xp.where(keep, a, xp.zeros((), dtype=a.dtype) if b is None else b)
    bits_dtype = np.dtype(f"u{a.dtype.itemsize}")
    bits = keep.astype(bits_dtype)      # 1 where kept, 0 elsewhere
    np.negative(bits, out=bits)         # all ones where kept
    if b is None:
        bits &= a.view(bits_dtype)
    else:
        b_bits = (np.asarray(b, dtype=a.dtype) if number else b).view(bits_dtype)
        bits &= a.view(bits_dtype) ^ b_bits
        bits ^= b_bits
    return bits.view(a.dtype)


def window_view(xp: Any, x: Any, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> Any:
    """A read-only ``(N, C, KH, KW, OH, OW)`` view of the (padded) windows of ``x``; no copy beyond the pad."""
    n, c, h, w = x.shape
    (kh, kw), (sy, sx), (ph, pw), (dy, dx) = kernel, stride, padding, dilation
    oh, ow = out_size(h, kh, sy, ph, dy), out_size(w, kw, sx, pw, dx)
    if ph or pw:
        x = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    x = xp.ascontiguousarray(x)
    s_n, s_c, s_h, s_w = x.strides
    return xp.lib.stride_tricks.as_strided(
        x, shape=(n, c, kh, kw, oh, ow), strides=(s_n, s_c, s_h * dy, s_w * dx, s_h * sy, s_w * sx))


def im2col(xp: Any, x: Any, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
           dilation: tuple[int, int] = (1, 1), pass_bytes: int | None = None) -> Any:
    """Windows of ``x`` as a contiguous ``(N, C, KH, KW, OH, OW)`` array: one strided view, one copy.

    ``pass_bytes`` bounds the output one pass of the same-width path writes (see ``_im2col_same_width``); None
    writes it all in one pass.
    """
    (_, kw), (_, sx), (_, pw), (_, dx) = kernel, stride, padding, dilation
    if sx == 1 and dx * (kw - 1) == 2 * pw:
        return _im2col_same_width(xp, x, kernel, stride, padding, dilation, pass_bytes)
    return xp.ascontiguousarray(window_view(xp, x, kernel, stride, padding, dilation))


def _im2col_same_width(xp: Any, x: Any, kernel: tuple[int, int], stride: tuple[int, int],
                       padding: tuple[int, int], dilation: tuple[int, int], pass_bytes: int | None) -> Any:
    """im2col when the output is as wide as the input (stride 1, "same" width): copies of whole output planes.

    The image is padded only above and below (plus ``pw`` spare elements at each end), so that for a kernel
    offset (i, j) the window pixels of a whole output plane are one contiguous run of memory, starting at
    ``i * dy * W + j * dx``. The generic copy moves rows of OW elements; this one moves runs of OH*OW (2.4x faster
    for (64, 6, 28, 28), kernel 3). A run wraps around at the row ends, where horizontal padding would have been,
    so those columns are zeroed after the copy, a few samples at a time (``pass_bytes`` of output) so that the
    zeroing finds them still in cache.
    """
    n, c, h, w = x.shape
    (kh, kw), (sy, _), (ph, pw), (dy, dx) = kernel, stride, padding, dilation
    oh = out_size(h, kh, sy, ph, dy)
    plane = (h + 2 * ph) * w + 2 * pw
    rows = xp.zeros((n, c, plane), dtype=x.dtype)
    start = pw + ph * w
    rows[:, :, start:start + h * w] = x.reshape(n, c, h * w)  # a slice assignment always writes in place
    s_n, s_c, item = rows.strides[0], rows.strides[1], rows.itemsize
    windows = xp.lib.stride_tricks.as_strided(
        rows, shape=(n, c, kh, kw, oh, w), strides=(s_n, s_c, dy * w * item, dx * item, sy * w * item, item))
    cols = xp.empty(windows.shape, dtype=x.dtype)
    per_sample = c * kh * kw * oh * w * item
    step = n if pass_bytes is None else max(1, pass_bytes // per_sample)
    for first in range(0, n, step):
        block = cols[first:first + step]
        block[...] = windows[first:first + step]
        for j in range(kw):
            shift = j * dx - pw  # output column ox reads input column ox + shift
            if shift < 0:
                block[:, :, :, j, :, :-shift] = 0
            elif shift > 0:
                block[:, :, :, j, :, w - shift:] = 0
    return cols


def col2im(xp: Any, cols: Any, x_shape: tuple[int, ...], stride: tuple[int, int], padding: tuple[int, int],
           dilation: tuple[int, int] = (1, 1)) -> Any:
    """Adjoint of im2col: sum each window's values back onto the pixels it covers.

    One strided slice-add per kernel offset (KH*KW of them, (i, j) ascending), each writing a non-overlapping
    set of pixels, so overlapping windows accumulate correctly.
    """
    n, c, h, w = x_shape
    _, _, kh, kw, oh, ow = cols.shape
    (sy, sx), (ph, pw), (dy, dx) = stride, padding, dilation
    if sy == sx == 1 and dx * (kw - 1) == 2 * pw:
        return _col2im_same_width(xp, cols, x_shape, padding, dilation)
    img = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            top, left = i * dy, j * dx
            img[:, :, top:top + sy * (oh - 1) + 1:sy, left:left + sx * (ow - 1) + 1:sx] += cols[:, :, i, j]
    return img[:, :, ph:ph + h, pw:pw + w]


def _col2im_same_width(xp: Any, cols: Any, x_shape: tuple[int, ...], padding: tuple[int, int],
                       dilation: tuple[int, int]) -> Any:
    """col2im for stride 1 and "same" width: the adjoint of ``_im2col_same_width``'s layout.

    Each kernel offset's output plane is one contiguous run of the vertically padded image, so its sum is one
    contiguous add of OH*W elements instead of OH strided rows (1.1-1.6x faster for 3-64 channels, kernel 3 or 5,
    on 2 cores). The columns that wrapped around a row end were zeros in the forward pass, so their gradient is
    dropped (zeroed in a copy of that offset's plane) before the add. Offsets are summed (i, j) ascending onto
    +0.0, as the generic version, so both agree bit for bit.
    """
    n, c, h, w = x_shape
    _, _, kh, kw, oh, _ = cols.shape
    (ph, pw), (dy, dx) = padding, dilation
    buf = xp.zeros((n, c, (h + 2 * ph) * w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            tap, shift = cols[:, :, i, j], j * dx - pw  # output column ox read input column ox + shift
            if shift:
                tap = tap.copy()
                tap[..., slice(None, -shift) if shift < 0 else slice(w - shift, None)] = 0
            start = i * dy * w + j * dx
            buf[:, :, start:start + oh * w] += tap.reshape(n, c, oh * w)
    start = pw + ph * w
    return buf[:, :, start:start + h * w].reshape(n, c, h, w)


# --- pooling: geometry shared by every backend ------------------------------------------------------------------

def pool_out_size(size: int, k: int, s: int, p: int, ceil_mode: bool = False) -> int:
    """Output length of pooling windows of ``k`` at stride ``s`` over ``size`` padded by ``p``, as PyTorch counts
    them: rounded down, or up in ``ceil_mode``, where a last window starting beyond the input and its leading
    padding is dropped."""
    n = (size + 2 * p - k + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (n - 1) * s >= size + p:
        n -= 1
    if n < 1:
        raise ValueError(f"pooling window {k} with stride {s} and padding {p} does not fit an input of size {size}")
    return n


def pool_geometry(x_shape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int],
                  padding: tuple[int, int], ceil_mode: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """(OH, OW) and the (H, W) of the input padded so that every window lies inside it: ``padding`` before, and
    after it whatever the last window reaches (in ceil mode that may be more than ``padding``)."""
    out_hw, padded_hw = [], []
    for size, k, s, p in zip(x_shape[2:], kernel, stride, padding):
        o = pool_out_size(size, k, s, p, ceil_mode)
        out_hw.append(o)
        padded_hw.append(max(size + p, (o - 1) * s + k))
    return (out_hw[0], out_hw[1]), (padded_hw[0], padded_hw[1])


def pad_for_pool(xp: Any, x: Any, padding: tuple[int, int], padded_hw: tuple[int, int], fill: Any) -> Any:
    """``x`` placed at ``padding`` inside an ``(N, C, *padded_hw)`` array of ``fill``; ``x`` itself if no pad is
    needed."""
    n, c, h, w = x.shape
    if tuple(padded_hw) == (h, w):
        return x
    (ph, pw) = padding
    out = xp.full((n, c, *padded_hw), fill, dtype=x.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def crop_pool_grad(gx: Any, padding: tuple[int, int], x_shape: tuple[int, ...]) -> Any:
    """The input's part of a gradient computed on the padded input (a view; ``gx`` itself if nothing was padded)."""
    (ph, pw), (h, w) = padding, x_shape[2:]
    if tuple(gx.shape[2:]) == (h, w):
        return gx
    return gx[:, :, ph:ph + h, pw:pw + w]


def max_pool_fill(dtype: Any) -> Any:
    """The padding value of max pooling: lower than or equal to every value of ``dtype``, so it never wins alone."""
    dtype = np.dtype(dtype)
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


def first_valid_offset(xp: Any, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                       out_hw: tuple[int, int]) -> Any:
    """(OH, OW) flat in-window index of each window's first pixel that is not padding (row-major)."""
    (_, kw), (sy, sx), (ph, pw), (oh, ow) = kernel, stride, padding, out_hw
    top = xp.maximum(ph - sy * xp.arange(oh), 0)
    left = xp.maximum(pw - sx * xp.arange(ow), 0)
    return top[:, None] * kw + left[None, :]


def argmax_off_padding(xp: Any, out: Any, argmax: Any, kernel: tuple[int, int], stride: tuple[int, int],
                       padding: tuple[int, int]) -> Any:
    """Move the argmax of windows whose maximum equals the padding value to their first real pixel, as PyTorch
    reports it, so that padding never receives a gradient. Only such windows can have picked padding: a padded
    pixel is the fill value, and the strict ``>`` keeps the first of equal values."""
    if not any(padding):
        return argmax  # without leading padding the first pixel of every window is real
    first = first_valid_offset(xp, kernel, stride, padding, tuple(out.shape[2:]))
    return xp.where(out == max_pool_fill(out.dtype), first, argmax)


def _offset_slices(kernel: tuple[int, int], stride: tuple[int, int], out_hw: tuple[int, int]):
    """(flat offset, row slice, column slice) selecting, for each kernel offset, that pixel of every window."""
    (kh, kw), (sy, sx), (oh, ow) = kernel, stride, out_hw
    for i in range(kh):
        for j in range(kw):
            yield i * kw + j, slice(i, i + sy * oh, sy), slice(j, j + sx * ow, sx)


# --- max pooling ------------------------------------------------------------------------------------------------

def max_pool_forward(xp: Any, x: Any, kernel: tuple[int, int], stride: tuple[int, int],
                     padding: tuple[int, int] = (0, 0), ceil_mode: bool = False) -> tuple[Any, Any]:
    """Max over each window and the flat in-window index of the first maximum (PyTorch's tie rule); a window
    holding NaN gives NaN, and its last NaN gets the gradient, as in PyTorch.

    One pass per kernel offset over output-sized strided slices: far cheaper than an argmax over a 5-D window
    view, and a strict ``>`` keeps the first maximum. Padding (and the ceil-mode overhang) is the lowest value
    of the dtype and never wins a window (``argmax_off_padding``).
    """
    out_hw, padded_hw = pool_geometry(x.shape, kernel, stride, padding, ceil_mode)
    x = pad_for_pool(xp, x, padding, padded_hw, max_pool_fill(x.dtype))
    out = argmax = None
    for index, rows, cols in _offset_slices(kernel, stride, out_hw):
        candidate = x[:, :, rows, cols]
        if out is None:
            out = candidate.copy()
            argmax = xp.zeros(out.shape, dtype=xp.int64)
            continue
        # a NaN wins over numbers and over earlier NaNs (so the last NaN of a window wins), as PyTorch's CPU kernel
        wins = (candidate > out) | xp.isnan(candidate)
        xp.maximum(argmax, wins * index, out=argmax)  # = where(wins, index, argmax): index exceeds every earlier one
        xp.maximum(out, candidate, out=out)
    return out, argmax_off_padding(xp, out, argmax, kernel, stride, padding)


def max_pool_backward(xp: Any, gout: Any, argmax: Any, x_shape: tuple[int, ...], kernel: tuple[int, int],
                      stride: tuple[int, int], padding: tuple[int, int] = (0, 0), ceil_mode: bool = False) -> Any:
    """Route each output gradient to the input pixel that won its window (summed where windows overlap)."""
    out_hw, padded_hw = pool_geometry(x_shape, kernel, stride, padding, ceil_mode)
    gx = xp.zeros((*x_shape[:2], *padded_hw), dtype=gout.dtype)
    for index, rows, cols in _offset_slices(kernel, stride, out_hw):
        gx[:, :, rows, cols] += select(xp, argmax == index, gout)
    return crop_pool_grad(gx, padding, x_shape)


# --- average pooling --------------------------------------------------------------------------------------------

def avg_pool_divisor(xp: Any, x_shape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int],
                     padding: tuple[int, int], out_hw: tuple[int, int], count_include_pad: bool,
                     divisor_override: int | None, dtype: Any) -> Any:
    """What PyTorch divides each window's sum by: ``divisor_override``, else the window's pixels inside the
    input, plus its padding when ``count_include_pad`` (never the ceil-mode overhang beyond the padding).
    An (OH, OW) array, or a 0-d one for an override."""
    if divisor_override is not None:
        return xp.asarray(divisor_override, dtype=dtype)
    counts = []
    for size, k, s, p, o in zip(x_shape[2:], kernel, stride, padding, out_hw):
        start = xp.arange(o) * s - p
        end = xp.minimum(start + k, size + p)
        if not count_include_pad:
            start, end = xp.maximum(start, 0), xp.minimum(end, size)
        counts.append(end - start)
    return (counts[0][:, None] * counts[1][None, :]).astype(dtype)


def avg_pool_forward(xp: Any, x: Any, kernel: tuple[int, int], stride: tuple[int, int],
                     padding: tuple[int, int] = (0, 0), ceil_mode: bool = False, count_include_pad: bool = True,
                     divisor_override: int | None = None) -> Any:
    """Each window's sum (zero padding; offsets (i, j) ascending, as PyTorch's loop) divided by its divisor."""
    out_hw, padded_hw = pool_geometry(x.shape, kernel, stride, padding, ceil_mode)
    divisor = avg_pool_divisor(xp, x.shape, kernel, stride, padding, out_hw, count_include_pad, divisor_override,
                               x.dtype)
    x = pad_for_pool(xp, x, padding, padded_hw, 0)
    total = None
    for _, rows, cols in _offset_slices(kernel, stride, out_hw):
        if total is None:
            total = x[:, :, rows, cols].copy()
        else:
            total += x[:, :, rows, cols]
    total /= divisor
    return total


def avg_pool_backward(xp: Any, gout: Any, x_shape: tuple[int, ...], kernel: tuple[int, int],
                      stride: tuple[int, int], padding: tuple[int, int] = (0, 0), ceil_mode: bool = False,
                      count_include_pad: bool = True, divisor_override: int | None = None) -> Any:
    """Each output gradient divided by its window's divisor and added to every pixel of the window."""
    out_hw, padded_hw = pool_geometry(x_shape, kernel, stride, padding, ceil_mode)
    share = gout / avg_pool_divisor(xp, x_shape, kernel, stride, padding, out_hw, count_include_pad,
                                    divisor_override, gout.dtype)
    gx = xp.zeros((*x_shape[:2], *padded_hw), dtype=gout.dtype)
    for _, rows, cols in _offset_slices(kernel, stride, out_hw):
        gx[:, :, rows, cols] += share
    return crop_pool_grad(gx, padding, x_shape)

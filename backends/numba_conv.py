"""The Numba backend's convolutions with one group: direct (stride 1, few channels or long rows), else one GEMM.

For such layers im2col + GEMM spends its time writing and re-reading a column matrix C*KH*KW times the size of
the input, and BLAS runs skinny GEMMs (OC = 3..16 rows) far below its peak. Here each sample's input is copied
once into a zero-padded plane stack, and the output is computed along one *long row*: output pixel (y, x) sits
at ``y * Wp + x`` of a width-padded plane (Wp = padded input width), so kernel tap (c, i, j) reads the input at
the constant offset ``c*Hp*Wp + i*Wp + j`` and every tap is one contiguous multiply-add over OH*Wp elements (the
Wp - OW columns past each row are computed and dropped). The loops take 4 taps x 2 output channels per pass, so
each pass loads 4 input values, 2 accumulators and stores 2 for 8 multiply-adds; LLVM vectorises them.

- forward: ``_conv_forward`` (above);
- input gradient: for stride 1 it *is* a forward convolution of the output gradient padded by K-1-P with the
  weights flipped and in/out channels swapped, so it reuses ``_conv_forward``;
- weight and bias gradients: ``_conv_weight_grad``, the same long rows as dot products, one partial sum per
  sample (summed afterwards in a fixed order, so results do not depend on the thread count).

Every sample is one ``prange`` iteration writing only its own output, so there are no races.

The layers the direct kernels do not take (strided, dilated, padded as wide as the kernel, or wide channels on a
small plane) run as ONE GEMM over the whole batch (``gemm_forward`` / ``gemm_backward``): ``im2col_rows`` lays the
windows out as a (C*KH*KW, N*OH*OW) matrix, so the forward, the weight gradient and the input gradient's columns
are each a single large GEMM, and ``col2im_rows`` sums the latter back; with 32 or more output channels these
GEMMs are not skinny, unlike the per-sample ones of the generic path (docs/performance.md, section 8).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy
from numba import njit, prange, uint64

from xpnet import validate
from xpnet.backends.numba_jit import CACHE, PARALLEL
from xpnet.kernels import out_size

TAPS_PER_PASS, CHANNELS_PER_PASS = 4, 2
# Direct convolution beats im2col + one GEMM (``gemm_forward``) up to MAX_MACS_PER_PIXEL multiply-adds per output
# pixel (C*KH*KW*OC) at any size, and up to WIDE_MACS_PER_PIXEL on output planes of at least WIDE_MIN_PIXELS, where
# its long rows are long and the GEMM's column matrix is large; on smaller planes the GEMM wins (docs/performance.md,
# section 8).
MAX_MACS_PER_PIXEL = 4096
WIDE_MACS_PER_PIXEL, WIDE_MIN_PIXELS = 36864, 144


def direct_pays(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: tuple[int, int],
                padding: tuple[int, int], dilation: tuple[int, int] = (1, 1), groups: int = 1) -> bool:
    """Whether the direct kernels handle this convolution: stride 1, no dilation, one group, padding below the
    kernel size (so the input gradient is a forward convolution with non-negative padding), and few
    multiply-adds per output pixel for the size of the output plane."""
    oc, c, kh, kw = w_shape
    if not (tuple(stride) == (1, 1) and tuple(dilation) == (1, 1) and groups == 1
            and padding[0] < kh and padding[1] < kw):
        return False
    macs, pixels = c * kh * kw * oc, (x_shape[2] + 2 * padding[0] - kh + 1) * (x_shape[3] + 2 * padding[1] - kw + 1)
    return macs <= MAX_MACS_PER_PIXEL or (macs <= WIDE_MACS_PER_PIXEL and pixels >= WIDE_MIN_PIXELS)


@functools.lru_cache(maxsize=64)
def _taps(c: int, kh: int, kw: int, hp: int, wp: int) -> numpy.ndarray:
    """Flat offset of tap (c, i, j) in a padded (C, Hp, Wp) plane stack, zero-padded to whole passes (read-only:
    cached, since a training step asks for the same few shapes every time)."""
    ci, i, j = numpy.meshgrid(numpy.arange(c), numpy.arange(kh), numpy.arange(kw), indexing="ij")
    offsets = numpy.zeros(-(-c * kh * kw // TAPS_PER_PASS) * TAPS_PER_PASS, dtype=numpy.uint64)
    offsets[:c * kh * kw] = (ci * hp * wp + i * wp + j).reshape(-1)
    offsets.flags.writeable = False
    return offsets


def _tap_weights(w: Any) -> numpy.ndarray:
    """w (OC, C, KH, KW) as (OC, taps), zero-padded to whole passes: a padded tap or channel adds nothing."""
    oc, ntaps = w.shape[0], w[0].size
    padded = numpy.zeros((oc + oc % CHANNELS_PER_PASS, -(-ntaps // TAPS_PER_PASS) * TAPS_PER_PASS), dtype=w.dtype)
    padded[:oc, :ntaps] = w.reshape(oc, ntaps)
    return padded


@njit(cache=CACHE, inline="always")
def _padded_sample(x, s, ph, pw, tail):
    """Sample ``s`` of x (N, C, H, W) as one flat zero-padded (C, H+2ph, W+2pw) stack plus ``tail`` zeros."""
    _, c, h, w = x.shape
    hp, wp = h + 2 * ph, w + 2 * pw
    xf = x.reshape(-1)
    buf = numpy.zeros(c * hp * wp + tail, dtype=x.dtype)
    uw = uint64(w)
    for ci in range(c):
        for y in range(h):
            d = uint64((ci * hp + y + ph) * wp + pw)
            src = uint64(((s * c + ci) * h + y) * w)
            for k in range(uw):
                buf[d + k] = xf[src + k]
    return buf


@njit(parallel=PARALLEL, cache=CACHE, fastmath={"contract"})
def _conv_forward(x, weights, bias, taps, out, ph, pw, kw):
    """out[s, o] = bias[o] + sum over taps q of weights[o, q] * (padded x[s])[taps[q] + long-row position]."""
    n, _, h, w = x.shape
    oc, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    wp = w + 2 * pw
    row = uint64(oh * wp)
    of = out.reshape(-1)
    for s in prange(n):
        xp = _padded_sample(x, s, ph, pw, kw)  # the last tap's long row runs kw - 1 past the planes
        acc0 = numpy.empty(row, dtype=x.dtype)
        acc1 = numpy.empty(row, dtype=x.dtype)
        for o in range(0, weights.shape[0], 2):
            b0, b1 = bias[o], bias[o + 1]
            for k in range(row):
                acc0[k] = b0
                acc1[k] = b1
            for q in range(0, taps.shape[0], 4):
                f0, f1, f2, f3 = taps[q], taps[q + 1], taps[q + 2], taps[q + 3]
                w00, w01, w02, w03 = weights[o, q], weights[o, q + 1], weights[o, q + 2], weights[o, q + 3]
                w10, w11 = weights[o + 1, q], weights[o + 1, q + 1]
                w12, w13 = weights[o + 1, q + 2], weights[o + 1, q + 3]
                for k in range(row):
                    x0, x1, x2, x3 = xp[f0 + k], xp[f1 + k], xp[f2 + k], xp[f3 + k]
                    acc0[k] += w00 * x0 + w01 * x1 + w02 * x2 + w03 * x3
                    acc1[k] += w10 * x0 + w11 * x1 + w12 * x2 + w13 * x3
            for oi in range(2):
                if o + oi < oc:
                    acc = acc0 if oi == 0 else acc1
                    base = uint64((s * oc + o + oi) * oh * ow)
                    for y in range(oh):
                        d, src = base + uint64(y * ow), uint64(y * wp)
                        for k in range(uint64(ow)):
                            of[d + k] = acc[src + k]


@njit(parallel=PARALLEL, cache=CACHE, fastmath={"contract", "reassoc"})
def _conv_weight_grad(x, g, taps, ntaps, gw_part, gb_part, ph, pw, kw):
    """gw_part[s, o, q] = sum of g[s, o] * (padded x[s])[taps[q] + ...] over the long row; gb_part[s, o] = sum g[s, o].

    ``reassoc`` lets LLVM keep vector partial sums; the order is fixed by the code, not by the thread count.
    """
    n, _, h, w = x.shape
    oc, oh, ow = g.shape[1], g.shape[2], g.shape[3]
    wp = w + 2 * pw
    row = uint64(oh * wp)
    gf = g.reshape(-1)
    for s in prange(n):
        xp = _padded_sample(x, s, ph, pw, kw)
        ge = numpy.zeros((oc + oc % 2) * row, dtype=g.dtype)  # g[s] in long rows, zero past each row's end
        for o in range(oc):
            for y in range(oh):
                d, src = uint64(o) * row + uint64(y * wp), uint64(((s * oc + o) * oh + y) * ow)
                for k in range(uint64(ow)):
                    ge[d + k] = gf[src + k]
        for o in range(0, oc, 2):
            r0, r1 = uint64(o) * row, uint64(o + 1) * row
            b0 = b1 = g.dtype.type(0)
            for k in range(row):
                b0 += ge[r0 + k]
                b1 += ge[r1 + k]
            gb_part[s, o] = b0
            if o + 1 < oc:
                gb_part[s, o + 1] = b1
            for q in range(0, taps.shape[0], 4):
                f0, f1, f2, f3 = taps[q], taps[q + 1], taps[q + 2], taps[q + 3]
                s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = g.dtype.type(0)
                for k in range(row):
                    g0, g1 = ge[r0 + k], ge[r1 + k]
                    x0, x1, x2, x3 = xp[f0 + k], xp[f1 + k], xp[f2 + k], xp[f3 + k]
                    s00 += g0 * x0
                    s01 += g0 * x1
                    s02 += g0 * x2
                    s03 += g0 * x3
                    s10 += g1 * x0
                    s11 += g1 * x1
                    s12 += g1 * x2
                    s13 += g1 * x3
                for t, v0, v1 in ((0, s00, s10), (1, s01, s11), (2, s02, s12), (3, s03, s13)):
                    if q + t < ntaps:
                        gw_part[s, o, q + t] = v0
                        if o + 1 < oc:
                            gw_part[s, o + 1, q + t] = v1


def conv_forward(x: numpy.ndarray, w: numpy.ndarray, b: numpy.ndarray | None,
                 padding: tuple[int, int]) -> numpy.ndarray:
    """Stride-1 convolution of x (N, C, H, W) with w (OC, C, KH, KW), plus b, as (N, OC, OH, OW)."""
    n, c, h, wd = x.shape
    oc, _, kh, kw = w.shape
    (ph, pw) = padding
    out = numpy.empty((n, oc, h + 2 * ph - kh + 1, wd + 2 * pw - kw + 1), dtype=x.dtype)
    bias = numpy.zeros(oc + oc % CHANNELS_PER_PASS, dtype=x.dtype)
    if b is not None:
        bias[:oc] = b
    taps = _taps(c, kh, kw, h + 2 * ph, wd + 2 * pw)
    _conv_forward(numpy.ascontiguousarray(x), _tap_weights(w), bias, taps, out, ph, pw, kw)
    return out


def conv_input_grad(g: numpy.ndarray, w: numpy.ndarray, padding: tuple[int, int]) -> numpy.ndarray:
    """The input gradient of a stride-1 convolution: g padded by K-1-P, convolved with w flipped and transposed."""
    _, _, kh, kw = w.shape
    flipped = numpy.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    return conv_forward(g, flipped, None, (kh - 1 - padding[0], kw - 1 - padding[1]))


def conv_param_grads(x: numpy.ndarray, g: numpy.ndarray, w_shape: tuple[int, ...],
                     padding: tuple[int, int]) -> tuple[numpy.ndarray, numpy.ndarray]:
    """(gw, gb) of a stride-1 convolution: per-sample partial sums, then one sum over the batch."""
    n, c, h, wd = x.shape
    oc, _, kh, kw = w_shape
    ph, pw = padding
    ntaps = c * kh * kw
    gw_part = numpy.empty((n, oc, ntaps), dtype=x.dtype)
    gb_part = numpy.empty((n, oc), dtype=x.dtype)
    taps = _taps(c, kh, kw, h + 2 * ph, wd + 2 * pw)
    _conv_weight_grad(numpy.ascontiguousarray(x), numpy.ascontiguousarray(g), taps, ntaps, gw_part, gb_part, ph, pw,
                      kw)
    return gw_part.sum(axis=0).reshape(w_shape), gb_part.sum(axis=0)


# --- one large GEMM per layer, for the convolutions the direct kernels do not take -------------------------------

@njit(parallel=PARALLEL, cache=CACHE)
def _im2col_rows(x, cols, kh, kw, sy, sx, ph, pw, dy, dx, oh, ow):
    """cols (C*KH*KW, N*OH*OW): row (c, i, j) holds tap (i, j) of channel c for every output pixel of every
    sample, zero where the window reaches the padding. One row per prange iteration (contiguous writes)."""
    n, c, h, w = x.shape
    xf, cf = x.reshape(-1), cols.reshape(-1)
    total = uint64(n * oh * ow)
    uow, usx = uint64(ow), uint64(sx)
    for r in prange(c * kh * kw):
        ci, i, j = r // (kh * kw), r // kw % kh, r % kw
        off = j * dx - pw  # output column ox reads input column ox * sx + off
        lo = min(ow, (sx - 1 - off) // sx) if off < 0 else 0
        hi = max(lo, min(ow, (w - 1 - off) // sx + 1)) if w - 1 - off >= 0 else lo
        ulo, uhi = uint64(lo), uint64(hi)
        for s in range(n):
            for oy in range(oh):
                d = uint64(r) * total + uint64((s * oh + oy) * ow)
                iy = oy * sy + i * dy - ph
                if iy < 0 or iy >= h:
                    for ox in range(uow):
                        cf[d + ox] = 0
                    continue
                src = uint64(((s * c + ci) * h + iy) * w + lo * sx + off)  # input column of ox = lo
                for ox in range(ulo):
                    cf[d + ox] = 0
                if sx == 1:
                    for k in range(uhi - ulo):
                        cf[d + ulo + k] = xf[src + k]
                else:
                    for k in range(uhi - ulo):
                        cf[d + ulo + k] = xf[src + k * usx]
                for ox in range(uhi, uow):
                    cf[d + ox] = 0


@njit(parallel=PARALLEL, cache=CACHE)
def _col2im_rows(cols, img, kh, kw, sy, sx, ph, pw, dy, dx, oh, ow):
    """The adjoint of ``_im2col_rows``: each pixel of img (N, C, H, W) sums the entries of cols (C*KH*KW,
    N*OH*OW) that read it. One (n, c) plane per prange iteration, summed in a zero-padded plane tap by tap
    ((i, j) ascending, as the generic col2im), so no two iterations write the same pixel."""
    n, c, h, w = img.shape
    hp, wp = h + 2 * ph, w + 2 * pw
    cf, imf = cols.reshape(-1), img.reshape(-1)
    total = uint64(n * oh * ow)
    uow, usx = uint64(ow), uint64(sx)
    for p in prange(n * c):
        s, ci = p // c, p % c
        buf = numpy.zeros(hp * wp, dtype=cols.dtype)
        for i in range(kh):
            for j in range(kw):
                src = uint64((ci * kh + i) * kw + j) * total + uint64(s * oh * ow)
                for oy in range(oh):
                    d = uint64((oy * sy + i * dy) * wp + j * dx)
                    if sx == 1:
                        for ox in range(uow):
                            buf[d + ox] += cf[src + ox]
                    else:
                        for ox in range(uow):
                            buf[d + ox * usx] += cf[src + ox]
                    src += uow
        for y in range(h):
            imf[(p * h + y) * w:(p * h + y + 1) * w] = buf[(y + ph) * wp + pw:(y + ph) * wp + pw + w]


@njit(parallel=PARALLEL, cache=CACHE)
def _rows_to_batch(rows, bias, out):
    """out (N, OC, L) = rows (OC, N*L) regrouped by sample, plus bias (OC,)."""
    n, oc, length = out.shape
    rf, of, ul = rows.reshape(-1), out.reshape(-1), uint64(length)
    for p in prange(n * oc):
        s, o = p // oc, p % oc
        b, src, dst = bias[o], uint64((o * n + s) * length), uint64(p * length)
        for k in range(ul):
            of[dst + k] = rf[src + k] + b


@njit(parallel=PARALLEL, cache=CACHE)
def _batch_to_rows(g, rows):
    """rows (OC, N*L) = g (N, OC, L) with the samples side by side: the GEMM operand of the gradients."""
    n, oc, length = g.shape
    gf, rf, ul = g.reshape(-1), rows.reshape(-1), uint64(length)
    for p in prange(n * oc):
        s, o = p // oc, p % oc
        src, dst = uint64(p * length), uint64((o * n + s) * length)
        for k in range(ul):
            rf[dst + k] = gf[src + k]


# The kernels each path's backward adds to its forward's (the direct input gradient is a forward convolution).
DIRECT_BACKWARD_KERNELS = (_conv_weight_grad,)
GEMM_BACKWARD_KERNELS = (_batch_to_rows, _col2im_rows)


def im2col_rows(x: numpy.ndarray, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                dilation: tuple[int, int]) -> numpy.ndarray:
    """The windows of x (N, C, H, W) as one (C*KH*KW, N*OH*OW) matrix: a column per output pixel of every sample,
    rows in the weight's (c, i, j) order, so a convolution is one GEMM ``W (OC, C*KH*KW) @ cols``."""
    validate.window_args("im2col_rows", kernel, stride, padding, dilation)
    n, c, h, w = x.shape
    (kh, kw), (sy, sx), (ph, pw), (dy, dx) = kernel, stride, padding, dilation
    oh, ow = out_size(h, kh, sy, ph, dy), out_size(w, kw, sx, pw, dx)
    cols = numpy.empty((c * kh * kw, n * oh * ow), dtype=x.dtype)
    _im2col_rows(numpy.ascontiguousarray(x), cols, kh, kw, sy, sx, ph, pw, dy, dx, oh, ow)
    return cols


def col2im_rows(cols: numpy.ndarray, x_shape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int], dilation: tuple[int, int]) -> numpy.ndarray:
    """The adjoint of ``im2col_rows``: (C*KH*KW, N*OH*OW) columns summed back onto an (N, C, H, W) image."""
    validate.window_args("col2im_rows", kernel, stride, padding, dilation)
    n, c, h, w = x_shape
    (kh, kw), (sy, sx), (ph, pw), (dy, dx) = kernel, stride, padding, dilation
    oh, ow = out_size(h, kh, sy, ph, dy), out_size(w, kw, sx, pw, dx)
    if tuple(cols.shape) != (c * kh * kw, n * oh * ow):
        raise ValueError(f"col2im_rows: cols has shape {tuple(cols.shape)}, expected {(c * kh * kw, n * oh * ow)}")
    img = numpy.empty(x_shape, dtype=cols.dtype)
    _col2im_rows(numpy.ascontiguousarray(cols), img, kh, kw, sy, sx, ph, pw, dy, dx, oh, ow)
    return img


def gemm_forward(x: numpy.ndarray, w: numpy.ndarray, b: numpy.ndarray | None, stride: tuple[int, int],
                 padding: tuple[int, int], dilation: tuple[int, int]) -> tuple[numpy.ndarray, numpy.ndarray]:
    """(out, cols) of a one-group convolution as ``im2col_rows`` and ONE GEMM over the whole batch, regrouped
    into (N, OC, OH, OW) with the bias added; cols is what ``gemm_backward`` needs."""
    n, _, h, wd = x.shape
    oc, _, kh, kw = w.shape
    oh, ow = out_size(h, kh, stride[0], padding[0], dilation[0]), out_size(wd, kw, stride[1], padding[1], dilation[1])
    cols = im2col_rows(x, (kh, kw), stride, padding, dilation)
    rows = numpy.ascontiguousarray(w, dtype=x.dtype).reshape(oc, -1) @ cols  # (OC, N*OH*OW)
    bias = numpy.zeros(oc, dtype=x.dtype) if b is None else numpy.ascontiguousarray(b, dtype=x.dtype)
    out = numpy.empty((n, oc, oh * ow), dtype=x.dtype)
    _rows_to_batch(rows, bias, out)
    return out.reshape(n, oc, oh, ow), cols


def gemm_backward(cols: numpy.ndarray, w: numpy.ndarray, g: numpy.ndarray, x_shape: tuple[int, ...],
                  stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
                  needs: tuple[bool, bool, bool]) -> tuple[Any, Any, Any]:
    """(gx, gw, gb) of ``gemm_forward``: the output gradient side by side as (OC, N*OH*OW), then one GEMM each for
    the weight gradient (``g @ cols^T``) and the input gradient's columns (``W^T @ g``, summed back by
    ``col2im_rows``); None where ``needs`` is False."""
    need_x, need_w, need_b = needs
    n, oc, oh, ow = g.shape
    if tuple(cols.shape) != (w[0].size, n * oh * ow):
        raise ValueError(f"gemm_backward: cols has shape {tuple(cols.shape)}, expected {(w[0].size, n * oh * ow)}")
    rows = numpy.empty((oc, n * oh * ow), dtype=g.dtype)
    _batch_to_rows(numpy.ascontiguousarray(g).reshape(n, oc, oh * ow), rows)
    gw = (rows @ cols.T).reshape(w.shape) if need_w else None
    gb = rows.sum(axis=1) if need_b else None
    gx = None
    if need_x:
        w2 = numpy.ascontiguousarray(w, dtype=g.dtype).reshape(oc, -1)
        gx = col2im_rows(w2.T @ rows, x_shape, w.shape[2:], stride, padding, dilation)
    return gx, gw, gb

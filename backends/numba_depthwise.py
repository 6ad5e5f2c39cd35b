"""Depthwise convolution (groups == in_channels, as in MobileNet's blocks) for the Numba backend.

The generic path runs it as im2col + N*C matmuls of one row each: a column matrix KH*KW times the input and a
BLAS call per plane for a handful of multiply-adds, about 10x slower than PyTorch's forward. Here every (sample,
channel) plane is one ``prange`` iteration that copies its input plane once into a zero-padded buffer; any
stride, padding, dilation and channel multiplier (out_channels = multiplier * in_channels) is handled.

At stride 1 each kernel tap is one multiply-add along a *long row*, as in ``numba_conv``: output pixel (y, x)
sits at ``y * Wp + x`` of a width-padded plane, so tap (i, j) reads the buffer at the constant offset
``i * dy * Wp + j * dx`` and one loop of OH*Wp elements vectorises (output rows alone, 14 wide here, are
shorter than one AVX-512 loop pass). Strided convolutions go row by row.

- forward: one iteration per output plane;
- input gradient: one iteration per input plane, adding the taps of its multiplier output planes into its own
  padded buffer (a gather: no two iterations write the same pixel);
- weight and bias gradients: per-plane dot products, one partial sum per sample (summed afterwards in a fixed
  order, so results do not depend on the thread count).
"""

from __future__ import annotations

import numpy
from numba import njit, prange, uint64

from xpnet import validate
from xpnet.backends.numba_jit import CACHE, PARALLEL
from xpnet.kernels import out_size


def depthwise_pays(x_shape: tuple[int, ...], groups: int) -> bool:
    """Whether these kernels take the convolution: one group per input channel, more than one channel."""
    return groups == x_shape[1] > 1


@njit(cache=CACHE, inline="always")
def _padded_plane(xf, start, h, w, ph, pw, tail):
    """The h x w plane at flat offset ``start`` of ``xf`` as a flat zero-padded (h + 2ph) x (w + 2pw) buffer,
    plus ``tail`` zeros (the last long-row taps read that far past it)."""
    wp = w + 2 * pw
    buf = numpy.zeros((h + 2 * ph) * wp + tail, dtype=xf.dtype)
    uw = uint64(w)
    for y in range(h):
        d, src = uint64((y + ph) * wp + pw), uint64(start + y * w)
        for k in range(uw):
            buf[d + k] = xf[src + k]
    return buf


@njit(cache=CACHE, inline="always")
def _long_rows(gf, start, oh, ow, wp):
    """The oh x ow plane at flat offset ``start`` of ``gf`` laid out in rows of ``wp``, zero past each row's end."""
    rows = numpy.zeros(oh * wp, dtype=gf.dtype)
    uow = uint64(ow)
    for y in range(oh):
        d, src = uint64(y * wp), uint64(start + y * ow)
        for k in range(uow):
            rows[d + k] = gf[src + k]
    return rows


@njit(parallel=PARALLEL, cache=CACHE, fastmath={"contract"})
def _forward_unit_stride(x, w, bias, out, ph, pw, dy, dx):
    """out[s, o] = bias[o] + sum over taps (i, j) of w[o, 0, i, j] * (padded x[s, o // multiplier]) at the tap,
    along long rows (stride 1)."""
    n, c, h, wd = x.shape
    oc, _, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    multiplier, wp = oc // c, wd + 2 * pw
    xf, of = x.reshape(-1), out.reshape(-1)
    row = uint64(oh * wp)
    for p in prange(n * oc):
        s, o = p // oc, p % oc
        buf = _padded_plane(xf, (s * c + o // multiplier) * h * wd, h, wd, ph, pw, (kw - 1) * dx)
        acc = numpy.empty(row, dtype=x.dtype)
        b = bias[o]
        for k in range(row):
            acc[k] = b
        for i in range(kh):
            for j in range(kw):
                wv, f = w[o, 0, i, j], uint64(i * dy * wp + j * dx)
                for k in range(row):
                    acc[k] += wv * buf[f + k]
        base = uint64(p * oh * ow)
        for y in range(oh):
            d, src = base + uint64(y * ow), uint64(y * wp)
            for k in range(uint64(ow)):
                of[d + k] = acc[src + k]


@njit(parallel=PARALLEL, cache=CACHE, fastmath={"contract"})
def _forward_strided(x, w, bias, out, sy, sx, ph, pw, dy, dx):
    """``_forward_unit_stride`` for any stride, one output row at a time."""
    n, c, h, wd = x.shape
    oc, _, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    multiplier, wp = oc // c, wd + 2 * pw
    xf, of = x.reshape(-1), out.reshape(-1)
    uow, usx, plane = uint64(ow), uint64(sx), uint64(oh * ow)
    for p in prange(n * oc):
        s, o = p // oc, p % oc
        buf = _padded_plane(xf, (s * c + o // multiplier) * h * wd, h, wd, ph, pw, 0)
        base = uint64(p) * plane
        for k in range(plane):
            of[base + k] = bias[o]
        for i in range(kh):
            for j in range(kw):
                wv = w[o, 0, i, j]
                for oy in range(oh):
                    src, d = uint64((oy * sy + i * dy) * wp + j * dx), base + uint64(oy * ow)
                    for ox in range(uow):
                        of[d + ox] += wv * buf[src + ox * usx]


@njit(parallel=PARALLEL, cache=CACHE, fastmath={"contract"})
def _input_grad_unit_stride(g, w, gx, ph, pw, dy, dx):
    """gx[s, c], the adjoint of the forward: each output plane o of channel c adds w[o, 0, i, j] * g[s, o] onto
    the padded pixels tap (i, j) read, along long rows (stride 1); then the padding is cropped off."""
    n, oc, oh, ow = g.shape
    c, h, wd = gx.shape[1], gx.shape[2], gx.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    multiplier, wp = oc // c, wd + 2 * pw
    gf, xf = g.reshape(-1), gx.reshape(-1)
    row, uwd = uint64(oh * wp), uint64(wd)
    for p in prange(n * c):
        s, ci = p // c, p % c
        buf = numpy.zeros((h + 2 * ph) * wp + (kw - 1) * dx, dtype=g.dtype)
        for m in range(multiplier):
            o = ci * multiplier + m
            rows = _long_rows(gf, (s * oc + o) * oh * ow, oh, ow, wp)
            for i in range(kh):
                for j in range(kw):
                    wv, f = w[o, 0, i, j], uint64(i * dy * wp + j * dx)
                    for k in range(row):
                        buf[f + k] += wv * rows[k]
        for y in range(h):
            d, src = uint64((p * h + y) * wd), uint64((y + ph) * wp + pw)
            for k in range(uwd):
                xf[d + k] = buf[src + k]


@njit(parallel=PARALLEL, cache=CACHE, fastmath={"contract"})
def _input_grad_strided(g, w, gx, sy, sx, ph, pw, dy, dx):
    """``_input_grad_unit_stride`` for any stride, one output row at a time."""
    n, oc, oh, ow = g.shape
    c, h, wd = gx.shape[1], gx.shape[2], gx.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    multiplier, wp = oc // c, wd + 2 * pw
    gf, xf = g.reshape(-1), gx.reshape(-1)
    uow, usx, uwd = uint64(ow), uint64(sx), uint64(wd)
    for p in prange(n * c):
        s, ci = p // c, p % c
        buf = numpy.zeros((h + 2 * ph) * wp, dtype=g.dtype)
        for m in range(multiplier):
            o = ci * multiplier + m
            gbase = uint64((s * oc + o) * oh * ow)
            for i in range(kh):
                for j in range(kw):
                    wv = w[o, 0, i, j]
                    for oy in range(oh):
                        d, src = uint64((oy * sy + i * dy) * wp + j * dx), gbase + uint64(oy * ow)
                        for ox in range(uow):
                            buf[d + ox * usx] += wv * gf[src + ox]
        for y in range(h):
            d, src = uint64((p * h + y) * wd), uint64((y + ph) * wp + pw)
            for k in range(uwd):
                xf[d + k] = buf[src + k]


@njit(parallel=PARALLEL, cache=CACHE, fastmath={"contract", "reassoc"})
def _param_grads_unit_stride(x, g, gw_part, gb_part, ph, pw, dy, dx):
    """gw_part[s, o, i, j] = <g[s, o], (padded x[s, o // multiplier]) read by tap (i, j)>; gb_part[s, o] = sum g[s, o];
    along long rows (stride 1).

    ``reassoc`` lets LLVM keep vector partial sums; the order is fixed by the code, not by the thread count.
    """
    n, c, h, wd = x.shape
    oc, oh, ow = g.shape[1], g.shape[2], g.shape[3]
    kh, kw = gw_part.shape[2], gw_part.shape[3]
    multiplier, wp = oc // c, wd + 2 * pw
    xf, gf = x.reshape(-1), g.reshape(-1)
    row = uint64(oh * wp)
    for p in prange(n * oc):
        s, o = p // oc, p % oc
        buf = _padded_plane(xf, (s * c + o // multiplier) * h * wd, h, wd, ph, pw, (kw - 1) * dx)
        rows = _long_rows(gf, p * oh * ow, oh, ow, wp)
        total = g.dtype.type(0)
        for k in range(row):
            total += rows[k]
        gb_part[s, o] = total
        for i in range(kh):
            for j in range(kw):
                f = uint64(i * dy * wp + j * dx)
                acc = g.dtype.type(0)
                for k in range(row):
                    acc += rows[k] * buf[f + k]
                gw_part[s, o, i, j] = acc


@njit(parallel=PARALLEL, cache=CACHE, fastmath={"contract", "reassoc"})
def _param_grads_strided(x, g, gw_part, gb_part, sy, sx, ph, pw, dy, dx):
    """``_param_grads_unit_stride`` for any stride, one output row at a time."""
    n, c, h, wd = x.shape
    oc, oh, ow = g.shape[1], g.shape[2], g.shape[3]
    kh, kw = gw_part.shape[2], gw_part.shape[3]
    multiplier, wp = oc // c, wd + 2 * pw
    xf, gf = x.reshape(-1), g.reshape(-1)
    uow, usx, plane = uint64(ow), uint64(sx), uint64(oh * ow)
    for p in prange(n * oc):
        s, o = p // oc, p % oc
        buf = _padded_plane(xf, (s * c + o // multiplier) * h * wd, h, wd, ph, pw, 0)
        gbase = uint64(p) * plane
        total = g.dtype.type(0)
        for k in range(plane):
            total += gf[gbase + k]
        gb_part[s, o] = total
        for i in range(kh):
            for j in range(kw):
                acc = g.dtype.type(0)
                for oy in range(oh):
                    src, d = uint64((oy * sy + i * dy) * wp + j * dx), gbase + uint64(oy * ow)
                    for ox in range(uow):
                        acc += gf[d + ox] * buf[src + ox * usx]
                gw_part[s, o, i, j] = acc


# The kernels each stride's backward uses.
UNIT_STRIDE_BACKWARD_KERNELS = (_input_grad_unit_stride, _param_grads_unit_stride)
STRIDED_BACKWARD_KERNELS = (_input_grad_strided, _param_grads_strided)


def _output_shape(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: tuple[int, int],
                  padding: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """(N, OC, OH, OW), after refusing what the unchecked loops would misread: anything but one input channel
    per group, a kernel that does not fit, a kernel, stride or dilation below 1, a negative padding."""
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise ValueError(f"depthwise convolution needs 4-D input and weight, got {tuple(x_shape)} and {tuple(w_shape)}")
    n, c, h, wd = x_shape
    oc, c_group, kh, kw = w_shape
    if c_group != 1 or c < 1 or oc % c:
        raise ValueError(f"depthwise convolution needs weight (multiplier * C, 1, KH, KW) for input {tuple(x_shape)}, "
                         f"got weight {tuple(w_shape)}")
    validate.window_args("depthwise convolution", (kh, kw), stride, padding, dilation)
    return (n, oc, out_size(h, kh, stride[0], padding[0], dilation[0]),
            out_size(wd, kw, stride[1], padding[1], dilation[1]))


def depthwise_forward(x: numpy.ndarray, w: numpy.ndarray, b: numpy.ndarray | None, stride: tuple[int, int],
                      padding: tuple[int, int], dilation: tuple[int, int]) -> numpy.ndarray:
    """Depthwise convolution of x (N, C, H, W) with w (multiplier * C, 1, KH, KW), plus b, in x's dtype."""
    out = numpy.empty(_output_shape(x.shape, w.shape, stride, padding, dilation), dtype=x.dtype)
    bias = numpy.zeros(w.shape[0], dtype=x.dtype) if b is None else numpy.ascontiguousarray(b, dtype=x.dtype)
    _check_length("bias", bias.shape, w.shape[0])
    x, w = numpy.ascontiguousarray(x), numpy.ascontiguousarray(w, dtype=x.dtype)
    if tuple(stride) == (1, 1):
        _forward_unit_stride(x, w, bias, out, *padding, *dilation)
    else:
        _forward_strided(x, w, bias, out, *stride, *padding, *dilation)
    return out


def depthwise_input_grad(g: numpy.ndarray, w: numpy.ndarray, x_shape: tuple[int, ...], stride: tuple[int, int],
                         padding: tuple[int, int], dilation: tuple[int, int]) -> numpy.ndarray:
    """The input gradient (x_shape) of ``depthwise_forward`` under the output gradient ``g``."""
    _check_grad(g.shape, x_shape, w.shape, stride, padding, dilation)
    gx = numpy.empty(tuple(x_shape), dtype=g.dtype)
    g, w = numpy.ascontiguousarray(g), numpy.ascontiguousarray(w, dtype=g.dtype)
    if tuple(stride) == (1, 1):
        _input_grad_unit_stride(g, w, gx, *padding, *dilation)
    else:
        _input_grad_strided(g, w, gx, *stride, *padding, *dilation)
    return gx


def depthwise_param_grads(x: numpy.ndarray, g: numpy.ndarray, w_shape: tuple[int, ...], stride: tuple[int, int],
                          padding: tuple[int, int], dilation: tuple[int, int]) -> tuple[numpy.ndarray, numpy.ndarray]:
    """(gw, gb) of ``depthwise_forward``: per-sample partial sums, then one sum over the batch."""
    _check_grad(g.shape, x.shape, w_shape, stride, padding, dilation)
    n, oc = x.shape[0], w_shape[0]
    gw_part = numpy.empty((n, oc, w_shape[2], w_shape[3]), dtype=g.dtype)
    gb_part = numpy.empty((n, oc), dtype=g.dtype)
    x, g = numpy.ascontiguousarray(x, dtype=g.dtype), numpy.ascontiguousarray(g)
    if tuple(stride) == (1, 1):
        _param_grads_unit_stride(x, g, gw_part, gb_part, *padding, *dilation)
    else:
        _param_grads_strided(x, g, gw_part, gb_part, *stride, *padding, *dilation)
    return gw_part.sum(axis=0).reshape(w_shape), gb_part.sum(axis=0)


def _check_grad(g_shape: tuple[int, ...], x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]) -> None:
    """Refuse an output gradient that is not the forward's output shape."""
    expected = _output_shape(x_shape, w_shape, stride, padding, dilation)
    if tuple(g_shape) != expected:
        raise ValueError(f"depthwise convolution gradient has shape {tuple(g_shape)}, expected {expected}")


def _check_length(what: str, shape: tuple[int, ...], length: int) -> None:
    """Refuse a vector argument that is not ``length`` long."""
    if tuple(shape) != (length,):
        raise ValueError(f"depthwise convolution {what} has shape {tuple(shape)}, expected ({length},)")

"""The Numba backend: NumPy arrays, with the hot kernels compiled to parallel machine code.

Every kernel runs ``prange`` over samples, N*C planes or elements, and each iteration writes only its own part,
so there are no races and results do not depend on the thread count. im2col, col2im, max and average pooling and
ReLU agree with the generic NumPy kernels bit for bit (col2im and the pooling backwards sum each pixel's
contributions in the same order, kernel offset (i, j) ascending). The direct convolution (``numba_conv``) sums
in another order, so it agrees with NumPy's im2col + matmul to rounding (1e-15 relative in float64), not bit for
bit.
Kernels are cached on disk (``numba_jit.CACHE``): only the first process on a machine pays the compile time, which
``NumbaBackend.warm_up`` measures apart from steady-state timings.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Iterable

import numpy

from xpnet import threads

# Idle OpenMP workers must not spin for long: spinning ones starve OpenBLAS's matmul threads between our kernels
# (a report-1 step at batch 64 took 2x longer than on the NumPy backend), and waking sleeping ones costs 60 us a
# kernel. They spin briefly, then sleep (xpnet/threads.py). Set before numba starts its pool.
threads.set_default(*threads.OPENMP_WAIT)
threads.set_default(*threads.OPENMP_SPIN)

from numba import njit, prange, uint64  # noqa: E402

from xpnet import autograd  # noqa: E402
from xpnet.backend import Backend  # noqa: E402
from xpnet.backends import numba_conv, numba_depthwise  # noqa: E402
from xpnet.backends.numba_ahead import AHEAD  # noqa: E402
from xpnet.backends.numba_jit import CACHE, PARALLEL  # noqa: E402
from xpnet import kernels, validate  # noqa: E402
from xpnet.kernels import out_size  # noqa: E402


@njit(parallel=PARALLEL, cache=CACHE)
def _im2col(x, cols, sy, sx, ph, pw, dy, dx):
    """Fill cols (N, C, KH, KW, OH, OW) with the windows of x (N, C, H, W), zero where they reach the padding;
    taps are (dy, dx) apart."""
    n, c, h, w = x.shape
    _, _, kh, kw, oh, ow = cols.shape
    hp, wp = h + 2 * ph, w + 2 * pw
    xf, cf = x.reshape(-1), cols.reshape(-1)
    uow, usx = uint64(ow), uint64(sx)
    for nc in prange(n * c):
        buf = numpy.zeros(hp * wp, dtype=x.dtype)  # the padded plane, so the copy loops need no bounds tests
        for y in range(h):
            buf[(y + ph) * wp + pw:(y + ph) * wp + pw + w] = xf[(nc * h + y) * w:(nc * h + y + 1) * w]
        d = uint64(nc * kh * kw * oh * ow)  # unsigned indices: no negative-index wraparound test per element
        for i in range(kh):
            for j in range(kw):
                for oy in range(oh):
                    s = uint64((oy * sy + i * dy) * wp + j * dx)
                    if sx == 1:
                        for ox in range(uow):
                            cf[d + ox] = buf[s + ox]
                    else:
                        for ox in range(uow):
                            cf[d + ox] = buf[s + ox * usx]
                    d += uow


@njit(parallel=PARALLEL, cache=CACHE)
def _col2im(cols, img, sy, sx, ph, pw, dy, dx):
    """Fill img (N, C, H, W) with the adjoint of im2col: each pixel sums the column entries covering it.

    One prange iteration owns one (n, c) plane and adds its entries offset by offset ((i, j) ascending, as the
    generic kernel does), so no two iterations touch the same pixel and the sums match the NumPy backend's.
    """
    n, c, kh, kw, oh, ow = cols.shape
    h, w = img.shape[2], img.shape[3]
    hp, wp = h + 2 * ph, w + 2 * pw
    cf, imf = cols.reshape(-1), img.reshape(-1)
    uow, usx = uint64(ow), uint64(sx)
    for nc in prange(n * c):
        buf = numpy.zeros(hp * wp, dtype=cols.dtype)
        d = uint64(nc * kh * kw * oh * ow)
        for i in range(kh):
            for j in range(kw):
                for oy in range(oh):
                    s = uint64((oy * sy + i * dy) * wp + j * dx)
                    if sx == 1:
                        for ox in range(uow):
                            buf[s + ox] += cf[d + ox]
                    else:
                        for ox in range(uow):
                            buf[s + ox * usx] += cf[d + ox]
                    d += uow
        for y in range(h):
            imf[(nc * h + y) * w:(nc * h + y + 1) * w] = buf[(y + ph) * wp + pw:(y + ph) * wp + pw + w]


@njit(parallel=PARALLEL, cache=CACHE)
def _max_pool_forward(x, out, arg, kh, kw, sy, sx):
    """Window maxima and the flat in-window index of the first maximum (a NaN beats numbers and earlier NaNs, so
    the last NaN wins, as in PyTorch).

    Works a whole output row at a time, offset by offset ((i, j) ascending, strict ``>``), so the inner loop runs
    along the row and the first maximum wins ties.
    """
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    xf, of, af = x.reshape(-1), out.reshape(-1), arg.reshape(-1)
    uow, usx = uint64(ow), uint64(sx)
    for nc in prange(n * c):
        for oy in range(oh):
            o = uint64((nc * oh + oy) * ow)
            s = uint64((nc * h + oy * sy) * w)
            for ox in range(uow):
                of[o + ox] = xf[s + ox * usx]
                af[o + ox] = 0
            for i in range(kh):
                for j in range(kw):
                    if i == 0 and j == 0:
                        continue
                    k = i * kw + j
                    sij = s + uint64(i * w + j)
                    for ox in range(uow):
                        v, best = xf[sij + ox * usx], of[o + ox]
                        if v > best or v != v:
                            of[o + ox] = v
                            af[o + ox] = k


@njit(parallel=PARALLEL, cache=CACHE)
def _max_pool_forward_2x2(x, out, arg):
    """``_max_pool_forward`` for 2x2 windows at stride 2, without branches.

    On real-valued data "is this one larger?" is a coin toss, and the general kernel's branch mispredictions cost
    about 40 cycles per output; selects cost a few. ``take`` is the same rule: a larger value or any NaN (v != v)
    replaces the best, so the last NaN wins.
    """
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    xf, of, af = x.reshape(-1), out.reshape(-1), arg.reshape(-1)
    for nc in prange(n * c):
        for oy in range(oh):
            r0 = uint64((nc * h + 2 * oy) * w)
            r1 = r0 + uint64(w)
            o = uint64((nc * oh + oy) * ow)
            for ox in range(uint64(ow)):
                best = xf[r0 + 2 * ox]
                k = 0
                for index, v in ((1, xf[r0 + 2 * ox + 1]), (2, xf[r1 + 2 * ox]), (3, xf[r1 + 2 * ox + 1])):
                    take = (v > best) | (v != v)
                    best = v if take else best
                    k = index if take else k
                of[o + ox] = best
                af[o + ox] = k


@njit(parallel=PARALLEL, cache=CACHE)
def _relu_forward(x, out):
    """max(x, 0) with NaN kept (as numpy.maximum), in parallel chunks."""
    xf, of = x.reshape(-1), out.reshape(-1)
    for i in prange(xf.size):
        v = xf[i]
        of[i] = 0 if v <= 0 else v


@njit(parallel=PARALLEL, cache=CACHE)
def _relu_backward(out, g, gx):
    """0 where out <= 0, else g: g passes where out is NaN, as PyTorch's threshold_backward."""
    of, gf, xf = out.reshape(-1), g.reshape(-1), gx.reshape(-1)
    for i in prange(of.size):
        xf[i] = 0 if of[i] <= 0 else gf[i]


@njit(parallel=PARALLEL, cache=CACHE)
def _erf(x, out):
    """The C library's erf (erff for float32) of each element, in parallel chunks: one pass, where the generic
    ``xpnet.special.erf`` makes about fifty over the array."""
    xf, of = x.reshape(-1), out.reshape(-1)
    for i in prange(xf.size):
        of[i] = math.erf(xf[i])


@njit(parallel=PARALLEL, cache=CACHE)
def _max_pool_backward(gout, arg, gx, kh, kw, sy, sx):
    """Each pixel sums the gradients of the windows it won, offset by offset ((i, j) ascending; overlap-safe)."""
    n, c, oh, ow = gout.shape
    h, w = gx.shape[2], gx.shape[3]
    gf, af, xf = gout.reshape(-1), arg.reshape(-1), gx.reshape(-1)
    for nc in prange(n * c):
        base = uint64(nc * h * w)
        xf[base:base + uint64(h * w)] = 0
        for i in range(kh):
            for j in range(kw):
                k = i * kw + j
                o = uint64(nc * oh * ow)
                for oy in range(oh):
                    row = base + uint64((oy * sy + i) * w + j)
                    for ox in range(ow):
                        if af[o] == k:
                            xf[row + uint64(ox * sx)] += gf[o]
                        o += uint64(1)


@njit(parallel=PARALLEL, cache=CACHE)
def _max_pool_backward_tiled(gout, arg, gx, kh, kw):
    """Fast path for kernel == stride: the windows tile the input, so each pixel is written once, no zero pass."""
    n, c, oh, ow = gout.shape
    h, w = gx.shape[2], gx.shape[3]
    gf, af, xf = gout.reshape(-1), arg.reshape(-1), gx.reshape(-1)
    ukw = uint64(kw)
    for nc in prange(n * c):
        base = uint64(nc * h * w)
        for oy in range(oh):
            for i in range(kh):
                row = base + uint64((oy * kh + i) * w)
                o = uint64(nc * oh * ow + oy * ow)
                for ox in range(uint64(ow)):
                    won, g = af[o + ox] - i * kw, gf[o + ox]
                    for j in range(kw):
                        xf[row + ox * ukw + uint64(j)] = g if won == j else 0
                xf[row + uint64(ow * kw):row + uint64(w)] = 0
        xf[base + uint64(oh * kh * w):base + uint64(h * w)] = 0


@njit(parallel=PARALLEL, cache=CACHE)
def _max_pool_backward_2x2(gout, arg, gx):
    """``_max_pool_backward_tiled`` for 2x2 windows at stride 2: each window's four pixels are stored at once,
    selected by its argmax without branches, 1.4-1.7x faster than the general loop, whose inner ``j`` loop of
    unknown length it unrolls (docs/performance.md, section 9.2, attempt 9)."""
    n, c, oh, ow = gout.shape
    h, w = gx.shape[2], gx.shape[3]
    gf, af, xf = gout.reshape(-1), arg.reshape(-1), gx.reshape(-1)
    zero = gx.dtype.type(0)
    for nc in prange(n * c):
        base = uint64(nc * h * w)
        for oy in range(oh):
            r0 = base + uint64(2 * oy * w)
            r1 = r0 + uint64(w)
            o = uint64((nc * oh + oy) * ow)
            for ox in range(uint64(ow)):
                k, g = af[o + ox], gf[o + ox]
                xf[r0 + 2 * ox] = g if k == 0 else zero
                xf[r0 + 2 * ox + 1] = g if k == 1 else zero
                xf[r1 + 2 * ox] = g if k == 2 else zero
                xf[r1 + 2 * ox + 1] = g if k == 3 else zero
            xf[r0 + uint64(2 * ow):r1] = 0  # an odd last column no window covers
            xf[r1 + uint64(2 * ow):r1 + uint64(w)] = 0
        xf[base + uint64(2 * oh * w):base + uint64(h * w)] = 0  # an odd last row


@njit(cache=CACHE)
def _padded_plane(xf, base, h, w, ph, pw, hp, wp, buf):
    """Plane ``xf[base:base + h*w]`` as a row-major (hp, wp) run: itself when no padding is needed, else copied
    into ``buf`` with zeros around it."""
    if hp == h and wp == w:
        return xf[base:base + h * w]
    buf[:] = 0
    for y in range(h):
        buf[(y + ph) * wp + pw:(y + ph) * wp + pw + w] = xf[base + y * w:base + (y + 1) * w]
    return buf


@njit(parallel=PARALLEL, cache=CACHE)
def _avg_pool_forward(x, out, divisor, kh, kw, sy, sx, ph, pw, hp, wp):
    """Window sums of x (N, C, H, W), zero-padded to (hp, wp) with the image at (ph, pw), divided by divisor
    (OH, OW); one (n, c) plane per iteration, a whole output row per kernel tap (the inner loop runs along it).

    Each output starts from its first tap and adds the others in (i, j) order, padding zeros included, as the
    generic kernel does, so the results are its results bit for bit.
    """
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    xf, of, df = x.reshape(-1), out.reshape(-1), divisor.reshape(-1)
    uow, usx, uwp = uint64(ow), uint64(sx), uint64(wp)
    for nc in prange(n * c):
        buf = numpy.empty(hp * wp, dtype=x.dtype)
        src = _padded_plane(xf, nc * h * w, h, w, ph, pw, hp, wp, buf)
        for oy in range(oh):
            o = uint64((nc * oh + oy) * ow)
            s = uint64(oy * sy) * uwp
            for ox in range(uow):
                of[o + ox] = src[s + ox * usx]
            for i in range(kh):
                for j in range(kw):
                    if i == 0 and j == 0:
                        continue
                    sij = s + uint64(i) * uwp + uint64(j)
                    for ox in range(uow):
                        of[o + ox] += src[sij + ox * usx]
            d = uint64(oy * ow)
            for ox in range(uow):
                of[o + ox] /= df[d + ox]


@njit(parallel=PARALLEL, cache=CACHE)
def _avg_pool_backward(gout, gx, divisor, kh, kw, sy, sx, ph, pw, hp, wp):
    """Each pixel of gx (N, C, H, W) sums gout / divisor over the windows covering it, tap by tap ((i, j)
    ascending, as the generic kernel), in a zero-padded (hp, wp) plane per (n, c) whose interior is copied out."""
    n, c, oh, ow = gout.shape
    h, w = gx.shape[2], gx.shape[3]
    gf, xf, df = gout.reshape(-1), gx.reshape(-1), divisor.reshape(-1)
    uow, usx, uwp = uint64(ow), uint64(sx), uint64(wp)
    for nc in prange(n * c):
        buf = numpy.zeros(hp * wp, dtype=gout.dtype)
        share = gf[nc * oh * ow:(nc + 1) * oh * ow] / df
        for i in range(kh):
            for j in range(kw):
                for oy in range(oh):
                    row = uint64(oy * sy + i) * uwp + uint64(j)
                    d = uint64(oy * ow)
                    for ox in range(uow):
                        buf[row + ox * usx] += share[d + ox]
        for y in range(h):
            xf[(nc * h + y) * w:(nc * h + y + 1) * w] = buf[(y + ph) * wp + pw:(y + ph) * wp + pw + w]


# Below this input size, windows that tile the input (kernel == stride, no padding) are averaged faster by the
# generic kernel's KH*KW slice passes than by the compiled one, which pays for waking its threads. Best of 5 on
# 2 shared cores, float32, forward / backward in ms (NumPy vs Numba): (64, 6, 28, 28) 2x2: 0.24 / 0.50 vs
# 0.83 / 1.00; (64, 16, 28, 28) 2x2: 0.81 / 1.08 vs 0.97 / 1.27; (32, 64, 56, 56) 2x2: 8.6 / 13.3 vs 4.2 / 6.5.
# Overlapping or padded windows always go compiled: 3x3 stride 2 pad 1 on (64, 16, 28, 28): 4.2 / 3.5 vs
# 4.0 / 2.3; on (32, 64, 56, 56): 47 / 40 vs 19 / 11; 3x3 stride 1 pad 1 on (128, 64, 8, 8): 7.0 / 12.9 vs
# 4.2 / 2.8.
TILED_AVG_POOL_BYTES = 4 << 20


def _compiled_avg_pool_pays(x_bytes: int, kernel: tuple[int, int], stride: tuple[int, int],
                            padding: tuple[int, int]) -> bool:
    """Whether the compiled average-pooling kernels beat the generic ones here (``TILED_AVG_POOL_BYTES``)."""
    return tuple(kernel) != tuple(stride) or any(padding) or x_bytes >= TILED_AVG_POOL_BYTES


def _conv_path(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: tuple[int, int],
               padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> str:
    """Which kernels run this convolution, forward and backward alike: "direct", "depthwise", "gemm" (one group)
    or "generic" (im2col + a matmul batched over samples and groups)."""
    if numba_conv.direct_pays(x_shape, w_shape, stride, padding, dilation, groups):
        return "direct"
    if numba_depthwise.depthwise_pays(x_shape, groups):
        return "depthwise"
    return "gemm" if groups == 1 else "generic"


# Batch-norm statistics are summed in blocks of at most this many contiguous elements, in the input's dtype (so
# that float32 vectorises 8 wide), and the blocks are merged in float64: a float32 sum never grows long.
_BN_BLOCK = 1024


@njit(parallel=PARALLEL, cache=CACHE, fastmath={"contract", "reassoc"})
def _batch_norm_stats(x, mean, var):
    """Per-channel mean and biased variance (float64) of x (N, C, M) in one pass over memory.

    Each block is read twice while it is in L1 (its mean, then its squared deviations from that mean), and
    blocks are merged with Chan et al.'s pairwise update, so a large mean costs no precision.
    """
    n, c, m = x.shape
    zero = x.dtype.type(0)
    for ch in prange(c):
        count, mu, m2 = 0.0, 0.0, 0.0
        for i in range(n):
            for start in range(0, m, _BN_BLOCK):
                block = x[i, ch, start:start + _BN_BLOCK]
                size = block.size
                s = zero
                for j in range(size):
                    s += block[j]
                block_mean = s / x.dtype.type(size)
                q = zero
                for j in range(size):
                    d = block[j] - block_mean
                    q += d * d
                total = count + size
                delta = block_mean - mu
                mu += delta * (size / total)
                m2 += q + delta * delta * (count * size / total)
                count = total
        mean[ch] = mu
        var[ch] = m2 / count


@njit(parallel=PARALLEL, cache=CACHE)
def _batch_norm_normalize(x, shift, scale, bias, out):
    """out = (x - shift[c]) * scale[c] + bias[c] for x (N, C, M); one prange iteration per (n, c) row."""
    n, c, m = x.shape
    for row in prange(n * c):
        i, ch = row // c, row % c
        s, k, b = shift[ch], scale[ch], bias[ch]
        for j in range(m):
            out[i, ch, j] = (x[i, ch, j] - s) * k + b


@njit(parallel=PARALLEL, cache=CACHE, fastmath={"contract", "reassoc"})
def _batch_norm_grad_sums(g, x, shift, gsum, gdot):
    """Per channel: gsum = sum(g), gdot = sum(g * (x - shift)) (float64, blocks summed in x's dtype)."""
    n, c, m = x.shape
    zero = x.dtype.type(0)
    for ch in prange(c):
        a, b = 0.0, 0.0
        mu = shift[ch]
        for i in range(n):
            for start in range(0, m, _BN_BLOCK):
                g_block, x_block = g[i, ch, start:start + _BN_BLOCK], x[i, ch, start:start + _BN_BLOCK]
                sa, sb = zero, zero
                for j in range(g_block.size):
                    gv = g_block[j]
                    sa += gv
                    sb += gv * (x_block[j] - mu)
                a += sa
                b += sb
        gsum[ch] = a
        gdot[ch] = b


@njit(parallel=PARALLEL, cache=CACHE)
def _batch_norm_input_grad(g, x, shift, kg, kx, k0, gx):
    """gx = g * kg[c] + (x - shift[c]) * kx[c] + k0[c] for (N, C, M) arrays; one prange iteration per row."""
    n, c, m = x.shape
    for row in prange(n * c):
        i, ch = row // c, row % c
        s, a, b, d = shift[ch], kg[ch], kx[ch], k0[ch]
        for j in range(m):
            gx[i, ch, j] = g[i, ch, j] * a + (x[i, ch, j] - s) * b + d


def _batch_norm_rows(x: Any) -> Any:
    """x (N, C, ...) as the C-contiguous (N, C, M) array the batch-norm kernels index, after checking it."""
    if x.dtype not in (numpy.float32, numpy.float64) or x.ndim < 2 or x.size == 0:
        raise ValueError(f"batch-norm input must be a non-empty float32 or float64 array (N, C, ...), got "
                         f"{x.dtype} of shape {tuple(x.shape)}")
    return numpy.ascontiguousarray(x).reshape(x.shape[0], x.shape[1], -1)


def _as_dtype(dtype: Any, *vectors: Any) -> list[Any]:
    """Per-channel coefficients (computed in float64) in the data's dtype, as the kernels' loops use them."""
    return [numpy.ascontiguousarray(v, dtype=dtype) for v in vectors]


# Each op whose backward has kernels of its own, with those kernels: what ``numba_ahead`` compiles in its helper
# while the forward pass runs (a kernel the forward already compiles, such as the direct convolution's, is left out).
BACKWARD_KERNELS: dict[str, tuple[Any, ...]] = {
    "conv_direct": numba_conv.DIRECT_BACKWARD_KERNELS,
    "conv_gemm": numba_conv.GEMM_BACKWARD_KERNELS,
    "depthwise_unit_stride": numba_depthwise.UNIT_STRIDE_BACKWARD_KERNELS,
    "depthwise_strided": numba_depthwise.STRIDED_BACKWARD_KERNELS,
    "relu": (_relu_backward,),
    "batch_norm": (_batch_norm_grad_sums, _batch_norm_input_grad),
    "max_pool_2x2": (_max_pool_backward_2x2,),
    "max_pool_tiled": (_max_pool_backward_tiled,),
    "max_pool": (_max_pool_backward,),
    "avg_pool": (_avg_pool_backward,),
}


def _expect_backward(op: str, dtype: Any) -> None:
    """A forward op under autograd: its backward kernels may compile in the helper meanwhile (``numba_ahead``)."""
    if autograd.is_grad_enabled():
        AHEAD.expect(op, numpy.dtype(dtype).name, BACKWARD_KERNELS[op])


def _await_backward(op: str, dtype: Any) -> None:
    """Before ``op``'s backward kernels run: wait for the helper if it is compiling them (``numba_ahead``)."""
    AHEAD.wait(op, numpy.dtype(dtype).name)


def _max_pool_op(kernel: tuple[int, int], stride: tuple[int, int]) -> str:
    """Which backward kernel a max pool takes: 2x2 windows at stride 2, other windows that tile, or overlapping."""
    if tuple(kernel) == tuple(stride):
        return "max_pool_2x2" if tuple(kernel) == (2, 2) else "max_pool_tiled"
    return "max_pool"


def _depthwise_op(stride: tuple[int, int]) -> str:
    return "depthwise_unit_stride" if tuple(stride) == (1, 1) else "depthwise_strided"


class NumbaBackend(Backend):
    """NumPy arrays; direct convolution for small stride-1 layers, depthwise convolution, and im2col, col2im and
    pooling as parallel, cached Numba kernels."""

    name = "numba"
    xp = numpy

    def __init__(self) -> None:
        if not threads.reapply_openblas_env():
            warnings.warn("NumPy was imported before xpnet and its BLAS cannot be told to stop spinning, so its idle "
                          "threads spin for 0.1 s after each matmul and slow the Numba backend's kernels (about 1.4x "
                          "for LeNet-5 on 2 cores): import xpnet first, or set OPENBLAS_THREAD_TIMEOUT=4 before "
                          "starting Python", RuntimeWarning, stacklevel=2)

    def im2col(self, x: Any, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int] = (1, 1)) -> Any:
        validate.window_args("im2col", kernel, stride, padding, dilation)
        validate.ndim("im2col", "x", x.shape, 4, "(N, C, H, W)")
        (kh, kw), (sy, sx), (ph, pw), (dy, dx) = kernel, stride, padding, dilation
        n, c, h, w = x.shape
        cols = numpy.empty((n, c, kh, kw, out_size(h, kh, sy, ph, dy), out_size(w, kw, sx, pw, dx)), dtype=x.dtype)
        _im2col(numpy.ascontiguousarray(x), cols, sy, sx, ph, pw, dy, dx)
        return cols

    def col2im(self, cols: Any, x_shape: tuple[int, ...], stride: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int] = (1, 1)) -> Any:
        validate.ndim("col2im", "cols", cols.shape, 6, "(N, C, KH, KW, OH, OW)")
        validate.window_args("col2im", cols.shape[2:4], stride, padding, dilation)
        (n, c, h, w), (kh, kw), (sy, sx), (ph, pw), (dy, dx) = x_shape, cols.shape[2:4], stride, padding, dilation
        validate.shape("col2im cols", cols.shape,
                     (n, c, kh, kw, out_size(h, kh, sy, ph, dy), out_size(w, kw, sx, pw, dx)))
        img = numpy.empty(x_shape, dtype=cols.dtype)
        _col2im(numpy.ascontiguousarray(cols), img, sy, sx, ph, pw, dy, dx)
        return img

    def max_pool_forward(self, x: Any, kernel: tuple[int, int], stride: tuple[int, int],
                         padding: tuple[int, int] = (0, 0), ceil_mode: bool = False) -> tuple[Any, Any]:
        """The compiled kernels on the input padded with the dtype's lowest value where needed (a copy; none in
        the common unpadded floor-mode case), then the generic rule that padding never wins."""
        validate.window_args("max_pool_forward", kernel, stride, padding)
        validate.ndim("max_pool_forward", "x", x.shape, 4, "(N, C, H, W)")
        out_hw, padded_hw = kernels.pool_geometry(x.shape, kernel, stride, padding, ceil_mode)
        x = kernels.pad_for_pool(numpy, x, padding, padded_hw, kernels.max_pool_fill(x.dtype))
        shape = (*x.shape[:2], *out_hw)
        out, argmax = numpy.empty(shape, dtype=x.dtype), numpy.empty(shape, dtype=numpy.int64)
        _expect_backward(_max_pool_op(kernel, stride), x.dtype)
        if kernel == stride == (2, 2):
            _max_pool_forward_2x2(numpy.ascontiguousarray(x), out, argmax)
        else:
            _max_pool_forward(numpy.ascontiguousarray(x), out, argmax, *kernel, *stride)
        return out, kernels.argmax_off_padding(numpy, out, argmax, kernel, stride, padding)

    def max_pool_backward(self, gout: Any, argmax: Any, x_shape: tuple[int, ...], kernel: tuple[int, int],
                          stride: tuple[int, int], padding: tuple[int, int] = (0, 0),
                          ceil_mode: bool = False) -> Any:
        validate.window_args("max_pool_backward", kernel, stride, padding)
        out_hw, padded_hw = kernels.pool_geometry(x_shape, kernel, stride, padding, ceil_mode)
        validate.shape("max-pool gradient", gout.shape, (*x_shape[:2], *out_hw))
        validate.shape("max-pool argmax", argmax.shape, gout.shape)
        gx = numpy.empty((*x_shape[:2], *padded_hw), dtype=gout.dtype)
        gout, argmax = numpy.ascontiguousarray(gout), numpy.ascontiguousarray(argmax)
        op = _max_pool_op(kernel, stride)
        _await_backward(op, gout.dtype)
        if op == "max_pool_2x2":
            _max_pool_backward_2x2(gout, argmax, gx)
        elif op == "max_pool_tiled":
            _max_pool_backward_tiled(gout, argmax, gx, *kernel)
        else:
            _max_pool_backward(gout, argmax, gx, *kernel, *stride)
        return kernels.crop_pool_grad(gx, padding, x_shape)

    def avg_pool_forward(self, x: Any, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                         ceil_mode: bool, count_include_pad: bool, divisor_override: int | None) -> Any:
        validate.window_args("avg_pool_forward", kernel, stride, padding)
        validate.ndim("avg_pool_forward", "x", x.shape, 4, "(N, C, H, W)")
        if not _compiled_avg_pool_pays(x.nbytes, kernel, stride, padding):
            return super().avg_pool_forward(x, kernel, stride, padding, ceil_mode, count_include_pad,
                                            divisor_override)
        out_hw, padded_hw = kernels.pool_geometry(x.shape, kernel, stride, padding, ceil_mode)
        divisor = self._avg_divisor(x.shape, kernel, stride, padding, out_hw, count_include_pad, divisor_override,
                                    x.dtype)
        out = numpy.empty((*x.shape[:2], *out_hw), dtype=x.dtype)
        _expect_backward("avg_pool", x.dtype)
        _avg_pool_forward(numpy.ascontiguousarray(x), out, divisor, *kernel, *stride, *padding, *padded_hw)
        return out

    def avg_pool_backward(self, gout: Any, x_shape: tuple[int, ...], kernel: tuple[int, int],
                          stride: tuple[int, int], padding: tuple[int, int], ceil_mode: bool,
                          count_include_pad: bool, divisor_override: int | None) -> Any:
        validate.window_args("avg_pool_backward", kernel, stride, padding)
        out_hw, padded_hw = kernels.pool_geometry(x_shape, kernel, stride, padding, ceil_mode)
        validate.shape("avg-pool gradient", gout.shape, (*x_shape[:2], *out_hw))
        if not _compiled_avg_pool_pays(math.prod(x_shape) * gout.itemsize, kernel, stride, padding):
            return super().avg_pool_backward(gout, x_shape, kernel, stride, padding, ceil_mode, count_include_pad,
                                             divisor_override)
        divisor = self._avg_divisor(x_shape, kernel, stride, padding, out_hw, count_include_pad, divisor_override,
                                    gout.dtype)
        gx = numpy.empty(x_shape, dtype=gout.dtype)
        _await_backward("avg_pool", gout.dtype)
        _avg_pool_backward(numpy.ascontiguousarray(gout), gx, divisor, *kernel, *stride, *padding, *padded_hw)
        return gx

    @staticmethod
    def _avg_divisor(x_shape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int],
                     padding: tuple[int, int], out_hw: tuple[int, int], count_include_pad: bool,
                     divisor_override: int | None, dtype: Any) -> Any:
        """The generic divisor as a full (OH, OW) array, the one layout the compiled kernels take."""
        divisor = kernels.avg_pool_divisor(numpy, x_shape, kernel, stride, padding, out_hw, count_include_pad,
                                           divisor_override, dtype)
        return numpy.ascontiguousarray(numpy.broadcast_to(divisor, out_hw))

    def relu_forward(self, x: Any) -> Any:
        x = numpy.ascontiguousarray(x)
        out = numpy.empty_like(x)
        _expect_backward("relu", x.dtype)
        _relu_forward(x, out)
        return out

    def relu_backward(self, out: Any, g: Any) -> Any:
        validate.shape("relu gradient", g.shape, out.shape)
        g = numpy.ascontiguousarray(g)
        gx = numpy.empty_like(g)
        _await_backward("relu", g.dtype)
        _relu_backward(numpy.ascontiguousarray(out), g, gx)
        return gx

    def erf(self, x: Any) -> Any:
        """The compiled kernel for float32 and float64 arrays (the generic one for any other dtype)."""
        if x.dtype not in (numpy.float32, numpy.float64):
            return super().erf(x)
        x = numpy.ascontiguousarray(x)
        out = numpy.empty_like(x)
        _erf(x, out)
        return out

    def conv2d_forward(self, x: Any, w: Any, b: Any, stride: tuple[int, int], padding: tuple[int, int],
                       dilation: tuple[int, int], groups: int) -> tuple[Any, Any]:
        """Direct convolution where it pays (``numba_conv.direct_pays``) and the depthwise kernels for groups == C
        (``numba_depthwise``), both with the input as residual; else, for one group, one GEMM over the whole
        batch (``numba_conv.gemm_forward``), and the generic im2col + batched matmul for other groupings; the
        residual of both is the columns."""
        validate.conv_args("conv2d_forward", x.shape, w.shape, None if b is None else b.shape, stride, padding,
                           dilation, groups)
        validate.same_dtype("conv2d_forward", "x", x.dtype, w=w, b=b)
        path = _conv_path(x.shape, w.shape, stride, padding, dilation, groups)
        if path != "generic":
            _expect_backward(_depthwise_op(stride) if path == "depthwise" else f"conv_{path}", x.dtype)
        if path == "direct":
            x = numpy.ascontiguousarray(x)
            return numba_conv.conv_forward(x, numpy.ascontiguousarray(w), b, padding), x
        if path == "depthwise":
            x = numpy.ascontiguousarray(x)
            return numba_depthwise.depthwise_forward(x, w, b, stride, padding, dilation), x
        if path == "gemm":
            return numba_conv.gemm_forward(x, w, b, stride, padding, dilation)
        return super().conv2d_forward(x, w, b, stride, padding, dilation, groups)

    def conv2d_backward(self, residual: Any, w: Any, g: Any, x_shape: tuple[int, ...], stride: tuple[int, int],
                        padding: tuple[int, int], dilation: tuple[int, int], groups: int,
                        needs: tuple[bool, bool, bool]) -> tuple[Any, Any, Any]:
        validate.conv_args("conv2d_backward", x_shape, w.shape, None, stride, padding, dilation, groups)
        validate.shape("conv2d_backward g", g.shape, validate.conv_out_shape(x_shape, w.shape, stride, padding,
                                                                               dilation))
        validate.same_dtype("conv2d_backward", "w", w.dtype, g=g)
        path = _conv_path(x_shape, w.shape, stride, padding, dilation, groups)
        if path != "generic":
            _await_backward(_depthwise_op(stride) if path == "depthwise" else f"conv_{path}", g.dtype)
        if path == "depthwise":
            return self._depthwise_backward(residual, w, g, x_shape, stride, padding, dilation, needs)
        if path == "gemm":
            return numba_conv.gemm_backward(residual, w, g, x_shape, stride, padding, dilation, needs)
        if path == "generic":
            return super().conv2d_backward(residual, w, g, x_shape, stride, padding, dilation, groups, needs)
        need_x, need_w, need_b = needs
        g = numpy.ascontiguousarray(g)
        gx = numba_conv.conv_input_grad(g, w, padding) if need_x else None
        gw = gb = None
        if need_w or need_b:
            gw, gb = numba_conv.conv_param_grads(residual, g, w.shape, padding)
        return gx, gw if need_w else None, gb if need_b else None

    @staticmethod
    def _depthwise_backward(x: Any, w: Any, g: Any, x_shape: tuple[int, ...], stride: tuple[int, int],
                            padding: tuple[int, int], dilation: tuple[int, int],
                            needs: tuple[bool, bool, bool]) -> tuple[Any, Any, Any]:
        """The gradients ``needs`` asks for of a depthwise convolution whose input ``x`` was its residual."""
        need_x, need_w, need_b = needs
        gx = numba_depthwise.depthwise_input_grad(g, w, x_shape, stride, padding, dilation) if need_x else None
        gw = gb = None
        if need_w or need_b:
            gw, gb = numba_depthwise.depthwise_param_grads(x, g, w.shape, stride, padding, dilation)
        return gx, gw if need_w else None, gb if need_b else None

    def batch_norm_forward(self, x: Any, weight: Any, bias: Any, eps: float) -> tuple[Any, Any, Any, Any]:
        """One fused pass for the statistics, one to normalise; the residual is the input itself (no copy)."""
        x3 = _batch_norm_rows(x)
        c = x3.shape[1]
        for what, v in (("weight", weight), ("bias", bias)):
            if v is not None:
                validate.shape(f"batch-norm {what}", v.shape, (c,))
        mean, var = numpy.empty(c), numpy.empty(c)
        _expect_backward("batch_norm", x3.dtype)
        _batch_norm_stats(x3, mean, var)
        invstd = 1 / numpy.sqrt(var + eps)
        scale = invstd if weight is None else invstd * weight
        offset = numpy.zeros(c) if bias is None else bias
        out = numpy.empty_like(x3)
        _batch_norm_normalize(x3, *_as_dtype(x3.dtype, mean, scale, offset), out)
        dtype = x3.dtype
        return out.reshape(x.shape), mean.astype(dtype), var.astype(dtype), (x3, x.shape, mean, invstd, weight)

    def batch_norm_backward(self, residual: Any, g: Any, needs: tuple[bool, bool, bool]) -> tuple[Any, Any, Any]:
        """One fused pass for the two per-channel sums, one for gx = g * kg + (x - mean) * kx + k0."""
        x3, x_shape, mean, invstd, weight = residual
        need_x, need_w, need_b = needs
        validate.shape("batch-norm gradient", g.shape, x_shape)
        g3 = numpy.ascontiguousarray(g, dtype=x3.dtype).reshape(x3.shape)
        c, count = x3.shape[1], x3.shape[0] * x3.shape[2]
        gsum, gdot = numpy.empty(c), numpy.empty(c)
        shift = mean.astype(x3.dtype)
        _await_backward("batch_norm", x3.dtype)
        _batch_norm_grad_sums(g3, x3, shift, gsum, gdot)
        gx = None
        if need_x:
            kg = invstd if weight is None else invstd * weight
            kx, k0 = -kg * invstd * invstd * gdot / count, -kg * gsum / count
            gx = numpy.empty_like(x3)
            _batch_norm_input_grad(g3, x3, shift, *_as_dtype(x3.dtype, kg, kx, k0), gx)
            gx = gx.reshape(x_shape)
        dtype = x3.dtype
        return gx, (gdot * invstd).astype(dtype) if need_w else None, gsum.astype(dtype) if need_b else None

    @classmethod
    def compile_backward(cls, op: str, dtype: str) -> None:
        """Compile (or load) the kernels ``BACKWARD_KERNELS[op]`` for ``dtype`` by running that backward on tiny
        inputs built as a real forward builds them, so that Numba sees the same argument types (what the helper of
        ``numba_ahead`` runs; ``tests/test_numba_ahead.py`` checks that a real step adds no other signature)."""
        if op not in BACKWARD_KERNELS:
            raise ValueError(f"compile_backward: op must be one of {sorted(BACKWARD_KERNELS)}, got {op!r}")
        backend, x = cls(), numpy.zeros((1, 1, 4, 4), dtype=dtype)
        w, one, two = numpy.zeros((1, 1, 3, 3), dtype=dtype), (1, 1), (2, 2)
        if op == "conv_direct":  # the input gradient is a forward convolution, compiled by the forward pass
            numba_conv.conv_param_grads(x, x, w.shape, one)
        elif op == "conv_gemm":
            cols = numpy.zeros((9, 4), dtype=dtype)  # im2col_rows's columns for stride 2, padding 1
            numba_conv.gemm_backward(cols, w, x[:, :, :2, :2].copy(), x.shape, two, one, one, (True, True, True))
        elif op.startswith("depthwise"):
            stride = one if op == "depthwise_unit_stride" else two
            x2, w2 = numpy.zeros((1, 2, 4, 4), dtype=dtype), numpy.zeros((2, 1, 3, 3), dtype=dtype)
            g = numpy.zeros((1, 2, 4 // stride[0], 4 // stride[1]), dtype=dtype)
            backend._depthwise_backward(x2, w2, g, x2.shape, stride, one, one, (True, True, True))
        elif op == "relu":
            backend.relu_backward(x, x)
        elif op == "batch_norm":  # batch_norm_forward's residual: (N, C, M) input, its shape, mean, 1/std, weight
            x3 = x.reshape(1, 1, -1)
            backend.batch_norm_backward((x3, x.shape, numpy.zeros(1), numpy.ones(1), None), x, (True, True, True))
        elif op.startswith("max_pool"):
            kernel, stride, padding, out_hw = {"max_pool_2x2": (two, two, (0, 0), (2, 2)),
                                               "max_pool_tiled": ((3, 3), (3, 3), (0, 0), (1, 1)),
                                               "max_pool": ((3, 3), one, one, (4, 4))}[op]
            gout = numpy.zeros((1, 1, *out_hw), dtype=dtype)
            backend.max_pool_backward(gout, numpy.zeros(gout.shape, dtype=numpy.int64), x.shape, kernel, stride,
                                      padding)
        else:  # avg_pool: an overlapping window, which always takes the compiled kernel
            backend.avg_pool_backward(x, x.shape, (3, 3), one, one, False, True, None)

    @classmethod
    def warm_up(cls, dtypes: Iterable[str] = ("float32", "float64")) -> float:
        """Compile (or load from the disk cache) every kernel for ``dtypes`` on tiny inputs; returns seconds taken."""
        start = time.perf_counter()
        backend = cls()
        for dtype in dtypes:
            x = numpy.zeros((1, 1, 4, 4), dtype=dtype)
            backend.col2im(backend.im2col(x, (3, 3), (1, 1), (1, 1)), x.shape, (1, 1), (1, 1))
            w = numpy.zeros((1, 1, 3, 3), dtype=dtype)
            out, residual = backend.conv2d_forward(x, w, w[:, 0, 0, 0], (1, 1), (1, 1), (1, 1), 1)
            backend.conv2d_backward(residual, w, out, x.shape, (1, 1), (1, 1), (1, 1), 1, (True, True, True))
            out, residual = backend.conv2d_forward(x, w, w[:, 0, 0, 0], (2, 2), (1, 1), (1, 1), 1)  # one GEMM
            backend.conv2d_backward(residual, w, out, x.shape, (2, 2), (1, 1), (1, 1), 1, (True, True, True))
            x2, w2 = numpy.zeros((1, 2, 4, 4), dtype=dtype), numpy.zeros((2, 1, 3, 3), dtype=dtype)  # depthwise
            out, residual = backend.conv2d_forward(x2, w2, None, (1, 1), (1, 1), (1, 1), 2)
            backend.conv2d_backward(residual, w2, out, x2.shape, (1, 1), (1, 1), (1, 1), 2, (True, True, True))
            backend.relu_backward(backend.relu_forward(x), x)
            backend.erf(x)
            out, _, _, residual = backend.batch_norm_forward(x, None, None, 1e-5)
            backend.batch_norm_backward(residual, out, (True, False, False))
            for kernel, stride, padding in (((2, 2), (2, 2), (0, 0)), ((3, 3), (3, 3), (0, 0)),
                                            ((3, 3), (1, 1), (1, 1))):
                out, argmax = backend.max_pool_forward(x, kernel, stride, padding)
                backend.max_pool_backward(out, argmax, x.shape, kernel, stride, padding)
                out = backend.avg_pool_forward(x, kernel, stride, padding, False, True, None)
                backend.avg_pool_backward(out, x.shape, kernel, stride, padding, False, True, None)
        return time.perf_counter() - start

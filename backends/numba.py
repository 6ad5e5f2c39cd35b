"""The Numba backend: NumPy arrays, with the hot kernels compiled to parallel machine code.

Every kernel runs ``prange`` over samples, N*C planes or elements, and each iteration writes only its own part,
so there are no races and results do not depend on the thread count. im2col, col2im, max pooling and ReLU agree
with the generic NumPy kernels bit for bit (col2im and max-pool backward sum each pixel's contributions in the
same order, kernel offset (i, j) ascending). The direct convolution (``numba_conv``) sums in another order, so
it agrees with NumPy's im2col + matmul to rounding (1e-15 relative in float64), not bit for bit.
Kernels are cached on disk (``cache=True``): only the first process on a machine pays the compile time, which
``NumbaBackend.warm_up`` measures apart from steady-state timings.
"""

from __future__ import annotations

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

from xpnet.backend import Backend  # noqa: E402
from xpnet.backends import numba_conv  # noqa: E402
from xpnet.kernels import out_size  # noqa: E402


@njit(parallel=True, cache=True)
def _im2col(x, cols, sy, sx, ph, pw):
    """Fill cols (N, C, KH, KW, OH, OW) with the windows of x (N, C, H, W), zero where they reach the padding."""
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
                    s = uint64((oy * sy + i) * wp + j)
                    if sx == 1:
                        for ox in range(uow):
                            cf[d + ox] = buf[s + ox]
                    else:
                        for ox in range(uow):
                            cf[d + ox] = buf[s + ox * usx]
                    d += uow


@njit(parallel=True, cache=True)
def _col2im(cols, img, sy, sx, ph, pw):
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
                    s = uint64((oy * sy + i) * wp + j)
                    if sx == 1:
                        for ox in range(uow):
                            buf[s + ox] += cf[d + ox]
                    else:
                        for ox in range(uow):
                            buf[s + ox * usx] += cf[d + ox]
                    d += uow
        for y in range(h):
            imf[(nc * h + y) * w:(nc * h + y + 1) * w] = buf[(y + ph) * wp + pw:(y + ph) * wp + pw + w]


@njit(parallel=True, cache=True)
def _max_pool_forward(x, out, arg, kh, kw, sy, sx):
    """Window maxima and the flat in-window index of the first maximum (a NaN counts as the maximum, as argmax).

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
                        if v > best or (v != v and best == best):
                            of[o + ox] = v
                            af[o + ox] = k


@njit(parallel=True, cache=True)
def _max_pool_forward_2x2(x, out, arg):
    """``_max_pool_forward`` for 2x2 windows at stride 2, without branches.

    On real-valued data "is this one larger?" is a coin toss, and the general kernel's branch mispredictions cost
    about 40 cycles per output; selects cost a few. ``take`` is the same rule: a NaN wins over numbers, and once
    the best is NaN nothing replaces it (NaN == NaN is False; ~(v <= best) is True for v > best and for NaN v).
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
                    take = (best == best) & ~(v <= best)
                    best = v if take else best
                    k = index if take else k
                of[o + ox] = best
                af[o + ox] = k


@njit(parallel=True, cache=True)
def _relu_forward(x, out):
    """max(x, 0) with NaN kept (as numpy.maximum), in parallel chunks."""
    xf, of = x.reshape(-1), out.reshape(-1)
    for i in prange(xf.size):
        v = xf[i]
        of[i] = 0 if v <= 0 else v


@njit(parallel=True, cache=True)
def _relu_backward(out, g, gx):
    """g where out > 0, else 0."""
    of, gf, xf = out.reshape(-1), g.reshape(-1), gx.reshape(-1)
    for i in prange(of.size):
        xf[i] = gf[i] if of[i] > 0 else 0


@njit(parallel=True, cache=True)
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


@njit(parallel=True, cache=True)
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


def _check_shape(what: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    """Refuse mismatched shapes here: the compiled loops do not bounds-check, so they would corrupt memory."""
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{what} has shape {tuple(shape)}, expected {tuple(expected)}")


class NumbaBackend(Backend):
    """NumPy arrays; direct convolution for small stride-1 layers, and im2col, col2im and max pooling as parallel,
    cached Numba kernels."""

    name = "numba"
    xp = numpy

    def __init__(self) -> None:
        if not threads.openblas_spin_limited():
            warnings.warn("NumPy was imported before xpnet, so OpenBLAS's idle threads spin for 0.1 s after each "
                          "matmul and slow the Numba backend's kernels (about 1.4x for LeNet-5 on 2 cores): import "
                          "xpnet first, or set OPENBLAS_THREAD_TIMEOUT=4 before starting Python",
                          RuntimeWarning, stacklevel=2)

    def im2col(self, x: Any, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> Any:
        (kh, kw), (sy, sx), (ph, pw) = kernel, stride, padding
        n, c, h, w = x.shape
        cols = numpy.empty((n, c, kh, kw, out_size(h, kh, sy, ph), out_size(w, kw, sx, pw)), dtype=x.dtype)
        _im2col(numpy.ascontiguousarray(x), cols, sy, sx, ph, pw)
        return cols

    def col2im(self, cols: Any, x_shape: tuple[int, ...], stride: tuple[int, int],
               padding: tuple[int, int]) -> Any:
        (n, c, h, w), (kh, kw), (sy, sx), (ph, pw) = x_shape, cols.shape[2:4], stride, padding
        _check_shape("col2im cols", cols.shape, (n, c, kh, kw, out_size(h, kh, sy, ph), out_size(w, kw, sx, pw)))
        img = numpy.empty(x_shape, dtype=cols.dtype)
        _col2im(numpy.ascontiguousarray(cols), img, *stride, *padding)
        return img

    def max_pool_forward(self, x: Any, kernel: tuple[int, int], stride: tuple[int, int]) -> tuple[Any, Any]:
        (kh, kw), (sy, sx) = kernel, stride
        n, c, h, w = x.shape
        shape = (n, c, out_size(h, kh, sy, 0), out_size(w, kw, sx, 0))
        out, argmax = numpy.empty(shape, dtype=x.dtype), numpy.empty(shape, dtype=numpy.int64)
        if kernel == stride == (2, 2):
            _max_pool_forward_2x2(numpy.ascontiguousarray(x), out, argmax)
        else:
            _max_pool_forward(numpy.ascontiguousarray(x), out, argmax, kh, kw, sy, sx)
        return out, argmax

    def max_pool_backward(self, gout: Any, argmax: Any, x_shape: tuple[int, ...], kernel: tuple[int, int],
                          stride: tuple[int, int]) -> Any:
        (n, c, h, w), (kh, kw), (sy, sx) = x_shape, kernel, stride
        _check_shape("max-pool gradient", gout.shape, (n, c, out_size(h, kh, sy, 0), out_size(w, kw, sx, 0)))
        _check_shape("max-pool argmax", argmax.shape, gout.shape)
        gx = numpy.empty(x_shape, dtype=gout.dtype)
        gout, argmax = numpy.ascontiguousarray(gout), numpy.ascontiguousarray(argmax)
        if kernel == stride:
            _max_pool_backward_tiled(gout, argmax, gx, *kernel)
        else:
            _max_pool_backward(gout, argmax, gx, *kernel, *stride)
        return gx

    def relu_forward(self, x: Any) -> Any:
        x = numpy.ascontiguousarray(x)
        out = numpy.empty_like(x)
        _relu_forward(x, out)
        return out

    def relu_backward(self, out: Any, g: Any) -> Any:
        _check_shape("relu gradient", g.shape, out.shape)
        g = numpy.ascontiguousarray(g)
        gx = numpy.empty_like(g)
        _relu_backward(numpy.ascontiguousarray(out), g, gx)
        return gx

    def conv2d_forward(self, x: Any, w: Any, b: Any, stride: tuple[int, int],
                       padding: tuple[int, int]) -> tuple[Any, Any]:
        """Direct convolution where it pays (``numba_conv.direct_pays``; its residual is the input), else the
        generic im2col + matmul (its residual is the columns)."""
        if numba_conv.direct_pays(x.shape, w.shape, stride, padding):
            x = numpy.ascontiguousarray(x)
            return numba_conv.conv_forward(x, numpy.ascontiguousarray(w), b, padding), x
        return super().conv2d_forward(x, w, b, stride, padding)

    def conv2d_backward(self, residual: Any, w: Any, g: Any, x_shape: tuple[int, ...], stride: tuple[int, int],
                        padding: tuple[int, int], needs: tuple[bool, bool, bool]) -> tuple[Any, Any, Any]:
        if not numba_conv.direct_pays(x_shape, w.shape, stride, padding):
            return super().conv2d_backward(residual, w, g, x_shape, stride, padding, needs)
        need_x, need_w, need_b = needs
        g = numpy.ascontiguousarray(g)
        gx = numba_conv.conv_input_grad(g, w, padding) if need_x else None
        gw = gb = None
        if need_w or need_b:
            gw, gb = numba_conv.conv_param_grads(residual, g, w.shape, padding)
        return gx, gw if need_w else None, gb if need_b else None

    @classmethod
    def warm_up(cls, dtypes: Iterable[str] = ("float32", "float64")) -> float:
        """Compile (or load from the disk cache) every kernel for ``dtypes`` on tiny inputs; returns seconds taken."""
        start = time.perf_counter()
        backend = cls()
        for dtype in dtypes:
            x = numpy.zeros((1, 1, 4, 4), dtype=dtype)
            backend.col2im(backend.im2col(x, (3, 3), (1, 1), (1, 1)), x.shape, (1, 1), (1, 1))
            w = numpy.zeros((1, 1, 3, 3), dtype=dtype)
            out, residual = backend.conv2d_forward(x, w, w[:, 0, 0, 0], (1, 1), (1, 1))
            backend.conv2d_backward(residual, w, out, x.shape, (1, 1), (1, 1), (True, True, True))
            backend.relu_backward(backend.relu_forward(x), x)
            for kernel, stride in (((2, 2), (2, 2)), ((3, 3), (1, 1))):
                out, argmax = backend.max_pool_forward(x, kernel, stride)
                backend.max_pool_backward(out, argmax, x.shape, kernel, stride)
        return time.perf_counter() - start

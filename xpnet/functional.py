"""Neural-network operations as autograd Functions with hand-written, vectorised backward passes.

Convolution and pooling are kernels of the active backend (generic: im2col + one batched matmul; Numba: direct
convolution for small layers), so the same code runs on NumPy, Numba and CuPy. No loop here runs over samples,
channels or pixels.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from xpnet import kernels, random, validate
from xpnet.autograd import Context, Function, Tensor
from xpnet.backend import get_backend

IntPair = int | tuple[int, int]


Padding = int | tuple[int, int] | str


def _conv_pair(v: IntPair, name: str, minimum: int) -> tuple[int, int]:
    """A convolution setting given as an int or a pair, as a pair of ints each at least ``minimum``."""
    return validate.int_pair("conv2d", name, v, minimum)


def conv_padding(padding: Padding, kernel: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """``padding`` (int, pair, "valid" or "same") as (zeros on both sides, extra zeros at the bottom and right).

    "same" pads a dilated kernel's span ``d * (k - 1)`` in total, the odd one at the end, as PyTorch does; like
    PyTorch it refuses strided convolutions, whose output could not be the input's size.
    """
    if not isinstance(padding, str):
        return _conv_pair(padding, "padding", 0), (0, 0)
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding != "same":
        raise ValueError(f"conv2d: invalid padding string {padding!r}, should be one of {{'valid', 'same'}}")
    if tuple(stride) != (1, 1):
        raise ValueError(f"conv2d: padding='same' is not supported for strided convolutions (stride {stride})")
    totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
    return (totals[0] // 2, totals[1] // 2), (totals[0] % 2, totals[1] % 2)


def _conv_kernel(w_shape: tuple[int, ...]) -> tuple[int, int]:
    """(KH, KW) of a convolution weight, refusing anything but a non-empty (OC, C / groups, KH, KW)."""
    if len(w_shape) != 4 or min(w_shape) < 1:
        raise ValueError(f"conv2d: weight must be a non-empty 4-D array (out_channels, in_channels / groups, kH, "
                         f"kW), got shape {tuple(w_shape)}")
    return w_shape[2], w_shape[3]


class Conv2d(Function):
    """2-D convolution with ``padding`` zeros on each side and ``pad_end`` more at the bottom and right (PyTorch's
    "same" for an even kernel span): those are an explicit pad of the input, cropped off its gradient."""

    @staticmethod
    def forward(ctx: Context, x, w, b, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, pad_end=(0, 0)):
        validate.conv_args("conv2d", x.shape, w.shape, None if b is None else b.shape, stride, padding, dilation,
                           groups, pad_end)
        validate.same_dtype("conv2d", "input", x.dtype, weight=w, bias=b)
        backend = get_backend()
        ctx.input_hw = x.shape[2:]
        if any(pad_end):
            x = backend.xp.pad(x, ((0, 0), (0, 0), (0, pad_end[0]), (0, pad_end[1])))
        out, residual = backend.conv2d_forward(x, w, b, stride, padding, dilation, groups)
        ctx.save_for_backward(residual, w)
        ctx.x_shape, ctx.options = x.shape, (stride, padding, dilation, groups)
        return out

    @staticmethod
    def backward(ctx: Context, g):
        residual, w = ctx.saved
        backend = get_backend()
        gx, gw, gb = backend.conv2d_backward(residual, w, g, ctx.x_shape, *ctx.options, ctx.needs_input_grad)
        if gx is not None and tuple(gx.shape[2:]) != tuple(ctx.input_hw):
            h, wd = ctx.input_hw
            gx = backend.xp.ascontiguousarray(gx[:, :, :h, :wd])
        return gx, gw, gb


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: IntPair = 1,  # noqa: A002
           padding: Padding = 0, dilation: IntPair = 1, groups: int = 1) -> Tensor:
    """2-D cross-correlation of ``input`` (N, C, H, W) with ``weight`` (OC, C / groups, KH, KW), exactly as
    ``torch.nn.functional.conv2d``: padding an int, a pair, "valid" or "same"; dilated and grouped kernels."""
    stride, dilation = _conv_pair(stride, "stride", 1), _conv_pair(dilation, "dilation", 1)
    both, end = conv_padding(padding, _conv_kernel(weight.shape), stride, dilation)
    return Conv2d.apply(input, weight, bias, stride=stride, padding=both, dilation=dilation, groups=groups,
                        pad_end=end)


# --- pooling ----------------------------------------------------------------------------------------------------

def _pool_pair(v: IntPair, name: str, fn: str, minimum: int) -> tuple[int, int]:
    """A pooling setting given as an int, a 1-tuple or a pair (as PyTorch takes them), as a pair of ints."""
    return validate.int_pair(fn, name, v, minimum, single=True)


def _pool_window(fn: str, kernel_size: IntPair, stride: IntPair | None,
                 padding: IntPair) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Checked (kernel, stride, padding); stride defaults to the kernel and padding may be at most half of it."""
    kernel = _pool_pair(kernel_size, "kernel_size", fn, 1)
    stride = kernel if stride is None else _pool_pair(stride, "stride", fn, 1)
    pads = _pool_pair(padding, "padding", fn, 0)
    if pads[0] > kernel[0] // 2 or pads[1] > kernel[1] // 2:
        raise ValueError(f"{fn}: padding {pads} must be at most half of kernel_size {kernel}")
    return kernel, stride, pads


def _check_pool(fn: str, x_shape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> None:
    """Refuse pooling settings or an input the window loops cannot take (whether the windows fit the input, which
    depends on ``ceil_mode``, is ``xpnet.kernels.pool_out_size``'s check)."""
    validate.ndim(fn, "input", x_shape, 4, "(N, C, H, W)")
    validate.window_args(fn, kernel, stride, padding)


def _batched(x: Tensor, fn: str) -> Tensor:
    """(N, C, H, W) as it is, (C, H, W) as a batch of one (PyTorch's unbatched input)."""
    if x.ndim == 3:
        return x.reshape(1, *x.shape)
    if x.ndim != 4:
        raise ValueError(f"{fn}: input must be 3-D (C, H, W) or 4-D (N, C, H, W), got shape {x.shape}")
    return x


def _unbatched_like(out: Tensor, x: Tensor) -> Tensor:
    """Drop the batch of one that ``_batched`` added to an unbatched input."""
    return out.reshape(out.shape[1:]) if x.ndim == 3 else out


class MaxPool2d(Function):
    """Max pooling; the backend's in-window indices of the winners route the gradient back."""

    @staticmethod
    def forward(ctx: Context, x, kernel=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=False):
        _check_pool("max_pool2d", x.shape, kernel, stride, padding)
        out, argmax = get_backend().max_pool_forward(x, kernel, stride, padding, ceil_mode)
        ctx.save_for_backward(argmax)
        ctx.options = (x.shape, kernel, stride, padding, ceil_mode)
        return out

    @staticmethod
    def backward(ctx: Context, g):
        (argmax,) = ctx.saved
        return get_backend().max_pool_backward(g, argmax, *ctx.options)


def max_pool_options(fn: str, kernel_size: IntPair, stride: IntPair | None, padding: IntPair, dilation: IntPair,
                     return_indices: bool) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Checked (kernel, stride, padding) of max pooling, refusing the options xpnet does not have."""
    if _pool_pair(dilation, "dilation", fn, 1) != (1, 1):
        raise ValueError(f"{fn}: dilation {dilation!r} is not supported; xpnet pools with dilation 1")
    if return_indices:
        raise ValueError(f"{fn}: return_indices=True is not supported")
    return _pool_window(fn, kernel_size, stride, padding)


def max_pool2d(input: Tensor, kernel_size: IntPair, stride: IntPair | None = None,  # noqa: A002
               padding: IntPair = 0, dilation: IntPair = 1, ceil_mode: bool = False,
               return_indices: bool = False) -> Tensor:
    """Max over windows, as ``torch.nn.functional.max_pool2d``: stride defaults to the kernel, padding (at most
    half the kernel) never wins, ``ceil_mode`` keeps a last partial window that starts inside the input or its
    leading padding. Only ``dilation=1`` and ``return_indices=False`` are supported."""
    kernel, stride, pads = max_pool_options("max_pool2d", kernel_size, stride, padding, dilation, return_indices)
    out = MaxPool2d.apply(_batched(input, "max_pool2d"), kernel=kernel, stride=stride, padding=pads,
                          ceil_mode=bool(ceil_mode))
    return _unbatched_like(out, input)


class AvgPool2d(Function):
    """Average pooling: window sums over zero padding divided by PyTorch's per-window divisor."""

    @staticmethod
    def forward(ctx: Context, x, kernel=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=False,
                count_include_pad=True, divisor_override=None):
        _check_pool("avg_pool2d", x.shape, kernel, stride, padding)
        ctx.options = (x.shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
        return get_backend().avg_pool_forward(x, *ctx.options[1:])

    @staticmethod
    def backward(ctx: Context, g):
        return get_backend().avg_pool_backward(g, *ctx.options)


def avg_pool_options(fn: str, kernel_size: IntPair, stride: IntPair | None, padding: IntPair,
                     divisor_override: int | None) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Checked (kernel, stride, padding) of average pooling; ``divisor_override`` must be None or a non-zero int."""
    if divisor_override is not None and (not isinstance(divisor_override, int) or isinstance(divisor_override, bool)
                                         or divisor_override == 0):
        raise ValueError(f"{fn}: divisor_override must be a non-zero int or None, got {divisor_override!r}")
    return _pool_window(fn, kernel_size, stride, padding)


def avg_pool2d(input: Tensor, kernel_size: IntPair, stride: IntPair | None = None,  # noqa: A002
               padding: IntPair = 0, ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: int | None = None) -> Tensor:
    """Mean over windows, as ``torch.nn.functional.avg_pool2d``: each window's sum is divided by
    ``divisor_override`` if given, else by its size counting the zero padding when ``count_include_pad`` (but
    never the ceil-mode overhang beyond the padding), else by its pixels inside the input."""
    kernel, stride, pads = avg_pool_options("avg_pool2d", kernel_size, stride, padding, divisor_override)
    out = AvgPool2d.apply(_batched(input, "avg_pool2d"), kernel=kernel, stride=stride, padding=pads,
                          ceil_mode=bool(ceil_mode), count_include_pad=bool(count_include_pad),
                          divisor_override=divisor_override)
    return _unbatched_like(out, input)


def _adaptive_bins(xp: Any, size: int, out: int, dtype: Any) -> Any:
    """(out, size) averaging matrix of PyTorch's adaptive bins: row i averages [floor(i*size/out),
    ceil((i+1)*size/out)), so bins may overlap when ``out`` does not divide ``size``."""
    i = xp.arange(out)
    start, end = (i * size) // out, -((-(i + 1) * size) // out)
    pixel = xp.arange(size)
    inside = (pixel[None, :] >= start[:, None]) & (pixel[None, :] < end[:, None])
    return inside.astype(dtype) / (end - start).astype(dtype)[:, None]


class AdaptiveAvgPool2d(Function):
    """Adaptive average pooling to (OH, OW) for sizes that do not divide the input: ``rows @ x @ cols.T``
    with the bins' averaging matrices, whose transposes give the gradient."""

    @staticmethod
    def forward(ctx: Context, x, output_hw=(1, 1)):
        xp = get_backend().xp
        rows = _adaptive_bins(xp, x.shape[2], output_hw[0], x.dtype)
        cols = _adaptive_bins(xp, x.shape[3], output_hw[1], x.dtype)
        ctx.save_for_backward(rows, cols)
        return rows @ x @ cols.T

    @staticmethod
    def backward(ctx: Context, g):
        rows, cols = ctx.saved
        return rows.T @ g @ cols


class GlobalAvgPool2d(Function):
    """Adaptive average pooling to 1x1 (every ResNet's head): one mean over each plane, as PyTorch does it."""

    @staticmethod
    def forward(ctx: Context, x):
        ctx.x_shape = x.shape
        return x.mean(axis=(2, 3), keepdims=True)

    @staticmethod
    def backward(ctx: Context, g):
        xp = get_backend().xp
        _, _, h, w = ctx.x_shape
        return xp.broadcast_to(g / xp.asarray(h * w, dtype=g.dtype), ctx.x_shape).copy()


class BlockAvgPool2d(Function):
    """Adaptive average pooling when the output size divides the input's: equal (KH, KW) blocks, averaged by two
    reductions over reshaped views (KH rows, then KW columns), whatever the block size."""

    @staticmethod
    def forward(ctx: Context, x, output_hw=(1, 1)):
        n, c, h, w = x.shape
        (oh, ow) = output_hw
        kh, kw = h // oh, w // ow
        ctx.x_shape, ctx.block = x.shape, (kh, kw)
        rows = x.reshape(n, c, oh, kh, w).sum(axis=3)
        return rows.reshape(n, c, oh, ow, kw).sum(axis=4) / get_backend().xp.asarray(kh * kw, dtype=x.dtype)

    @staticmethod
    def backward(ctx: Context, g):
        xp = get_backend().xp
        n, c, oh, ow = g.shape
        kh, kw = ctx.block
        share = g / xp.asarray(kh * kw, dtype=g.dtype)
        return xp.broadcast_to(share[:, :, :, None, :, None], (n, c, oh, kh, ow, kw)).reshape(ctx.x_shape)


def _adaptive_size(output_size: Any, hw: tuple[int, int]) -> tuple[int, int]:
    """``output_size`` (int, or pair with None keeping that input size) as a checked pair of positive ints."""
    pair = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    pair = tuple(size if o is None else o for o, size in zip(pair, hw)) if len(pair) == 2 else ()
    if len(pair) != 2 or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 1 for o in pair):
        raise ValueError(f"adaptive_avg_pool2d: output_size must be a positive int or a pair of positive ints or "
                         f"None, got {output_size!r}")
    return pair  # type: ignore[return-value]


def adaptive_avg_pool2d(input: Tensor, output_size: Any) -> Tensor:  # noqa: A002
    """Average over PyTorch's adaptive bins (start floor(i*H/OH), end ceil((i+1)*H/OH)) to ``output_size``:
    a plain mean for 1x1, block sums when the sizes divide, bin matrices otherwise. None of them loops in
    Python over anything that grows with the image, as a window loop over the bins would."""
    x = _batched(input, "adaptive_avg_pool2d")
    (h, w) = x.shape[2:]
    oh, ow = _adaptive_size(output_size, (h, w))
    if (oh, ow) == (1, 1):
        out = GlobalAvgPool2d.apply(x)
    elif h % oh == 0 and w % ow == 0:
        out = BlockAvgPool2d.apply(x, output_hw=(oh, ow))
    else:
        out = AdaptiveAvgPool2d.apply(x, output_hw=(oh, ow))
    return _unbatched_like(out, input)


class Linear(Function):
    @staticmethod
    def forward(ctx: Context, x, w, b):
        if x.ndim < 1 or w.ndim != 2 or x.shape[-1] != w.shape[1]:
            raise ValueError(f"linear expects input (*, {w.shape[-1]}) for weight {w.shape}, got input {x.shape}")
        if b is not None:
            validate.shape("linear: bias", b.shape, w.shape[:1])
        validate.same_dtype("linear", "input", x.dtype, weight=w, bias=b)
        ctx.save_for_backward(x, w)
        out = x @ w.T
        if b is not None:
            out += b
        return out

    @staticmethod
    def backward(ctx: Context, g):
        x, w = ctx.saved
        need_x, need_w, need_b = ctx.needs_input_grad
        rows = g.reshape(-1, w.shape[0])  # every leading dimension is a batch dimension
        return (g @ w if need_x else None,
                rows.T @ x.reshape(-1, w.shape[1]) if need_w else None,
                rows.sum(axis=0) if need_b else None)


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:  # noqa: A002
    """``input @ weight.T + bias`` over the last dimension of ``input`` (*, in_features), with weight
    (out_features, in_features): PyTorch's layout."""
    return Linear.apply(input, weight, bias)


# --- activations ------------------------------------------------------------------------------------------------
# ``inplace`` is accepted where PyTorch has it so that its layer definitions run unchanged; xpnet's autograd does
# not overwrite arrays a graph may still need, so the result is always a new tensor with the same values.

def relu(input: Tensor, inplace: bool = False) -> Tensor:  # noqa: A002
    """max(input, 0); ``inplace`` changes nothing (see above)."""
    return input.relu()


def sigmoid(input: Tensor) -> Tensor:  # noqa: A002
    """1 / (1 + exp(-input)), without overflow for large |input|."""
    return input.sigmoid()


def tanh(input: Tensor) -> Tensor:  # noqa: A002
    return input.tanh()


class LeakyReLU(Function):
    @staticmethod
    def forward(ctx: Context, x, negative_slope=0.01):
        positive = x > 0
        ctx.save_for_backward(positive)
        ctx.negative_slope = negative_slope
        return kernels.select(get_backend().xp, positive, x, x * negative_slope)

    @staticmethod
    def backward(ctx: Context, g):
        (positive,) = ctx.saved
        return kernels.select(get_backend().xp, positive, g, g * ctx.negative_slope)


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:  # noqa: A002
    """input where positive, ``negative_slope * input`` elsewhere (the gradient at 0 is the slope, as PyTorch)."""
    return LeakyReLU.apply(input, negative_slope=float(negative_slope))


_SQRT1_2 = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TANH_BETA = math.sqrt(2.0 / math.pi)
_TANH_KAPPA = 0.044715


class GELU(Function):
    """x * Phi(x) with Phi the normal CDF through the backend's ``erf``, or PyTorch's tanh approximation."""

    @staticmethod
    def forward(ctx: Context, x, approximate="none"):
        xp = get_backend().xp
        ctx.approximate = approximate
        if approximate == "tanh":
            t = xp.tanh(_TANH_BETA * (x + _TANH_KAPPA * (x * x * x)))
            ctx.save_for_backward(x, t)
            return 0.5 * x * (1.0 + t)
        cdf = 0.5 * (1.0 + get_backend().erf(x * _SQRT1_2))
        ctx.save_for_backward(x, cdf)
        return x * cdf

    @staticmethod
    def backward(ctx: Context, g):
        xp = get_backend().xp
        if ctx.approximate == "tanh":
            x, t = ctx.saved
            inner_grad = _TANH_BETA * (1.0 + 3.0 * _TANH_KAPPA * (x * x))
            return g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * inner_grad)
        x, cdf = ctx.saved
        return g * (cdf + x * (_INV_SQRT_2PI * xp.exp(-0.5 * (x * x))))


def gelu(input: Tensor, approximate: str = "none") -> Tensor:  # noqa: A002
    """Gaussian error linear unit: exact (``"none"``) or the tanh approximation (``"tanh"``), as PyTorch."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return GELU.apply(input, approximate=approximate)


class Dropout(Function):
    @staticmethod
    def forward(ctx: Context, x, scaled_mask):
        ctx.save_for_backward(scaled_mask)
        return x * scaled_mask

    @staticmethod
    def backward(ctx: Context, g):
        (scaled_mask,) = ctx.saved
        return g * scaled_mask, None


def dropout_mask(shape: tuple[int, ...], p: float) -> Any:
    """A keep-mask (True = kept, probability 1 - p) drawn from xpnet's seeded host generator.

    Under a batch shard (``xpnet.random.set_batch_shard``, set by data-parallel training) a mask with the shard's
    row count is rows ``lo:hi`` of the whole global batch's mask: each process draws what one process would.
    """
    shard = random.batch_shard()
    if shard is not None and shape and shape[0] == shard[1] - shard[0]:
        lo, hi, n = shard
        return random.generator().random((n, *shape[1:]), dtype="float32")[lo:hi] >= p
    return random.generator().random(shape, dtype="float32") >= p


def dropout(x: Tensor, p: float = 0.5, training: bool = True, mask: Any = None) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p) (inverted dropout).

    ``mask`` (boolean, x's shape, True = keep) replaces the random draw, e.g. to replay PyTorch's masks.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    backend = get_backend()
    keep = dropout_mask(x.shape, p) if mask is None else mask
    keep = backend.asarray(keep)
    if tuple(keep.shape) != x.shape:
        raise ValueError(f"dropout mask shape {tuple(keep.shape)} does not match input shape {x.shape}")
    scaled = keep.astype(x.dtype) / backend.xp.asarray(1.0 - p, dtype=x.dtype)
    return Dropout.apply(x, Tensor(scaled))


def flatten(input: Tensor, start_dim: int = 1, end_dim: int = -1) -> Tensor:  # noqa: A002
    """Merge dimensions ``start_dim`` .. ``end_dim`` into one (default: all but the batch, as ``nn.Flatten``)."""
    shape = input.shape
    if not shape:
        return input.reshape(1)
    start, end = _dim(start_dim, len(shape), "flatten"), _dim(end_dim, len(shape), "flatten")
    if start > end:
        raise ValueError(f"flatten: start_dim ({start_dim}) cannot come after end_dim ({end_dim}) for a "
                         f"{len(shape)}-D input")
    return input.reshape(*shape[:start], math.prod(shape[start:end + 1]), *shape[end + 1:])


def _dim(dim: int, ndim: int, fn: str) -> int:
    """``dim`` counted from 0, refusing one outside ``-ndim .. ndim - 1``."""
    if not isinstance(dim, int) or isinstance(dim, bool) or not -ndim <= dim < ndim:
        raise IndexError(f"{fn}: dim {dim!r} is out of range for a {ndim}-D input (expected {-ndim} .. {ndim - 1})")
    return dim % ndim


# --- softmax ----------------------------------------------------------------------------------------------------

def _softmax_dim(fn: str, ndim: int, dim: int | None, axis: int | None) -> int:
    """The dimension to normalise over: ``dim`` (PyTorch's name) or ``axis`` (xpnet's first name for it). With
    neither, PyTorch's deprecated implicit choice (0 for 0-, 1- and 3-D inputs, else 1), with its warning."""
    if dim is not None and axis is not None:
        raise TypeError(f"{fn}: give dim or axis, not both")
    chosen = dim if dim is not None else axis
    if chosen is None:
        warnings.warn(f"Implicit dimension choice for {fn} has been deprecated. Change the call to include dim=X "
                      f"as an argument.", UserWarning, stacklevel=3)
        chosen = 0 if ndim in (0, 1, 3) else 1
    return _dim(chosen, max(ndim, 1), fn)


class Softmax(Function):
    @staticmethod
    def forward(ctx: Context, x, dim=-1):
        xp = get_backend().xp
        out = xp.exp(x - x.max(axis=dim, keepdims=True))
        out /= out.sum(axis=dim, keepdims=True)
        ctx.save_for_backward(out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx: Context, g):
        (out,) = ctx.saved
        return out * (g - (g * out).sum(axis=ctx.dim, keepdims=True))


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx: Context, x, dim=-1):
        xp = get_backend().xp
        shifted = x - x.max(axis=dim, keepdims=True)
        out = shifted - xp.log(xp.exp(shifted).sum(axis=dim, keepdims=True))
        ctx.save_for_backward(out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx: Context, g):
        (out,) = ctx.saved
        xp = get_backend().xp
        return g - xp.exp(out) * g.sum(axis=ctx.dim, keepdims=True)


def _along(fn: type[Function], x: Tensor, dim: int) -> Tensor:
    """Apply a softmax-like Function along ``dim``; a 0-D input is treated as one element."""
    if x.ndim == 0:
        return fn.apply(x.reshape(1), dim=0).reshape(())
    return fn.apply(x, dim=dim)


def softmax(input: Tensor, dim: int | None = None, *, axis: int | None = None) -> Tensor:  # noqa: A002
    """exp(input) / sum(exp(input)) along ``dim``, shifted by the max first so that nothing overflows."""
    return _along(Softmax, input, _softmax_dim("softmax", input.ndim, dim, axis))


def log_softmax(input: Tensor, dim: int | None = None, *, axis: int | None = None) -> Tensor:  # noqa: A002
    """log(softmax(input)) along ``dim``, computed stably (shift by the max before exp)."""
    return _along(LogSoftmax, input, _softmax_dim("log_softmax", input.ndim, dim, axis))


# --- losses on class indices ------------------------------------------------------------------------------------
# Inputs (C,), (N, C) or (N, C, d1, ...) are brought to rows (M, C) with targets (M,); ignored targets and class
# weights enter as a per-row weight w_t (0 when ignored). "mean" divides by the sum of w_t, PyTorch's weighted
# mean, which is NaN when every target is ignored, as in PyTorch.

REDUCTIONS = ("none", "mean", "sum")


def _row_weights(xp: Any, target: Any, weight: Any, ignore_index: int, dtype: Any) -> tuple[Any, Any, Any]:
    """(target with ignored entries replaced by class 0, the mask of kept rows, each row's weight w_t)."""
    kept = target != ignore_index
    safe = xp.where(kept, target, 0)
    w_t = kept.astype(dtype) if weight is None else xp.where(kept, weight[safe], 0)
    return safe, kept, w_t


def _mean_denominator(xp: Any, w_t: Any) -> Any:
    """sum(w_t), as NaN when it is 0 (every target ignored) so that the mean is NaN without a 0/0 warning."""
    total = w_t.sum()
    return xp.where(total == 0, xp.nan, total).astype(w_t.dtype)


def _reduce(xp: Any, terms: Any, reduction: str, denominator: Any) -> Any:
    """The row terms, their sum, or their sum over ``denominator``: always an array, never a NumPy scalar."""
    if reduction == "none":
        return terms
    return xp.asarray(terms.sum() if reduction == "sum" else terms.sum() / denominator)


def _row_scale(g: Any, reduction: str, denominator: Any) -> Any:
    """d(reduced loss) / d(row term), as a column (M, 1) or a 0-d array that broadcasts like one."""
    scale = g / denominator if reduction == "mean" else g
    return scale.reshape(-1, 1) if scale.ndim else scale


class NLLLoss(Function):
    """-w_t * input[row, target], reduced; ``input`` holds log-probabilities (M, C)."""

    @staticmethod
    def forward(ctx: Context, logp, target, weight, ignore_index=-100, reduction="mean"):
        xp = get_backend().xp
        rows = xp.arange(logp.shape[0])
        safe, kept, w_t = _row_weights(xp, target, weight, ignore_index, logp.dtype)
        denominator = _mean_denominator(xp, w_t)
        ctx.save_for_backward(rows, safe, kept, w_t, denominator)
        ctx.shape, ctx.reduction = logp.shape, reduction
        return _reduce(xp, xp.where(kept, -logp[rows, safe] * w_t, 0), reduction, denominator)

    @staticmethod
    def backward(ctx: Context, g):
        xp = get_backend().xp
        rows, safe, kept, w_t, denominator = ctx.saved
        grad = xp.zeros(ctx.shape, dtype=g.dtype)
        grad[rows, safe] = xp.where(kept, -w_t * _row_scale(g, ctx.reduction, denominator).reshape(-1), 0)
        return grad, None, None


class CrossEntropy(Function):
    """PyTorch's cross-entropy of logits (M, C) in one Function: log-softmax, the weighted NLL term and, with
    label smoothing e, PyTorch's mix (1 - e) * nll + e / C * smooth, smooth = -sum_c w_c * log p_c per kept row,
    each reduced on its own (one denominator, sum(w_t), for both under "mean").

    Each row's loss is -sum_c a_c log p_c with a_c = (1 - e) w_t [c = t] + e / C * w_c, so its gradient is
    p * sum_c a_c - a: no one-hot matrix for the NLL part, one dense pass for the smoothing part.
    """

    @staticmethod
    def forward(ctx: Context, z, target, weight, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        xp = get_backend().xp
        shifted = z - z.max(axis=1, keepdims=True)
        logp = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        rows = xp.arange(z.shape[0])
        safe, kept, w_t = _row_weights(xp, target, weight, ignore_index, z.dtype)
        denominator = _mean_denominator(xp, w_t)
        ctx.save_for_backward(logp, rows, safe, kept, w_t, weight, denominator)
        ctx.reduction, ctx.label_smoothing = reduction, label_smoothing
        loss = _reduce(xp, xp.where(kept, -logp[rows, safe] * w_t, 0), reduction, denominator)
        if label_smoothing == 0.0:
            return loss
        smooth = -(logp.sum(axis=1) if weight is None else logp @ weight)
        smooth = _reduce(xp, xp.where(kept, smooth, 0), reduction, denominator)
        return xp.asarray((1.0 - label_smoothing) * loss + smooth * (label_smoothing / z.shape[1]))

    @staticmethod
    def backward(ctx: Context, g):
        xp = get_backend().xp
        logp, rows, safe, kept, w_t, weight, denominator = ctx.saved
        e, n_classes = ctx.label_smoothing, logp.shape[1]
        target_coef = (1.0 - e) * w_t                                    # a at the target class (0 if ignored)
        grad = xp.exp(logp)
        if e == 0.0:
            grad *= target_coef[:, None]
        else:
            class_total = n_classes if weight is None else weight.sum()
            smooth_coef = xp.where(kept, e / n_classes, 0).astype(logp.dtype)  # per row, times w_c
            grad *= (target_coef + smooth_coef * class_total)[:, None]
            grad -= smooth_coef[:, None] * (1.0 if weight is None else weight[None, :])
        grad[rows, safe] -= target_coef
        scale = _row_scale(g, ctx.reduction, denominator)
        grad *= xp.where(kept[:, None], scale, 0)
        return grad, None, None


def check_reduction(fn: str, reduction: str) -> None:
    """Refuse a reduction PyTorch does not have."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{fn}: {reduction!r} is not a valid value for reduction (expected 'none', 'mean' or 'sum')")


def _as_rows(fn: str, input: Tensor) -> Tensor:  # noqa: A002
    """(C,), (N, C) or (N, C, d1, ...) as rows (M, C): the class dimension last, everything else flattened."""
    if input.ndim == 0:
        raise ValueError(f"{fn}: input must be (C,), (N, C) or (N, C, d1, ...), got a 0-D tensor")
    if input.ndim == 1:
        return input.reshape(1, -1)
    if input.ndim == 2:
        return input
    moved = input.transpose(0, *range(2, input.ndim), 1)
    return moved.reshape(-1, input.shape[1])


def _class_targets(fn: str, input_shape: tuple[int, ...], target: Any, ignore_index: int) -> Any:
    """``target`` as int64 class indices on the backend, flattened to one per row; every one in range (or
    ``ignore_index``), checked here with one host sync."""
    backend = get_backend()
    labels = target.data if isinstance(target, Tensor) else backend.asarray(target)
    validate.class_index_dtype(fn, labels.dtype)
    expected = () if len(input_shape) == 1 else (input_shape[0], *input_shape[2:])
    if tuple(labels.shape) != expected:
        raise ValueError(f"{fn}: target of shape {tuple(labels.shape)} does not fit input of shape {input_shape}; "
                         f"expected {expected}")
    n_classes = input_shape[0] if len(input_shape) == 1 else input_shape[1]
    labels = labels.reshape(-1).astype(backend.xp.int64, copy=False)
    validate.class_indices(fn, labels, n_classes, ignore_index)
    return labels


def _class_weight(fn: str, weight: Any, n_classes: int, dtype: Any) -> Tensor | None:
    """The per-class ``weight`` (C,) as a constant Tensor of the input's dtype, or None."""
    if weight is None:
        return None
    values = get_backend().asarray(weight.data if isinstance(weight, Tensor) else weight, dtype=dtype)
    if tuple(values.shape) != (n_classes,):
        raise ValueError(f"{fn}: weight must have shape ({n_classes},), one entry per class, got "
                         f"{tuple(values.shape)}")
    return Tensor(values)


def _class_loss(fn: str, function: type[Function], input: Tensor, target: Any, weight: Any,  # noqa: A002
                ignore_index: int, reduction: str, **options: Any) -> Tensor:
    """Check the arguments, bring input and target to rows, apply ``function``, and give "none" the target's
    shape."""
    check_reduction(fn, reduction)
    rows = _as_rows(fn, input)
    labels = _class_targets(fn, input.shape, target, ignore_index)
    out = function.apply(rows, Tensor(labels), _class_weight(fn, weight, rows.shape[1], input.dtype),
                         ignore_index=int(ignore_index), reduction=reduction, **options)
    if reduction != "none":
        return out
    return out.reshape(()) if input.ndim == 1 else out.reshape(input.shape[0], *input.shape[2:])


def nll_loss(input: Tensor, target: Any, weight: Any = None, *, ignore_index: int = -100,  # noqa: A002
             reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of class indices ``target`` under log-probabilities ``input``, as
    ``torch.nn.functional.nll_loss`` (PyTorch's deprecated ``size_average`` and ``reduce`` are not taken)."""
    return _class_loss("nll_loss", NLLLoss, input, target, weight, ignore_index, reduction)


def cross_entropy(input: Tensor, target: Any, weight: Any = None, *, ignore_index: int = -100,  # noqa: A002
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of class indices ``target`` under softmax(``input``) over dimension 1, exactly as
    ``torch.nn.functional.cross_entropy`` with class-index targets, including how ``label_smoothing`` mixes with
    ``weight`` and ``ignore_index`` (PyTorch's deprecated ``size_average`` and ``reduce`` are not taken)."""
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
    return _class_loss("cross_entropy", CrossEntropy, input, target, weight, ignore_index, reduction,
                       label_smoothing=float(label_smoothing))


def softmax_cross_entropy(logits: Tensor, targets: Any) -> Tensor:
    """Mean cross-entropy of integer class ``targets`` (N,) under softmax(``logits``) (N, classes): xpnet's first
    name for ``cross_entropy(logits, targets)``."""
    return cross_entropy(logits, targets)


# --- batch normalisation ----------------------------------------------------------------------------------------

class BatchNorm(Function):
    """Per-channel normalisation of x (N, C, ...). Training: the batch's statistics (the backend's kernel pair),
    and the running statistics, when given, updated in place. Evaluation: the running statistics."""

    @staticmethod
    def forward(ctx: Context, x, weight, bias, running_mean=None, running_var=None, training=False, momentum=0.1,
                eps=1e-5):
        ctx.training = training
        if training:
            out, mean, var, residual = get_backend().batch_norm_forward(x, weight, bias, eps)
            if running_mean is not None:
                count = x.size // x.shape[1]
                _update_running(running_mean, mean, momentum)
                _update_running(running_var, var * (count / (count - 1)), momentum)  # unbiased, as PyTorch
            ctx.save_for_backward(residual)
            return out
        shape = _channel_shape(x.ndim)
        invstd = 1 / get_backend().xp.sqrt(running_var + eps)
        scale = (invstd if weight is None else invstd * weight).reshape(shape)
        out = (x - running_mean.reshape(shape)) * scale
        if bias is not None:
            out += bias.reshape(shape)
        ctx.save_for_backward(x, running_mean.copy(), invstd, scale)  # a copy: a later training step updates it
        return out

    @staticmethod
    def backward(ctx: Context, g):
        if ctx.training:
            (residual,) = ctx.saved
            return get_backend().batch_norm_backward(residual, g, ctx.needs_input_grad)
        x, mean, invstd, scale = ctx.saved
        need_x, need_w, need_b = ctx.needs_input_grad
        axes = (0, *range(2, g.ndim))
        gw = (g * (x - mean.reshape(scale.shape))).sum(axis=axes) * invstd if need_w else None
        return g * scale if need_x else None, gw, g.sum(axis=axes) if need_b else None


def _channel_shape(ndim: int) -> tuple[int, ...]:
    """The shape that broadcasts a (C,) vector along axis 1 of an ndim-dimensional array."""
    return (1, -1) + (1,) * (ndim - 2)


def _update_running(running: Any, batch: Any, momentum: float) -> None:
    """``running = momentum * batch + (1 - momentum) * running``, in place: PyTorch's rule."""
    running[...] = momentum * batch + (1 - momentum) * running


def _check_batch_norm(x: Tensor, vectors: dict[str, Tensor | None], training: bool, momentum: Any) -> None:
    """Refuse what batch_norm cannot normalise, naming the argument: each error as PyTorch raises it, or clearer."""
    if x.ndim < 2:
        raise ValueError(f"batch_norm expects input (N, C, ...) with at least 2 dimensions, got shape {x.shape}")
    for name, v in vectors.items():
        if v is None:
            continue
        if not isinstance(v, Tensor):
            raise TypeError(f"batch_norm: {name} must be an xpnet Tensor or None, got {type(v).__name__}")
        if v.shape != (x.shape[1],):
            raise ValueError(f"batch_norm: {name} has shape {v.shape}, expected ({x.shape[1]},): one value per "
                             f"channel of input {x.shape}")
        if v.dtype != x.dtype:
            raise TypeError(f"batch_norm: {name} has dtype {v.dtype}, expected {x.dtype} (the input's dtype)")
    if (vectors["running_mean"] is None) != (vectors["running_var"] is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    if not training and vectors["running_mean"] is None:
        raise ValueError("batch_norm: running_mean and running_var must be given in evaluation mode "
                         "(training=False)")
    if training and x.size // x.shape[1] < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
    if training and vectors["running_mean"] is not None and not isinstance(momentum, (int, float, np.floating)):
        raise TypeError(f"batch_norm: momentum must be a number, got {momentum!r}")


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,  # noqa: A002
               weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalisation over every axis of ``input`` (N, C, ...) but the channels, as
    ``torch.nn.functional.batch_norm``: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    Training uses the batch's mean and biased variance and, when running statistics are given, updates them in
    place (``running = (1 - momentum) * running + momentum * batch``, with the unbiased batch variance);
    evaluation uses the running statistics.
    """
    _check_batch_norm(input, {"running_mean": running_mean, "running_var": running_var, "weight": weight,
                              "bias": bias}, training, momentum)
    return BatchNorm.apply(input, weight, bias, running_mean=None if running_mean is None else running_mean.data,
                           running_var=None if running_var is None else running_var.data, training=training,
                           momentum=momentum, eps=eps)

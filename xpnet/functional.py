"""Neural-network operations as autograd Functions with hand-written, vectorised backward passes.

Convolution and pooling are kernels of the active backend (generic: im2col + one batched matmul; Numba: direct
convolution for small layers), so the same code runs on NumPy, Numba and CuPy. No loop here runs over samples,
channels or pixels.
"""

from __future__ import annotations

from typing import Any

from xpnet import random
from xpnet.autograd import Context, Function, Tensor
from xpnet.backend import get_backend

IntPair = int | tuple[int, int]


def _pair(v: IntPair, name: str) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or not all(isinstance(i, int) and i >= 0 for i in pair):
        raise ValueError(f"{name} must be a non-negative int or a pair of them, got {v!r}")
    return pair  # type: ignore[return-value]


class Conv2d(Function):
    @staticmethod
    def forward(ctx: Context, x, w, b, stride=(1, 1), padding=(0, 0)):
        if x.ndim != 4 or w.ndim != 4 or x.shape[1] != w.shape[1]:
            raise ValueError(f"conv2d expects x (N, C, H, W) and weight (OC, C, KH, KW) with matching C, "
                             f"got x {x.shape} and weight {w.shape}")
        out, residual = get_backend().conv2d_forward(x, w, b, stride, padding)
        ctx.save_for_backward(residual, w)
        ctx.x_shape, ctx.stride, ctx.padding = x.shape, stride, padding
        return out

    @staticmethod
    def backward(ctx: Context, g):
        residual, w = ctx.saved
        needs = ctx.needs_input_grad
        return get_backend().conv2d_backward(residual, w, g, ctx.x_shape, ctx.stride, ctx.padding, needs)


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: IntPair = 1,
           padding: IntPair = 0) -> Tensor:
    """2-D cross-correlation of ``x`` (N, C, H, W) with ``weight`` (OC, C, KH, KW), as ``torch.nn.functional``."""
    return Conv2d.apply(x, weight, bias, stride=_pair(stride, "stride"), padding=_pair(padding, "padding"))


class MaxPool2d(Function):
    @staticmethod
    def forward(ctx: Context, x, kernel=(2, 2), stride=(2, 2)):
        if x.ndim != 4:
            raise ValueError(f"max_pool2d expects x (N, C, H, W), got shape {x.shape}")
        out, argmax = get_backend().max_pool_forward(x, kernel, stride)
        ctx.save_for_backward(argmax)
        ctx.x_shape, ctx.kernel, ctx.stride = x.shape, kernel, stride
        return out

    @staticmethod
    def backward(ctx: Context, g):
        (argmax,) = ctx.saved
        return get_backend().max_pool_backward(g, argmax, ctx.x_shape, ctx.kernel, ctx.stride)


def max_pool2d(x: Tensor, kernel_size: IntPair = 2, stride: IntPair | None = None) -> Tensor:
    """Max over windows (stride defaults to the kernel size; no padding; floor mode, as PyTorch's default)."""
    kernel = _pair(kernel_size, "kernel_size")
    return MaxPool2d.apply(x, kernel=kernel, stride=kernel if stride is None else _pair(stride, "stride"))


class Linear(Function):
    @staticmethod
    def forward(ctx: Context, x, w, b):
        if x.ndim != 2 or x.shape[1] != w.shape[1]:
            raise ValueError(f"linear expects x (N, {w.shape[1]}) for weight {w.shape}, got x {x.shape}")
        ctx.save_for_backward(x, w)
        out = x @ w.T
        if b is not None:
            out += b
        return out

    @staticmethod
    def backward(ctx: Context, g):
        x, w = ctx.saved
        need_x, need_w, need_b = ctx.needs_input_grad
        return (g @ w if need_x else None,
                g.T @ x if need_w else None,
                g.sum(axis=0) if need_b else None)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` with weight (out_features, in_features), PyTorch's layout."""
    return Linear.apply(x, weight, bias)


def relu(x: Tensor) -> Tensor:
    return x.relu()


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
    """A keep-mask (True = kept, probability 1 - p) drawn from xpnet's seeded host generator."""
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


def flatten(x: Tensor) -> Tensor:
    """(N, ...) -> (N, prod(...))."""
    return x.reshape(x.shape[0], -1)


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx: Context, x, axis=-1):
        xp = get_backend().xp
        shifted = x - x.max(axis=axis, keepdims=True)
        out = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
        ctx.save_for_backward(out)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx: Context, g):
        (out,) = ctx.saved
        xp = get_backend().xp
        return g - xp.exp(out) * g.sum(axis=ctx.axis, keepdims=True)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """log(softmax(x)) computed stably (shift by the max before exp)."""
    return LogSoftmax.apply(x, axis=axis)


class SoftmaxCrossEntropy(Function):
    @staticmethod
    def forward(ctx: Context, logits, targets):
        xp = get_backend().xp
        n = logits.shape[0]
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        rows = xp.arange(n)
        ctx.save_for_backward(log_probs, targets, rows)
        return xp.asarray(-log_probs[rows, targets].sum() / n, dtype=logits.dtype)

    @staticmethod
    def backward(ctx: Context, g):
        log_probs, targets, rows = ctx.saved
        grad = get_backend().xp.exp(log_probs)
        grad[rows, targets] -= 1
        return grad * (g / log_probs.shape[0]), None


def softmax_cross_entropy(logits: Tensor, targets: Any) -> Tensor:
    """Mean cross-entropy of integer class ``targets`` (N,) under softmax(``logits``) (N, classes)."""
    backend = get_backend()
    labels = targets.data if isinstance(targets, Tensor) else backend.asarray(targets)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"softmax_cross_entropy expects logits (N, classes) and targets (N,), got "
                         f"{logits.shape} and {tuple(labels.shape)}")
    return SoftmaxCrossEntropy.apply(logits, Tensor(labels.astype(backend.xp.int64, copy=False)))

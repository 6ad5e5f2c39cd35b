"""The table of ops and layers that both the gradient checks and the cross-backend suite run:
(name, function of Tensors, input shapes)."""

from __future__ import annotations

from typing import Callable

import numpy as np

import xpnet
from xpnet import functional as F

OPS: list[tuple[str, Callable[..., xpnet.Tensor], list[tuple[int, ...]]]] = [
    ("add", lambda a, b: a + b, [(3, 4), (3, 4)]),
    ("add broadcast", lambda a, b: a + b, [(2, 3, 4), (4,)]),
    ("add broadcast keepdim", lambda a, b: a + b, [(2, 3, 4), (2, 1, 4)]),
    ("add scalar", lambda a: 1.5 + a + 2.0, [(3, 4)]),
    ("sub broadcast", lambda a, b: a - b, [(3, 1), (1, 5)]),
    ("rsub scalar", lambda a: 1.0 - a, [(3, 4)]),
    ("mul broadcast", lambda a, b: a * b, [(2, 3, 4), (3, 1)]),
    ("div broadcast", lambda a, b: a / (b * b + 1.0), [(2, 3, 4), (3, 1)]),
    ("rdiv scalar", lambda a: 2.0 / (a * a + 1.0), [(5,)]),
    ("neg", lambda a: -a, [(3, 2)]),
    ("matmul 2d", lambda a, b: a @ b, [(3, 4), (4, 5)]),
    ("matmul matrix @ batch", lambda a, b: a @ b, [(3, 4), (5, 4, 2)]),
    ("matmul batched", lambda a, b: a @ b, [(2, 3, 4), (2, 4, 5)]),
    ("matmul broadcast batch", lambda a, b: a @ b, [(2, 1, 3, 4), (3, 4, 2)]),
    ("matmul vector @ matrix", lambda a, b: a @ b, [(4,), (4, 3)]),
    ("matmul batch @ vector", lambda a, b: a @ b, [(2, 3, 4), (4,)]),
    ("sum all", lambda a: a.sum(), [(3, 4)]),
    ("sum axis", lambda a: a.sum(axis=1), [(3, 4, 2)]),
    ("sum axes keepdims", lambda a: a.sum(axis=(0, 2), keepdims=True), [(3, 4, 2)]),
    ("mean all", lambda a: a.mean(), [(3, 4)]),
    ("mean axis", lambda a: a.mean(axis=-1), [(3, 4)]),
    ("reshape", lambda a: a.reshape(4, 3) * 1.0, [(3, 4)]),
    ("transpose", lambda a: a.transpose(2, 0, 1), [(2, 3, 4)]),
    ("T", lambda a: a.T, [(2, 3)]),
    ("exp", lambda a: a.exp(), [(3, 4)]),
    ("log", lambda a: (a * a + 0.5).log(), [(3, 4)]),
    ("relu", lambda a: a.relu(), [(4, 5)]),
    ("conv2d k3 s1 p1", lambda x, w, b: F.conv2d(x, w, b, stride=1, padding=1), [(2, 3, 7, 9), (4, 3, 3, 3), (4,)]),
    ("conv2d k3 s2 p0", lambda x, w, b: F.conv2d(x, w, b, stride=2), [(2, 3, 7, 9), (4, 3, 3, 3), (4,)]),
    ("conv2d k5 s1 p2", lambda x, w, b: F.conv2d(x, w, b, padding=2), [(2, 2, 8, 7), (3, 2, 5, 5), (3,)]),
    ("conv2d k5 s3 p2", lambda x, w, b: F.conv2d(x, w, b, stride=3, padding=2), [(2, 2, 11, 9), (3, 2, 5, 5), (3,)]),
    ("conv2d k1 no bias", lambda x, w: F.conv2d(x, w), [(2, 3, 5, 4), (2, 3, 1, 1)]),
    ("conv2d rectangular", lambda x, w: F.conv2d(x, w, None, stride=(2, 1), padding=(0, 2)),
     [(2, 2, 6, 5), (3, 2, 3, 2)]),
    ("max_pool2d 2x2", lambda x: F.max_pool2d(x, 2), [(2, 3, 6, 8)]),
    ("max_pool2d odd size", lambda x: F.max_pool2d(x, 2), [(2, 2, 7, 5)]),
    ("max_pool2d overlapping k3 s2", lambda x: F.max_pool2d(x, 3, 2), [(2, 2, 7, 9)]),
    ("max_pool2d k3 s1", lambda x: F.max_pool2d(x, 3, 1), [(1, 2, 5, 6)]),
    ("linear", lambda x, w, b: F.linear(x, w, b), [(4, 6), (3, 6), (3,)]),
    ("dropout with mask", lambda x: F.dropout(x, 0.3, mask=np.random.default_rng(7).random((3, 5)) > 0.3),
     [(3, 5)]),
    ("flatten", lambda x: F.flatten(x), [(2, 3, 4, 5)]),
    ("log_softmax", lambda x: F.log_softmax(x, -1), [(4, 7)]),
    ("log_softmax axis 0", lambda x: F.log_softmax(x, axis=0), [(4, 7)]),
    ("softmax_cross_entropy", lambda x: F.softmax_cross_entropy(x, np.array([0, 3, 2, 3, 1])), [(5, 4)]),
]


# Convolutions with PyTorch's full set of options, (name, F.conv2d keyword arguments, shapes of x, weight[, bias]):
# also the cases tests/test_torch_parity_conv.py compares with torch.nn.functional.conv2d.
CONV_CASES: list[tuple[str, dict, list[tuple[int, ...]]]] = [
    ("stride 2", {"stride": 2, "padding": 1}, [(2, 3, 7, 9), (4, 3, 3, 3), (4,)]),
    ("padding pair", {"padding": (2, 1)}, [(2, 2, 5, 6), (3, 2, 3, 3), (3,)]),
    ("dilation 2", {"dilation": 2, "padding": 2}, [(2, 2, 9, 8), (3, 2, 3, 3), (3,)]),
    ("dilation (2, 3) stride (2, 1)", {"dilation": (2, 3), "stride": (2, 1), "padding": (1, 0)},
     [(2, 2, 9, 10), (3, 2, 3, 2), (3,)]),
    ("groups 2", {"groups": 2, "padding": 1}, [(2, 4, 7, 6), (6, 2, 3, 3), (6,)]),
    ("groups 3 no bias", {"groups": 3, "stride": (1, 2)}, [(2, 6, 6, 7), (3, 2, 3, 2)]),
    ("depthwise", {"groups": 4, "padding": 1}, [(2, 4, 7, 6), (4, 1, 3, 3), (4,)]),
    ("depthwise multiplier 2 stride 2", {"groups": 3, "stride": 2}, [(2, 3, 8, 7), (6, 1, 3, 3), (6,)]),
    ("depthwise dilated", {"groups": 4, "dilation": 2, "padding": 2}, [(2, 4, 7, 8), (4, 1, 3, 3), (4,)]),
    ("odd sizes", {"stride": (3, 2), "padding": 1}, [(3, 3, 11, 5), (5, 3, 3, 3), (5,)]),
    ("batch 1", {"padding": 1}, [(1, 3, 6, 6), (2, 3, 3, 3), (2,)]),
    ("rectangular 2x5", {"padding": (1, 2)}, [(2, 2, 6, 9), (3, 2, 2, 5), (3,)]),
    ("no bias", {"padding": 1}, [(2, 3, 5, 6), (4, 3, 3, 3)]),
    ("padding same odd kernel", {"padding": "same"}, [(2, 3, 6, 7), (4, 3, 3, 3), (4,)]),
    ("padding same even kernel", {"padding": "same"}, [(2, 2, 6, 7), (3, 2, 4, 2), (3,)]),
    ("padding same dilated even span", {"padding": "same", "dilation": (3, 2), "groups": 2},
     [(2, 4, 7, 8), (2, 2, 2, 3), (2,)]),
    ("padding valid", {"padding": "valid"}, [(2, 3, 6, 5), (2, 3, 3, 2), (2,)]),
]
OPS += [(f"conv2d {name}", lambda *arrays, options=options: F.conv2d(*arrays, **options), shapes)
        for name, options, shapes in CONV_CASES]


def _running_stats(x: xpnet.Tensor) -> tuple[xpnet.Tensor, xpnet.Tensor]:
    """Fixed running mean and variance (> 0) for x's channels, in x's dtype, fresh for every call."""
    rng = np.random.default_rng(x.shape[1])
    mean, var = rng.standard_normal(x.shape[1]), rng.random(x.shape[1]) + 0.5
    return xpnet.tensor(mean.astype(x.dtype)), xpnet.tensor(var.astype(x.dtype))


# Two values per channel normalise to about +-1 whatever they are, so with the default eps the input gradient is
# too small for central differences: the batch-2 (N, C) case uses a large eps.
OPS += [
    ("batch_norm train (N, C, H, W)", lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
     [(3, 2, 4, 5), (2,), (2,)]),
    ("batch_norm train (N, C, L) running stats", lambda x, w, b: F.batch_norm(
        x, *_running_stats(x), w, b, training=True, momentum=0.2), [(3, 4, 5), (4,), (4,)]),
    ("batch_norm train (N, C) batch 2", lambda x: F.batch_norm(x, None, None, training=True, eps=0.5), [(2, 3)]),
    ("batch_norm train (N, C) odd", lambda x, w: F.batch_norm(x, None, None, w, training=True), [(7, 3), (3,)]),
    ("batch_norm eval (N, C, L)", lambda x, w, b: F.batch_norm(x, *_running_stats(x), w, b), [(5, 3, 7), (3,), (3,)]),
    ("batch_norm eval (N, C, H, W) no affine", lambda x: F.batch_norm(x, *_running_stats(x)), [(2, 2, 3, 5)]),
]


def _rows_twice(x: xpnet.Tensor) -> xpnet.Tensor:
    """x (N, C, H, W) with every row repeated once, (N, C, 2H, W): max-pool windows full of ties whose gradient
    is still well defined (both copies are the same input)."""
    n, c, h, w = x.shape
    twice = xpnet.tensor(np.ones((1, 1, 1, 2, 1)), dtype=x.dtype)
    return (x.reshape(n, c, h, 1, w) * twice).reshape(n, c, 2 * h, w)


_TARGETS = np.array([0, 3, -100, 2, 3, 1, -100])
_CLASS_WEIGHT = np.array([0.5, 2.0, 1.0, 1.5])
_TARGETS_2D = np.array([[[0, 2], [1, -100], [2, 0]], [[1, 1], [0, 2], [-100, 2]]])

OPS += [
    ("max_pool2d k3 s2 p1", lambda x: F.max_pool2d(x, 3, 2, 1), [(2, 2, 7, 9)]),
    ("max_pool2d k3 s2 ceil", lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True), [(2, 2, 8, 7)]),
    ("max_pool2d k2 ceil odd", lambda x: F.max_pool2d(x, 2, ceil_mode=True), [(1, 3, 7, 5)]),
    ("max_pool2d k3 s2 p1 ceil batch 1", lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), [(1, 2, 6, 7)]),
    ("max_pool2d rectangular p", lambda x: F.max_pool2d(x, (2, 3), (1, 2), (1, 1)), [(2, 1, 5, 6)]),
    ("max_pool2d ties k2", lambda x: F.max_pool2d(_rows_twice(x), 2), [(2, 2, 3, 5)]),
    ("max_pool2d ties k3 s1 p1", lambda x: F.max_pool2d(_rows_twice(x), 3, 1, 1), [(1, 2, 3, 4)]),
    ("max_pool2d unbatched", lambda x: F.max_pool2d(x, 2, 1), [(2, 4, 5)]),
    ("avg_pool2d k2", lambda x: F.avg_pool2d(x, 2), [(2, 3, 6, 7)]),
    ("avg_pool2d k3 s2 p1", lambda x: F.avg_pool2d(x, 3, 2, 1), [(2, 2, 7, 9)]),
    ("avg_pool2d k3 s2 p1 no pad count", lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
     [(2, 2, 7, 9)]),
    ("avg_pool2d k3 s2 p1 ceil", lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True), [(1, 2, 6, 7)]),
    ("avg_pool2d k2 ceil no pad count", lambda x: F.avg_pool2d(x, 2, ceil_mode=True, count_include_pad=False),
     [(2, 1, 5, 7)]),
    ("avg_pool2d divisor_override", lambda x: F.avg_pool2d(x, (2, 3), 1, (1, 1), divisor_override=4),
     [(1, 2, 5, 6)]),
    ("adaptive_avg_pool2d 1", lambda x: F.adaptive_avg_pool2d(x, 1), [(2, 3, 5, 7)]),
    ("adaptive_avg_pool2d 3x2 uneven", lambda x: F.adaptive_avg_pool2d(x, (3, 2)), [(2, 2, 7, 5)]),
    ("adaptive_avg_pool2d upsampling", lambda x: F.adaptive_avg_pool2d(x, (5, 4)), [(1, 2, 3, 3)]),
    ("adaptive_avg_pool2d None keeps", lambda x: F.adaptive_avg_pool2d(x, (None, 2)), [(2, 1, 4, 6)]),
    ("adaptive_avg_pool2d dividing", lambda x: F.adaptive_avg_pool2d(x, 2), [(2, 2, 6, 4)]),
    ("sigmoid", lambda x: (x * 4.0).sigmoid(), [(3, 5)]),
    ("tanh", lambda x: F.tanh(x * 2.0), [(3, 5)]),
    ("leaky_relu", lambda x: F.leaky_relu(x, 0.1), [(4, 5)]),
    ("gelu", lambda x: F.gelu(x * 2.0), [(3, 5)]),
    ("gelu tanh", lambda x: F.gelu(x * 2.0, approximate="tanh"), [(3, 5)]),
    ("softmax dim 1", lambda x: F.softmax(x, dim=1), [(3, 5, 2)]),
    ("softmax dim 0", lambda x: F.softmax(x, 0), [(4, 3)]),
    ("log_softmax dim 1 of 4-D", lambda x: F.log_softmax(x, dim=1), [(2, 3, 2, 2)]),
    ("flatten dims 1..2", lambda x: F.flatten(x, 1, 2), [(2, 3, 4, 5)]),
    ("linear 3-D input", lambda x, w, b: F.linear(x, w, b), [(2, 3, 6), (4, 6), (4,)]),
    ("nll_loss weighted ignore", lambda x: F.nll_loss(x, _TARGETS, _CLASS_WEIGHT), [(7, 4)]),
    ("nll_loss none", lambda x: F.nll_loss(x, _TARGETS, reduction="none"), [(7, 4)]),
    ("cross_entropy", lambda x: F.cross_entropy(x, _TARGETS), [(7, 4)]),
    ("cross_entropy weight smoothing ignore", lambda x: F.cross_entropy(x, _TARGETS, _CLASS_WEIGHT,
                                                                       label_smoothing=0.2), [(7, 4)]),
    ("cross_entropy sum smoothing", lambda x: F.cross_entropy(x, _TARGETS, reduction="sum", label_smoothing=0.1),
     [(7, 4)]),
    ("cross_entropy none K-dim weight smoothing", lambda x: F.cross_entropy(
        x, _TARGETS_2D, _CLASS_WEIGHT[:3], reduction="none", label_smoothing=0.3), [(2, 3, 3, 2)]),
]

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
    ("log_softmax", lambda x: F.log_softmax(x), [(4, 7)]),
    ("log_softmax axis 0", lambda x: F.log_softmax(x, axis=0), [(4, 7)]),
    ("softmax_cross_entropy", lambda x: F.softmax_cross_entropy(x, np.array([0, 3, 2, 3, 1])), [(5, 4)]),
]

"""Every backend against the NumPy backend: forward and backward of every op and layer, and 50 Adam steps of
every named model (losses and final weights), to 1e-10 in float64 and 1e-4 relative in float32.

The NumPy backend is compared with a second NumPy run, so with no other backend here this checks determinism.
"""

from __future__ import annotations

import functools
import zlib
from typing import Any, Callable

import numpy as np
import pytest
from backend_fixtures import assert_close, backend_name, on_backend  # noqa: F401  (backend_name: a fixture)

import xpnet
from xpnet import functional as F
from xpnet.models import MODELS
from xpnet.optim import Adam

DTYPES = [np.float32, np.float64]
STEPS, BATCH = 50, 8

OPS: list[tuple[str, Callable[..., xpnet.Tensor], list[tuple[int, ...]]]] = [
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


def _forward_backward(name: str, fn: Callable[..., xpnet.Tensor], arrays: list[np.ndarray],
                      dtype: Any) -> list[np.ndarray]:
    """On backend ``name``: fn's output and the gradient of every input under a fixed random upstream gradient."""
    with on_backend(name, dtype):
        backend = xpnet.get_backend()
        inputs = [xpnet.tensor(backend.asarray(a, dtype=dtype), requires_grad=True) for a in arrays]
        out = fn(*inputs)
        gout = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
        out.backward(backend.asarray(gout))
        return [out.numpy()] + [backend.to_numpy(t.grad) for t in inputs]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("op, fn, shapes", OPS, ids=[op for op, _, _ in OPS])
def test_op_forward_and_backward_match_numpy(backend_name, op, fn, shapes, dtype):
    rng = np.random.default_rng(zlib.crc32(op.encode()))
    arrays = [rng.standard_normal(s) for s in shapes]
    expected = _forward_backward("numpy", fn, arrays, dtype)
    actual = _forward_backward(backend_name, fn, arrays, dtype)
    names = ["output"] + [f"grad of input {i}" for i in range(len(arrays))]
    for what, a, e in zip(names, actual, expected):
        assert e.dtype == dtype
        assert_close(a, e, dtype, f"{op} {what} on {backend_name}")


@functools.cache
def _batches(dtype: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """STEPS learnable batches (a fixed template per class plus noise) of BATCH 1x28x28 images, one per step."""
    rng = np.random.default_rng(2024)
    templates = rng.random((10, 1, 28, 28))
    batches = []
    for _ in range(STEPS):
        labels = rng.integers(0, 10, BATCH)
        images = 0.6 * templates[labels] + 0.4 * rng.random((BATCH, 1, 28, 28))
        batches.append((images.astype(dtype), labels))
    return batches


def _train(name: str, model_name: str, dtype: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """STEPS Adam steps of a freshly seeded model on backend ``name``: per-step losses and final weights."""
    with on_backend(name, dtype):
        xpnet.manual_seed(0)
        model = MODELS[model_name]()
        assert model.training  # report1's dropout draws a mask every step
        optimizer = Adam(model.parameters(), lr=1e-3)
        losses = []
        for images, labels in _batches(dtype):
            optimizer.zero_grad()
            loss = F.softmax_cross_entropy(model(xpnet.tensor(images)), labels)
            loss.backward()
            optimizer.step()
            losses.append(loss.numpy())
        return np.array(losses), model.state_dict()


@functools.cache
def _reference(model_name: str, dtype: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return _train("numpy", model_name, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("model_name", list(MODELS))
def test_training_matches_numpy(backend_name, model_name, dtype):
    expected_losses, expected_weights = _reference(model_name, dtype)
    losses, weights = _train(backend_name, model_name, dtype)  # a fresh run, also when backend_name is numpy
    assert losses.shape == (STEPS,) and np.isfinite(losses).all()
    assert losses[-5:].mean() < losses[:5].mean()  # it trained: a wrong gradient would not fit the batches
    assert_close(losses, expected_losses, dtype, f"{model_name} losses on {backend_name}")
    assert list(weights) == list(expected_weights)
    for key in weights:
        assert_close(weights[key], expected_weights[key], dtype, f"{model_name} {key} on {backend_name}")

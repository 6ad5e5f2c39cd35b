"""Every backend against the NumPy backend: forward and backward of every op and layer, and 50 Adam steps of
every named model (losses and final weights), to 1e-10 in float64 and 1e-4 relative in float32.

Backends may sum in different orders (Numba's direct convolution does). Adam divides by sqrt(v), so for a weight
whose gradient is near zero a rounding-level difference becomes a whole +-lr step: after 50 float32 steps a single
element may differ by far more than 1e-4 while the tensor as a whole agrees to 1e-6. Float32 weights are
therefore compared tensor by tensor in norm; float64 weights, where rounding is 1e-16, element by element. A
tensor that starts at zero (a bias) has moved only a few steps' worth after 10 steps, so 1e-4 of its norm is less
than one rounding-level flip: its bound adds 1% of one Adam step (on one machine ResNet's bn1.bias differed in one
element by 1.6e-6, 0.16% of a step, against 1e-4 of its norm, 1.4e-6).

ResNet's BatchNorm divides by the batch's standard deviation, which amplifies rounding further: in float32 its
Numba and NumPy runs' losses agree to 1e-7 over 10 steps and its weights within 1e-4 in norm, but after 20 steps
a convolution's weights differ by 3e-4 in norm and by step 24 the losses by 1e-4.
Its float32 comparison therefore stops after FLOAT32_STEPS["resnet"] steps; its float64 one after
FLOAT64_STEPS["resnet"] (time: a ResNet step costs ten of the MNIST nets'; 20 steps still show it training).

The NumPy backend is compared with a second NumPy run, so with no other backend here this checks determinism.
"""

from __future__ import annotations

import functools
import zlib
from typing import Any, Callable

import numpy as np
import pytest
from backend_fixtures import assert_close, backend_name, on_backend  # noqa: F401  (backend_name: a fixture)
from op_cases import OPS

import xpnet
from xpnet import functional as F
from xpnet.models import MODELS
from xpnet.optim import Adam

DTYPES = [np.float32, np.float64]
STEPS, BATCH = 50, 8
LR = 1e-3
FLOAT32_STEPS = {"resnet": 10}  # steps over which float32 trajectories still agree to 1e-4 (see above)
FLOAT64_STEPS = {"resnet": 20}
FLOAT32_STEP_SLACK = 0.01  # of one Adam step (LR), added to the float32 weights' bound (see above)


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


def steps(model_name: str, dtype: Any) -> int:
    """How many training steps the comparison runs for this model and dtype."""
    return (FLOAT32_STEPS if np.dtype(dtype) == np.float32 else FLOAT64_STEPS).get(model_name, STEPS)


def _train(name: str, model_name: str, dtype: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``steps()`` Adam steps of a freshly seeded model on backend ``name``: per-step losses and final weights."""
    with on_backend(name, dtype):
        xpnet.manual_seed(0)
        model = MODELS[model_name]()
        assert model.training  # report1's dropout draws a mask every step
        optimizer = Adam(model.parameters(), lr=LR)
        losses = []
        for images, labels in _batches(dtype)[:steps(model_name, dtype)]:
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
    assert losses.shape == (steps(model_name, dtype),) and np.isfinite(losses).all()
    assert losses[-5:].mean() < losses[:5].mean()  # it trained: a wrong gradient would not fit the batches
    assert_close(losses, expected_losses, dtype, f"{model_name} losses on {backend_name}")
    assert list(weights) == list(expected_weights)
    for key in weights:
        what = f"{model_name} {key} on {backend_name}"
        if dtype == np.float64:
            assert_close(weights[key], expected_weights[key], dtype, what)
        else:
            difference = np.linalg.norm(weights[key] - expected_weights[key])
            assert difference <= 1e-4 * np.linalg.norm(expected_weights[key]) + FLOAT32_STEP_SLACK * LR, what

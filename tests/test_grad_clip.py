"""Gradient clipping against torch.nn.utils: returned norm and clipped gradients for norms 2, 1, inf and 3, on
every backend, plus dtype, skipped parameters, shared gradient arrays, non-finite norms and bad arguments."""

import numpy as np
import pytest
import torch
from backend_fixtures import backend_name  # noqa: F401  (fixture)

import xpnet
from xpnet import nn
from xpnet.nn_utils import clip_grad_norm_, clip_grad_value_

SHAPES = [(4, 3), (5,), (2, 2, 3), (3,)]


def pair(dtype=np.float64, seed=0, scale=1.0):
    """Parameters with gradients (the third has none) in xpnet on the active backend and in torch."""
    rng = np.random.default_rng(seed)
    grads = [None if i == 2 else scale * rng.standard_normal(s).astype(dtype) for i, s in enumerate(SHAPES)]
    backend = xpnet.get_backend()
    ours = [nn.Parameter(np.zeros(s, dtype)) for s in SHAPES]
    theirs = [torch.zeros(s, dtype=getattr(torch, np.dtype(dtype).name), requires_grad=True) for s in SHAPES]
    for p, q, g in zip(ours, theirs, grads):
        p.grad = None if g is None else backend.asarray(g)
        q.grad = None if g is None else torch.tensor(g)
    return ours, theirs


def host(a):
    return xpnet.get_backend().to_numpy(a)


@pytest.mark.parametrize("norm_type", [2.0, 1, float("inf"), "inf", 3.0])
@pytest.mark.parametrize("max_norm", [0.5, 1e3], ids=["clipped", "unclipped"])
def test_clip_grad_norm_matches_torch(backend_name, norm_type, max_norm):  # noqa: F811
    ours, theirs = pair()
    total = clip_grad_norm_(ours, max_norm, norm_type=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type)
    assert total.shape == () and total.dtype == np.float64
    assert total.item() == pytest.approx(expected.item(), rel=1e-12)
    for p, q in zip(ours, theirs):
        if q.grad is None:
            assert p.grad is None
        else:
            np.testing.assert_allclose(host(p.grad), q.grad.numpy(), rtol=1e-12, atol=0)
    clipped = np.concatenate([host(p.grad).ravel() for p in ours if p.grad is not None])
    if max_norm < expected.item():
        assert np.linalg.norm(clipped, float(norm_type)) == pytest.approx(max_norm, rel=1e-5)


def test_clip_grad_norm_float32_keeps_dtype_and_matches_torch():
    ours, theirs = pair(np.float32, scale=10.0)
    total = clip_grad_norm_(ours, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert total.dtype == np.float32
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    for p, q in zip(ours, theirs):
        if p.grad is not None:
            assert p.grad.dtype == np.float32
            np.testing.assert_allclose(p.grad, q.grad.numpy(), rtol=1e-6)


def test_single_tensor_generator_and_no_gradients():
    ours, theirs = pair()
    total = clip_grad_norm_(ours[0], 0.1)
    assert total.item() == pytest.approx(torch.nn.utils.clip_grad_norm_(theirs[0], 0.1).item(), rel=1e-12)
    assert clip_grad_norm_((p for p in ours), 1e9).item() > 0
    empty = [nn.Parameter(np.zeros(2))]
    assert clip_grad_norm_(empty, 1.0).item() == 0.0 and empty[0].grad is None


def test_a_gradient_array_shared_by_two_leaves_is_scaled_once():
    """a + b hands the same gradient array to both leaves; clipping must not scale it twice."""
    a, b = nn.Parameter(np.zeros(3)), nn.Parameter(np.zeros(3))
    ((a + b) * xpnet.tensor(np.array([3.0, 4.0, 12.0]))).sum().backward()
    total = clip_grad_norm_([a, b], 1.0)
    assert total.item() == pytest.approx(13 * np.sqrt(2))
    coef = 1.0 / (13 * np.sqrt(2) + 1e-6)
    np.testing.assert_allclose(a.grad, np.array([3.0, 4.0, 12.0]) * coef, rtol=1e-15)
    np.testing.assert_allclose(b.grad, a.grad, rtol=0)


def test_non_finite_norm():
    ours, theirs = pair()
    ours[0].grad[0, 0] = np.nan
    theirs[0].grad[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="total norm of order 2.0 of the gradients is nan"):
        clip_grad_norm_(ours, 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match="non-finite"):
        torch.nn.utils.clip_grad_norm_(theirs, 1.0, error_if_nonfinite=True)
    assert np.isnan(clip_grad_norm_(ours, 1.0).item())
    assert np.isnan(host(ours[1].grad)).all()  # as torch: scaled by the nan coefficient
    ours, _ = pair()
    ours[1].grad[0] = np.inf
    with pytest.raises(RuntimeError, match="is inf"):
        clip_grad_norm_(ours, 1.0, norm_type=1, error_if_nonfinite=True)


def test_clip_grad_value_matches_torch(backend_name):  # noqa: F811
    ours, theirs = pair()
    assert clip_grad_value_(ours, 0.7) is None
    torch.nn.utils.clip_grad_value_(theirs, 0.7)
    for p, q in zip(ours, theirs):
        if q.grad is None:
            assert p.grad is None
        else:
            np.testing.assert_array_equal(host(p.grad), q.grad.numpy())
            assert 0 < np.mean(np.abs(host(p.grad)) == 0.7) < 1 or p.grad.size < 4


@pytest.mark.parametrize("call, error, message", [
    (lambda ps: clip_grad_norm_(ps, -1.0), ValueError, "max_norm: expected a number >= 0, got -1.0"),
    (lambda ps: clip_grad_norm_(ps, "big"), TypeError, "max_norm: expected a number, got str"),
    (lambda ps: clip_grad_value_(ps, -0.5), ValueError, "clip_value: expected a number >= 0"),
    (lambda ps: clip_grad_norm_([np.zeros(2)], 1.0), TypeError, "parameters: expected Tensors, got ndarray"),
])
def test_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call(pair()[0])

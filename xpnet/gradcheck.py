"""Central-difference gradient checking: the reference every op's backward is tested against."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from xpnet.autograd import Tensor
from xpnet.backend import get_backend


def numerical_grad(f: Callable[[], float], array: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f / d array by central differences, perturbing ``array`` (a host float64 array) in place."""
    grad = np.zeros_like(array)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + eps
        f_plus = f()
        flat[i] = saved - eps
        f_minus = f()
        flat[i] = saved
        gflat[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def max_relative_error(fn: Callable[..., Tensor], inputs: Sequence[np.ndarray], eps: float = 1e-6,
                       seed: int = 0) -> float:
    """Largest ||analytic - numeric|| / max(||analytic||, ||numeric||) over ``inputs`` of ``fn(*tensors)``.

    The output is reduced to a scalar with a fixed random projection so every output element is checked.
    Inputs must be float64 NumPy arrays; they are moved to the active backend for each evaluation.
    """
    backend = get_backend()
    hosts = [np.array(a, dtype=np.float64) for a in inputs]
    out_shape = fn(*[Tensor(a) for a in hosts]).shape
    projection = Tensor(np.random.default_rng(seed).standard_normal(out_shape))

    def scalar(tensors: list[Tensor]) -> Tensor:
        return (fn(*tensors) * projection).sum()

    tensors = [Tensor(a, requires_grad=True) for a in hosts]
    scalar(tensors).backward()
    worst = 0.0
    for host, t in zip(hosts, tensors):
        analytic = backend.to_numpy(t.grad) if t.grad is not None else np.zeros_like(host)
        numeric = numerical_grad(lambda: scalar([Tensor(a) for a in hosts]).item(), host, eps)
        scale = max(np.linalg.norm(analytic), np.linalg.norm(numeric), 1e-30)
        worst = max(worst, float(np.linalg.norm(analytic - numeric) / scale))
    return worst

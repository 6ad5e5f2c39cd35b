"""Gradient clipping with PyTorch's ``torch.nn.utils`` API and arithmetic, on any backend's arrays.

The clipped gradient replaces ``p.grad`` rather than being written into it: xpnet's autograd may hand one
gradient array to several leaves (``a + b``), and scaling it in place would scale it once per leaf.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from xpnet.autograd import Tensor, no_grad
from xpnet.backend import get_backend

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


@no_grad()
def clip_grad_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float, norm_type: float | str = 2.0,
                    error_if_nonfinite: bool = False) -> Tensor:
    """Scale the gradients so that their joint ``norm_type``-norm is at most ``max_norm``; return that norm
    before clipping (a 0-d Tensor). The scale is min(max_norm / (total_norm + 1e-6), 1), as in PyTorch; ``inf``
    is the max-abs norm; parameters without a gradient are skipped."""
    max_norm, norm_type = _non_negative("max_norm", max_norm), float(norm_type)
    params = _as_list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    xp = get_backend().xp
    if not grads:
        return Tensor(0.0)
    norms = xp.stack([_vector_norm(xp, g, norm_type) for g in grads])
    total = _vector_norm(xp, norms, norm_type)
    if error_if_nonfinite and not math.isfinite(float(total)):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is {float(total)}, so it cannot "
                           "be clipped; pass error_if_nonfinite=False to scale by it anyway")
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0)
    for p in params:
        if p.grad is not None:
            p.grad = p.grad * coef.astype(p.grad.dtype)
    return Tensor(total)


@no_grad()
def clip_grad_value_(parameters: Tensor | Iterable[Tensor], clip_value: float) -> None:
    """Clamp every gradient element into [-clip_value, clip_value]; parameters without a gradient are skipped."""
    clip_value = _non_negative("clip_value", clip_value)
    xp = get_backend().xp
    for p in _as_list(parameters):
        if p.grad is not None:
            p.grad = xp.clip(p.grad, -clip_value, clip_value)


def _vector_norm(xp: Any, a: Any, norm_type: float) -> Any:
    """The ``norm_type``-norm of ``a`` flattened, as a 0-d array of ``a``'s dtype (0 for an empty array)."""
    flat = a.reshape(-1)
    if flat.size == 0:
        return xp.zeros((), dtype=a.dtype)
    return xp.asarray(xp.linalg.norm(flat, ord=norm_type), dtype=a.dtype)


def _as_list(parameters: Tensor | Iterable[Tensor]) -> list[Tensor]:
    """One Tensor or an iterable of them (a generator is read once) as a list of Tensors."""
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"parameters: expected Tensors, got {type(p).__name__}")
    return params


def _non_negative(name: str, value: Any) -> float:
    """``value`` as a float, or a ValueError when it is not a number >= 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}") from None
    if not number >= 0:
        raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
    return number

"""Optimizers with PyTorch's API and update rules (``zero_grad``, ``step``, ``state_dict``), so the same
hyper-parameters mean the same thing in both frameworks."""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from xpnet.autograd import no_grad
from xpnet.backend import get_backend
from xpnet.nn import Parameter


class Optimizer:
    """Holds parameters and per-parameter state; subclasses define ``_update``."""

    def __init__(self, params: Iterable[Parameter], defaults: dict[str, Any]):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        self.defaults = dict(defaults)
        self.lr = defaults["lr"]
        self.state: list[dict[str, Any]] = [{} for _ in self.params]
        self.step_count = 0  # one count per step() call, shared by every parameter

    def zero_grad(self) -> None:
        """Forget the gradients of the last backward (they accumulate otherwise)."""
        for p in self.params:
            p.grad = None

    @no_grad()
    def step(self) -> None:
        """Apply one update to every parameter that has a gradient."""
        self.step_count += 1
        for p, state in zip(self.params, self.state):
            if p.grad is not None:
                self._update(p, p.grad, state)

    def _update(self, p: Parameter, grad: Any, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Host copies of the hyper-parameters, step count and per-parameter buffers (by position)."""
        backend = get_backend()
        return {
            "hyper": {**self.defaults, "lr": self.lr},
            "step_count": self.step_count,
            "state": [{k: backend.to_numpy(v).copy() for k, v in s.items()} for s in self.state],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["state"]) != len(self.params):
            raise ValueError(f"optimizer state holds {len(state['state'])} parameters, this optimizer has "
                             f"{len(self.params)}")
        backend = get_backend()
        self.defaults.update(state["hyper"])
        self.lr = self.defaults["lr"]
        self.step_count = int(state["step_count"])
        self.state = [{k: backend.asarray(np.asarray(v), dtype=p.dtype) for k, v in s.items()}
                      for p, s in zip(self.params, state["state"])]


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum (PyTorch's form: buf = m*buf + g) and weight decay."""

    def __init__(self, params: Iterable[Parameter], lr: float = 0.01, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        if lr <= 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD needs lr > 0, momentum >= 0, weight_decay >= 0; got {lr}, {momentum}, "
                             f"{weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))

    def _update(self, p: Parameter, grad: Any, state: dict[str, Any]) -> None:
        momentum, weight_decay = self.defaults["momentum"], self.defaults["weight_decay"]
        if weight_decay:
            grad = grad + weight_decay * p.data
        if momentum:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = grad.copy()
            else:
                buf = state["momentum_buffer"]
                buf *= momentum
                buf += grad
            buf = state["momentum_buffer"]
            grad = grad + momentum * buf if self.defaults["nesterov"] else buf
        p.data -= self.lr * grad


class Adam(Optimizer):
    """Adam with bias correction, PyTorch's arithmetic: p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)."""

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        if lr <= 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or eps < 0:
            raise ValueError(f"Adam needs lr > 0, 0 <= betas < 1, eps >= 0; got {lr}, {betas}, {eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _update(self, p: Parameter, grad: Any, state: dict[str, Any]) -> None:
        xp = get_backend().xp
        beta1, beta2 = self.defaults["betas"]
        if self.defaults["weight_decay"]:
            grad = grad + self.defaults["weight_decay"] * p.data
        if "exp_avg" not in state:
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= beta1
        m += (1 - beta1) * grad
        v *= beta2
        v += (1 - beta2) * (grad * grad)
        bias_correction1 = 1 - beta1 ** self.step_count
        bias_correction2 = 1 - beta2 ** self.step_count
        denom = xp.sqrt(v) / math.sqrt(bias_correction2) + self.defaults["eps"]
        p.data -= (self.lr / bias_correction1) * (m / denom)


OPTIMIZERS = {"sgd": SGD, "adam": Adam}

"""Optimizers with PyTorch's API and arithmetic: ``param_groups`` with per-group hyper-parameters, per-parameter
state (Adam's ``step`` included), ``zero_grad``/``step``/``state_dict``/``load_state_dict``, so the same
hyper-parameters, schedules and checkpoints mean the same thing in both frameworks.

``xpnet.optim.lr_scheduler`` holds the learning-rate schedulers, as ``torch.optim.lr_scheduler`` does.
"""

from __future__ import annotations

import copy
import math
import sys
from typing import Any, Callable, Iterable

import numpy as np

from xpnet.autograd import Tensor, no_grad
from xpnet.backend import get_backend
from xpnet.nn import Parameter

ParamsT = Iterable[Parameter] | Iterable[dict[str, Any]]


class Optimizer:
    """Holds ``param_groups`` (dicts of ``"params"`` plus hyper-parameters) and per-parameter ``state``;
    subclasses define ``_check`` (argument ranges) and ``_update`` (one parameter's step)."""

    def __init__(self, params: ParamsT, defaults: dict[str, Any]):
        if isinstance(params, Tensor):
            raise TypeError("params: expected an iterable of Parameters or of dicts, got a single Tensor "
                            f"({type(params).__name__}); pass [tensor]")
        self.defaults = dict(defaults)
        self._check(self.defaults, "")
        self.state: dict[Parameter, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        self._opt_called = False  # set by step(); schedulers warn when they step before the optimizer
        groups = _param_list(params, "params") if isinstance(params, (set, frozenset)) else list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        for group in groups if isinstance(groups[0], dict) else [{"params": groups}]:
            self.add_param_group(group)

    # --- parameter groups ---------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Append a group: its ``"params"`` plus hyper-parameters, the missing ones taken from ``defaults``."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group: expected a dict, got {type(param_group).__name__}")
        where = f"param_groups[{len(self.param_groups)}]"
        params = _param_list(param_group.get("params"), where)
        seen = {id(p) for group in self.param_groups for p in group["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError(f"{where}: some parameters appear in more than one parameter group")
        param_group["params"] = params
        for name, default in self.defaults.items():
            param_group.setdefault(name, default)
        self._check(param_group, f"{where}: ")
        self.param_groups.append(param_group)

    @property
    def params(self) -> list[Parameter]:
        """Every parameter, group by group."""
        return [p for group in self.param_groups for p in group["params"]]

    @property
    def lr(self) -> float:
        """The first group's learning rate (the learning rate, when there is one group)."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        if len(self.param_groups) != 1:
            raise AttributeError(f"optimizer.lr is ambiguous with {len(self.param_groups)} parameter groups; "
                                 "set param_groups[i]['lr'] instead")
        self.param_groups[0]["lr"] = value

    # --- the step -------------------------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients of the last backward (they accumulate otherwise); zero them if not ``set_to_none``."""
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad = get_backend().xp.zeros_like(p.grad)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient with its group's hyper-parameters; return ``closure()``."""
        loss = closure() if closure is not None else None
        with no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        self._update(p, p.grad, self.state.setdefault(p, {}), group)
        self._opt_called = True
        return loss

    def _update(self, p: Parameter, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _check(self, hyper: dict[str, Any], where: str) -> None:
        """Raise ValueError naming the first hyper-parameter of ``hyper`` out of its range."""

    # --- state ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """PyTorch's layout: ``{"state": {index: {name: value}}, "param_groups": [{..., "params": [index]}]}``,
        parameters numbered in group order; buffers are host NumPy copies."""
        index = {id(p): i for i, p in enumerate(self.params)}
        groups, start = [], 0
        for group in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            packed["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(packed)
        state = {index[id(p)]: {k: _to_host(v) for k, v in s.items()} for p, s in self.state.items() if s}
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyper-parameters and buffers saved by ``state_dict()``; refuse (changing nothing) a state whose
        group count, group sizes, hyper-parameter names or buffer shapes do not fit this optimizer."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded optimizer state has {len(saved_groups)} parameter groups, this optimizer has "
                             f"{len(self.param_groups)}")
        by_index: dict[int, Parameter] = {}
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"param_groups[{i}] holds {len(saved['params'])} parameters in the loaded state, "
                                 f"{len(group['params'])} in this optimizer")
            missing = sorted(set(self.defaults) - set(saved))
            if missing:
                raise ValueError(f"param_groups[{i}] of the loaded state lacks {', '.join(missing)}: it was saved by "
                                 f"another optimizer than {type(self).__name__}")
            by_index.update({int(k): p for k, p in zip(saved["params"], group["params"])})
        state = {}
        for key, buffers in state_dict["state"].items():
            if int(key) not in by_index:
                raise ValueError(f"loaded optimizer state has an entry for parameter {key}; its parameter groups "
                                 f"number only {len(by_index)} parameters")
            p = by_index[int(key)]
            state[p] = {name: _to_param(value, p, f"state of parameter {key} ({name})") for name, value in
                        buffers.items()}
        restored = [{k: _like(v, group.get(k)) for k, v in saved.items() if k != "params"}
                    for saved, group in zip(saved_groups, self.param_groups)]
        for i, hyper in enumerate(restored):
            self._check(hyper, f"param_groups[{i}] of the loaded state: ")
        for hyper, group in zip(restored, self.param_groups):
            params = group["params"]
            group.clear()
            group.update(hyper, params=params)
        self.state = state


class SGD(Optimizer):
    """Stochastic gradient descent, PyTorch's form: buf = momentum*buf + (1-dampening)*g (buf = g at the first
    step), p -= lr*buf (or lr*(g + momentum*buf) with Nesterov); weight decay adds weight_decay*p to g."""

    def __init__(self, params: ParamsT, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize))

    def _check(self, hyper: dict[str, Any], where: str) -> None:
        _at_least(hyper, ("lr", "momentum", "weight_decay"), where)
        if hyper["nesterov"] and (hyper["momentum"] <= 0 or hyper["dampening"] != 0):
            raise ValueError(f"{where}nesterov=True needs momentum > 0 and dampening = 0, got momentum="
                             f"{hyper['momentum']}, dampening={hyper['dampening']}")

    def _update(self, p: Parameter, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        if group["maximize"]:
            grad = -grad
        if group["weight_decay"] != 0:
            grad = grad + group["weight_decay"] * p.data
        momentum = group["momentum"]
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * grad
            grad = grad + momentum * buf if group["nesterov"] else buf
        p.data -= group["lr"] * grad


class Adam(Optimizer):
    """Adam, PyTorch's arithmetic: per-parameter step t, m = lerp(m, g, 1-beta1), v = beta2*v + (1-beta2)*g*g,
    p -= lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps). weight_decay is an L2 term added to g, or with
    ``decoupled_weight_decay`` (AdamW) p *= 1 - lr*weight_decay before the step."""

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, amsgrad: bool = False, *, maximize: bool = False,
                 decoupled_weight_decay: bool = False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, decoupled_weight_decay=decoupled_weight_decay))

    def _check(self, hyper: dict[str, Any], where: str) -> None:
        _at_least(hyper, ("lr", "eps", "weight_decay"), where)
        betas = hyper["betas"]
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ValueError(f"{where}betas: expected two numbers in [0, 1), got {betas!r}")

    def _update(self, p: Parameter, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        xp = get_backend().xp
        if "step" not in state:
            state.update(step=0.0, exp_avg=xp.zeros_like(p.data), exp_avg_sq=xp.zeros_like(p.data))
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        lr, weight_decay = group["lr"], group["weight_decay"]
        if group["maximize"]:
            grad = -grad
        if weight_decay != 0:
            if group["decoupled_weight_decay"]:
                p.data *= 1 - lr * weight_decay
            else:
                grad = grad + weight_decay * p.data
        _lerp_(state["exp_avg"], grad, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"]
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * grad * grad
        if group["amsgrad"]:
            xp.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            exp_avg_sq = state["max_exp_avg_sq"]
        step = state["step"]
        step_size = lr / (1 - beta1 ** step)
        denom = xp.sqrt(exp_avg_sq) / (1 - beta2 ** step) ** 0.5 + group["eps"]
        p.data += -step_size * state["exp_avg"] / denom


class AdamW(Adam):
    """Adam with decoupled weight decay (p *= 1 - lr*weight_decay before the Adam step), PyTorch's defaults."""

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True)


def _lerp_(start: Any, end: Any, weight: float) -> None:
    """start += weight * (end - start) in place, in PyTorch's two forms (the one exact at its end of [0, 1])."""
    if abs(weight) < 0.5:
        start += weight * (end - start)
    else:
        start[...] = end - (end - start) * (1 - weight)


def _param_list(params: Any, where: str) -> list[Parameter]:
    """A group's parameters as a list of distinct leaf Tensors, or a TypeError/ValueError naming the problem."""
    if params is None:
        raise ValueError(f"{where}: a parameter group needs a 'params' entry")
    if isinstance(params, Tensor):
        return [params]
    if isinstance(params, (set, frozenset)):
        raise TypeError(f"{where}: parameters must be in an ordered collection (a list), not a set, whose order "
                        "changes between runs")
    params = list(params)
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"{where}: an optimizer can only optimize Tensors, got {type(p).__name__}")
        if not p.is_leaf:
            raise ValueError(f"{where}: cannot optimize a non-leaf Tensor (the result of an operation)")
    if len({id(p) for p in params}) != len(params):
        raise ValueError(f"{where}: a parameter appears more than once in the group")
    return params


def _at_least(hyper: dict[str, Any], names: tuple[str, ...], where: str, low: float = 0.0) -> None:
    """Refuse a hyper-parameter that is not a real number >= ``low``."""
    for name in names:
        value = hyper[name]
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                or math.isnan(value) or value < low:
            raise ValueError(f"{where}{name}: expected a number >= {low:g}, got {value!r}")


def _to_host(value: Any) -> Any:
    """A NumPy copy of a backend array; other values (the step count) as they are."""
    backend = get_backend()
    return np.array(backend.to_numpy(value)) if backend.is_array(value) or isinstance(value, np.ndarray) else value


def _to_param(value: Any, p: Parameter, what: str) -> Any:
    """A saved buffer as a fresh array of ``p``'s backend and dtype (shape checked); scalars as floats."""
    backend = get_backend()
    if not (backend.is_array(value) or isinstance(value, np.ndarray)):
        return float(value)
    host = np.array(backend.to_numpy(value), dtype=p.dtype)
    if host.shape != p.shape:
        raise ValueError(f"{what} has shape {host.shape}, the parameter has shape {p.shape}")
    return backend.asarray(host)


def _like(value: Any, current: Any) -> Any:
    """A loaded hyper-parameter in the type the optimizer holds (JSON turns ``betas`` tuples into lists)."""
    return tuple(value) if isinstance(current, tuple) and isinstance(value, list) else copy.deepcopy(value)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}

from xpnet import lr_scheduler  # noqa: E402  (last: lr_scheduler imports Optimizer from this module)

sys.modules[f"{__name__}.lr_scheduler"] = lr_scheduler  # so `from xpnet.optim.lr_scheduler import StepLR` works

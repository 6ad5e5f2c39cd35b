"""Layers as Modules with PyTorch's API: parameters(), state_dict(), train()/eval(), and PyTorch's default
initialisation, so a model here and its twin in PyTorch start comparable."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Iterator

import numpy as np

from xpnet import functional as F
from xpnet import random
from xpnet.autograd import Tensor, get_default_dtype
from xpnet.backend import get_backend


class Parameter(Tensor):
    """A Tensor that a Module owns and an Optimizer updates (requires grad by default)."""

    def __init__(self, data: Any, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)


class Module:
    """Base class: assign Parameters and Modules as attributes and they are registered in order."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args: Any) -> Any:
        return self.forward(*args)

    # --- traversal ------------------------------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, module in self._modules.items():
            yield from module.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def children(self) -> Iterator[Module]:
        return iter(self._modules.values())

    # --- modes ----------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Training mode (dropout active); ``train(False)`` is ``eval()``."""
        for _, module in self.named_modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def to(self, dtype: Any = None) -> Module:
        """Move every parameter to the active backend, optionally casting to ``dtype``."""
        backend = get_backend()
        for p in self.parameters():
            p.data = backend.asarray(backend.to_numpy(p.data), dtype=dtype or p.dtype)
            p.grad = None
        return self

    def double(self) -> Module:
        return self.to(np.float64)

    # --- weights --------------------------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Host (NumPy) copies of every parameter, by dotted name, as PyTorch names them."""
        backend = get_backend()
        return OrderedDict((name, backend.to_numpy(p.data).copy()) for name, p in self.named_parameters())

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Copy weights in by name; names and shapes must match exactly when ``strict``."""
        own = dict(self.named_parameters())
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict does not fit {type(self).__name__}: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
        values = {name: np.asarray(state[name]) for name in own if name in state}
        for name, value in values.items():  # check every shape before writing any, so a failure changes nothing
            if value.shape != own[name].shape:
                raise ValueError(f"state_dict[{name!r}] has shape {value.shape}, the model expects {own[name].shape}")
        backend = get_backend()
        for name, value in values.items():
            own[name].data = backend.asarray(value, dtype=own[name].dtype)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"({name}): {module!r}".replace("\n", "\n  ") for name, module in self._modules.items()]
        body = "\n  " + "\n  ".join(lines) + "\n" if lines else ""
        return f"{type(self).__name__}({self.extra_repr()}{body})"


def _uniform_parameter(shape: tuple[int, ...], bound: float) -> Parameter:
    """U(-bound, bound) from xpnet's seeded generator: PyTorch's default for Conv2d and Linear (fan-in bound)."""
    values = random.generator().uniform(-bound, bound, size=shape)
    return Parameter(values.astype(get_default_dtype()))


class Conv2D(Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        bound = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.weight = _uniform_parameter((out_channels, in_channels, kernel_size, kernel_size), bound)
        self.bias = _uniform_parameter((out_channels,), bound) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class Dense(Module):
    """Fully connected layer ``x @ W.T + b`` (also exported as ``Linear``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = _uniform_parameter((out_features, in_features), bound)
        self.bias = _uniform_parameter((out_features,), bound) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


Linear = Dense


class MaxPool2D(Module):
    def __init__(self, kernel_size: int = 2, stride: int | None = None):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride or self.kernel_size}"


class Dropout(Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Flatten(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.flatten(x)


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.relu()


class Sequential(Module):
    """Modules applied in order; children are named "0", "1", ... as in PyTorch."""

    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def forward(self, x: Tensor) -> Tensor:
        for layer in self._modules.values():
            x = layer(x)
        return x


class SoftmaxCrossEntropyLoss(Module):
    """Mean cross-entropy of integer targets under softmax(logits) (also exported as ``CrossEntropyLoss``)."""

    def forward(self, logits: Tensor, targets: Any) -> Tensor:
        return F.softmax_cross_entropy(logits, targets)


CrossEntropyLoss = SoftmaxCrossEntropyLoss

"""Layers as Modules with PyTorch's API: parameters(), state_dict(), train()/eval(), and PyTorch's default
initialisation, so a model here and its twin in PyTorch start comparable."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from xpnet import functional as F
from xpnet import nn_utils as utils  # noqa: F401  (torch.nn.utils's place: xpnet.nn.utils.clip_grad_norm_)
from xpnet import random, validate
from xpnet.autograd import Tensor, get_default_dtype
from xpnet.backend import get_backend
from xpnet.hooks import RemovableHandle


class Parameter(Tensor):
    """A Tensor that a Module owns and an Optimizer updates (requires grad by default)."""

    def __init__(self, data: Any, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)


class Module:
    """Base class: assign Parameters and Modules as attributes and they are registered in order; buffers (state
    that is saved but not trained, such as BatchNorm's running statistics) are registered with register_buffer."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent_buffers", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_pre_hooks", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        if name in self._buffers and not isinstance(value, (Parameter, Module)):
            self._buffers[name] = _as_buffer(name, value)
            return
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        self._buffers.pop(name, None)
        self._non_persistent_buffers.discard(name)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        """Buffers live only in ``_buffers`` (so that assigning one goes through __setattr__); read them here."""
        buffers = self.__dict__.get("_buffers")
        if buffers is not None and name in buffers:
            return buffers[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def register_buffer(self, name: str, tensor: Any, persistent: bool = True) -> None:
        """Add state that is not a parameter: an xpnet Tensor, an array (kept with its dtype) or None (a slot to
        fill later). Persistent buffers are part of ``state_dict()``; ``to()`` moves every buffer."""
        if "_buffers" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"buffer name must be a non-empty string without '.', got {name!r}")
        if name not in self._buffers and (name in self.__dict__ or hasattr(type(self), name)):
            raise KeyError(f"attribute {name!r} already exists on {type(self).__name__}")
        self._buffers[name] = _as_buffer(name, tensor)
        if persistent:
            self._non_persistent_buffers.discard(name)
        else:
            self._non_persistent_buffers.add(name)

    def forward(self, *args: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args: Any) -> Any:
        """Each forward pre-hook (a non-None result replaces the arguments), ``forward(*args)``, then each forward
        hook in registration order (a non-None result replaces the output the later hooks and the caller see)."""
        for pre_hook in tuple(self._forward_pre_hooks.values()):
            new_args = pre_hook(self, args)
            if new_args is not None:
                args = new_args if isinstance(new_args, tuple) else (new_args,)
        output = self.forward(*args)
        for hook in tuple(self._forward_hooks.values()):  # a snapshot: a hook may remove itself
            result = hook(self, args, output)
            if result is not None:
                output = result
        return output

    def register_forward_hook(self, hook: Callable[[Module, tuple[Any, ...], Any], Any]) -> RemovableHandle:
        """Call ``hook(module, args, output)`` after every forward pass, as PyTorch does; returns the handle whose
        ``remove()`` takes it off."""
        if not callable(hook):
            raise TypeError(f"register_forward_hook: hook must be callable, got {type(hook).__name__}")
        handle = RemovableHandle(self._forward_hooks)
        self._forward_hooks[handle.id] = hook
        return handle

    def register_forward_pre_hook(self, hook: Callable[[Module, tuple[Any, ...]], Any]) -> RemovableHandle:
        """Call ``hook(module, args)`` before every forward pass, as PyTorch does (a non-None result, a tuple or
        one value, replaces the arguments); returns the handle whose ``remove()`` takes it off."""
        if not callable(hook):
            raise TypeError(f"register_forward_pre_hook: hook must be callable, got {type(hook).__name__}")
        handle = RemovableHandle(self._forward_pre_hooks)
        self._forward_pre_hooks[handle.id] = hook
        return handle

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

    def named_buffers(self) -> Iterator[tuple[str, Tensor]]:
        """Every buffer that is set (not None), persistent or not, by dotted name, in named_modules order."""
        for prefix, module in self.named_modules():
            for name, b in module._buffers.items():
                if b is not None:
                    yield (f"{prefix}.{name}" if prefix else name), b

    def buffers(self) -> list[Tensor]:
        return [b for _, b in self.named_buffers()]

    def children(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def _state_tensors(self) -> OrderedDict[str, Tensor]:
        """What state_dict() saves, in PyTorch's order: per module, its parameters, then its persistent buffers."""
        state: OrderedDict[str, Tensor] = OrderedDict()
        for prefix, module in self.named_modules():
            dot = f"{prefix}." if prefix else ""
            state.update((dot + name, p) for name, p in module._parameters.items())
            state.update((dot + name, b) for name, b in module._buffers.items()
                         if b is not None and name not in module._non_persistent_buffers)
        return state

    # --- modes ----------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Training mode (dropout active, BatchNorm on batch statistics); ``train(False)`` is ``eval()``."""
        for _, module in self.named_modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def to(self, dtype: Any = None) -> Module:
        """Move every parameter and buffer to the active backend, casting the floating-point ones to ``dtype``
        (integer buffers such as BatchNorm's num_batches_tracked keep their dtype, as in PyTorch)."""
        if dtype is not None and np.dtype(dtype).kind != "f":
            raise TypeError(f"Module.to only casts to floating-point dtypes, got {np.dtype(dtype)}")
        backend = get_backend()
        for t in [*self.parameters(), *self.buffers()]:
            cast = dtype if dtype is not None and t.dtype.kind == "f" else t.dtype
            t.data = backend.asarray(backend.to_numpy(t.data), dtype=cast)
            t.grad = None
        return self

    def double(self) -> Module:
        return self.to(np.float64)

    # --- weights --------------------------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Host (NumPy) copies of every parameter and persistent buffer, by dotted name, as PyTorch names and
        orders them."""
        backend = get_backend()
        return OrderedDict((name, backend.to_numpy(t.data).copy()) for name, t in self._state_tensors().items())

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Copy parameters and buffers in by name, each keeping its own dtype; names must match exactly when
        ``strict``, and every shape is checked before anything is written, so a failure changes nothing."""
        own = self._state_tensors()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict does not fit {type(self).__name__}: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
        values = {name: np.asarray(state[name]) for name in own if name in state}
        for name, value in values.items():
            if value.shape != own[name].shape:
                raise ValueError(f"state_dict[{name!r}] has shape {value.shape}, the model expects {own[name].shape}")
        backend = get_backend()
        for name, value in values.items():
            own[name].data = backend.asarray(value, dtype=own[name].dtype)

    def summary(self, input_shape: tuple[int, ...]) -> str:
        """Keras-style table of every leaf layer's output shape, parameters and multiply-adds on one input of
        ``input_shape`` (without the batch, e.g. (C, H, W)), with the totals; see xpnet/summary.py."""
        from xpnet.summary import summarize  # summary imports the layers defined here

        return str(summarize(self, input_shape))

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"({name}): {module!r}".replace("\n", "\n  ") for name, module in self._modules.items()]
        body = "\n  " + "\n  ".join(lines) + "\n" if lines else ""
        return f"{type(self).__name__}({self.extra_repr()}{body})"


def _as_buffer(name: str, value: Any) -> Tensor | None:
    """``value`` as a buffer: None, or a Tensor that needs no gradient (an array keeps its dtype)."""
    if value is None or (type(value) is Tensor and not value.requires_grad):
        return value
    if isinstance(value, Tensor):
        return Tensor(value.data)
    if isinstance(value, np.ndarray) or get_backend().is_array(value):
        return Tensor(value)
    raise TypeError(f"cannot use {type(value).__name__} as buffer {name!r} (an xpnet Tensor, an array or None "
                    f"expected)")


def _uniform_parameter(shape: tuple[int, ...], bound: float) -> Parameter:
    """U(-bound, bound) from xpnet's seeded generator: PyTorch's default for Conv2d and Linear (fan-in bound)."""
    values = random.generator().uniform(-bound, bound, size=shape)
    return Parameter(values.astype(get_default_dtype()))


class Conv2d(Module):
    """2-D convolution with PyTorch's arguments, attributes, initialisation and state_dict keys.

    ``kernel_size``, ``stride`` and ``dilation`` are kept as pairs and ``padding`` as a pair or the string
    ("valid" or "same"), as PyTorch keeps them. Weight (out, in / groups, kH, kW) and then bias are drawn from
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in / groups * kH * kW. Only zero padding is supported.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: F.IntPair, stride: F.IntPair = 1,
                 padding: F.Padding = 0, dilation: F.IntPair = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros"):
        super().__init__()
        _check_conv_layer(in_channels, out_channels, groups, padding_mode)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = F._conv_pair(kernel_size, "kernel_size", 1)
        self.stride, self.dilation = F._conv_pair(stride, "stride", 1), F._conv_pair(dilation, "dilation", 1)
        self.padding = padding if isinstance(padding, str) else F._conv_pair(padding, "padding", 0)
        F.conv_padding(self.padding, self.kernel_size, self.stride, self.dilation)  # refused now, as by PyTorch
        self.groups, self.padding_mode = groups, padding_mode
        kh, kw = self.kernel_size
        bound = 1.0 / math.sqrt(in_channels // groups * kh * kw)
        self.weight = _uniform_parameter((out_channels, in_channels // groups, kh, kw), bound)
        self.bias = _uniform_parameter((out_channels,), bound) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        """PyTorch's wording: settings at their defaults are left out."""
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        return text


def _check_conv_layer(in_channels: int, out_channels: int, groups: int, padding_mode: str) -> None:
    """Refuse channel counts that do not split into ``groups`` and padding modes other than zeros."""
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"Conv2d: {name} must be a positive int, got {value!r}")
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if value % groups:
            raise ValueError(f"Conv2d: {name} ({value}) must be divisible by groups ({groups})")
    if padding_mode != "zeros":
        raise ValueError(f"Conv2d: padding_mode {padding_mode!r} is not supported; xpnet pads with zeros only "
                         f"(padding_mode='zeros')")


Conv2D = Conv2d  # the name xpnet used first


class Linear(Module):
    """Fully connected layer ``x @ W.T + b`` over the last dimension (also exported as ``Dense``, xpnet's first
    name). Weight (out_features, in_features) and bias from U(-1/sqrt(in_features), 1/sqrt(in_features))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not validate.is_int(value) or value < 1:
                raise ValueError(f"Linear: {name} must be a positive int, got {value!r}")
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = _uniform_parameter((out_features, in_features), bound)
        self.bias = _uniform_parameter((out_features,), bound) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


Dense = Linear  # the name xpnet used first


# --- pooling ----------------------------------------------------------------------------------------------------

class MaxPool2d(Module):
    """``F.max_pool2d`` with PyTorch's arguments and attributes (``stride`` None means the kernel size).
    Only ``dilation=1`` and ``return_indices=False`` are supported; others are refused here."""

    def __init__(self, kernel_size: F.IntPair, stride: F.IntPair | None = None, padding: F.IntPair = 0,
                 dilation: F.IntPair = 1, return_indices: bool = False, ceil_mode: bool = False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.dilation = padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode
        F.max_pool_options("MaxPool2d", kernel_size, self.stride, padding, dilation, return_indices)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                            self.return_indices)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


MaxPool2D = MaxPool2d  # the name xpnet used first


class AvgPool2d(Module):
    """``F.avg_pool2d`` with PyTorch's arguments and attributes (``stride`` None means the kernel size)."""

    def __init__(self, kernel_size: F.IntPair, stride: F.IntPair | None = None, padding: F.IntPair = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.ceil_mode = padding, ceil_mode
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override
        F.avg_pool_options("AvgPool2d", kernel_size, self.stride, padding, divisor_override)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                            self.divisor_override)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """``F.adaptive_avg_pool2d`` to ``output_size`` (int or pair; None keeps that input size)."""

    def __init__(self, output_size: Any):
        super().__init__()
        self.output_size = output_size

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


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
    """Merge dimensions ``start_dim`` .. ``end_dim`` (by default all but the batch)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        return F.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    """Returns its input; takes and ignores any arguments, as PyTorch's."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return x


# --- activations ------------------------------------------------------------------------------------------------

class ReLU(Module):
    """max(x, 0). ``inplace`` is accepted for PyTorch's layer definitions; the result is a new tensor."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        return x.relu()

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class LeakyReLU(Module):
    """x where positive, ``negative_slope * x`` elsewhere; ``inplace`` as for ReLU."""

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__()
        self.negative_slope, self.inplace = negative_slope, inplace

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class Sigmoid(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.sigmoid()


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.tanh()


class GELU(Module):
    """x * Phi(x), exact (``approximate="none"``) or with PyTorch's tanh approximation (``"tanh"``)."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class Softmax(Module):
    """softmax along ``dim`` (None: PyTorch's deprecated implicit choice, with its warning)."""

    def __init__(self, dim: int | None = None):
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return F.softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Module):
    """log_softmax along ``dim`` (None: PyTorch's deprecated implicit choice, with its warning)."""

    def __init__(self, dim: int | None = None):
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return F.log_softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


# --- containers -------------------------------------------------------------------------------------------------

def _checked_module(container: str, module: Any) -> Module:
    if not isinstance(module, Module):
        raise TypeError(f"{container}: {type(module).__name__} is not a Module subclass")
    return module


class Sequential(Module):
    """Modules applied in order; children are named "0", "1", ... as in PyTorch, or by the keys of one
    OrderedDict argument. A slice is a Sequential of the same children under the same names."""

    def __init__(self, *layers: Module):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], OrderedDict):
            for name, layer in layers[0].items():
                setattr(self, name, _checked_module("Sequential", layer))
            return
        for i, layer in enumerate(layers):
            setattr(self, str(i), _checked_module("Sequential", layer))

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, index: int | slice) -> Module:
        if isinstance(index, slice):
            return Sequential(OrderedDict(list(self._modules.items())[index]))
        return list(self._modules.values())[_position(index, len(self))]

    def forward(self, x: Tensor) -> Tensor:
        for layer in self._modules.values():
            x = layer(x)
        return x


def _position(index: int, length: int) -> int:
    """``index`` (negative counts from the end) as a position in ``range(length)``; IndexError otherwise."""
    if not isinstance(index, int) or isinstance(index, bool) or not -length <= index < length:
        raise IndexError(f"index {index!r} is out of range for {length} modules")
    return index % length


class ModuleList(Module):
    """A list of Modules registered as children "0", "1", ..., renumbered after an insert or a delete, as
    PyTorch's ModuleList. It has no forward: the owner decides how the modules are called."""

    def __init__(self, modules: Iterable[Module] | None = None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _assign(self, modules: list[Module]) -> None:
        """Make ``modules`` the children, named by their positions."""
        for name in list(self._modules):
            del self._modules[name]
            self.__dict__.pop(name, None)
        for i, module in enumerate(modules):
            setattr(self, str(i), module)

    def __getitem__(self, index: int | slice) -> Module | ModuleList:
        if isinstance(index, slice):
            return ModuleList(list(self._modules.values())[index])
        return list(self._modules.values())[_position(index, len(self))]

    def __setitem__(self, index: int, module: Module) -> None:
        modules = list(self._modules.values())
        modules[_position(index, len(self))] = _checked_module("ModuleList", module)
        self._assign(modules)

    def __delitem__(self, index: int | slice) -> None:
        modules = list(self._modules.values())
        del modules[index if isinstance(index, slice) else _position(index, len(self))]
        self._assign(modules)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self._modules.values()))

    def __iadd__(self, modules: Iterable[Module]) -> ModuleList:
        return self.extend(modules)

    def append(self, module: Module) -> ModuleList:
        setattr(self, str(len(self)), _checked_module("ModuleList", module))
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        if not isinstance(modules, Iterable):
            raise TypeError(f"ModuleList.extend should be called with an iterable of Modules, got "
                            f"{type(modules).__name__}")
        for module in list(modules):
            self.append(module)
        return self

    def insert(self, index: int, module: Module) -> None:
        modules = list(self._modules.values())
        modules.insert(index, _checked_module("ModuleList", module))
        self._assign(modules)


# --- losses -----------------------------------------------------------------------------------------------------

def _register_class_weight(loss: Module, weight: Any) -> None:
    """PyTorch's weighted losses keep ``weight`` (C,) as a buffer: in state_dict() when given, moved by to()."""
    loss.register_buffer("weight", weight if weight is None or isinstance(weight, Tensor) else np.asarray(weight))


class NLLLoss(Module):
    """``F.nll_loss`` with fixed options; ``weight`` is a buffer, as in PyTorch."""

    def __init__(self, weight: Any = None, *, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__()
        F.check_reduction("NLLLoss", reduction)
        _register_class_weight(self, weight)
        self.ignore_index, self.reduction = ignore_index, reduction

    def forward(self, input: Tensor, target: Any) -> Tensor:  # noqa: A002
        return F.nll_loss(input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction)


class CrossEntropyLoss(Module):
    """``F.cross_entropy`` with fixed options (also exported as ``SoftmaxCrossEntropyLoss``, xpnet's first
    name); ``weight`` is a buffer, as in PyTorch."""

    def __init__(self, weight: Any = None, *, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0):
        super().__init__()
        F.check_reduction("CrossEntropyLoss", reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
        _register_class_weight(self, weight)
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing

    def forward(self, input: Tensor, target: Any) -> Tensor:  # noqa: A002
        return F.cross_entropy(input, target, self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


SoftmaxCrossEntropyLoss = CrossEntropyLoss


# --- batch normalisation ----------------------------------------------------------------------------------------

class _BatchNorm(Module):
    """BatchNorm1d/2d's shared body, as PyTorch's ``_BatchNorm``: weight ones, bias zeros, buffers running_mean
    zeros, running_var ones and num_batches_tracked (int64 0); momentum=None is the cumulative moving average."""

    _layouts: dict[int, str] = {}  # accepted input ndim -> its layout, "{c}" standing for num_features

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, bias: bool = True):
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"{type(self).__name__} num_features must be a positive int, got {num_features!r}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        dtype = get_default_dtype()
        self.weight = Parameter(np.ones(num_features, dtype)) if affine else None
        self.bias = Parameter(np.zeros(num_features, dtype)) if affine and bias else None
        tracked = track_running_stats
        self.register_buffer("running_mean", np.zeros(num_features, dtype) if tracked else None)
        self.register_buffer("running_var", np.ones(num_features, dtype) if tracked else None)
        self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64) if tracked else None)

    def _check_input(self, x: Tensor) -> None:
        layouts = " or ".join(layout.format(c=self.num_features) for layout in self._layouts.values())
        if x.ndim not in self._layouts or x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) expects input {layouts}, "
                             f"got shape {x.shape}")

    def forward(self, x: Tensor) -> Tensor:
        """PyTorch's _BatchNorm.forward, except that num_batches_tracked counts only batches that were accepted."""
        self._check_input(x)
        counts = self.training and self.track_running_stats and self.num_batches_tracked is not None
        factor = 0.0 if self.momentum is None else self.momentum
        if counts and self.momentum is None:
            factor = 1.0 / (self.num_batches_tracked.item() + 1)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        passes_stats = not self.training or self.track_running_stats
        out = F.batch_norm(x, self.running_mean if passes_stats else None,
                           self.running_var if passes_stats else None, self.weight, self.bias, use_batch_stats,
                           factor, self.eps)
        if counts:
            self.num_batches_tracked.data += 1
        return out

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) inputs over N (and L), per channel C."""

    _layouts = {2: "(N, {c})", 3: "(N, {c}, L)"}


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) inputs over N, H and W, per channel C."""

    _layouts = {4: "(N, {c}, H, W)"}

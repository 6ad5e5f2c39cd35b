"""PyTorch twins of xpnet models: ``to_torch``, ``from_torch`` and ``load_state_dict`` with PyTorch's names.

Every xpnet layer maps to the torch layer of the same name with the same settings (constructor arguments read
back as attributes of the same name, as both frameworks keep them), parameters and buffers. Containers and
composite models (Sequential, ModuleList, xpnet.models' BasicBlock and ResNet) map through a registry of
"twins": a pair of classes whose forwards compute the same thing from the same child names and plain attributes.
Register your own with ``register_twin(MyXpnetModule, MyTorchModule)``.

Weights and buffers are copied, never shared, so the two models can then train side by side
(``python -m xpnet.check``); dtype and each module's train/eval mode are carried over. Importing this module
imports torch; nothing else in xpnet does.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Callable, Mapping, Sequence

import numpy as np

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only where torch is absent
    raise ImportError("xpnet.interop.torch needs PyTorch: pip install 'xpnet[torch]'") from exc

from xpnet import models, nn, random
from xpnet.autograd import Tensor
from xpnet.backend import get_backend

__all__ = ["MaskedDropout", "TorchBasicBlock", "TorchResNet", "from_torch", "load_state_dict", "register_twin",
           "to_numpy", "to_torch"]


def to_numpy(value: Any) -> np.ndarray:
    """A host NumPy array from a torch tensor (any device), an xpnet Tensor or anything ``np.asarray`` takes."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, Tensor):
        return value.numpy()
    return get_backend().to_numpy(value) if get_backend().is_array(value) else np.asarray(value)


# --- the layer table -----------------------------------------------------------------------------------------------

# xpnet layer name -> the torch layer of that name; both are built from the same settings.
_LAYER_NAMES = {
    "Conv2d": torch.nn.Conv2d, "Linear": torch.nn.Linear, "BatchNorm1d": torch.nn.BatchNorm1d,
    "BatchNorm2d": torch.nn.BatchNorm2d, "MaxPool2d": torch.nn.MaxPool2d, "AvgPool2d": torch.nn.AvgPool2d,
    "AdaptiveAvgPool2d": torch.nn.AdaptiveAvgPool2d, "Dropout": torch.nn.Dropout, "Flatten": torch.nn.Flatten,
    "ReLU": torch.nn.ReLU, "Sigmoid": torch.nn.Sigmoid, "Tanh": torch.nn.Tanh, "LeakyReLU": torch.nn.LeakyReLU,
    "GELU": torch.nn.GELU, "Softmax": torch.nn.Softmax, "LogSoftmax": torch.nn.LogSoftmax,
    "Identity": torch.nn.Identity, "NLLLoss": torch.nn.NLLLoss, "CrossEntropyLoss": torch.nn.CrossEntropyLoss,
}
_LAYERS: dict[type, type] = {getattr(nn, name): cls for name, cls in _LAYER_NAMES.items()}
_LAYERS_FROM_TORCH: dict[type, type] = {cls: layer for layer, cls in _LAYERS.items()}
# torch settings that change only whether the input's memory is reused, never a result: xpnet needs no equivalent.
_MEMORY_ONLY = {"inplace"}
_FACTORY_ONLY = {"device", "dtype"}


def _settings(cls: type) -> dict[str, inspect.Parameter]:
    """The named constructor arguments of a layer class (``self`` and ``*args``/``**kwargs`` left out)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name: p for name, p in list(inspect.signature(cls.__init__).parameters.items())[1:] if p.kind in kinds}


def _setting(layer: Any, name: str, where: str) -> Any:
    """A layer's constructor argument ``name`` read back from the attribute of that name (bias: whether it has
    one), copied; an array setting (a loss's class ``weight``) comes as a NumPy array."""
    if name == "bias":
        return getattr(layer, "bias", None) is not None
    if not hasattr(layer, name):
        raise TypeError(f"layer {where!r} ({type(layer).__name__}) has no attribute {name!r} to carry its "
                        f"constructor argument of that name over")
    value = getattr(layer, name)
    if isinstance(value, (torch.Tensor, Tensor)) or get_backend().is_array(value):
        return to_numpy(value).copy()
    return copy.deepcopy(value)


def _is_default(value: Any, default: Any) -> bool:
    """Whether a torch setting is at its default; a pair counts as the int default when both entries equal it."""
    if isinstance(value, torch.Tensor) or isinstance(default, torch.Tensor):
        return value is default
    if isinstance(value, tuple) and not isinstance(default, tuple):
        return all(v == default for v in value)
    return bool(value == default)


# --- twins: containers and composite models ------------------------------------------------------------------------

_TWINS: dict[type, type] = {}
_TWINS_FROM_TORCH: dict[type, type] = {}


def register_twin(xpnet_class: type, torch_class: type) -> None:
    """Map the composite xpnet Module ``xpnet_class`` to the torch Module ``torch_class`` and back.

    The two classes' forwards must compute the same thing from the same child modules, parameters, buffers and
    plain attributes (ints, tuples, strings): ``to_torch``/``from_torch`` create the twin without calling its
    ``__init__`` and give it the other's children (converted), copies of its parameters and buffers, and copies of
    its plain attributes, under the same names. Registering a class again replaces its twin.
    """
    if not (isinstance(xpnet_class, type) and issubclass(xpnet_class, nn.Module)):
        raise TypeError(f"register_twin: xpnet_class must be a subclass of xpnet.nn.Module, got {xpnet_class!r}")
    if not (isinstance(torch_class, type) and issubclass(torch_class, torch.nn.Module)):
        raise TypeError(f"register_twin: torch_class must be a subclass of torch.nn.Module, got {torch_class!r}")
    if xpnet_class in _LAYERS or torch_class in _LAYERS_FROM_TORCH:
        raise ValueError(f"register_twin: {xpnet_class.__name__} / {torch_class.__name__} is a built-in layer; "
                         f"its mapping carries settings and cannot be replaced")
    _TWINS[xpnet_class] = torch_class
    _TWINS_FROM_TORCH[torch_class] = xpnet_class


_XPNET_INTERNALS = frozenset(nn.Module().__dict__)
_TORCH_INTERNALS = frozenset(torch.nn.Module().__dict__)


def _plain_attributes(module: Any, internals: frozenset[str], registered: set[str], where: str) -> dict[str, Any]:
    """Copies of a composite module's own attributes that are neither framework state nor registered children,
    parameters or buffers (widths, counts, and children or parameters set to None)."""
    plain = {}
    for name, value in vars(module).items():
        if name in internals or name in registered:
            continue
        if isinstance(value, (Tensor, torch.Tensor, nn.Module, torch.nn.Module)):
            raise TypeError(f"layer {where!r} ({type(module).__name__}) holds {type(value).__name__} {name!r} "
                            f"outside its registered parameters, buffers and children; it cannot be carried over")
        plain[name] = copy.deepcopy(value)
    return plain


def _new_torch_twin(cls: type, module: nn.Module, where: str) -> torch.nn.Module:
    """An instance of torch twin ``cls`` made without its ``__init__``, holding ``module``'s plain attributes."""
    twin = cls.__new__(cls)
    torch.nn.Module.__init__(twin)
    registered = set(module._parameters) | set(module._modules) | set(_xpnet_buffers(module))
    for name, value in _plain_attributes(module, _XPNET_INTERNALS, registered, where).items():
        setattr(twin, name, value)
    return twin


def _new_xpnet_twin(cls: type, module: torch.nn.Module, where: str) -> nn.Module:
    """An instance of xpnet twin ``cls`` made without its ``__init__``, holding ``module``'s plain attributes."""
    twin = cls.__new__(cls)
    nn.Module.__init__(twin)
    registered = set(module._parameters) | set(module._modules) | set(module._buffers)
    for name, value in _plain_attributes(module, _TORCH_INTERNALS, registered, where).items():
        setattr(twin, name, value)
    return twin


def _how_to_register(cls: type) -> str:
    return (f"register a twin with xpnet.interop.torch.register_twin(xpnet_class, torch_class) for "
            f"{cls.__module__}.{cls.__qualname__}: a class whose forward computes the same from the same child names")


# --- buffers, as each framework holds them -------------------------------------------------------------------------

def _xpnet_buffers(module: nn.Module) -> dict[str, Any]:
    """``module``'s own buffers by name (Tensors, or None for an unset one)."""
    return dict(module._buffers)


def _xpnet_persistent(module: nn.Module, name: str) -> bool:
    return name not in module._non_persistent_buffers


def _set_xpnet_buffer(module: nn.Module, name: str, value: np.ndarray, persistent: bool) -> None:
    module.register_buffer(name, get_backend().asarray(value.copy()), persistent=persistent)


# --- xpnet -> torch ------------------------------------------------------------------------------------------------

def _torch_layer(layer: nn.Module, where: str) -> torch.nn.Module:
    """A torch layer with ``layer``'s settings and uninitialised parameters (torch's generator is not drawn from)."""
    cls = _LAYERS[type(layer)]
    theirs = _settings(cls)
    kwargs = {}
    for name in _settings(type(layer)):
        if name not in theirs:
            raise TypeError(f"to_torch: layer {where!r} ({type(layer).__name__}) has setting {name!r}, which "
                            f"torch.nn.{cls.__name__} does not take")
        value = _setting(layer, name, where)
        kwargs[name] = torch.from_numpy(value) if isinstance(value, np.ndarray) else value
    if "device" in theirs:
        return torch.nn.utils.skip_init(cls, **kwargs)
    return cls(**kwargs)


def _copy_into_torch(target: torch.nn.Module, source: nn.Module, where: str) -> None:
    """Copies of ``source``'s own parameters and buffers into ``target`` under the same names, shapes checked."""
    for name, p in source._parameters.items():
        value = to_numpy(p.data).copy()
        expected = target._parameters.get(name)
        if expected is not None and tuple(expected.shape) != value.shape:
            raise ValueError(f"to_torch: parameter {where}.{name} has shape {value.shape}, torch expects "
                             f"{tuple(expected.shape)}")
        setattr(target, name, torch.nn.Parameter(torch.from_numpy(value), requires_grad=p.requires_grad))
    for name, value in _xpnet_buffers(source).items():
        if value is not None:  # an unset buffer (BatchNorm without running stats) is the layer's own business
            target.register_buffer(name, torch.from_numpy(to_numpy(value).copy()),
                                   persistent=_xpnet_persistent(source, name))
    _same_state_names(target._parameters, source._parameters, "parameters", where)
    _same_state_names(target._buffers, _xpnet_buffers(source), "buffers", where)


def _same_state_names(theirs: Mapping[str, Any], ours: Mapping[str, Any], what: str, where: str) -> None:
    """Both sides hold the same set of (non-None) parameters or buffers."""
    a = sorted(k for k, v in theirs.items() if v is not None)
    b = sorted(k for k, v in ours.items() if v is not None)
    if a != b:
        raise ValueError(f"layer {where!r}: torch holds {what} {a}, xpnet {b}")


def _to_torch(module: nn.Module, where: str) -> torch.nn.Module:
    """One xpnet module and everything under it as torch modules."""
    cls = type(module)
    if cls in _TWINS:
        target = _new_torch_twin(_TWINS[cls], module, where)
        for name, child in module._modules.items():
            target.add_module(name, _to_torch(child, f"{where}.{name}" if where else name))
    elif cls in _LAYERS:
        target = _torch_layer(module, where or "<root>")
    else:
        raise TypeError(f"to_torch: no PyTorch equivalent for layer {where or '<root>'!r} of type {cls.__name__}; "
                        + _how_to_register(cls))
    _copy_into_torch(target, module, where or "<root>")
    target.training = module.training
    return target


def to_torch(model: nn.Module) -> torch.nn.Module:
    """The PyTorch twin of ``model``: same layers and settings, child names, parameters, buffers, dtype and
    train/eval mode, on the CPU. TypeError names the first module without a torch equivalent."""
    return _to_torch(model, "")


# --- torch -> xpnet ------------------------------------------------------------------------------------------------

def _xpnet_layer(layer: torch.nn.Module, where: str) -> nn.Module:
    """An xpnet layer with ``layer``'s settings; a torch setting xpnet lacks must be at its default (ValueError)."""
    cls = _LAYERS_FROM_TORCH[type(layer)]
    ours = _settings(cls)
    for name, p in _settings(type(layer)).items():
        if name in ours or name in _MEMORY_ONLY or name in _FACTORY_ONLY:
            continue
        value = getattr(layer, name, p.default)
        if not _is_default(value, p.default):
            raise ValueError(f"from_torch: layer {where!r} ({layer!r}) has {name}={value!r}, which xpnet's "
                             f"{cls.__name__} does not support")
    backend = get_backend()
    kwargs = {name: _setting(layer, name, where) for name in ours}
    kwargs = {name: backend.asarray(v) if isinstance(v, np.ndarray) else v for name, v in kwargs.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"from_torch: layer {where!r} ({layer!r}) has settings xpnet's {cls.__name__} does not "
                         f"support: {exc}") from None


def _copy_into_xpnet(target: nn.Module, source: torch.nn.Module, where: str) -> None:
    """Copies of ``source``'s own parameters and buffers into ``target`` under the same names, shapes checked."""
    backend = get_backend()
    for name, p in source._parameters.items():
        if p is None:
            setattr(target, name, None)
            continue
        value = to_numpy(p).copy()
        expected = target._parameters.get(name)
        if expected is not None and expected.shape != value.shape:
            raise ValueError(f"from_torch: parameter {where}.{name} has shape {value.shape}, xpnet expects "
                             f"{expected.shape}")
        setattr(target, name, nn.Parameter(backend.asarray(value), requires_grad=p.requires_grad))
    for name, value in source._buffers.items():
        if value is not None:  # an unset buffer (BatchNorm without running stats) is the layer's own business
            _set_xpnet_buffer(target, name, to_numpy(value), name not in source._non_persistent_buffers_set)
    _same_state_names(source._parameters, target._parameters, "parameters", where)
    _same_state_names(source._buffers, _xpnet_buffers(target), "buffers", where)


def _from_torch(module: torch.nn.Module, where: str) -> nn.Module:
    """One torch module and everything under it as xpnet modules."""
    cls = type(module)
    if cls in _TWINS_FROM_TORCH:
        target = _new_xpnet_twin(_TWINS_FROM_TORCH[cls], module, where)
        for name, child in module._modules.items():
            setattr(target, name, None if child is None else _from_torch(child, f"{where}.{name}" if where else name))
    elif cls in _LAYERS_FROM_TORCH:
        target = _xpnet_layer(module, where or "<root>")
    else:
        supported = ", ".join(sorted(c.__name__ for c in (*_LAYERS_FROM_TORCH, *_TWINS_FROM_TORCH)))
        raise TypeError(f"from_torch: unsupported layer {where or '<root>'!r} of type {cls.__name__} (xpnet has: "
                        f"{supported}); or " + _how_to_register(cls))
    _copy_into_xpnet(target, module, where or "<root>")
    object.__setattr__(target, "training", module.training)
    return target


def from_torch(module: torch.nn.Module) -> nn.Module:
    """The xpnet twin of a torch model built from layers xpnet has and registered twins (TypeError naming the
    first one it lacks): same names, settings, parameters, buffers, dtype and train/eval mode, on the active
    backend. xpnet's generator is left as it was."""
    state = random.get_state()
    try:
        return _from_torch(module, "")
    finally:
        random.set_state(state)  # the layers' throwaway initial weights must not shift later draws


def load_state_dict(model: nn.Module, state: Mapping[str, Any]) -> None:
    """Load a PyTorch ``state_dict`` (torch tensors or NumPy arrays, PyTorch's names: "0.weight",
    "bn1.running_mean", ...) into ``model``: parameters in the model's dtype, buffers included. Everything is
    checked before anything is written: missing or unexpected keys raise KeyError and a mis-shaped value
    ValueError, each naming the keys."""
    model.load_state_dict({name: to_numpy(value) for name, value in state.items()})


# --- twins of xpnet.models -----------------------------------------------------------------------------------------

class TorchBasicBlock(torch.nn.Module):
    """The torch twin of ``xpnet.models.BasicBlock``: same children (conv1, bn1, conv2, bn2, downsample)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(out_channels)
        self.conv2 = torch.nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = torch.nn.Sequential(
                torch.nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                torch.nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.nn.functional.relu(out + shortcut)


class TorchResNet(torch.nn.Module):
    """The torch twin of ``xpnet.models.ResNet``: conv1, bn1, layer1..layerN (``stages``), avgpool, fc."""

    def __init__(self, input_shape: Sequence[int] = models.MNIST_SHAPE, num_classes: int = 10,
                 widths: Sequence[int] = (16, 32, 64), blocks: Sequence[int] = (1, 1, 1)):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(input_shape[0], widths[0], 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(widths[0])
        channels = widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks), 1):
            layers = []
            for i in range(count):
                layers.append(TorchBasicBlock(channels, width, stride=2 if stage > 1 and i == 0 else 1))
                channels = width
            setattr(self, f"layer{stage}", torch.nn.Sequential(*layers))
        self.stages = len(widths)
        self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.relu(self.bn1(self.conv1(x)))
        for stage in range(1, self.stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _register_builtin_twins() -> None:
    for ours, theirs in [(nn.Sequential, torch.nn.Sequential), (nn.ModuleList, torch.nn.ModuleList),
                         (models.BasicBlock, TorchBasicBlock), (models.ResNet, TorchResNet)]:
        register_twin(ours, theirs)


_register_builtin_twins()


class MaskedDropout(torch.nn.Module):
    """Inverted dropout whose keep-masks come from ``draw(shape)`` (boolean, True = keep) instead of torch's
    generator, scaled exactly as ``xpnet.functional.dropout`` scales: so both frameworks drop the same units."""

    def __init__(self, p: float, draw: Callable[[tuple[int, ...]], Any]):
        super().__init__()
        self.p, self.draw = p, draw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        dtype = torch.empty((), dtype=x.dtype).numpy().dtype
        keep = to_numpy(self.draw(tuple(x.shape)))
        if keep.shape != tuple(x.shape):
            raise ValueError(f"dropout mask shape {keep.shape} does not match input shape {tuple(x.shape)}")
        scale = keep.astype(dtype) / np.asarray(1.0 - self.p, dtype=dtype)
        return x * torch.from_numpy(scale).to(x.device)

    def extra_repr(self) -> str:
        return f"p={self.p}"

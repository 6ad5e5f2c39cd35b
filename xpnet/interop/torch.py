"""PyTorch twins of xpnet models: ``to_torch``, ``from_torch`` and ``load_state_dict`` with PyTorch's names.

Weights are copied, never shared, so the two models can then train side by side (``python -m xpnet.check``).
Importing this module imports torch; nothing else in xpnet does.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only where torch is absent
    raise ImportError("xpnet.interop.torch needs PyTorch: pip install 'xpnet[torch]'") from exc

from xpnet import nn, random
from xpnet.autograd import Tensor
from xpnet.backend import get_backend

__all__ = ["MaskedDropout", "from_torch", "load_state_dict", "to_numpy", "to_torch"]


def to_numpy(value: Any) -> np.ndarray:
    """A host NumPy array from a torch tensor (any device), an xpnet Tensor or anything ``np.asarray`` takes."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, Tensor):
        return value.numpy()
    return np.asarray(value)


def _torch_parameter(module: nn.Module, name: str) -> torch.nn.Parameter | None:
    param = getattr(module, name)
    return None if param is None else torch.nn.Parameter(torch.from_numpy(param.numpy().copy()))


def _copy_weights(target: torch.nn.Module, source: nn.Module) -> torch.nn.Module:
    for name in ("weight", "bias"):
        setattr(target, name, _torch_parameter(source, name))
    return target


def _layer_to_torch(layer: nn.Module, path: str) -> torch.nn.Module:
    """One xpnet layer as the equivalent torch module, weights and dtype included."""
    if isinstance(layer, nn.Sequential):
        return torch.nn.Sequential(*(_layer_to_torch(child, f"{path}.{i}" if path else str(i))
                                     for i, child in enumerate(layer)))
    if isinstance(layer, nn.Conv2D):
        conv = torch.nn.utils.skip_init(torch.nn.Conv2d, layer.in_channels, layer.out_channels, layer.kernel_size,
                                        stride=layer.stride, padding=layer.padding, bias=layer.bias is not None)
        return _copy_weights(conv, layer)
    if isinstance(layer, nn.Dense):
        dense = torch.nn.utils.skip_init(torch.nn.Linear, layer.in_features, layer.out_features,
                                         bias=layer.bias is not None)
        return _copy_weights(dense, layer)
    if isinstance(layer, nn.MaxPool2D):
        return torch.nn.MaxPool2d(layer.kernel_size, layer.stride)
    if isinstance(layer, nn.Dropout):
        return torch.nn.Dropout(layer.p)
    if isinstance(layer, nn.Flatten):
        return torch.nn.Flatten()
    if isinstance(layer, nn.ReLU):
        return torch.nn.ReLU()
    raise TypeError(f"to_torch: no PyTorch equivalent for layer {path or '<root>'!r} of type "
                    f"{type(layer).__name__}")


def to_torch(model: nn.Module) -> torch.nn.Module:
    """The PyTorch twin of ``model`` (a Sequential gives a ``torch.nn.Sequential``): same layers, names, weights,
    dtype and train/eval mode, on the CPU."""
    return _layer_to_torch(model, "").train(model.training)


def _square(value: Any, what: str, path: str, layer: torch.nn.Module) -> int:
    """A torch int-or-pair setting as the single int xpnet's layers take."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if isinstance(value, str) or len(pair) != 2 or pair[0] != pair[1]:
        raise ValueError(f"from_torch: layer {path!r} ({layer!r}) has {what}={value!r}; xpnet supports only "
                         f"equal integer {what} in both directions")
    return int(pair[0])


def _require(ok: bool, path: str, layer: torch.nn.Module, what: str) -> None:
    if not ok:
        raise ValueError(f"from_torch: layer {path!r} ({layer!r}) uses {what}, which xpnet does not support")


def _layer_from_torch(layer: torch.nn.Module, path: str) -> nn.Module:
    """One torch module as the equivalent xpnet layer (weights in the torch module's dtype)."""
    where = path or "<root>"
    if isinstance(layer, torch.nn.Sequential):
        return nn.Sequential(*(_layer_from_torch(child, f"{path}.{name}" if path else name)
                               for name, child in layer.named_children()))
    if isinstance(layer, torch.nn.Conv2d):
        _require(layer.groups == 1, where, layer, "groups")
        _require(layer.padding_mode == "zeros", where, layer, f"padding_mode={layer.padding_mode!r}")
        _require(tuple(layer.dilation) == (1, 1), where, layer, "dilation")
        out = nn.Conv2D(layer.in_channels, layer.out_channels, _square(layer.kernel_size, "kernel_size", where, layer),
                        stride=_square(layer.stride, "stride", where, layer),
                        padding=_square(layer.padding, "padding", where, layer), bias=layer.bias is not None)
    elif isinstance(layer, torch.nn.Linear):
        out = nn.Dense(layer.in_features, layer.out_features, bias=layer.bias is not None)
    elif isinstance(layer, torch.nn.MaxPool2d):
        _require(_square(layer.padding, "padding", where, layer) == 0, where, layer, "padding")
        _require(_square(layer.dilation, "dilation", where, layer) == 1, where, layer, "dilation")
        _require(not layer.ceil_mode and not layer.return_indices, where, layer, "ceil_mode or return_indices")
        out = nn.MaxPool2D(_square(layer.kernel_size, "kernel_size", where, layer),
                           _square(layer.stride, "stride", where, layer))
    elif isinstance(layer, torch.nn.Dropout):
        out = nn.Dropout(layer.p)
    elif isinstance(layer, torch.nn.Flatten):
        _require((layer.start_dim, layer.end_dim) == (1, -1), where, layer, "start_dim/end_dim other than 1/-1")
        out = nn.Flatten()
    elif isinstance(layer, torch.nn.ReLU):
        out = nn.ReLU()
    else:
        supported = "Sequential, Conv2d, Linear, MaxPool2d, Dropout, Flatten, ReLU"
        raise TypeError(f"from_torch: unsupported layer {where!r} of type {type(layer).__name__} "
                        f"(xpnet has: {supported})")
    backend = get_backend()
    for name, param in out._parameters.items():
        if param is not None:
            param.data = backend.asarray(to_numpy(getattr(layer, name)).copy())
    return out


def from_torch(module: torch.nn.Module) -> nn.Module:
    """The xpnet twin of a torch model built from layers xpnet has (TypeError naming the first one it lacks):
    same names, weights, dtype and train/eval mode, on the active backend. xpnet's generator is left as it was."""
    state = random.get_state()
    try:
        return _layer_from_torch(module, "").train(module.training)
    finally:
        random.set_state(state)  # the layers' throwaway initial weights must not shift later draws


def load_state_dict(model: nn.Module, state: Mapping[str, Any]) -> None:
    """Load a PyTorch ``state_dict`` (torch tensors or NumPy arrays, PyTorch's names: "0.weight", ...) into
    ``model``, in the model's dtype. Everything is checked before anything is written: missing or unexpected
    keys raise KeyError and a mis-shaped value ValueError, each naming the keys."""
    own = dict(model.named_parameters())
    missing = [name for name in own if name not in state]
    unexpected = [name for name in state if name not in own]
    if missing or unexpected:
        raise KeyError(f"state_dict does not fit {type(model).__name__}: missing keys {missing}, "
                       f"unexpected keys {unexpected}")
    values = {name: to_numpy(state[name]) for name in own}
    wrong = [f"{name!r} is {values[name].shape}, expected {p.shape}" for name, p in own.items()
             if values[name].shape != p.shape]
    if wrong:
        raise ValueError(f"state_dict has mis-shaped values: {'; '.join(wrong)}")
    backend = get_backend()
    for name, p in own.items():
        p.data = backend.asarray(values[name], dtype=p.dtype)


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

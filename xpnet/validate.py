"""Argument checks shared by the layers (``xpnet.functional``, ``xpnet.nn``), the autograd engine and the backends'
Python wrappers around compiled kernels, so each rule and its message is stated once.

Compiled kernels index with their arguments unchecked: every wrapper calls these before launching one. Each check
raises ValueError (a wrong value or shape) or TypeError (a wrong type or dtype), or IndexError for a class target
out of range as PyTorch does, naming ``fn``, the argument and what was expected. Nothing here imports a backend.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def is_int(value: Any) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def int_pair(fn: str, name: str, value: Any, minimum: int, single: bool = False) -> tuple[int, int]:
    """``value`` (an int, a pair, or with ``single`` also a 1-tuple, as PyTorch's pooling takes them) as a pair
    of Python ints, each at least ``minimum``. Layers call it on every forward, so plain ints and pairs of them,
    what layers store, return before the general checks."""
    if type(value) is int and value >= minimum:  # type(True) is bool, so bools take the general path
        return value, value
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int \
            and value[0] >= minimum and value[1] >= minimum:
        return value
    pair = (value, value) if is_int(value) else tuple(value) if isinstance(value, (tuple, list)) else ()
    pair = pair * 2 if single and len(pair) == 1 else pair
    if len(pair) != 2 or not all(is_int(i) and i >= minimum for i in pair):
        raise ValueError(f"{fn}: {name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def window_args(fn: str, kernel: Any, stride: Any, padding: Any, dilation: Any = (1, 1)) -> None:
    """Refuse a kernel, stride or dilation that is not a pair of ints >= 1, or a padding not a pair of ints >= 0:
    the compiled window loops divide and index by them."""
    for name, value, minimum in (("kernel_size", kernel, 1), ("stride", stride, 1), ("padding", padding, 0),
                                 ("dilation", dilation, 1)):
        int_pair(fn, name, value, minimum)


def window_fits(fn: str, input_hw: tuple[int, ...], kernel: tuple[int, int], padding: tuple[int, int],
                dilation: tuple[int, int], pad_end: tuple[int, int] = (0, 0)) -> None:
    """Refuse a dilated kernel that spans more than the padded input, naming both (pooling's windows may overhang
    in ceil mode, so pooling leaves this to ``xpnet.kernels.pool_out_size``)."""
    for axis, size, k, p, e, d in zip(("height", "width"), input_hw, kernel, padding, pad_end, dilation):
        span, padded = d * (k - 1) + 1, size + 2 * p + e
        if span > padded:
            raise ValueError(f"{fn}: kernel_size {tuple(kernel)} with dilation {tuple(dilation)} spans {span} along "
                             f"the {axis}, more than the padded input's {padded} (input {tuple(input_hw)}, padding "
                             f"{tuple(padding)})")


def ndim(fn: str, name: str, shape: tuple[int, ...], dims: int, layout: str) -> None:
    """Refuse an array that is not ``dims``-dimensional, showing the expected ``layout``."""
    if len(shape) != dims:
        raise ValueError(f"{fn}: {name} must be {dims}-D {layout}, got shape {tuple(shape)}")


def shape(what: str, actual: tuple[int, ...], expected: tuple[int, ...]) -> None:
    """Refuse an array (``what``: the function and argument, e.g. "max-pool gradient") whose shape is not exactly
    ``expected``."""
    if tuple(actual) != tuple(expected):
        raise ValueError(f"{what} has shape {tuple(actual)}, expected {tuple(expected)}")


def same_dtype(fn: str, reference: str, ref_dtype: Any, **others: Any) -> None:
    """Refuse arrays (``name=array``, None skipped) whose dtype is not ``ref_dtype``, the dtype of ``reference``,
    as PyTorch refuses mixed dtypes: so every backend gives the same result dtype (no silent promotion)."""
    for name, array in others.items():
        if array is not None and array.dtype != ref_dtype:
            raise TypeError(f"{fn}: {name} has dtype {array.dtype} but {reference} has {np.dtype(ref_dtype)}; "
                            f"expected both to be the same dtype (cast the input, or the layer with .to(dtype))")


def conv_args(fn: str, x_shape: tuple[int, ...], w_shape: tuple[int, ...], b_shape: tuple[int, ...] | None,
              stride: Any, padding: Any, dilation: Any, groups: Any, pad_end: tuple[int, int] = (0, 0)) -> None:
    """Refuse shapes and settings that do not make a convolution of x (N, C, H, W) with w (OC, C / groups, KH, KW)
    and b (OC,) or None, naming the argument at fault."""
    ndim(fn, "input", x_shape, 4, "(N, C, H, W)")
    if len(w_shape) != 4 or min(w_shape) < 1:
        raise ValueError(f"{fn}: weight must be a non-empty 4-D array (out_channels, in_channels / groups, kH, kW), "
                         f"got shape {tuple(w_shape)}")
    window_args(fn, w_shape[2:], stride, padding, dilation)
    if not is_int(groups) or groups < 1:
        raise ValueError(f"{fn}: groups must be a positive int, got {groups!r}")
    oc, c_group = w_shape[0], w_shape[1]
    if oc % groups:
        raise ValueError(f"{fn}: weight.shape[0] (out_channels {oc}) must be divisible by groups ({groups})")
    if x_shape[1] != c_group * groups:
        raise ValueError(f"{fn}: input has {x_shape[1]} channels, but weight.shape[1] * groups = {c_group} * "
                         f"{groups} = {c_group * groups}")
    if b_shape is not None and tuple(b_shape) != (oc,):
        raise ValueError(f"{fn}: bias must have shape ({oc},), got {tuple(b_shape)}")
    window_fits(fn, x_shape[2:], w_shape[2:], padding, dilation, pad_end)


def conv_out_shape(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: tuple[int, int],
                   padding: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """(N, OC, OH, OW) of a convolution whose arguments ``conv_args`` accepted."""
    out_hw = [(size + 2 * p - d * (k - 1) - 1) // s + 1
              for size, k, s, p, d in zip(x_shape[2:], w_shape[2:], stride, padding, dilation)]
    return x_shape[0], w_shape[0], out_hw[0], out_hw[1]


def gradient(fn: str, name: str, grad: Any, expected_shape: tuple[int, ...]) -> None:
    """Refuse a gradient whose shape is not the shape of the array it is the gradient of (no broadcasting)."""
    if tuple(grad.shape) != tuple(expected_shape):
        raise ValueError(f"{fn}: {name} has shape {tuple(grad.shape)}, expected {tuple(expected_shape)} (the shape "
                         f"of the output it is the gradient of)")


def class_index_dtype(fn: str, dtype: Any) -> None:
    """Refuse class-index targets of a non-integer dtype: a float target would be truncated to a class."""
    if np.dtype(dtype).kind not in "iu":
        raise TypeError(f"{fn}: target must hold integer class indices, got dtype {np.dtype(dtype)} (class "
                        f"probabilities as targets are not supported)")


def class_indices(fn: str, labels: Any, n_classes: int, ignore_index: int) -> None:
    """Refuse targets that are not integer class indices in [0, n_classes) or ``ignore_index`` (-1 would silently
    index the last class); IndexError for the range, as PyTorch. One host sync."""
    class_index_dtype(fn, labels.dtype)
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= n_classes))
    if bool(bad.any()):
        raise IndexError(f"{fn}: target {int(labels[bad].reshape(-1)[0])} is out of bounds for {n_classes} classes "
                         f"(expected 0 .. {n_classes - 1}, or ignore_index={ignore_index})")

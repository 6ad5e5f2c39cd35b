"""ONNX conversions of xpnet's autograd Functions, one small function per Function (opset 17).

``xpnet.export`` traces a forward pass into a list of calls (Function, inputs, options, output) and hands each
call to the converter registered here for its Function. A converter adds the nodes that compute the call's
output from its inputs and returns the name of the value holding it. Every conversion reproduces xpnet's
result exactly up to rounding, including PyTorch's pooling rules that ONNX attributes do not express directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from xpnet import autograd as A
from xpnet import functional as F
from xpnet.autograd import Function, Tensor


@dataclass
class Call:
    """One Function application seen while tracing: what ran, on what, with which options, giving what, and the
    dotted name of the innermost module whose forward applied it ("" for the model itself)."""

    fn: type[Function]
    inputs: tuple[Tensor | None, ...]
    options: dict[str, Any]
    output: Tensor
    where: str


class Unsupported(Exception):
    """A call that has no ONNX equivalent (its Function, or an option of it); the message says which."""


class Builder(Protocol):
    """What a converter may ask of the graph being built (``xpnet.export.GraphBuilder`` implements it)."""

    def name(self, t: Tensor | None) -> str: ...
    def array(self, raw: Any) -> str: ...
    def const(self, value: np.ndarray) -> str: ...
    def node(self, op: str, inputs: list[str], **attrs: Any) -> str: ...


Converter = Callable[[Builder, Call], str]
CONVERTERS: dict[type[Function], Converter] = {}


def converts(*functions: type[Function]) -> Callable[[Converter], Converter]:
    """Register the decorated converter for ``functions``."""
    def register(converter: Converter) -> Converter:
        CONVERTERS.update(dict.fromkeys(functions, converter))
        return converter
    return register


def _scalar(b: Builder, value: float, like: Tensor) -> str:
    """A 0-d constant of ``like``'s dtype (ONNX arithmetic needs both operands of one type)."""
    return b.const(np.asarray(value, dtype=like.dtype))


def _ints(b: Builder, values: Any) -> str:
    return b.const(np.asarray(list(values), dtype=np.int64))


# --- elementary ops (xpnet/autograd.py) -------------------------------------------------------------------------

_BINARY = {A.Add: "Add", A.Sub: "Sub", A.Mul: "Mul", A.Div: "Div", A.MatMul: "MatMul"}
_UNARY = {A.Neg: "Neg", A.Exp: "Exp", A.Log: "Log", A.ReLU: "Relu", A.Sigmoid: "Sigmoid", A.Tanh: "Tanh"}


@converts(*_BINARY)
def binary(b: Builder, c: Call) -> str:
    """NumPy broadcasting and matmul rules are ONNX's multidirectional broadcasting and MatMul."""
    return b.node(_BINARY[c.fn], [b.name(t) for t in c.inputs])


@converts(*_UNARY)
def unary(b: Builder, c: Call) -> str:
    return b.node(_UNARY[c.fn], [b.name(c.inputs[0])])


@converts(A.Sum)
def reduce_sum(b: Builder, c: Call) -> str:
    """ReduceSum over the axes (all of them when None: ReduceSum without an axes input)."""
    axes = c.options["axis"]
    inputs = [b.name(c.inputs[0])] + ([] if axes is None else [_ints(b, axes)])
    return b.node("ReduceSum", inputs, keepdims=int(c.options["keepdims"]))


@converts(A.Reshape)
def reshape(b: Builder, c: Call) -> str:
    """The traced output shape with its first size left to the runtime: 0 (copy the input's, which keeps the
    batch size when flattening) when they are equal, -1 (inferred) otherwise."""
    target = list(c.output.shape)
    if target:
        target[0] = 0 if c.inputs[0].ndim and target[0] == c.inputs[0].shape[0] else -1
    return b.node("Reshape", [b.name(c.inputs[0]), _ints(b, target)])


@converts(A.Transpose)
def transpose(b: Builder, c: Call) -> str:
    axes = c.options["axes"]
    perm = list(axes) if axes is not None else list(reversed(range(c.inputs[0].ndim)))
    return b.node("Transpose", [b.name(c.inputs[0])], perm=perm)


# --- layers (xpnet/functional.py) -------------------------------------------------------------------------------

@converts(F.Conv2d)
def conv2d(b: Builder, c: Call) -> str:
    """Conv with explicit pads; "same" padding's extra zero at the bottom/right is its end pad."""
    x, w, bias = c.inputs
    o = c.options
    (pt, pl), (eh, ew) = o["padding"], o["pad_end"]
    inputs = [b.name(x), b.name(w)] + ([] if bias is None else [b.name(bias)])
    return b.node("Conv", inputs, kernel_shape=list(w.shape[2:]), strides=list(o["stride"]),
                  pads=[pt, pl, pt + eh, pl + ew], dilations=list(o["dilation"]), group=o["groups"])


def _overhang(c: Call) -> tuple[int, int]:
    """Per axis, how far PyTorch's ceil-mode windows run past the bottom/right padding (0 in floor mode).

    ONNX's ``ceil_mode`` is left unused: its output-size rule differs from PyTorch's in shape inference, so the
    overhang is written as end padding, which every runtime reads the same way."""
    o, x, out = c.options, c.inputs[0], c.output
    return tuple(max(0, (n_out - 1) * s + k - n_in - 2 * p)  # type: ignore[return-value]
                 for n_in, n_out, k, s, p in zip(x.shape[2:], out.shape[2:], o["kernel"], o["stride"],
                                                 o["padding"]))


def _pads(begin: tuple[int, int], end: tuple[int, int]) -> list[int]:
    return [begin[0], begin[1], end[0], end[1]]


@converts(F.MaxPool2d)
def max_pool2d(b: Builder, c: Call) -> str:
    """MaxPool; ONNX's padding never wins, as xpnet's -inf padding, so the ceil overhang is end padding."""
    o = c.options
    (ph, pw), (eh, ew) = o["padding"], _overhang(c)
    return b.node("MaxPool", [b.name(c.inputs[0])], kernel_shape=list(o["kernel"]), strides=list(o["stride"]),
                  pads=_pads((ph, pw), (ph + eh, pw + ew)))


@converts(F.AvgPool2d)
def avg_pool2d(b: Builder, c: Call) -> str:
    """AveragePool with PyTorch's divisor: the window counting the padding (``count_include_pad``) but never
    the ceil overhang, the window's pixels inside the input, or ``divisor_override``.

    AveragePool counts all its padding or none of it, so when both kinds are present the counted padding is
    made real first with a Pad node; ``divisor_override`` is the full-window mean rescaled."""
    o, x = c.options, c.inputs[0]
    (ph, pw), (eh, ew) = o["padding"], _overhang(c)
    window = {"kernel_shape": list(o["kernel"]), "strides": list(o["stride"])}
    value = b.name(x)
    if o["divisor_override"] is not None:
        if ph or pw or eh or ew:
            value = b.node("Pad", [value, _ints(b, [0, 0, ph, pw, 0, 0, ph + eh, pw + ew])])
        mean = b.node("AveragePool", [value], **window)
        kh, kw = o["kernel"]
        return b.node("Mul", [mean, _scalar(b, kh * kw / o["divisor_override"], x)])
    if o["count_include_pad"] and (eh or ew):
        if ph or pw:
            value = b.node("Pad", [value, _ints(b, [0, 0, ph, pw, 0, 0, ph, pw])])
        return b.node("AveragePool", [value], pads=_pads((0, 0), (eh, ew)), count_include_pad=0, **window)
    return b.node("AveragePool", [value], pads=_pads((ph, pw), (ph + eh, pw + ew)),
                  count_include_pad=int(o["count_include_pad"]), **window)


@converts(F.GlobalAvgPool2d)
def global_avg_pool2d(b: Builder, c: Call) -> str:
    return b.node("GlobalAveragePool", [b.name(c.inputs[0])])


@converts(F.BlockAvgPool2d)
def block_avg_pool2d(b: Builder, c: Call) -> str:
    """Adaptive pooling whose output size divides the input's: an AveragePool of the block size."""
    (h, w), (oh, ow) = c.inputs[0].shape[2:], c.options["output_hw"]
    block = [h // oh, w // ow]
    return b.node("AveragePool", [b.name(c.inputs[0])], kernel_shape=block, strides=block)


@converts(F.AdaptiveAvgPool2d)
def adaptive_avg_pool2d(b: Builder, c: Call) -> str:
    """``rows @ x @ cols.T`` with the bins' averaging matrices as constants, as xpnet computes it."""
    x = c.inputs[0]
    (h, w), (oh, ow) = x.shape[2:], c.options["output_hw"]
    rows = F._adaptive_bins(np, h, oh, x.dtype)
    cols = F._adaptive_bins(np, w, ow, x.dtype)
    along_h = b.node("MatMul", [b.const(rows), b.name(x)])
    return b.node("MatMul", [along_h, b.const(np.ascontiguousarray(cols.T))])


@converts(F.Linear)
def linear(b: Builder, c: Call) -> str:
    """Gemm (x @ W.T + b) for (N, in) inputs; MatMul by W transposed, then Add, for more dimensions."""
    x, w, bias = c.inputs
    if x.ndim == 2:
        return b.node("Gemm", [b.name(x), b.name(w)] + ([] if bias is None else [b.name(bias)]), transB=1)
    out = b.node("MatMul", [b.name(x), b.node("Transpose", [b.name(w)], perm=[1, 0])])
    return out if bias is None else b.node("Add", [out, b.name(bias)])


@converts(F.LeakyReLU)
def leaky_relu(b: Builder, c: Call) -> str:
    return b.node("LeakyRelu", [b.name(c.inputs[0])], alpha=float(c.options["negative_slope"]))


@converts(F.GELU)
def gelu(b: Builder, c: Call) -> str:
    """Opset 17 has no Gelu (it came in 20), so its formula: x * 0.5 * (1 + erf(x / sqrt 2)), or the tanh
    approximation 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))."""
    x = c.inputs[0]
    xv = b.name(x)
    if c.options["approximate"] == "tanh":
        cube = b.node("Mul", [b.node("Mul", [xv, xv]), xv])
        inner = b.node("Add", [xv, b.node("Mul", [cube, _scalar(b, F._TANH_KAPPA, x)])])
        t = b.node("Tanh", [b.node("Mul", [inner, _scalar(b, F._TANH_BETA, x)])])
        half_x = b.node("Mul", [xv, _scalar(b, 0.5, x)])
        return b.node("Mul", [half_x, b.node("Add", [t, _scalar(b, 1.0, x)])])
    erf = b.node("Erf", [b.node("Mul", [xv, _scalar(b, F._SQRT1_2, x)])])
    cdf = b.node("Mul", [b.node("Add", [erf, _scalar(b, 1.0, x)]), _scalar(b, 0.5, x)])
    return b.node("Mul", [xv, cdf])


@converts(F.Softmax)
def softmax(b: Builder, c: Call) -> str:
    return b.node("Softmax", [b.name(c.inputs[0])], axis=int(c.options["dim"]))


@converts(F.LogSoftmax)
def log_softmax(b: Builder, c: Call) -> str:
    return b.node("LogSoftmax", [b.name(c.inputs[0])], axis=int(c.options["dim"]))


@converts(F.BatchNorm)
def batch_norm(b: Builder, c: Call) -> str:
    """BatchNormalization on the running statistics (evaluation mode); a missing weight is ones, a missing
    bias zeros, as batch_norm treats them."""
    x, weight, bias = c.inputs
    o = c.options
    if o["training"]:
        raise Unsupported("BatchNorm normalising with batch statistics (export runs the model in eval mode, "
                          "so this layer is called with training=True by its own forward)")
    channels, dtype = x.shape[1], np.dtype(x.dtype)
    scale = b.name(weight) if weight is not None else b.const(np.ones(channels, dtype))
    shift = b.name(bias) if bias is not None else b.const(np.zeros(channels, dtype))
    return b.node("BatchNormalization", [b.name(x), scale, shift, b.array(o["running_mean"]),
                                         b.array(o["running_var"])], epsilon=float(o["eps"]))


@converts(F.Dropout)
def dropout(b: Builder, c: Call) -> str:
    raise Unsupported("Dropout applied with training=True (export runs the model in eval mode, where dropout "
                      "is the identity; this layer's forward drops anyway)")

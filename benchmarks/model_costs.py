"""The work in one training epoch of a model, independent of how it is computed: FLOPs and activation bytes.

The report divides these by the machine's measured GEMM rate and copy bandwidth to get a floor for each epoch
time, so every measured epoch can be read as a multiple of what the hardware allows.

- **FLOPs.** A convolution does N*OC*OH*OW*C*KH*KW multiply-adds (MACs) in its forward pass, a dense layer
  N*IN*OUT. One MAC is 2 FLOPs, and the backward pass costs about twice the forward (the gradients of the input
  and of the weights are one GEMM each), so a training step costs ``6 * MACs`` FLOPs. Pooling, ReLU, dropout,
  the loss and the Adam update are O(activations), not O(MACs), and are left out.
- **Bytes.** Every layer (including ReLU, pooling, dropout and flatten) reads its input and writes its output in
  the forward pass, and reads and writes about twice as much in the backward pass (output gradient and saved
  tensors in, input gradient out): ``3 * sum(input + output elements) * itemsize``. Scratch buffers such as
  im2col columns are not counted: they belong to one way of computing a convolution, not to the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xpnet.functional import conv_padding
from xpnet.kernels import out_size
from xpnet.nn import Conv2D, Dense, Dropout, Flatten, MaxPool2D, Module, ReLU, Sequential

TRAINING_FLOPS_PER_MAC = 6  # 2 FLOPs per MAC, times 3 for forward + backward
TRAINING_PASSES_OVER_ACTIVATIONS = 3  # forward once, backward about twice


@dataclass(frozen=True)
class Cost:
    """Forward-pass multiply-adds and activation elements (inputs + outputs, summed over layers) per image."""

    macs: int
    activations: int

    def flops(self, images: int) -> int:
        """FLOPs of training on ``images`` images (forward + backward)."""
        return TRAINING_FLOPS_PER_MAC * self.macs * images

    def bytes(self, images: int, itemsize: int = 4) -> int:
        """Activation bytes read and written while training on ``images`` images (forward + backward)."""
        return TRAINING_PASSES_OVER_ACTIVATIONS * self.activations * itemsize * images


def model_cost(model: Sequential, input_shape: tuple[int, int, int]) -> Cost:
    """The per-image cost of ``model`` on (C, H, W) inputs; raises TypeError for a layer it cannot count."""
    shape: tuple[int, ...] = input_shape
    macs = activations = 0
    for layer in model:
        out_shape, layer_macs = _layer(layer, shape)
        macs += layer_macs
        activations += math.prod(shape) + math.prod(out_shape)
        shape = out_shape
    return Cost(macs, activations)


def _layer(layer: Module, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """(output shape, forward MACs) of one layer on one image of ``shape``."""
    if isinstance(layer, Conv2D):
        c, h, w = shape
        (kh, kw), (sy, sx), (dy, dx) = layer.kernel_size, layer.stride, layer.dilation
        (ph, pw), (eh, ew) = conv_padding(layer.padding, layer.kernel_size, layer.stride, layer.dilation)
        oh, ow = out_size(h + eh, kh, sy, ph, dy), out_size(w + ew, kw, sx, pw, dx)
        return (layer.out_channels, oh, ow), layer.out_channels * oh * ow * c // layer.groups * kh * kw
    if isinstance(layer, Dense):
        return (layer.out_features,), layer.in_features * layer.out_features
    if isinstance(layer, MaxPool2D):
        c, h, w = shape
        k, s = layer.kernel_size, layer.stride or layer.kernel_size
        return (c, out_size(h, k, s, 0), out_size(w, k, s, 0)), 0
    if isinstance(layer, Flatten):
        return (math.prod(shape),), 0
    if isinstance(layer, (ReLU, Dropout)):
        return shape, 0
    raise TypeError(f"model_cost cannot count a {type(layer).__name__} layer")

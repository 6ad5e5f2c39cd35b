"""The work in one training epoch of a model, independent of how it is computed: FLOPs and activation bytes.

The report divides these by the machine's measured GEMM rate and copy bandwidth to get a floor for each epoch
time, so every measured epoch can be read as a multiple of what the hardware allows.

Any model is counted the same way: one forward pass of a zero image (eval mode, no gradient), with a forward hook
on every leaf module recording its input and output shapes. So the count follows what ``forward`` really calls,
in any order and with shortcuts, not just a Sequential's list of layers.

- **FLOPs.** The multiply-adds (MACs) are those ``model.summary()`` shows (the trace and the count live in
  ``xpnet/summary.py``): a convolution does OC*OH*OW * C/groups*KH*KW per image in its forward pass (the output
  shape, read from the trace, carries stride, padding and dilation), a dense layer OUT * IN per input row.
  One MAC is 2 FLOPs, and the backward pass costs about twice the forward (the gradients of the input and of the
  weights are one GEMM each), so a training step costs ``6 * MACs`` FLOPs. BatchNorm, pooling, activations,
  dropout, the loss and the optimizer update are O(activations), not O(MACs), and are left out.
- **Bytes.** Every leaf module (including BatchNorm, ReLU, pooling, dropout and flatten) reads its input and
  writes its output in the forward pass, and reads and writes about twice as much in the backward pass (output
  gradient and saved tensors in, input gradient out): ``3 * sum(input + output elements) * itemsize``. Scratch
  buffers such as im2col columns are not counted: they belong to one way of computing a convolution, not to the
  model. Work a module's ``forward`` does with functional calls rather than child modules (the ResNet's
  ``F.relu`` and residual sum) is not seen by the hooks, so for such models the bytes are a lower bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xpnet.autograd import Tensor
from xpnet.nn import Module
from xpnet.summary import layer_macs, trace_leaves

TRAINING_FLOPS_PER_MAC = 6  # 2 FLOPs per MAC, times 3 for forward + backward
TRAINING_PASSES_OVER_ACTIVATIONS = 3  # forward once, backward about twice


@dataclass(frozen=True)
class Cost:
    """Forward-pass multiply-adds and activation elements (inputs + outputs, summed over leaf modules) per image."""

    macs: int
    activations: int

    def flops(self, images: int) -> int:
        """FLOPs of training on ``images`` images (forward + backward)."""
        return TRAINING_FLOPS_PER_MAC * self.macs * images

    def bytes(self, images: int, itemsize: int = 4) -> int:
        """Activation bytes read and written while training on ``images`` images (forward + backward)."""
        return TRAINING_PASSES_OVER_ACTIVATIONS * self.activations * itemsize * images


def model_cost(model: Module, input_shape: tuple[int, int, int]) -> Cost:
    """The per-image cost of ``model`` on (C, H, W) inputs, from one traced forward pass of a zero image
    (``xpnet.summary.trace_leaves``); raises TypeError for a leaf with parameters it cannot count the MACs of. The
    model's modes are restored after."""
    costs: list[Cost] = []
    trace_leaves(model, input_shape, lambda name, m, args, out: costs.append(leaf_cost(m, args, out)))
    return Cost(sum(c.macs for c in costs), sum(c.activations for c in costs))


def leaf_cost(module: Module, args: tuple[Any, ...], output: Tensor) -> Cost:
    """The cost of one call of a leaf module on a batch of one image: its MACs and its input + output elements."""
    elements = sum(a.size for a in args if isinstance(a, Tensor)) + output.size
    macs = layer_macs(module, output)
    if macs is None:
        raise TypeError(f"model_cost cannot count the multiply-adds of a {type(module).__name__} layer")
    return Cost(macs, elements)

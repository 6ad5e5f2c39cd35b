"""Model factories for the accuracy runs in docs/results.md that are not named models, reached the way a user's own
model is: ``python -m xpnet.train --model benchmarks.recipes:resnet_w24`` (from the repository root)."""

from __future__ import annotations

from xpnet.models import MNIST_SHAPE, ResNet, Shape


def resnet_w24(input_shape: Shape = MNIST_SHAPE, num_classes: int = 10) -> ResNet:
    """ResNet-8 at 1.5x the default width: three BasicBlock stages of width 24/48/96 (about 2.25x the work)."""
    return ResNet(input_shape, num_classes, widths=(24, 48, 96), blocks=(1, 1, 1))

"""Layer code is vectorised: the Python lines executed per forward+backward do not grow with the batch size,
the number of channels or the image size (only with fixed things such as the K*K kernel offsets)."""

import os
import sys

import numpy as np
import pytest

import xpnet
import xpnet.backends
from xpnet import nn

XPNET_DIRS = (os.path.dirname(xpnet.__file__), os.path.dirname(xpnet.backends.__file__))


def traced_lines(fn):
    """Count the line events executed inside xpnet and its backends while running ``fn``."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if not frame.f_code.co_filename.startswith(XPNET_DIRS):
            return None
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def step_lines(layer, x_shape, targets=False):
    x = xpnet.tensor(np.random.default_rng(0).standard_normal(x_shape).astype(np.float32), requires_grad=True)

    def run():
        out = layer(x)
        loss = out.sum() if not targets else nn.CrossEntropyLoss()(out, np.zeros(x_shape[0], dtype=np.int64))
        loss.backward()

    return traced_lines(run)


LAYERS = {
    "conv": (lambda c: nn.Conv2D(c, 4, 3, padding=1), True),
    "conv stride 2": (lambda c: nn.Conv2D(c, 4, 3, stride=2, padding=2), True),
    "maxpool": (lambda c: nn.MaxPool2D(2), True),
    "maxpool overlapping": (lambda c: nn.MaxPool2D(3, 2), True),
    "dropout": (lambda c: nn.Dropout(0.3), True),
    "relu": (lambda c: nn.ReLU(), True),
    "flatten": (lambda c: nn.Flatten(), True),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_image_layers_do_not_loop_over_batch_channels_or_pixels(name):
    make, _ = LAYERS[name]
    small = step_lines(make(2), (2, 2, 8, 8))
    assert small > 0
    assert step_lines(make(2), (16, 2, 8, 8)) == small, "lines grew with the batch size"
    assert step_lines(make(5), (2, 5, 8, 8)) == small, "lines grew with the channel count"
    assert step_lines(make(2), (2, 2, 20, 16)) == small, "lines grew with the image size"


def test_dense_and_loss_do_not_loop_over_batch_or_features():
    small = step_lines(nn.Dense(6, 3), (2, 6), targets=True)
    assert step_lines(nn.Dense(6, 3), (64, 6), targets=True) == small
    assert step_lines(nn.Dense(40, 3), (2, 40), targets=True) == small


def test_trace_counter_sees_a_loop():
    """The counter can fail: a layer that loops over the batch is caught."""

    class LoopyLayer(nn.Module):
        def forward(self, x):
            return sum((x.reshape(x.shape[0], -1) * 1.0 for _ in range(x.shape[0])), 0.0)

    assert step_lines(LoopyLayer(), (16, 2, 4, 4)) > step_lines(LoopyLayer(), (2, 2, 4, 4))

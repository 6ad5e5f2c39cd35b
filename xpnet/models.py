"""The named architectures (the two reports' nets, LeNet-5 and a small ResNet), built by ``build_model``.

Every factory takes the data's ``input_shape`` (C, H, W) and ``num_classes``, so the same name builds for 1x28x28
digits and 3x32x32 photos; their defaults are MNIST's. ``build_model`` also accepts ``"package.module:function"``,
a factory of the user's own, called the same way.
"""

from __future__ import annotations

import inspect
from importlib import import_module
from typing import Any, Callable, Sequence

from xpnet import functional as F
from xpnet import validate
from xpnet.autograd import Tensor, no_grad, tensor
from xpnet.backend import get_backend
from xpnet.nn import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, Module, ReLU,
                      Sequential)

Shape = tuple[int, int, int]
MNIST_SHAPE: Shape = (1, 28, 28)


class ModelError(ValueError):
    """A model name that cannot be built, or a model that does not fit the data; the message says which and why."""


def report1_cnn(input_shape: Shape = MNIST_SHAPE, num_classes: int = 10) -> Sequential:
    """Report 1's net: Conv C->8 k3 p1, ReLU, MaxPool 2, Dropout 0.3, Linear to the classes (1568 inputs at 28x28)."""
    c, h, w = input_shape
    return Sequential(Conv2d(c, 8, 3, padding=1), ReLU(), MaxPool2d(2), Dropout(0.3), Flatten(),
                      Linear(8 * (h // 2) * (w // 2), num_classes))


def report2_cnn(input_shape: Shape = MNIST_SHAPE, num_classes: int = 10) -> Sequential:
    """Report 2's net: Conv C->3->6->9 k3 p1 each with ReLU, MaxPool 2, Linear to the classes (1764 inputs at 28x28)."""
    c, h, w = input_shape
    return Sequential(Conv2d(c, 3, 3, padding=1), ReLU(), Conv2d(3, 6, 3, padding=1), ReLU(),
                      Conv2d(6, 9, 3, padding=1), ReLU(), MaxPool2d(2), Flatten(), Linear(9 * (h // 2) * (w // 2),
                                                                                            num_classes))


def lenet5(input_shape: Shape = MNIST_SHAPE, num_classes: int = 10) -> Sequential:
    """LeNet-5 with ReLU and max pooling: Conv C->6 k5 p2, pool, Conv 6->16 k5, pool, 400-120-84-classes at 28x28."""
    c, h, w = input_shape
    h2, w2 = (h // 2 - 4) // 2, (w // 2 - 4) // 2
    return Sequential(Conv2d(c, 6, 5, padding=2), ReLU(), MaxPool2d(2), Conv2d(6, 16, 5), ReLU(), MaxPool2d(2),
                      Flatten(), Linear(16 * h2 * w2, 120), ReLU(), Linear(120, 84), ReLU(), Linear(84, num_classes))


class BasicBlock(Module):
    """ResNet's two-convolution block with an identity shortcut: relu(bn2(conv2(relu(bn1(conv1(x))))) + x).

    When the block changes the width or the resolution, the shortcut is a 1x1 convolution with stride and a
    BatchNorm (``downsample``), as torchvision's ResNet names it.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNorm2d(out_channels)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = Sequential(Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                         BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ResNet(Module):
    """A ResNet for small images: a 3x3 stem (no max pool), stages of BasicBlocks, global average pooling, Linear.

    Stage ``i`` has ``blocks[i]`` blocks of width ``widths[i]``; every stage after the first halves the resolution
    in its first block. Parameter names follow torchvision (conv1, bn1, layer1.0.conv1, ..., fc).
    """

    def __init__(self, input_shape: Shape = MNIST_SHAPE, num_classes: int = 10,
                 widths: Sequence[int] = (16, 32, 64), blocks: Sequence[int] = (1, 1, 1)):
        super().__init__()
        def positive_ints(values: Any) -> bool:
            return isinstance(values, (list, tuple)) and len(values) > 0 and all(
                validate.is_int(v) and v >= 1 for v in values)

        if not (positive_ints(widths) and positive_ints(blocks) and len(widths) == len(blocks)):
            raise ModelError(f"resnet: widths and blocks must be equally long lists of positive integers (e.g. "
                             f"widths=16,32,64 blocks=1,1,1), got widths {widths!r} and blocks {blocks!r}")
        widths, blocks = [int(v) for v in widths], [int(v) for v in blocks]  # NumPy integers too
        self.conv1 = Conv2d(input_shape[0], widths[0], 3, padding=1, bias=False)
        self.bn1 = BatchNorm2d(widths[0])
        channels = widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks), 1):
            layers = []
            for i in range(count):
                layers.append(BasicBlock(channels, width, stride=2 if stage > 1 and i == 0 else 1))
                channels = width
            setattr(self, f"layer{stage}", Sequential(*layers))
        self.stages = len(widths)
        self.avgpool = AdaptiveAvgPool2d(1)
        self.fc = Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for stage in range(1, self.stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return self.fc(F.flatten(self.avgpool(x)))


def resnet(input_shape: Shape = MNIST_SHAPE, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64),
           blocks: Sequence[int] = (1, 1, 1)) -> ResNet:
    """ResNet-8 by default: three stages of one BasicBlock, widths 16/32/64 (77,754 parameters at 1x28x28)."""
    return ResNet(input_shape, num_classes, widths, blocks)


MODELS: dict[str, Callable[..., Module]] = {
    "report1": report1_cnn,
    "report2": report2_cnn,
    "lenet5": lenet5,
    "resnet": resnet,
}
DESCRIPTIONS = {
    "report1": "one 3x3 conv (8 filters), max pool, dropout, linear: the first report's MNIST net (15.8k params)",
    "report2": "three 3x3 convs (3, 6, 9 filters), max pool, linear: the second report's MNIST net (18.3k params)",
    "lenet5": "LeNet-5: two 5x5 convs with max pooling, then 120-84-classes linear layers (61.7k params)",
    "resnet": "ResNet-8: 3x3 stem, three BasicBlock stages of width 16/32/64 with BatchNorm, global average pool "
              "(77.8k params)",
}


def resolve_factory(name: str) -> Callable[..., Module]:
    """The factory for a named model or for ``"package.module:function"`` (imported); ModelError otherwise."""
    if name in MODELS:
        return MODELS[name]
    module_name, colon, attr = name.partition(":")
    if not colon or not module_name or not attr:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}, or name your own factory as "
                         f"package.module:function")
    try:
        module = import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"model {name!r}: cannot import module {module_name!r} ({exc})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"model {name!r}: module {module_name!r} has no callable {attr!r}")
    return factory


def check_options(name: str, options: dict[str, Any]) -> tuple[Any, bool]:
    """Refuse ``options`` the factory of model ``name`` does not take (ModelError naming those it does); return its
    signature's parameters and whether it takes any keyword."""
    try:
        parameters = inspect.signature(resolve_factory(name)).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = [k for k in options if not takes_any and k not in parameters or k in ("input_shape", "num_classes")]
    if unknown:
        takes = [k for k in parameters if k not in ("input_shape", "num_classes")]
        raise ModelError(f"model {name!r} takes no option {', '.join(map(repr, unknown))}; its options: "
                         f"{', '.join(takes) or 'none'}")
    return parameters, takes_any


def build_model(name: str, input_shape: Shape = MNIST_SHAPE, num_classes: int = 10, **options: Any) -> Module:
    """A fresh model by name (or ``"package.module:function"``), initialised from xpnet's seeded generator.

    The factory gets ``input_shape`` and ``num_classes`` if its signature takes them (a user's factory may take
    neither), plus ``options`` (``--model-option KEY=VALUE``): one it does not take is refused, naming those it does.
    """
    factory = resolve_factory(name)
    parameters, takes_any = check_options(name, options)
    offered = {"input_shape": tuple(input_shape), "num_classes": num_classes}
    kwargs = {**{k: v for k, v in offered.items() if takes_any or k in parameters}, **options}
    try:
        model = factory(**kwargs)
    except (TypeError, ValueError) as exc:
        if not options:
            raise
        raise ModelError(f"model {name!r} cannot be built with options {options}: {exc}") from None
    if not isinstance(model, Module):
        raise ModelError(f"model {name!r}: the factory returned a {type(model).__name__}, not an xpnet nn.Module")
    return model


def check_fits_data(model: Module, name: str, input_shape: Shape, num_classes: int, data: str = "the data") -> None:
    """Refuse, before training, a model that cannot take ``input_shape`` images or does not give ``num_classes``
    logits: one forward pass of a zero batch of two in eval mode (nothing is drawn, no statistic moves)."""
    c, h, w = input_shape
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            dtype = next(iter(model.parameters())).dtype if model.parameters() else None
            out = model(tensor(get_backend().xp.zeros((2, c, h, w), dtype=dtype)))
    except (ValueError, TypeError, IndexError) as exc:
        raise ModelError(f"model {name!r} does not fit {data}: its images are {c}x{h}x{w} (channels x height x "
                         f"width), and the model fails on them: {exc}") from None
    finally:
        model.train(was_training)
    if tuple(out.shape) != (2, num_classes):
        raise ModelError(f"model {name!r} does not fit {data}: it gives outputs of shape {tuple(out.shape)[1:]} per "
                         f"image, but {data} has {num_classes} classes")

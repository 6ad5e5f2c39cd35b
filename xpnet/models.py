"""The named architectures: the two reports' nets and LeNet-5, built by ``build_model(name)``."""

from __future__ import annotations

from typing import Callable

from xpnet.nn import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU, Sequential


def report1_cnn() -> Sequential:
    """Report 1's net: Conv 1->8 k3 p1, ReLU, MaxPool 2, Dropout 0.3, Dense 1568->10 (28x28 inputs)."""
    return Sequential(Conv2D(1, 8, 3, padding=1), ReLU(), MaxPool2D(2), Dropout(0.3), Flatten(), Dense(1568, 10))


def report2_cnn() -> Sequential:
    """Report 2's net: Conv 1->3->6->9 k3 p1 each with ReLU, MaxPool 2, Dense 1764->10 (28x28 inputs)."""
    return Sequential(Conv2D(1, 3, 3, padding=1), ReLU(), Conv2D(3, 6, 3, padding=1), ReLU(),
                      Conv2D(6, 9, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(), Dense(1764, 10))


def lenet5() -> Sequential:
    """LeNet-5 with ReLU and max pooling: Conv 1->6 k5 p2, pool, Conv 6->16 k5, pool, 400-120-84-10."""
    return Sequential(Conv2D(1, 6, 5, padding=2), ReLU(), MaxPool2D(2), Conv2D(6, 16, 5), ReLU(), MaxPool2D(2),
                      Flatten(), Dense(400, 120), ReLU(), Dense(120, 84), ReLU(), Dense(84, 10))


MODELS: dict[str, Callable[[], Sequential]] = {
    "report1": report1_cnn,
    "report2": report2_cnn,
    "lenet5": lenet5,
}


def build_model(name: str) -> Sequential:
    """A fresh model by name, initialised from xpnet's seeded generator."""
    try:
        return MODELS[name]()
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None

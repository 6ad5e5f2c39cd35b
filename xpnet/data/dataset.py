"""The in-memory dataset every reader returns: uint8 images, int64 labels and the class names."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


class DataError(ValueError):
    """Bad or missing data; the message names the file or option and what was expected."""


@dataclass
class Dataset:
    """``images`` uint8 (N, H, W), ``labels`` int64 (N,); label ``i`` means ``classes[i]``."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images)
        self.labels = np.asarray(self.labels)
        self.classes = [str(c) for c in self.classes]
        if self.images.dtype != np.uint8 or self.images.ndim != 3:
            raise DataError(f"images must be a uint8 array (N, H, W), got {self.images.dtype} {self.images.shape}")
        if self.labels.ndim != 1 or (self.labels.size and self.labels.dtype.kind not in "iu"):
            raise DataError(f"labels must be an integer array (N,), got {self.labels.dtype} {self.labels.shape}")
        self.labels = self.labels.astype(np.int64, copy=False)
        if len(self.labels) != len(self.images):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            bad = self.labels[(self.labels < 0) | (self.labels >= len(self.classes))][0]
            raise DataError(f"label {bad} is out of range: expected labels in [0, {len(self.classes)}) "
                            f"for {len(self.classes)} classes")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> Dataset:
        """The examples at ``indices`` (a copy), with the same class names."""
        indices = np.asarray(indices, dtype=np.int64)
        return Dataset(self.images[indices], self.labels[indices], list(self.classes))


def dataset_from(source: str | os.PathLike, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> Dataset:
    """A ``Dataset``, with any validation error prefixed by ``source`` (the file it was read from)."""
    try:
        return Dataset(images, labels, classes)
    except DataError as exc:
        raise DataError(f"{source}: {exc}") from None

"""The in-memory dataset every reader returns: uint8 images (N, C, H, W), int64 labels and the class names."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

LUMA_CHUNK = 4096  # images converted to grayscale at a time
MAX_DIMS = 32  # the most array dimensions a file may declare (NumPy 1.x's limit; 2.x allows 64)
MAX_NUMBERED_CLASSES = 1 << 16  # labels with no class list name classes "0", "1", ...: at most this many


class DataError(ValueError):
    """Bad or missing data; the message names the file or option and what was expected."""


@dataclass
class Dataset:
    """``images`` uint8 (N, C, H, W), ``labels`` int64 (N,); label ``i`` means ``classes[i]``.

    Grayscale images may be given as (N, H, W): they get the channel axis (C = 1).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images)
        self.labels = np.asarray(self.labels)
        self.classes = [str(c) for c in self.classes]
        if self.images.dtype != np.uint8 or self.images.ndim not in (3, 4):
            raise DataError(f"images must be a uint8 array (N, C, H, W) or (N, H, W), got {self.images.dtype} "
                            f"{self.images.shape}")
        if self.images.ndim == 3:
            self.images = self.images[:, None]
        if self.images.shape[1] == 0:
            raise DataError(f"images must have at least one channel, got shape {self.images.shape}")
        if 0 in self.images.shape[2:]:
            raise DataError(f"images must be at least 1x1 pixels, got shape {self.images.shape}")
        if self.labels.ndim != 1 or (self.labels.size and self.labels.dtype.kind not in "iu"):
            raise DataError(f"labels must be an integer array (N,), got {self.labels.dtype} {self.labels.shape}")
        if len(self.labels) != len(self.images):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= len(self.classes))) if self.labels.size else []
        if len(bad):  # checked before the int64 cast, which would wrap uint64 values
            raise DataError(f"label {self.labels[bad[0]]} is out of range (at index {bad[0]}): expected labels in "
                            f"[0, {len(self.classes)}) for {len(self.classes)} classes")
        self.labels = self.labels.astype(np.int64, copy=False)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image's shape (C, H, W)."""
        return tuple(self.images.shape[1:])

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


def same_shape(train: Dataset, test: Dataset, train_source: str | os.PathLike,
               test_source: str | os.PathLike) -> tuple[Dataset, Dataset]:
    """(train, test), refused unless their images have one shape (C, H, W): a model is built for one."""
    if train.shape != test.shape:
        raise DataError(f"{train_source} holds images of shape {train.shape} (C, H, W) but {test_source} holds "
                        f"{test.shape}; both splits need the same shape")
    return train, test


def checked_nbytes(shape: Sequence[int], itemsize: int, source: str | os.PathLike, what: str) -> int:
    """The bytes an array of ``shape`` holds, computed in Python ints (no overflow), after checking that NumPy
    can represent the shape; ``what`` names the array in the error."""
    if len(shape) > MAX_DIMS:
        raise DataError(f"{source}: {what} declares {len(shape)} dimensions; expected at most {MAX_DIMS}")
    if math.prod(d for d in shape if d) * max(itemsize, 1) > np.iinfo(np.intp).max:
        raise DataError(f"{source}: {what} declares shape {tuple(shape)}, too large for any array")
    return math.prod(shape) * itemsize


def numbered_classes(labels: Mapping[str, np.ndarray]) -> list[str]:
    """Class names "0", "1", ... up to the largest label, for data without a class list; ``labels`` maps a name
    for errors (file, array) to integer labels. More than ``MAX_NUMBERED_CLASSES`` is refused: one corrupt label
    would otherwise make billions of names."""
    top = -1
    for source, array in labels.items():
        if array.ndim != 1 or not array.size or array.dtype.kind not in "iu":
            continue  # the Dataset check refuses labels that are not integers (N,)
        i = int(np.argmax(array))
        if int(array[i]) >= MAX_NUMBERED_CLASSES:
            raise DataError(f"{source}: label {array[i]} (at index {i}) would make {int(array[i]) + 1} classes; "
                            f"without a class list labels must be in [0, {MAX_NUMBERED_CLASSES})")
        top = max(top, int(array[i]))
    return [str(i) for i in range(top + 1)]


def luma(images: np.ndarray) -> np.ndarray:
    """uint8 RGB images (N, 3, H, W) as grayscale (N, 1, H, W) by Pillow's "L" conversion (ITU-R 601-2 luma,
    the same fixed-point rounding), so an RGB set converts exactly as its image files would."""
    out = np.empty((len(images), 1, *images.shape[2:]), dtype=np.uint8)
    for lo in range(0, len(images), LUMA_CHUNK):  # bounds the uint32 temporaries
        r, g, b = (images[lo:lo + LUMA_CHUNK, c:c + 1].astype(np.uint32) for c in range(3))
        out[lo:lo + LUMA_CHUNK] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
    return out


def to_grayscale(dataset: Dataset) -> Dataset:
    """``dataset`` with one channel: unchanged if it has one, its luma if it has three (RGB)."""
    channels = dataset.shape[0]
    if channels == 1:
        return dataset
    if channels != 3:
        raise DataError(f"grayscale: expected 1- or 3-channel (RGB) images, got {channels} channels")
    return Dataset(luma(dataset.images), dataset.labels, list(dataset.classes))

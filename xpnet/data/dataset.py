"""The in-memory dataset every reader returns: uint8 images (N, C, H, W), int64 labels and the class names."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

LUMA_CHUNK = 4096  # images converted to grayscale at a time


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

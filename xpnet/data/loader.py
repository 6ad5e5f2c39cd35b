"""Train/validation splits and the batch iterator: uint8 images in, float (B, 1, H, W) batches on the device out.

Shuffling draws epoch ``e``'s order from ``default_rng([seed, e])``, so the order depends only on the seed and
the epoch number: a run resumed at epoch ``e`` replays exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import numpy as np

from xpnet.data.dataset import DataError, Dataset

PRELOAD_LIMIT_BYTES = 1 << 30


def split_train_val(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(train, val): a seeded random ``val_fraction`` of ``dataset`` held out (rounded down; 0 gives an empty val)."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-split must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(dataset))
    n_val = int(len(dataset) * val_fraction)
    return dataset.subset(np.sort(order[n_val:])), dataset.subset(np.sort(order[:n_val]))


def _identity(a: np.ndarray) -> np.ndarray:
    return a


class DataLoader:
    """Batches of ``dataset`` as ``(x, y)``: x the images / 255 as ``dtype`` shaped (B, 1, H, W), y int64 (B,),
    both passed through ``to_device``.

    With ``preload`` (default: when the float copy of the whole set is under 1 GiB) the set is converted and
    moved to the device once, then each batch is gathered there; otherwise each batch is converted and moved on
    its own. Both give bit-identical batches. Call ``set_epoch(e)`` before each epoch to get that epoch's order.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, to_device: Callable[[np.ndarray], Any] | None = None,
                 dtype: str | np.dtype = "float32", preload: bool | None = None):
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise DataError(f"--batch-size must be a positive integer, got {batch_size!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise DataError(f"--dtype must be a float type, got {self.dtype}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.to_device = to_device or _identity
        float_bytes = dataset.images.size * self.dtype.itemsize
        self.preload = float_bytes < PRELOAD_LIMIT_BYTES if preload is None else preload
        self.epoch = 0
        self._device_set: tuple[Any, Any] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s shuffle order from the next iteration on."""
        self.epoch = epoch

    def _to_float(self, images: np.ndarray) -> np.ndarray:
        x = images.astype(self.dtype) / self.dtype.type(255)
        return x.reshape(len(images), 1, *images.shape[1:])

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n)
        if self.preload:
            if self._device_set is None:
                self._device_set = (self.to_device(self._to_float(self.dataset.images)),
                                    self.to_device(self.dataset.labels))
            xs, ys = self._device_set
            device_order = self.to_device(order)
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if self.preload:
                idx = device_order[lo:hi]
                yield xs[idx], ys[idx]
            else:
                idx = order[lo:hi]
                x = self._to_float(self.dataset.images[idx])
                yield self.to_device(x), self.to_device(self.dataset.labels[idx])

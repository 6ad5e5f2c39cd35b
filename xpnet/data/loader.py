"""Train/validation splits and the batch iterator: uint8 images in, float (B, C, H, W) batches on the device out.

Shuffling draws epoch ``e``'s order from ``default_rng([seed, e])`` and batch ``b``'s augmentation from
``default_rng([seed, e, b, AUGMENT_STREAM])``, so both depend only on the seed, the epoch and the batch number: a
run resumed at epoch ``e`` replays exactly the batches the uninterrupted run would have seen, and every MPI rank
(which iterates the same global batches) augments them alike.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import numpy as np

from xpnet.data.dataset import DataError, Dataset
from xpnet.data.transforms import Transform, is_random

PRELOAD_LIMIT_BYTES = 1 << 30
# Last word of each batch's augmentation seed. SeedSequence pads short entropy with zeros, so [seed, epoch] and
# [seed, epoch, 0] would seed the same generator; a non-zero word keeps the augmentation apart from the shuffle.
AUGMENT_STREAM = 0x6175676D  # "augm"


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
    """Batches of ``dataset`` as ``(x, y)``: x the images / 255 as ``dtype`` shaped (B, C, H, W), then passed
    through ``transform(x, rng)`` if given, y int64 (B,), both passed through ``to_device``.

    With ``preload`` (default: when the float copy of the whole set is under 1 GiB and ``transform`` draws no
    random numbers) the set is converted, transformed and moved to the device once, then each batch is gathered
    there; otherwise each batch is converted, transformed on the host and moved on its own. Both give
    bit-identical batches. Call ``set_epoch(e)`` before each epoch to get that epoch's order and augmentation.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, to_device: Callable[[np.ndarray], Any] | None = None,
                 dtype: str | np.dtype = "float32", preload: bool | None = None, transform: Transform | None = None):
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise DataError(f"--batch-size must be a positive integer, got {batch_size!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise DataError(f"--dtype must be a float type, got {self.dtype}")
        if transform is not None and not callable(transform):
            raise DataError(f"transform must be callable as transform(x, rng), got {transform!r}")
        random = transform is not None and is_random(transform)
        if preload and random:
            raise DataError("preload=True needs a transform that draws no random numbers: random augmentation "
                            "runs on the host, batch by batch")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.to_device = to_device or _identity
        self.transform = transform
        float_bytes = dataset.images.size * self.dtype.itemsize
        self.preload = (float_bytes < PRELOAD_LIMIT_BYTES and not random) if preload is None else preload
        self.epoch = 0
        self._device_set: tuple[Any, Any] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s shuffle order and augmentation from the next iteration on."""
        self.epoch = epoch

    def batch_rng(self, batch_index: int) -> np.random.Generator:
        """The generator batch ``batch_index`` of the current epoch is augmented with."""
        return np.random.default_rng([self.seed, self.epoch, batch_index, AUGMENT_STREAM])

    def _to_float(self, images: np.ndarray) -> np.ndarray:
        return images.astype(self.dtype) / self.dtype.type(255)

    def _host_batch(self, images: np.ndarray, batch_index: int) -> np.ndarray:
        """Batch ``batch_index``'s images scaled and transformed, on the host."""
        x = self._to_float(images)
        return x if self.transform is None else self.transform(x, self.batch_rng(batch_index))

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
            if self._device_set is None:  # a preloaded transform draws nothing: any generator gives the same set
                whole = self._host_batch(self.dataset.images, 0)
                self._device_set = (self.to_device(whole), self.to_device(self.dataset.labels))
            xs, ys = self._device_set
            device_order = self.to_device(order)
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if self.preload:
                idx = device_order[lo:hi]
                yield xs[idx], ys[idx]
            else:
                idx = order[lo:hi]
                x = self._host_batch(self.dataset.images[idx], b)
                yield self.to_device(x), self.to_device(self.dataset.labels[idx])

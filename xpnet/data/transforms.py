"""Batched augmentation on the host: each transform maps a float batch (B, C, H, W) to a new one, vectorised
over the batch (no Python loop over images), drawing from the generator it is given.

A transform is called as ``t(x, rng)``. The DataLoader hands each batch a generator seeded by (seed, epoch,
batch index), so the augmentation of a batch is the same on every backend, on every MPI rank and after a
resume. Transforms that draw nothing set ``random = False``; the loader may then apply them once to a whole
preloaded set.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _check_batch(x: np.ndarray, who: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype.kind != "f":
        shape = getattr(x, "shape", None)
        raise ValueError(f"{who}: expected a float NumPy batch (B, C, H, W), got {type(x).__name__} "
                         f"{getattr(x, 'dtype', '')} {shape}")
    return x


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _ints(value: int | Sequence[int], lengths: tuple[int, ...], minimum: int, name: str,
          expected: str) -> tuple[int, ...]:
    """``value`` as a tuple of ints >= ``minimum``: one int repeated ``lengths[0]`` times, or a sequence of one of
    ``lengths`` ints; else a ValueError naming ``name`` and what was ``expected``."""
    items = (value,) * lengths[0] if _is_int(value) else tuple(value) if isinstance(value, Sequence) else ()
    if len(items) not in lengths or not all(_is_int(v) and v >= minimum for v in items):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return tuple(int(v) for v in items)


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from an int or a pair, as torchvision reads ``size``."""
    height, width = _ints(size, (2,), 1, "RandomCrop size", "a positive int or (height, width)")
    return height, width


def _padding4(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) from torchvision's forms: one int, (left/right, top/bottom) or all four."""
    pad = _ints(padding, (4, 2), 0, "RandomCrop padding", "a non-negative int or a sequence of 2 or 4 of them")
    left, top, right, bottom = pad * 2 if len(pad) == 2 else pad
    return left, top, right, bottom


class RandomCrop:
    """A random ``size`` window of each image, after zero ``padding`` (torchvision's forms: an int, (left/right,
    top/bottom) or (left, top, right, bottom)); each image draws its own offset, rows first, then columns."""

    random = True

    def __init__(self, size: int | Sequence[int], padding: int | Sequence[int] = 0):
        self.size = _size_pair(size)
        self.padding = _padding4(padding)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = _check_batch(x, "RandomCrop")
        left, top, right, bottom = self.padding
        height, width = x.shape[2] + top + bottom, x.shape[3] + left + right
        th, tw = self.size
        if th > height or tw > width:
            raise ValueError(f"RandomCrop: crop size {th}x{tw} is larger than the padded image {height}x{width}")
        if any(self.padding):  # a zero frame and one slice copy: several times faster than np.pad
            padded = np.zeros((*x.shape[:2], height, width), dtype=x.dtype)
            padded[:, :, top:top + x.shape[2], left:left + x.shape[3]] = x
            x = padded
        rows = rng.integers(0, height - th + 1, size=len(x))
        cols = rng.integers(0, width - tw + 1, size=len(x))
        windows = sliding_window_view(x, (th, tw), axis=(2, 3))  # (B, C, offsets_h, offsets_w, th, tw), a view
        return np.ascontiguousarray(windows[np.arange(len(x)), :, rows, cols])

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Each image mirrored left to right with probability ``p``."""

    random = True

    def __init__(self, p: float = 0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"RandomHorizontalFlip p: expected a probability in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = _check_batch(x, "RandomHorizontalFlip")
        flip = rng.random(len(x)) < self.p
        out = x.copy()
        out[flip] = x[flip, :, :, ::-1]  # only the flipped images are gathered (np.where reads them all reversed)
        return out

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """``(x - mean[c]) / std[c]`` per channel, in the batch's dtype; one value each applies to every channel."""

    random = False

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float], inplace: bool = False):
        self.mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        self.std = np.atleast_1d(np.asarray(std, dtype=np.float64))
        if self.mean.ndim != 1 or self.std.ndim != 1 or not (np.isfinite(self.mean).all()
                                                              and np.isfinite(self.std).all()):
            raise ValueError(f"Normalize: mean and std must be finite numbers or sequences, got {mean!r}, {std!r}")
        if (self.std == 0).any():
            raise ValueError(f"Normalize std: expected non-zero values (it divides), got {std!r}")
        self.inplace = inplace

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        x = _check_batch(x, "Normalize")
        channels = x.shape[1]
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise ValueError(f"Normalize {name}: {len(values)} values for a batch of {channels} channels; "
                                 f"expected 1 or {channels}")
        mean = self.mean.astype(x.dtype).reshape(1, -1, 1, 1)
        std = self.std.astype(x.dtype).reshape(1, -1, 1, 1)
        if self.inplace:
            x -= mean
            x /= std
            return x
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class Compose:
    """The ``transforms`` one after another, all drawing from the same generator in turn."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise ValueError(f"Compose: every transform must be callable as t(x, rng), got {t!r}")

    @property
    def random(self) -> bool:
        """Whether any part draws from the generator (a callable without the attribute is assumed to)."""
        return any(is_random(t) for t in self.transforms)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(map(repr, self.transforms)) + "])"


def is_random(transform: Transform) -> bool:
    """Whether ``transform`` draws random numbers; one that does not say so is assumed to."""
    return bool(getattr(transform, "random", True))

"""``load_dataset``: the named datasets (MNIST, Fashion-MNIST, CIFAR-10), each from the first source that has it,
and ``folder``, the user's own class-folder tree."""

from __future__ import annotations

import os
from typing import Sequence

from xpnet.data import cifar10, fashion_mnist, image_folder, mnist
from xpnet.data.dataset import DataError
from xpnet.data.sources import DatasetSpec, Splits

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (mnist.SPEC, fashion_mnist.SPEC, cifar10.SPEC,
                                                                 image_folder.SPEC)}


def load_dataset(name: str = "mnist", path: str | os.PathLike | None = None, *, grayscale: bool = False,
                 image_type: str | None = None, cache_dir: str | os.PathLike | None = None, download: bool = True,
                 mirrors: Sequence[str] | None = None, progress: bool = True,
                 image_size: tuple[int, int] | None = None) -> Splits:
    """Dataset ``name`` ("mnist", "fashion-mnist" or "cifar10") from the first source that has it: ``path`` (else
    ``$XPNET_DATA``): the dataset's own files, a class-folder tree or an .npz; the user cache (``cache_dir``, else
    ``$XDG_CACHE_HOME/xpnet`` or ``~/.cache/xpnet``); an installed package that carries it; a download from
    ``mirrors`` (default: the dataset's), verified by checksum.

    Images are uint8 (N, C, H, W); ``grayscale`` makes RGB ones one channel (Pillow's "L" luma). A named path must
    hold data (no fallback); if every source fails, the DataError lists each way to provide the data.
    ``image_type`` ("png" or "jpg") limits a class-folder tree to that file type; ``image_size`` (height, width)
    resizes its images to that size (without it they must be the dataset's size). ``name`` "folder" is a tree (or
    .npz) at ``path`` with images the size of its first and any number of classes.
    """
    spec = DATASETS.get(name)
    if spec is None:
        raise DataError(f"dataset: unknown name {name!r}; expected one of {', '.join(DATASETS)}")
    return spec.load(path, grayscale=grayscale, image_type=image_type, cache_dir=cache_dir, download=download,
                     mirrors=mirrors, progress=progress, image_size=image_size)

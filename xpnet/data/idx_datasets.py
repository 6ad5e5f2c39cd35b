"""Datasets shipped as MNIST's four IDX files (MNIST, Fashion-MNIST): finding them in a folder, reading them
and downloading them, each file checked against the SHA-256 of its decompressed bytes."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from xpnet.data.dataset import DataError, Dataset
from xpnet.data.idx import GZIP_MAGIC, idx_dataset, parse_idx, read_idx
from xpnet.data.sources import DatasetSpec, Splits, fetch

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_files(folder: Path) -> dict[str, Path]:
    """The standard IDX files present in ``folder``, raw or .gz (also the common 'train-images.idx3-ubyte')."""
    found = {}
    for name in IDX_NAMES:
        for stem in (name, name.replace("-idx", ".idx")):
            for candidate in (folder / stem, folder / f"{stem}.gz"):
                if candidate.is_file() and name not in found:
                    found[name] = candidate
    return found


def _decompressed(data: bytes, source: str | os.PathLike) -> bytes:
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{source}: corrupt gzip data ({exc})") from None


class IdxSpec(DatasetSpec):
    """A dataset in the four IDX files ``IDX_NAMES``; ``checksums`` maps each name to the SHA-256 of its
    decompressed bytes (a shared dict, so a test can swap its entries)."""

    checksums: Mapping[str, str]

    def native_layouts(self) -> str:
        return f"a folder holding the four IDX files {', '.join(IDX_NAMES)} (raw or .gz)"

    def classes_for(self, labels: Sequence[np.ndarray]) -> list[str]:
        """The dataset's class names, extended by number when the labels go past them."""
        top = max((int(a.max()) for a in labels if a.size), default=-1)
        return list(self.classes) + [str(i) for i in range(len(self.classes), top + 1)]

    def splits(self, arrays: Mapping[str, np.ndarray], sources: Mapping[str, str | os.PathLike],
               classes: list[str]) -> tuple[Dataset, Dataset]:
        """(train, test) from the four decoded arrays; ``sources`` name each file in errors."""
        train_x, train_y, test_x, test_y = IDX_NAMES
        return (idx_dataset(arrays[train_x], arrays[train_y], sources[train_x], sources[train_y], classes),
                idx_dataset(arrays[test_x], arrays[test_y], sources[test_x], sources[test_y], classes))

    def load_native(self, path: Path, origin: str) -> Splits | None:
        if not path.is_dir():
            return None
        files = idx_files(path)
        if not files:
            return None
        if len(files) < len(IDX_NAMES):
            missing = [name for name in IDX_NAMES if name not in files]
            raise DataError(f"{origin} {path} holds only some of the {self.title} IDX files; missing "
                            f"{', '.join(missing)} (raw or .gz)")
        arrays = {name: read_idx(p) for name, p in files.items()}
        classes = self.classes_for([a for name, a in arrays.items() if "labels" in name])
        train, test = self.splits(arrays, files, classes)
        return Splits(train, test, f"IDX files in {path}")

    def read_verified(self, folder: Path) -> tuple[Dataset, Dataset]:
        """(train, test) from the IDX files in ``folder``, each checked against ``checksums`` (for installed
        copies, which may be another version)."""
        files = idx_files(folder)
        missing = [name for name in IDX_NAMES if name not in files]
        if missing:
            raise DataError(f"{folder}: missing {', '.join(missing)} (raw or .gz)")
        arrays = {}
        for name, path in files.items():
            try:
                data = _decompressed(path.read_bytes(), path)
            except OSError as exc:
                raise DataError(f"{path}: cannot read IDX file ({exc.strerror or exc})") from None
            digest = hashlib.sha256(data).hexdigest()
            if digest != self.checksums[name]:
                raise DataError(f"{path}: SHA-256 of the decompressed file is {digest}, expected "
                                f"{self.checksums[name]}")
            arrays[name] = parse_idx(data, path)
        return self.splits(arrays, files, list(self.classes))

    def _download_file(self, name: str, mirrors: Sequence[str], progress: bool) -> tuple[bytes, str]:
        """The decompressed bytes of ``name`` from the first mirror whose copy matches its SHA-256, and the URL."""
        failures = []
        expected = self.checksums[name]
        for mirror in mirrors:
            url = f"{mirror.rstrip('/')}/{name}.gz"
            try:
                data = fetch(url, progress)
                if data[:2] == GZIP_MAGIC:
                    data = gzip.decompress(data)
            except (OSError, EOFError, ValueError, zlib.error, http.client.HTTPException) as exc:
                failures.append(f"{url}: {exc}")
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest == expected:
                return data, url
            failures.append(f"{url}: corrupted (SHA-256 of the decompressed file is {digest}, expected {expected})")
        raise DataError(f"could not download {name}: " + "; ".join(failures or ["no mirrors given"]))

    def download(self, mirrors: Sequence[str], progress: bool) -> tuple[Dataset, Dataset, list[str]]:
        """The four .gz files, each from the first mirror whose copy passes its checksum."""
        fetched = {name: self._download_file(name, mirrors, progress) for name in IDX_NAMES}
        arrays = {name: parse_idx(data, url) for name, (data, url) in fetched.items()}
        urls = {name: url for name, (_, url) in fetched.items()}
        train, test = self.splits(arrays, urls, list(self.classes))
        return train, test, list(urls.values())

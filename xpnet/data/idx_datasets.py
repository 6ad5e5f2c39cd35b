"""Datasets shipped as MNIST's four IDX files (MNIST, Fashion-MNIST): finding them in a folder, reading them
and downloading them, each file checked against the SHA-256 of its decompressed bytes."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from xpnet.data.dataset import DataError, Dataset, same_shape
from xpnet.data.idx import checked_idx_bytes, idx_array, idx_dataset, read_idx, read_idx_file
from xpnet.data.sources import DatasetSpec, Splits, fetch

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MAX_DOWNLOAD_BYTES = 64 << 20  # per .gz file: the largest (Fashion-MNIST's training images) is 26 MB


def idx_files(folder: Path) -> dict[str, Path]:
    """The standard IDX files present in ``folder``, raw or .gz (also the common 'train-images.idx3-ubyte')."""
    found = {}
    for name in IDX_NAMES:
        for stem in (name, name.replace("-idx", ".idx")):
            for candidate in (folder / stem, folder / f"{stem}.gz"):
                if candidate.is_file() and name not in found:
                    found[name] = candidate
    return found


class IdxSpec(DatasetSpec):
    """A dataset in the four IDX files ``IDX_NAMES``; ``checksums`` maps each name to the SHA-256 of its
    decompressed bytes (a shared dict, so a test can swap its entries)."""

    checksums: Mapping[str, str]

    def native_layouts(self) -> str:
        return f"a folder holding the four IDX files {', '.join(IDX_NAMES)} (raw or .gz)"

    def splits(self, arrays: Mapping[str, np.ndarray], sources: Mapping[str, str | os.PathLike],
               classes: list[str]) -> tuple[Dataset, Dataset]:
        """(train, test) from the four decoded arrays; ``sources`` name each file in errors, and a label outside
        ``classes`` is refused naming its file, value and index."""
        train_x, train_y, test_x, test_y = IDX_NAMES
        return same_shape(idx_dataset(arrays[train_x], arrays[train_y], sources[train_x], sources[train_y], classes),
                          idx_dataset(arrays[test_x], arrays[test_y], sources[test_x], sources[test_y], classes),
                          sources[train_x], sources[test_x])

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
        train, test = self.splits(arrays, files, list(self.classes))
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
            data = read_idx_file(path)
            digest = hashlib.sha256(data).hexdigest()
            if digest != self.checksums[name]:
                raise DataError(f"{path}: SHA-256 of the decompressed file is {digest}, expected "
                                f"{self.checksums[name]}")
            arrays[name] = idx_array(data)
        return self.splits(arrays, files, list(self.classes))

    def _download_file(self, name: str, mirrors: Sequence[str], progress: bool) -> tuple[bytearray, str]:
        """The decompressed bytes of ``name`` from the first mirror whose copy matches its SHA-256 (and its IDX
        header), and the URL."""
        failures = []
        expected = self.checksums[name]
        for mirror in mirrors:
            url = f"{mirror.rstrip('/')}/{name}.gz"
            try:
                fetched = fetch(url, progress, MAX_DOWNLOAD_BYTES)
            except (OSError, ValueError, http.client.HTTPException) as exc:
                failures.append(f"{url}: {exc}")
                continue
            try:
                data = checked_idx_bytes(io.BytesIO(fetched), len(fetched), url)
            except DataError as exc:  # names the URL
                failures.append(str(exc))
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest == expected:
                return data, url
            failures.append(f"{url}: corrupted (SHA-256 of the decompressed file is {digest}, expected {expected})")
        raise DataError(f"could not download {name}: " + "; ".join(failures or ["no mirrors given"]))

    def download(self, mirrors: Sequence[str], progress: bool) -> tuple[Dataset, Dataset, list[str]]:
        """The four .gz files, each from the first mirror whose copy passes its checksum."""
        fetched = {name: self._download_file(name, mirrors, progress) for name in IDX_NAMES}
        arrays = {name: idx_array(data) for name, (data, _) in fetched.items()}
        urls = {name: url for name, (_, url) in fetched.items()}
        train, test = self.splits(arrays, urls, list(self.classes))
        return train, test, list(urls.values())

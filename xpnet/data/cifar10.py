"""CIFAR-10 in its binary distribution (cifar-10-binary.tar.gz): 50,000 training and 10,000 test 32x32 RGB images
of 10 classes.

Each batch file (data_batch_1..5.bin, test_batch.bin) is a run of fixed-size records: one label byte, then 3072
pixel bytes, the red, green and blue 32x32 planes in row-major order, which is already (3, 32, 32). The records
are parsed as bytes (the pickled Python version is never read), the archive member by member from its stream
(nothing is extracted to disk), and every size is checked before anything is allocated. A download is verified
against the archive's published MD5.

Resolution, first hit wins: a path the user names (argument or ``XPNET_DATA``), the user cache (cifar10.npz), a
verified download (see ``xpnet.data.sources``).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Mapping, Sequence

import numpy as np

from xpnet.data.dataset import DataError, Dataset, dataset_from
from xpnet.data.sources import DatasetSpec, Splits, fetch

ARCHIVE = "cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # of ARCHIVE, as published on https://www.cs.toronto.edu/~kriz/cifar.html
MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
MAX_DOWNLOAD_BYTES = 256 << 20  # ARCHIVE is 162 MiB; a mirror sending more is refused without reading it all
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FOLDER = "cifar-10-batches-bin"  # the folder the archive holds its files in
TRAIN_BATCHES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_BATCH = "test_batch.bin"
BATCHES = (*TRAIN_BATCHES, TEST_BATCH)
META = "batches.meta.txt"  # the class names, one a line
IMAGE_SHAPE = (3, 32, 32)
RECORD_BYTES = 1 + 3 * 32 * 32
MAX_RECORDS = 10_000  # per batch file, as distributed
MAX_META_BYTES = 1 << 12


def check_batch_size(size: int, source: str) -> None:
    """A DataError unless ``size`` bytes is 1 to MAX_RECORDS whole records."""
    if size == 0 or size % RECORD_BYTES or size > MAX_RECORDS * RECORD_BYTES:
        raise DataError(f"{source}: {size} bytes is not a CIFAR-10 batch; expected 1 to {MAX_RECORDS} records of "
                        f"{RECORD_BYTES} bytes (a label byte and 3072 pixel bytes)")


def _check_size(name: str, size: int, source: str) -> None:
    if name == META:
        if size > MAX_META_BYTES:
            raise DataError(f"{source}: {size} bytes is too large for a list of class names "
                            f"(at most {MAX_META_BYTES})")
    else:
        check_batch_size(size, source)


def parse_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, 3, 32, 32), labels int64 (n,)) from the bytes of one batch file."""
    check_batch_size(len(data), source)
    records = np.frombuffer(data, np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0]
    bad = np.flatnonzero(labels >= len(CLASSES))
    if bad.size:
        raise DataError(f"{source}: record {bad[0]} has label {labels[bad[0]]}; expected labels 0 to "
                        f"{len(CLASSES) - 1}")
    return records[:, 1:].reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64)


def parse_meta(data: bytes, source: str) -> list[str]:
    """The class names of batches.meta.txt (one a line, blank lines ignored); there must be ten."""
    try:
        names = [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise DataError(f"{source}: not a text file of class names ({exc})") from None
    if len(names) != len(CLASSES):
        raise DataError(f"{source}: lists {len(names)} class names; expected {len(CLASSES)}")
    return names


def _splits(parts: Mapping[str, bytes], sources: Mapping[str, str], where: str) -> tuple[Dataset, Dataset]:
    """(train, test) from the files' bytes by base name; ``sources`` name each in errors, ``where`` all of them."""
    missing = [name for name in BATCHES if name not in parts]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)}; expected {', '.join(BATCHES)}")
    classes = parse_meta(parts[META], sources[META]) if META in parts else CLASSES
    train = [parse_batch(parts[name], sources[name]) for name in TRAIN_BATCHES]
    test_x, test_y = parse_batch(parts[TEST_BATCH], sources[TEST_BATCH])
    train_x, train_y = np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])
    return (dataset_from(f"{where} (training batches)", train_x, train_y, classes),
            dataset_from(sources[TEST_BATCH], test_x, test_y, classes))


def read_archive(file: BinaryIO, source: str) -> tuple[Dataset, Dataset]:
    """(train, test) from a (gzip-compressed) tar stream holding the batch files in any folder; members are
    read one after the other into memory, sizes checked from their headers first."""
    parts, sources = {}, {}
    try:
        with tarfile.open(fileobj=file, mode="r|*") as tar:
            for member in tar:
                name = PurePosixPath(member.name).name
                if name not in BATCHES and name != META:
                    continue
                where = f"{source}:{member.name}"
                if not member.isfile():
                    raise DataError(f"{where}: not a regular file")
                if name in parts:
                    raise DataError(f"{where}: a second {name} (the first is {sources[name]})")
                _check_size(name, member.size, where)
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise DataError(f"{where}: truncated ({len(data)} of {member.size} bytes)")
                parts[name], sources[name] = data, where
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{source}: not a readable tar.gz archive ({exc})") from None
    return _splits(parts, sources, source)


def read_archive_file(path: Path) -> tuple[Dataset, Dataset]:
    """(train, test) from a cifar-10-binary.tar.gz (or any tar of the batch files) on disk."""
    try:
        with open(path, "rb") as f:
            return read_archive(f, str(path))
    except OSError as exc:
        raise DataError(f"{path}: cannot read the archive ({exc.strerror or exc})") from None


def read_folder(folder: Path) -> tuple[Dataset, Dataset]:
    """(train, test) from the batch files (and batches.meta.txt, if there) in ``folder``."""
    parts, sources = {}, {}
    for name in (*BATCHES, META):
        path = folder / name
        if path.is_file():
            _check_size(name, path.stat().st_size, str(path))
            parts[name], sources[name] = path.read_bytes(), str(path)
    return _splits(parts, sources, str(folder))


def _batch_folder(path: Path) -> Path | None:
    """``path`` or its cifar-10-batches-bin/ subfolder, whichever holds a batch file."""
    for folder in (path, path / FOLDER):
        if any((folder / name).is_file() for name in BATCHES):
            return folder
    return None


class Cifar10Spec(DatasetSpec):
    """CIFAR-10's binary version: batch files in a folder, or the archive (named, or downloaded and verified)."""

    name = "cifar10"
    title = "CIFAR-10"
    classes = CLASSES
    image_size = (32, 32)
    mirrors = MIRRORS
    md5 = MD5

    def native_layouts(self) -> str:
        return (f"a folder holding {', '.join(BATCHES)} (or their {FOLDER}/ folder), a folder holding {ARCHIVE}, "
                f"or that archive itself")

    def load_native(self, path: Path, origin: str) -> Splits | None:
        if path.is_file():
            if path.name.lower().endswith((".tar.gz", ".tgz", ".tar")) or tarfile.is_tarfile(path):
                return Splits(*read_archive_file(path), f"archive {path}")
            return None
        folder = _batch_folder(path)
        if folder is not None:
            return Splits(*read_folder(folder), f"CIFAR-10 batch files in {folder}")
        if (path / ARCHIVE).is_file():
            return Splits(*read_archive_file(path / ARCHIVE), f"archive {path / ARCHIVE}")
        return None

    def download(self, mirrors: Sequence[str], progress: bool) -> tuple[Dataset, Dataset, list[str]]:
        """The archive from the first mirror whose copy matches ``md5``, read from memory."""
        failures = []
        for mirror in mirrors:
            url = f"{mirror.rstrip('/')}/{ARCHIVE}"
            try:
                data = fetch(url, progress, MAX_DOWNLOAD_BYTES)
            except (OSError, ValueError, http.client.HTTPException) as exc:
                failures.append(f"{url}: {exc}")
                continue
            digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
            if digest != self.md5:
                failures.append(f"{url}: corrupted (MD5 of the archive is {digest}, expected {self.md5})")
                continue
            train, test = read_archive(io.BytesIO(data), url)
            return train, test, [url]
        raise DataError(f"could not download {ARCHIVE}: " + "; ".join(failures or ["no mirrors given"]))


SPEC = Cifar10Spec()

"""IDX files (the format MNIST ships in), raw or gzip-compressed.

Layout: two zero bytes, a dtype code, the number of dimensions, one big-endian uint32 per dimension, then the
values in C order, big-endian.

Reading trusts nothing in the file: the size the header declares is computed in Python ints and checked before
anything is allocated, against the file's size (raw) or against what deflate can expand the file to (gzip), and
a gzip stream is read only as far as the header promises, plus one byte to refuse a longer one.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from typing import BinaryIO

import numpy as np

from xpnet.data.dataset import DataError, Dataset, checked_nbytes, dataset_from, numbered_classes
from xpnet.data.files import MAX_DEFLATE_RATIO, atomic_write, read_into

GZIP_MAGIC = b"\x1f\x8b"
# IDX dtype code -> big-endian NumPy dtype.
DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(v).newbyteorder("="): k for k, v in DTYPES.items()}


def _read_up_to(stream: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes from ``stream``: fewer only at its end."""
    chunks = []
    while n > 0 and (chunk := stream.read(n)):
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _header(stream: BinaryIO, source: str | os.PathLike) -> tuple[bytes, np.dtype, tuple[int, ...]]:
    """The header's bytes, dtype and dimensions, read from the start of the decompressed ``stream``."""
    magic = _read_up_to(stream, 4)
    if len(magic) < 4 or magic[:2] != b"\x00\x00":
        raise DataError(f"{source}: not an IDX file: expected the magic bytes 00 00 <dtype> <ndim>, "
                        f"got {magic.hex(' ') or 'an empty file'}")
    code, ndim = magic[2], magic[3]
    if code not in DTYPES:
        raise DataError(f"{source}: unknown IDX dtype code 0x{code:02x}; expected one of "
                        f"{', '.join(f'0x{c:02x}' for c in DTYPES)}")
    if ndim == 0:
        raise DataError(f"{source}: IDX header declares 0 dimensions; expected at least 1")
    sizes = _read_up_to(stream, 4 * ndim)
    if len(sizes) < 4 * ndim:
        raise DataError(f"{source}: file ends inside the IDX header ({4 + len(sizes)} bytes, header needs "
                        f"{4 + 4 * ndim})")
    dims = tuple(int.from_bytes(sizes[i:i + 4], "big") for i in range(0, len(sizes), 4))
    return magic + sizes, np.dtype(DTYPES[code]), dims


def _read_checked(stream: BinaryIO, stored: int, compressed: bool, source: str | os.PathLike) -> bytearray:
    """The whole IDX file from the decompressed ``stream`` of a file of ``stored`` bytes, refused unless its
    length is what the header declares; nothing is allocated before the declared size passed the checks."""
    header, dtype, dims = _header(stream, source)
    need = len(header) + checked_nbytes(dims, dtype.itemsize, source, "the IDX header")
    what = f"IDX dimensions {dims} of {dtype.itemsize}-byte values need {need} bytes"
    if not compressed and need != stored:
        raise DataError(f"{source}: {what}, but the file has {stored}")
    if compressed and need > MAX_DEFLATE_RATIO * stored:
        raise DataError(f"{source}: {what}, more than a {stored}-byte gzip file can hold (deflate expands at most "
                        f"{MAX_DEFLATE_RATIO}x)")
    data = bytearray(need)
    data[:len(header)] = header
    got = len(header) + read_into(stream, memoryview(data)[len(header):])
    kind = "decompressed file" if compressed else "file"
    if got < need:
        raise DataError(f"{source}: {what}, but the {kind} has {got}")
    if stream.read(1):
        raise DataError(f"{source}: {what}, but the {kind} has more")
    return data


def checked_idx_bytes(stream: BinaryIO, stored: int, source: str | os.PathLike) -> bytearray:
    """The decompressed bytes of the IDX file in ``stream`` (``stored`` bytes, raw or gzip, detected by the
    magic bytes), checked against the header; ``source`` names it in errors."""
    compressed = stream.read(2) == GZIP_MAGIC
    stream.seek(0)
    if not compressed:
        return _read_checked(stream, stored, False, source)
    try:
        with gzip.GzipFile(fileobj=stream, mode="rb") as unzipped:
            return _read_checked(unzipped, stored, True, source)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{source}: corrupt gzip data ({exc})") from None


def idx_array(data: bytes | bytearray) -> np.ndarray:
    """The array in the bytes of an IDX file already checked by ``checked_idx_bytes`` (uint8 values share them)."""
    header, dtype, dims = _header(io.BytesIO(data[:4 + 4 * data[3]]), "IDX data")
    return np.frombuffer(data, dtype, offset=len(header)).reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def parse_idx(data: bytes, source: str | os.PathLike) -> np.ndarray:
    """Decode the bytes of an IDX file (raw or gzip); ``source`` names it in errors."""
    return idx_array(checked_idx_bytes(io.BytesIO(data), len(data), source))


def read_idx_file(path: str | os.PathLike) -> bytearray:
    """The decompressed bytes of an IDX file, checked against its header."""
    try:
        with open(path, "rb") as f:
            return checked_idx_bytes(f, os.fstat(f.fileno()).st_size, path)
    except OSError as exc:  # a gzip error is a DataError by now: this is the file system
        raise DataError(f"{path}: cannot read IDX file ({exc.strerror or exc})") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in an IDX file; gzip is detected by its magic bytes, whatever the file is called."""
    return idx_array(read_idx_file(path))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzip-compressed if ``path`` ends in .gz; atomic (temp file + rename)."""
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None or array.ndim == 0 or array.ndim > 255:
        supported = ", ".join(str(dtype) for dtype in _CODES)
        raise ValueError(f"IDX cannot store a {array.dtype} array of shape {array.shape}; expected 1-255 "
                         f"dimensions of one of {supported}")
    body = (bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
            + np.ascontiguousarray(array, DTYPES[code]).tobytes())
    if str(path).endswith(".gz"):
        body = gzip.compress(body, mtime=0)
    with atomic_write(path) as f:
        f.write(body)


def load_idx_pair(images_path: str | os.PathLike, labels_path: str | os.PathLike,
                  classes: list[str] | None = None) -> Dataset:
    """An images IDX file (N, H, W) and its labels IDX file (N,) as a Dataset.

    ``classes`` defaults to "0", "1", ... up to the largest label (at most ``MAX_NUMBERED_CLASSES``); labels
    outside ``classes`` are refused, naming the labels file, the value and its index.
    """
    return idx_dataset(read_idx(images_path), read_idx(labels_path), images_path, labels_path, classes)


def idx_dataset(images: np.ndarray, labels: np.ndarray, images_source: str | os.PathLike,
                labels_source: str | os.PathLike, classes: list[str] | None = None) -> Dataset:
    """A Dataset from decoded IDX arrays, checked as ``load_idx_pair`` does; the sources name them in errors."""
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_source}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{labels_source}: expected integer labels (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{images_source} holds {len(images)} images but {labels_source} holds {len(labels)} "
                        f"labels; the counts must agree")
    if classes is None:
        classes = numbered_classes({str(labels_source): labels})
    return dataset_from(labels_source, images, labels, classes)

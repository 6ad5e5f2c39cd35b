"""IDX files (the format MNIST ships in), raw or gzip-compressed.

Layout: two zero bytes, a dtype code, the number of dimensions, one big-endian uint32 per dimension, then the
values in C order, big-endian.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from xpnet.data.dataset import DataError, Dataset, dataset_from
from xpnet.data.files import atomic_write

GZIP_MAGIC = b"\x1f\x8b"
# IDX dtype code -> big-endian NumPy dtype.
DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(v).newbyteorder("="): k for k, v in DTYPES.items()}


def parse_idx(data: bytes, source: str | os.PathLike) -> np.ndarray:
    """Decode the bytes of an IDX file (raw or gzip); ``source`` names it in errors."""
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{source}: corrupt gzip data ({exc})") from None
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise DataError(f"{source}: not an IDX file: expected the magic bytes 00 00 <dtype> <ndim>, "
                        f"got {data[:4].hex(' ') or 'an empty file'}")
    code, ndim = data[2], data[3]
    if code not in DTYPES:
        raise DataError(f"{source}: unknown IDX dtype code 0x{code:02x}; expected one of "
                        f"{', '.join(f'0x{c:02x}' for c in DTYPES)}")
    if ndim == 0:
        raise DataError(f"{source}: IDX header declares 0 dimensions; expected at least 1")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source}: file ends inside the IDX header ({len(data)} bytes, header needs {header})")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    dtype = np.dtype(DTYPES[code])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{source}: IDX dimensions {dims} of {dtype.itemsize}-byte values need {expected} bytes, "
                        f"but the file has {len(data)}")
    return np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in an IDX file; gzip is detected by its magic bytes, whatever the file is called."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc.strerror or exc})") from None
    return parse_idx(data, path)


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

    ``classes`` defaults to "0", "1", ... up to the largest label.
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
        classes = [str(i) for i in range(int(labels.max()) + 1 if labels.size else 0)]
    return dataset_from(labels_source, images, labels, classes)

"""MNIST-style .npz files: uint8 ``x_train`` (N, C, H, W) or (N, H, W), ``y_train``, ``x_test``, ``y_test``, optional
``classes``.

Reading trusts nothing in the archive: each member's .npy header is read with ``numpy.lib.format`` (nothing
allocated), the bytes it declares must be the member's size in the zip directory, and that size must be within
what the member's stored bytes can expand to, all before the array is allocated. Only numeric and string arrays
are read (never pickled objects), and only from stored or deflated members (what ``numpy.savez`` writes).
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from typing import BinaryIO, Sequence

import numpy as np
from numpy.lib import format as npy

from xpnet.data.dataset import DataError, Dataset, checked_nbytes, dataset_from, numbered_classes, same_shape
from xpnet.data.files import MAX_DEFLATE_RATIO, atomic_write, read_into

KEYS = ("x_train", "y_train", "x_test", "y_test")
ARRAY_KINDS = "biufSU"  # numeric and string arrays; object (pickle), structured and void dtypes are refused
# What zipfile and numpy.lib.format raise on a corrupt archive or .npy header.
ZIP_ERRORS = (OSError, EOFError, ValueError, TypeError, KeyError, IndexError, OverflowError, RuntimeError,
              NotImplementedError, struct.error, zlib.error, zipfile.BadZipFile)


class _Refused(Exception):
    """A member that is readable but not acceptable; the message says why."""


def _checked_info(archive: zipfile.ZipFile, member: str, archive_size: int) -> zipfile.ZipInfo:
    """The directory entry of ``member``, refused unless its sizes are possible for an archive of ``archive_size``
    bytes: stored bytes inside the file, and at most what deflate expands them to (no allocation trusts more)."""
    info = archive.getinfo(member)
    if info.flag_bits & 0x1:
        raise _Refused(f"{member} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _Refused(f"{member} uses compression method {info.compress_type}; expected stored or deflated")
    if info.header_offset + info.compress_size > archive_size:
        raise _Refused(f"{member} claims {info.compress_size} stored bytes, more than the {archive_size}-byte file")
    limit = info.compress_size * (MAX_DEFLATE_RATIO if info.compress_type == zipfile.ZIP_DEFLATED else 1)
    if info.file_size > limit:
        raise _Refused(f"{member} claims {info.file_size} bytes, more than its {info.compress_size} stored bytes "
                       f"can hold")
    return info


def _npy_header(f: BinaryIO, member: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from the start of a .npy member, refusing dtypes other than ARRAY_KINDS."""
    version = npy.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise _Refused(f"{member} is .npy format version {version}; expected 1.0 or 2.0")
    read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, fortran_order, dtype = read(f)
    if dtype.kind not in ARRAY_KINDS or dtype.hasobject or dtype.itemsize == 0:
        raise _Refused(f"{member} holds {dtype} values; expected a numeric or string array (objects are never "
                       f"unpickled)")
    return tuple(int(d) for d in shape), bool(fortran_order), dtype


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: str | os.PathLike) -> np.ndarray:
    """The array in one .npy member whose directory entry passed ``_checked_info``."""
    with archive.open(info) as f:
        shape, fortran_order, dtype = _npy_header(f, info.filename)
        size = checked_nbytes(shape, dtype.itemsize, path, info.filename)
        if f.tell() + size != info.file_size:
            raise _Refused(f"{info.filename} declares shape {shape} of {dtype} ({f.tell() + size} bytes with its "
                           f"header), but the member holds {info.file_size} bytes")
        data = bytearray(size)
        if read_into(f, memoryview(data)) < size or f.read(1):  # reading to the end also checks the CRC
            raise _Refused(f"{info.filename} is shorter than its header declares")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran_order else "C")


def read_npz(path: str | os.PathLike, names: Sequence[str], required: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The arrays ``names`` that the .npz file holds (``required`` must be among them), read without trusting
    the archive (see the module docstring); every failure is a DataError naming the file."""
    try:
        with open(path, "rb") as f, zipfile.ZipFile(f) as archive:
            size = os.fstat(f.fileno()).st_size
            members = set(archive.namelist())
            found = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
            missing = [n for n in required if f"{n}.npy" not in members]
            if missing:
                raise DataError(f"{path}: missing key(s) {', '.join(missing)}; expected arrays "
                                f"{', '.join(required)} (found: {', '.join(found) or 'none'})")
            return {n: _read_member(archive, _checked_info(archive, f"{n}.npy", size), path)
                    for n in names if f"{n}.npy" in members}
    except DataError:
        raise
    except (_Refused, *ZIP_ERRORS) as exc:
        raise DataError(f"{path}: not a readable .npz file of numeric arrays ({exc})") from None


def load_npz(path: str | os.PathLike) -> tuple[Dataset, Dataset]:
    """(train, test) from an .npz file; ``classes`` defaults to "0", "1", ... up to the largest label."""
    arrays = read_npz(path, (*KEYS, "classes"), required=KEYS)
    for key in ("x_train", "x_test"):
        shape = arrays[key].shape
        if len(shape) == 4 and shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4):
            raise DataError(f"{path}: {key} has shape {shape}, which looks channels-last (N, H, W, C); expected "
                            f"(N, C, H, W) (e.g. x.transpose(0, 3, 1, 2))")
    if "classes" in arrays:
        if arrays["classes"].ndim != 1:
            raise DataError(f"{path}: classes has shape {arrays['classes'].shape}; expected a list of names (K,)")
        classes = [str(c) for c in arrays["classes"]]
    else:
        classes = numbered_classes({f"{path} (y_train)": arrays["y_train"], f"{path} (y_test)": arrays["y_test"]})
    return same_shape(dataset_from(f"{path} (x_train, y_train)", arrays["x_train"], arrays["y_train"], classes),
                      dataset_from(f"{path} (x_test, y_test)", arrays["x_test"], arrays["y_test"], classes),
                      f"{path} (x_train)", f"{path} (x_test)")


def save_npz(path: str | os.PathLike, train: Dataset, test: Dataset) -> None:
    """Write ``train`` and ``test`` in the format ``load_npz`` reads; atomic (temp file + rename)."""
    if train.classes != test.classes:
        raise DataError(f"{path}: train and test class lists differ ({train.classes} vs {test.classes})")
    with atomic_write(path) as f:
        np.savez(f, x_train=train.images, y_train=train.labels, x_test=test.images, y_test=test.labels,
                 classes=np.array(train.classes, dtype=str))

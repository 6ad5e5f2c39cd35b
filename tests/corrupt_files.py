"""Hand-built hostile data files for the reader tests and the fuzz child (tests/data_fuzz_child.py): PNGs with
forged headers (valid CRCs, so they reach the decoder), gzip bombs, IDX headers and .npz archives whose .npy
headers or zip directory lie about their sizes."""

import gzip
import io
import struct
import zipfile
import zlib

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BOMB_MEMBER_ZEROS = 16 << 20  # bytes of zeros in one gzip member of a bomb (about 16 KB compressed)


# --- PNG ---------------------------------------------------------------------------------------------------------

def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of each chunk of a well-formed PNG."""
    chunks, at = [], len(PNG_SIGNATURE)
    while at < len(png):
        length, kind = struct.unpack(">I4s", png[at:at + 8])
        chunks.append((kind, png[at + 8:at + 8 + length]))
        at += 12 + length
    return chunks


def png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return PNG_SIGNATURE + b"".join(png_chunk(kind, data) for kind, data in chunks)


def forge_ihdr(png: bytes, **fields: int) -> bytes:
    """``png`` with IHDR fields (width, height, depth, color, interlace) replaced and the CRC recomputed."""
    chunks = png_chunks(png)
    names = ("width", "height", "depth", "color", "compression", "filter", "interlace")
    values = dict(zip(names, struct.unpack(">IIBBBBB", chunks[0][1])))
    values.update(fields)
    chunks[0] = (b"IHDR", struct.pack(">IIBBBBB", *(values[n] for n in names)))
    return png_from_chunks(chunks)


def png_bytes(pixels: np.ndarray) -> bytes:
    """A real PNG of ``pixels`` (written by Pillow)."""
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# --- gzip and IDX ------------------------------------------------------------------------------------------------

def zeros_member() -> bytes:
    """One gzip member of ``BOMB_MEMBER_ZEROS`` zero bytes."""
    return gzip.compress(bytes(BOMB_MEMBER_ZEROS), 9, mtime=0)


def zlib_zeros() -> bytes:
    """A zlib stream of ``BOMB_MEMBER_ZEROS`` zero bytes (a PNG text-chunk or IDAT bomb)."""
    return zlib.compress(bytes(BOMB_MEMBER_ZEROS), 9)


def gzip_bomb(prefix: bytes, members: int, member: bytes | None = None) -> bytes:
    """A gzip file that inflates to ``prefix`` then ``members`` x 16 MiB of zeros: a few KB per 16 MiB."""
    return gzip.compress(prefix, mtime=0) + (member or zeros_member()) * members


def idx_header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)


# --- .npy / .npz -------------------------------------------------------------------------------------------------

def npy_bytes(descr: str | list, shape: tuple[int, ...], payload: bytes, fortran: bool = False) -> bytes:
    """A .npy file (format 1.0) whose header says ``descr`` (a dtype string, or a list of fields) and ``shape``,
    whatever ``payload`` holds."""
    header = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode("latin1")
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


def npz_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip archive of ``members`` (name -> bytes), as numpy.savez lays it out."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def npz_of(arrays: dict[str, np.ndarray], compressed: bool = False) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def forge_zip_sizes(archive: bytes, file_size: int) -> bytes:
    """``archive`` with every member's uncompressed size, in the local headers and the central directory, set to
    ``file_size`` (32-bit fields)."""
    data = bytearray(archive)
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(signature)
        while at >= 0:
            data[at + offset:at + offset + 4] = struct.pack("<I", file_size)
            at = data.find(signature, at + 4)
    return bytes(data)

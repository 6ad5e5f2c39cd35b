"""File helpers shared by the readers: atomic writes, the user cache directory, bounded reads."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator

# Deflate (gzip, zip) expands one stored byte to at most 1032 bytes: the most a compressed file can hold, so a size
# declared inside it beyond that is a lie, refused before anything is allocated.
MAX_DEFLATE_RATIO = 1032


def read_into(stream: BinaryIO, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``stream`` until it is full or the stream ends; the number of bytes read."""
    done = 0
    while done < len(buffer) and (n := stream.readinto(buffer[done:])):
        done += n
    return done


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/xpnet``, else ``~/.cache/xpnet`` (not created here)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xpnet"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write to a temporary file beside ``path`` and rename it over ``path`` only once writing succeeded,
    so a reader never sees a half-written file (an interrupted run leaves the old file or none)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            f = open(tmp, "xb")
        except OSError as exc:  # name the file the user asked for, not the temporary one
            raise type(exc)(f"{path}: cannot write the file ({exc.strerror or exc})") from None
        with f:
            yield f
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise type(exc)(f"{path}: cannot replace it with the new file ({exc.strerror or exc})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)

"""Run folders: every training run writes into a folder of its own, which one process at a time may hold.

A run without ``--out`` gets ``runs/<name>`` (``--name``) or ``runs/<date>-<time>-<model>``; ``runs/latest`` is a
symlink to the newest. A folder that already holds a run (a checkpoint or a summary) is refused (``--resume``
continues one instead), and a lock file (``.xpnet.lock``: PID and host) refuses a second writer while the first is
alive; a lock whose process is gone is reclaimed. Temporary files left by a killed write are removed when a run
takes the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

RUNS_ROOT = Path("runs")
LATEST = "latest"
LOCK_NAME = ".xpnet.lock"


class RunFolderError(OSError):
    """A run folder that cannot be used: it holds another run, another process holds it, or it cannot be made."""


def default_folder(model: str, name: str | None = None, root: Path = RUNS_ROOT) -> Path:
    """``root/name``, or a new ``root/<date>-<time>-<model>`` (suffixed -2, -3... if that exists)."""
    if name:
        return root / name
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{model.replace(':', '.').replace('/', '.')}"
    path, n = root / stem, 1
    while path.exists():
        n += 1
        path = root / f"{stem}-{n}"
    return path


SAVED = ("last.npz", "best.npz", "summary.md")  # what a run saves that another run must not overwrite


def make_folder(folder: Path) -> None:
    """Create the run folder (and its parents); RunFolderError naming it if that fails."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"cannot create the run folder {folder}: {exc.strerror or exc}") from None


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` (or a sweep's sub-folder in it) holds a checkpoint or a summary. A folder whose run was
    killed before its first checkpoint holds nothing worth keeping, and may be used again."""
    return folder.is_dir() and any((f / name).exists() for f in (folder, *folder.glob("bs*")) for name in SAVED)


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the ``.*.tmp`` files a killed write left in ``folder`` (and its sweep sub-folders)."""
    removed = [p for p in folder.rglob(".*.tmp") if p.is_file()]
    for path in removed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _take(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")},
                  f)
    return True


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[Path]:
    """Hold ``folder/.xpnet.lock`` for the block; refuse if a live process holds it, reclaim it if its process is
    gone (same host), and remove it afterwards."""
    lock = folder / LOCK_NAME
    try:
        taken = _take(lock)
    except OSError as exc:
        raise RunFolderError(f"cannot write in the run folder {folder}: {exc.strerror or exc}") from None
    if not taken:
        try:
            owner = json.loads(lock.read_text())
            pid, host = int(owner["pid"]), str(owner["host"])
        except (OSError, ValueError, KeyError, TypeError):
            owner, pid, host = {}, -1, "?"
        if host == socket.gethostname() and not _alive(pid):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # stale: its process is gone
        if not _take(lock):
            raise RunFolderError(f"{folder} is in use by process {pid} on {host} (since {owner.get('started', '?')}); "
                                 f"wait for it, or delete {lock} if no run is writing there")
    try:
        yield folder
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def point_latest(folder: Path, root: Path = RUNS_ROOT) -> Path | None:
    """Make ``root/latest`` a symlink to ``folder`` (atomically replaced); never replace a real folder or file a
    user has there. Returns the link, or None where it was left alone."""
    link = root / LATEST
    if link.exists() and not link.is_symlink():
        return None  # a run folder named "latest" from an older xpnet: keep it
    tmp = root / f".{LATEST}.{os.getpid()}.tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.path.relpath(folder.resolve(), root.resolve()), target_is_directory=True)
        os.replace(tmp, link)
    except OSError:  # no symlinks on this file system
        with contextlib.suppress(OSError):
            tmp.unlink()
        return None
    return link

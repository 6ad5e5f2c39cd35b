"""Where a named dataset comes from, first hit wins: a path the user names (argument or ``XPNET_DATA``), the user
cache, the dataset's offline sources (an installed package), or a checksum-verified download. Data found by the
last two ways is saved to the user cache as ``<name>.npz``, so later runs start from the cache.

Each dataset is a ``DatasetSpec`` subclass saying what its own files look like, which packages carry it and how
to download it; the resolution order, the cache and the not-found message are shared.
"""

from __future__ import annotations

import os
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from xpnet.data.dataset import DataError, Dataset, to_grayscale
from xpnet.data.files import user_cache_dir
from xpnet.data.folder import first_image_size, load_class_tree
from xpnet.data.npz import KEYS, load_npz, save_npz

ENV_VAR = "XPNET_DATA"
DOWNLOAD_TIMEOUT_S = 60


@dataclass
class Splits:
    """The training and test sets, and where they came from (for logs)."""

    train: Dataset
    test: Dataset
    source: str

    def grayscale(self) -> Splits:
        """Both sets with one channel (RGB ones converted to luma, as Pillow's "L")."""
        return Splits(to_grayscale(self.train), to_grayscale(self.test), self.source)


@dataclass(frozen=True)
class OfflineSource:
    """A copy of the data installed on this machine outside xpnet (a Python or Debian package)."""

    label: str                                        # names it in the "Tried" list
    locate: Callable[[], Path | None]                 # where it is; None if it is not installed
    read: Callable[[Path], tuple[Dataset, Dataset]]   # (train, test), or a DataError
    describe: Callable[[Path], str]                   # for Splits.source
    how: str                                          # how to install it, for the not-found message


def fetch(url: str, progress: bool, max_bytes: int) -> bytes:
    """The body of ``url`` (a tqdm bar on stderr when ``progress``). A body longer than ``max_bytes``, announced or
    sent, is a ValueError naming the URL: a wrong or hostile mirror cannot fill the memory."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        if total is not None and total > max_bytes:
            raise ValueError(f"{url}: the server announces {total} bytes, more than the {max_bytes} bytes this file "
                             "can be")
        chunks, received = [], 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], disable=not progress,
                  leave=False) as bar:
            while chunk := response.read(1 << 16):
                received += len(chunk)
                if received > max_bytes:
                    raise ValueError(f"{url}: the server sent more than the {max_bytes} bytes this file can be")
                chunks.append(chunk)
                bar.update(len(chunk))
    return b"".join(chunks)


class DatasetSpec:
    """One named dataset: subclasses set the attributes and implement ``native_layouts``, ``load_native`` and
    ``download`` (and ``offline_sources`` where a package carries the data)."""

    name: str                       # as given to load_dataset; also names the cache file
    title: str                      # for messages
    classes: list[str]
    image_size: tuple[int, int] | None  # (height, width) of a class-folder tree's images; None: the first's
    mirrors: tuple[str, ...]        # download base URLs, tried in order
    class_folders = "<class>"       # how the not-found message names the class folders

    def native_layouts(self) -> str:
        """The dataset's own file layouts a named path may hold, for messages."""
        raise NotImplementedError

    def load_native(self, path: Path, origin: str) -> Splits | None:
        """The data in the dataset's own files at ``path`` (a file or folder), None if it holds none of them;
        a DataError if it holds some but they are incomplete or bad."""
        raise NotImplementedError

    def download(self, mirrors: Sequence[str], progress: bool) -> tuple[Dataset, Dataset, list[str]]:
        """(train, test, URLs used) from the first mirror whose files pass the checksums, else a DataError."""
        raise NotImplementedError

    def offline_sources(self) -> list[OfflineSource]:
        """Installed packages that carry the data, looked at after the cache."""
        return []

    @property
    def cache_name(self) -> str:
        return f"{self.name}.npz"

    def load(self, path: str | os.PathLike | None = None, *, grayscale: bool = False, image_type: str | None = None,
             cache_dir: str | os.PathLike | None = None, download: bool = True, mirrors: Sequence[str] | None = None,
             progress: bool = True, image_size: tuple[int, int] | None = None) -> Splits:
        """The data from the first source that has it (see the module docstring); one channel if ``grayscale``;
        a class-folder tree's images resized to ``image_size`` (height, width) when it is given."""
        splits = self._find(path, grayscale, image_type, cache_dir, download, mirrors, progress, image_size)
        return splits.grayscale() if grayscale else splits

    def _layouts(self) -> str:
        return (f"{self.native_layouts()}, a class-folder tree with train/ and test/ subfolders of <class>/ image "
                f"folders, or an .npz file with {', '.join(KEYS)}")

    def from_path(self, path: str | os.PathLike, origin: str, image_type: str | None = None,
                  grayscale: bool = False, image_size: tuple[int, int] | None = None) -> Splits:
        """Data from a path the user named: the dataset's own files, a class-folder tree or an .npz file. A tree's
        images must be the dataset's size (for a dataset without one, the first training image's) unless
        ``image_size`` is given; then each is resized to it. A dataset with named classes takes at most as many
        class folders."""
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(f"{origin} {p} does not exist; expected {self._layouts()}")
        native = self.load_native(p, origin)
        if native is not None:
            return native
        if p.is_file():
            if p.suffix.lower() != ".npz" and not zipfile.is_zipfile(p):
                raise DataError(f"{origin} {p} is a file but not an .npz archive; expected {self._layouts()}")
            train, test = load_npz(p)
            return Splits(train, test, f"NPZ file {p}")
        if (p / "train").is_dir() or (p / "test").is_dir():
            size = image_size or self.image_size or first_image_size(p / "train", image_type)
            train, test = load_class_tree(p, size=size, resize=image_size is not None, image_type=image_type,
                                          grayscale=grayscale, max_classes=len(self.classes) or None)
            return Splits(train, test, f"class folders in {p}")
        raise DataError(f"{origin} {p} is a folder but holds no {self.title} data; expected {self._layouts()}")

    def _save_to_cache(self, cache_file: Path, train: Dataset, test: Dataset) -> str:
        """Save to the cache and say where; a cache that cannot be written is warned about, not fatal."""
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            save_npz(cache_file, train, test)
        except OSError as exc:
            warnings.warn(f"could not cache {self.title} at {cache_file} ({exc}); it will be fetched again next run",
                          stacklevel=5)
            return "not cached"
        return f"cached at {cache_file}"

    def _find(self, path: str | os.PathLike | None, grayscale: bool, image_type: str | None,
              cache_dir: str | os.PathLike | None, download: bool, mirrors: Sequence[str] | None,
              progress: bool, image_size: tuple[int, int] | None = None) -> Splits:
        if path is not None and os.fspath(path):
            return self.from_path(path, "data path", image_type, grayscale, image_size)
        if os.environ.get(ENV_VAR):
            return self.from_path(os.environ[ENV_VAR], ENV_VAR, image_type, grayscale, image_size)
        cache_file = Path(cache_dir if cache_dir is not None else user_cache_dir()) / self.cache_name
        tried = []
        if cache_file.is_file():
            try:
                train, test = load_npz(cache_file)
                return Splits(train, test, f"cache {cache_file}")
            except DataError as exc:
                tried.append(f"cache: {exc}")
        else:
            tried.append(f"cache: no file {cache_file}")
        for source in self.offline_sources():
            location = source.locate()
            if location is None:
                tried.append(f"{source.label}: not installed")
                continue
            try:
                train, test = source.read(location)
            except DataError as exc:
                warnings.warn(f"ignoring the {source.label} data: {exc}", stacklevel=4)
                tried.append(f"{source.label}: {exc}")
                continue
            return Splits(train, test, f"{source.describe(location)}, {self._save_to_cache(cache_file, train, test)}")
        mirrors = self.mirrors if mirrors is None else tuple(mirrors)
        if download:
            try:
                train, test, urls = self.download(mirrors, progress)
                served_by = ", ".join(dict.fromkeys(url.rsplit("/", 1)[0] + "/" for url in urls))
                return Splits(train, test, f"downloaded from {served_by}, "
                                           f"{self._save_to_cache(cache_file, train, test)}")
            except DataError as exc:
                tried.append(f"download: {exc}")
        else:
            tried.append("download: disabled")
        raise DataError(self._not_found(cache_file, mirrors, tried))

    def _not_found(self, cache_file: Path, mirrors: Sequence[str], tried: list[str]) -> str:
        """Every way to provide the data, then what was tried."""
        ways = [f"--data PATH or {ENV_VAR}=PATH, where PATH is {self.native_layouts()}, a class-folder tree "
                f"PATH/train/{self.class_folders} and PATH/test/{self.class_folders} of PNG/JPG images, or an .npz "
                f"file with arrays {', '.join(KEYS)}"]
        ways += [source.how for source in self.offline_sources()]
        ways += [f"allow the download (network access) from {', '.join(mirrors) or 'a mirror'}",
                 f"save the arrays {', '.join(KEYS)} as {cache_file} (an .npz file)"]
        return (f"{self.title} data not found. Provide it in one of these ways:\n"
                + "".join(f"  - {way}\n" for way in ways)
                + "Tried:\n" + "\n".join(f"  - {t}" for t in tried))

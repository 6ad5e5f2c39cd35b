"""``--dataset folder``: your own images, a class-folder tree (or an .npz) named by ``--data``, at their own size
and class count. Nothing is downloaded or cached for it; the class folders name the classes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from xpnet.data.dataset import DataError, Dataset
from xpnet.data.npz import KEYS
from xpnet.data.sources import ENV_VAR, DatasetSpec, Splits

LAYOUTS = (f"a class-folder tree with train/<class>/ and test/<class>/ folders of PNG/JPG images, or an .npz file "
           f"with arrays {', '.join(KEYS)}")


class FolderSpec(DatasetSpec):
    """A tree the user names: images the size of the first training image (or resized to ``image_size``), any
    number of classes."""

    name = "folder"
    title = "image-folder"
    classes: list[str] = []
    image_size = None
    mirrors = ()

    def load(self, path: str | os.PathLike | None = None, *, grayscale: bool = False, image_type: str | None = None,
             cache_dir: str | os.PathLike | None = None, download: bool = True, mirrors: Sequence[str] | None = None,
             progress: bool = True, image_size: tuple[int, int] | None = None) -> Splits:
        if not (path is not None and os.fspath(path)) and not os.environ.get(ENV_VAR):
            raise DataError(f"dataset 'folder' reads your own images: give --data PATH (or {ENV_VAR}=PATH), {LAYOUTS}")
        return super().load(path, grayscale=grayscale, image_type=image_type, cache_dir=cache_dir,
                            download=download, mirrors=mirrors, progress=progress, image_size=image_size)

    def _layouts(self) -> str:
        return LAYOUTS

    def native_layouts(self) -> str:
        return "a class-folder tree"

    def load_native(self, path: Path, origin: str) -> Splits | None:
        return None  # no files of its own: from_path reads the tree or the .npz

    def download(self, mirrors: Sequence[str], progress: bool) -> tuple[Dataset, Dataset, list[str]]:
        raise DataError("dataset 'folder' is never downloaded")


SPEC = FolderSpec()

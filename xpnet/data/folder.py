"""Class-folder image trees (``root/<split>/<class>/*.png|jpg``), decoded once and cached as .npz.

Labels follow the sorted folder names. The decoded arrays are cached at ``root/.xpnet-cache-<split>.npz`` (or
in the user cache when ``root`` is read-only) under a key made of every image's relative name, size and
mtime plus the resize options, so adding, removing, replacing or touching an image rebuilds the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from xpnet.data.dataset import DataError, Dataset, dataset_from
from xpnet.data.files import atomic_write, user_cache_dir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_FORMATS = ("PNG", "JPEG")
CACHE_VERSION = 1  # bump when the decoding changes, so old caches are rebuilt


def image_suffixes(image_type: str | None) -> tuple[str, ...]:
    """File suffixes to read for ``image_type`` ("png", "jpg"/"jpeg", or None for both)."""
    if image_type is None:
        return IMAGE_SUFFIXES
    kind = image_type.lower().lstrip(".")
    if kind not in ("png", "jpg", "jpeg"):
        raise DataError(f"image_type: expected png or jpg, got {image_type!r}")
    return (".png",) if kind == "png" else (".jpg", ".jpeg")


def _scan(split_dir: Path, suffixes: tuple[str, ...]) -> tuple[list[str], list[list[Path]]]:
    """Class names (sorted folder names) and each class's image files of the wanted ``suffixes`` (sorted);
    hidden entries and images of the other type are skipped."""
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: folder not found; expected class folders {split_dir}/<class>/ of PNG/JPG "
                        f"images (e.g. {split_dir}/0 ... {split_dir}/9)")
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{split_dir}: no class folders; expected {split_dir}/<class>/ holding PNG/JPG images")
    files = []
    for class_dir in class_dirs:
        entries = sorted(p for p in class_dir.iterdir() if not p.name.startswith("."))
        for p in entries:
            if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{p}: not an image file; class folders may hold only "
                                f"{', '.join(IMAGE_SUFFIXES)} files")
        entries = [p for p in entries if p.suffix.lower() in suffixes]
        if not entries:
            raise DataError(f"{class_dir}: empty class folder; expected {'/'.join(suffixes)} images")
        files.append(entries)
    return [d.name for d in class_dirs], files


def _cache_key(split_dir: Path, files: list[list[Path]], resize: bool, size: tuple[int, int]) -> str:
    """Hash of every image's relative name, size and mtime_ns, and of the decoding options."""
    entries = []
    for class_files in files:
        for p in class_files:
            st = p.stat()
            entries.append((p.relative_to(split_dir).as_posix(), st.st_size, st.st_mtime_ns))
    text = json.dumps([CACHE_VERSION, resize, list(size), entries])
    return hashlib.sha256(text.encode()).hexdigest()


def decode_image(path: Path, resize: bool, size: tuple[int, int]) -> np.ndarray:
    """One PNG/JPG file as a uint8 (H, W) grayscale array of ``size`` (height, width)."""
    try:
        with Image.open(path) as opened:
            fmt = opened.format
            img = opened.convert("L")  # decodes the whole file, so a truncated one fails here
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable PNG/JPG image ({exc})") from None
    if fmt not in IMAGE_FORMATS:
        raise DataError(f"{path}: is a {fmt} image; expected PNG or JPEG")
    height, width = size
    if img.size != (width, height):
        if not resize:
            raise DataError(f"{path}: image is {img.height}x{img.width} (height x width) but {height}x{width} was "
                            f"expected; resize the images or load them with resize=True")
        img = img.resize((width, height), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _cache_paths(root: Path, split: str) -> list[Path]:
    """Where the cache may live: beside the data first, then the user cache (for read-only trees)."""
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return [root / f".xpnet-cache-{split}.npz", user_cache_dir() / "folders" / f"{tag}-{split}.npz"]


def _read_cache(path: Path, key: str) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """The cached arrays if ``path`` holds a readable cache made under ``key``, else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            return z["images"], z["labels"], [str(c) for c in z["classes"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _write_cache(paths: list[Path], key: str, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    """Save to the first writable cache location; a tree nobody can cache is still loaded, just not cached."""
    for path in paths:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path) as f:
                np.savez(f, key=np.array(key), images=images, labels=labels, classes=np.array(classes, dtype=str))
            return
        except OSError:
            continue


def load_class_folders(root: str | os.PathLike, split: str, *, resize: bool = False,
                       size: tuple[int, int] = (28, 28), cache: bool = True,
                       image_type: str | None = None) -> Dataset:
    """The images under ``root/split/<class>/`` as a Dataset (uint8 (N, H, W), grayscale).

    Images must be ``size`` (height, width) unless ``resize`` is set. With ``cache`` the decoded arrays are
    reused until an image file or an option changes. ``image_type`` ("png" or "jpg") reads only that type.
    """
    root = Path(root)
    split_dir = root / split
    classes, files = _scan(split_dir, image_suffixes(image_type))
    size = (int(size[0]), int(size[1]))
    key = _cache_key(split_dir, files, resize, size) if cache else ""
    paths = _cache_paths(root, split) if cache else []
    for path in paths:
        hit = _read_cache(path, key)
        if hit is not None:
            return dataset_from(path, *hit)
    n = sum(len(f) for f in files)
    images = np.empty((n, *size), dtype=np.uint8)
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), [len(f) for f in files])
    all_files = [p for class_files in files for p in class_files]
    for i, p in enumerate(tqdm(all_files, desc=f"decoding {split_dir}", unit="img", disable=None, leave=False)):
        images[i] = decode_image(p, resize, size)
    if cache:
        _write_cache(paths, key, images, labels, classes)
    return dataset_from(split_dir, images, labels, classes)

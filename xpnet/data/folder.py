"""Class-folder image trees (``root/<split>/<class>/*.png|jpg``), decoded once and cached as .npz.

Labels follow the sorted folder names. A split is RGB (3 channels) when any of its images has colour (an RGB,
RGBA, CMYK or YCbCr file, or a palette image with a coloured pixel), else grayscale (1 channel); ``grayscale``
forces one channel (Pillow's "L" luma). 16-bit grayscale PNGs are scaled to 8 bits (rounded); 16-bit RGB PNGs
keep each sample's high byte, which is how Pillow opens them (at most 1 from the rounded value). The decoded
arrays are cached at ``root/.xpnet-cache-<split>.npz`` (or in the user cache when ``root`` is read-only) under a
key made of every image's relative name, size and mtime plus the decoding options, so adding, removing, replacing
or touching an image rebuilds the cache.

Every image file is untrusted: its header's size is checked against ``size`` before any pixel is decoded (unless
``resize``), Pillow's decompression-bomb warning is an error, and whatever Pillow raises on a corrupt or
truncated file becomes a DataError naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from xpnet.data.dataset import DataError, Dataset, dataset_from
from xpnet.data.files import atomic_write, user_cache_dir
from xpnet.data.npz import read_npz

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_FORMATS = ("PNG", "JPEG")
CACHE_VERSION = 2  # bump when the decoding changes, so old caches are rebuilt
GRAY_MODES = ("1", "L", "LA", "La")
WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # how Pillow opens 16-bit grayscale PNGs
PALETTE_MODES = ("P", "PA")
CACHE_KEYS = ("key", "images", "labels", "classes")


def image_suffixes(image_type: str | None) -> tuple[str, ...]:
    """File suffixes to read for ``image_type`` ("png", "jpg"/"jpeg", or None for both)."""
    if image_type is None:
        return IMAGE_SUFFIXES
    kind = image_type.lower().lstrip(".")
    if kind not in ("png", "jpg", "jpeg"):
        raise DataError(f"image_type: expected png or jpg, got {image_type!r}")
    return (".png",) if kind == "png" else (".jpg", ".jpeg")


def _listing(folder: Path) -> list[Path]:
    """The entries of ``folder`` that are not hidden, sorted."""
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None


def _scan(split_dir: Path, suffixes: tuple[str, ...],
          max_classes: int | None = None) -> tuple[list[str], list[list[Path]]]:
    """Class names (sorted folder names) and each class's image files of the wanted ``suffixes`` (sorted);
    hidden entries and images of the other type are skipped. More than ``max_classes`` folders are refused."""
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: folder not found; expected class folders {split_dir}/<class>/ of PNG/JPG "
                        f"images (e.g. {split_dir}/0 ... {split_dir}/9)")
    class_dirs = [p for p in _listing(split_dir) if p.is_dir()]
    if not class_dirs:
        raise DataError(f"{split_dir}: no class folders; expected {split_dir}/<class>/ holding PNG/JPG images")
    if max_classes is not None and len(class_dirs) > max_classes:
        names = ", ".join(p.name for p in class_dirs)
        raise DataError(f"{split_dir}: {len(class_dirs)} class folders ({names}), but the dataset has "
                        f"{max_classes} classes; expected at most {max_classes} folders, one per class")
    files = []
    for class_dir in class_dirs:
        entries = _listing(class_dir)
        for p in entries:
            if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{p}: not an image file; class folders may hold only "
                                f"{', '.join(IMAGE_SUFFIXES)} files")
        entries = [p for p in entries if p.suffix.lower() in suffixes]
        if not entries:
            raise DataError(f"{class_dir}: empty class folder; expected {'/'.join(suffixes)} images")
        files.append(entries)
    return [d.name for d in class_dirs], files


def first_image_size(split_dir: Path, image_type: str | None = None) -> tuple[int, int]:
    """(height, width) of the first image of ``split_dir``'s first class folder (sorted), from its header only."""
    _, files = _scan(split_dir, image_suffixes(image_type))
    path = files[0][0]
    try:
        with Image.open(path) as opened:
            return opened.height, opened.width
    except Exception as exc:  # as in decode_image: Pillow raises many types on a corrupt header
        raise DataError(f"{path}: not a readable PNG/JPG image ({type(exc).__name__}: {exc})") from None


def _cache_key(split_dir: Path, files: list[list[Path]], resize: bool, size: tuple[int, int],
               grayscale: bool) -> str:
    """Hash of every image's relative name, size and mtime_ns, and of the decoding options."""
    entries = []
    for class_files in files:
        for p in class_files:
            try:
                st = p.stat()
            except OSError as exc:
                raise DataError(f"{p}: cannot read the file's size and time ({exc.strerror or exc})") from None
            entries.append((p.relative_to(split_dir).as_posix(), st.st_size, st.st_mtime_ns))
    text = json.dumps([CACHE_VERSION, resize, list(size), "L" if grayscale else "auto", entries])
    return hashlib.sha256(text.encode()).hexdigest()


def _gray_or_rgb(img: Image.Image, grayscale: bool) -> Image.Image:
    """``img`` (fully decoded) as an "L" image if it is grayscale or ``grayscale`` is set, else as "RGB"."""
    if img.mode in WIDE_GRAY_MODES:  # convert("L") would clip 16-bit values to 255 instead of scaling them
        wide = np.asarray(img).astype(np.int64)
        return Image.fromarray(np.clip((wide + 128) // 257, 0, 255).astype(np.uint8), "L")  # round(v * 255/65535)
    if grayscale or img.mode in GRAY_MODES:
        return img.convert("L")
    rgb = img.convert("RGB")
    if img.mode in PALETTE_MODES:
        pixels = np.asarray(rgb)
        if (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all():
            return Image.fromarray(pixels[..., 0], "L")  # only gray entries used: what convert("L") gives
    return rgb


def decode_image(path: Path, resize: bool, size: tuple[int, int], grayscale: bool = False) -> np.ndarray:
    """One PNG/JPG file at ``size`` (height, width) as uint8: (H, W) if grayscale (or ``grayscale`` is set),
    else RGB (3, H, W). The format and size in the header are checked before any pixel is decoded."""
    height, width = size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow's pixel limit, as an error
            with Image.open(path) as opened:
                if opened.format not in IMAGE_FORMATS:
                    raise DataError(f"{path}: is a {opened.format} image; expected PNG or JPEG")
                if opened.size != (width, height) and not resize:
                    raise DataError(f"{path}: image is {opened.height}x{opened.width} (height x width) but "
                                    f"{height}x{width} was expected; resize the images, or train with --image-size "
                                    f"H,W to resize them as they load (from Python: resize=True), or with --dataset "
                                    f"folder to take the first image's size")
                opened.load()  # decodes the whole file, so a truncated one fails here
                img = _gray_or_rgb(opened, grayscale)
                if img.size != (width, height):
                    img = img.resize((width, height), Image.BILINEAR)
                pixels = np.asarray(img, dtype=np.uint8)
    except (DataError, MemoryError):
        raise  # a MemoryError is this machine's limit, not a fact about the file
    except Exception as exc:  # Pillow raises many types on a corrupt file (OSError, SyntaxError, struct.error, ...)
        raise DataError(f"{path}: not a readable PNG/JPG image ({type(exc).__name__}: {exc})") from None
    return pixels if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _cache_paths(root: Path, split: str) -> list[Path]:
    """Where the cache may live: beside the data first, then the user cache (for read-only trees)."""
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return [root / f".xpnet-cache-{split}.npz", user_cache_dir() / "folders" / f"{tag}-{split}.npz"]


def _read_cache(path: Path, key: str) -> Dataset | None:
    """The cached dataset if ``path`` holds a readable, valid cache made under ``key``, else None."""
    if not path.is_file():
        return None
    try:
        z = read_npz(path, CACHE_KEYS, required=CACHE_KEYS)
    except DataError:
        return None
    if z["key"].shape != () or str(z["key"]) != key or z["classes"].ndim != 1:
        return None
    try:
        return Dataset(z["images"], z["labels"], [str(c) for c in z["classes"]])
    except DataError:
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


def _decode_all(files: list[Path], resize: bool, size: tuple[int, int], grayscale: bool,
                desc: str) -> np.ndarray:
    """uint8 (N, C, H, W) of ``files``: C = 1 until the first colour image, then 3 (earlier ones replicated)."""
    images = None
    for i, p in enumerate(tqdm(files, desc=desc, unit="img", disable=None, leave=False)):
        pixels = decode_image(p, resize, size, grayscale)
        channels = 1 if pixels.ndim == 2 else len(pixels)
        if images is None:
            images = np.empty((len(files), channels, *size), dtype=np.uint8)
        elif channels > images.shape[1]:
            rgb = np.empty((len(files), channels, *size), dtype=np.uint8)
            rgb[:i] = images[:i]  # gray to RGB replicates the value, as Pillow's convert("RGB") does
            images = rgb
        images[i] = pixels  # a gray (H, W) image broadcasts over the channels
    return images


def load_class_folders(root: str | os.PathLike, split: str, *, resize: bool = False,
                       size: tuple[int, int] = (28, 28), cache: bool = True,
                       image_type: str | None = None, grayscale: bool = False,
                       max_classes: int | None = None) -> Dataset:
    """The images under ``root/split/<class>/`` as a Dataset: uint8 (N, 3, H, W) if any image has colour and
    ``grayscale`` is not set, else (N, 1, H, W).

    Images must be ``size`` (height, width) unless ``resize`` is set. With ``cache`` the decoded arrays are
    reused until an image file or an option changes. ``image_type`` ("png" or "jpg") reads only that type.
    A split with more than ``max_classes`` class folders (the dataset's class count) is refused.
    """
    root = Path(root)
    split_dir = root / split
    classes, files = _scan(split_dir, image_suffixes(image_type), max_classes)
    size = (int(size[0]), int(size[1]))
    key = _cache_key(split_dir, files, resize, size, grayscale) if cache else ""
    paths = _cache_paths(root, split) if cache else []
    for path in paths:
        hit = _read_cache(path, key)
        if hit is not None:
            return hit
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), [len(f) for f in files])
    all_files = [p for class_files in files for p in class_files]
    images = _decode_all(all_files, resize, size, grayscale, f"decoding {split_dir}")
    if cache:
        _write_cache(paths, key, images, labels, classes)
    return dataset_from(split_dir, images, labels, classes)


def load_class_tree(root: str | os.PathLike, *, resize: bool = False, size: tuple[int, int] = (28, 28),
                    cache: bool = True, image_type: str | None = None, grayscale: bool = False,
                    max_classes: int | None = None) -> tuple[Dataset, Dataset]:
    """(train, test) from ``root/train`` and ``root/test``, with the same class folders and channel count: if one
    split has colour, the other's grayscale images are given three equal channels too."""
    root = Path(root)
    train, test = (load_class_folders(root, split, resize=resize, size=size, cache=cache, image_type=image_type,
                                      grayscale=grayscale, max_classes=max_classes) for split in ("train", "test"))
    if train.classes != test.classes:
        raise DataError(f"{root / 'train'} and {root / 'test'} have different class folders: {train.classes} vs "
                        f"{test.classes}; both splits need the same classes")
    channels = max(train.shape[0], test.shape[0])
    return _with_channels(train, channels), _with_channels(test, channels)


def _with_channels(dataset: Dataset, channels: int) -> Dataset:
    """``dataset`` with its single gray channel repeated ``channels`` times (unchanged if it has them)."""
    if dataset.shape[0] == channels:
        return dataset
    return Dataset(np.repeat(dataset.images, channels, axis=1), dataset.labels, list(dataset.classes))

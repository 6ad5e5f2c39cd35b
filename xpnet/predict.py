"""``python -m xpnet.predict CHECKPOINT_OR_RUN PATH...``: the top classes of image files under a trained model; and
``xpnet.predict(model, images)``: class probabilities (N, classes), as Keras's ``model.predict(x)`` returns.

Image files get what the training data got: Pillow's conversion to the model's channels (luma "L" for a
one-channel model, RGB for three; 16-bit gray scaled to 8 bits), a resize to the model's height and width with
Pillow's bilinear filter (antialiased when shrinking; the aspect ratio is not kept) when the file has another size,
scaling to [0, 1], then the run's ``--normalize`` statistics. The model runs in eval mode without gradients.

``xpnet.predict`` is this module made callable, so that one name is both the command and the function.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

import xpnet
from xpnet import functional as F
from xpnet.autograd import Tensor, no_grad
from xpnet.backend import BackendUnavailable, get_backend
from xpnet.checkpoint import CheckpointError, check_fits, load_checkpoint
from xpnet.data import DataError
from xpnet.data.folder import IMAGE_SUFFIXES, decode_image
from xpnet.models import MNIST_SHAPE, ModelError, build_model, check_fits_data
from xpnet.nn import Module
from xpnet.train import eval_transform

Shape = tuple[int, int, int]
PathLike = Union[str, os.PathLike]
DEFAULT_TOP_K = 5


@dataclass
class TrainedModel:
    """A checkpoint's model (in eval mode) with what its inputs and outputs mean: the class names, the (C, H, W)
    images it takes and the normalisation its training applied (None if none)."""

    model: Module
    classes: list[str]
    input_shape: Shape
    normalize: dict[str, list[float]] | None
    path: Path
    record: dict[str, Any]

    def predict(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (N, classes) of ``images``; see ``xpnet.predict``."""
        return predict(self, images, batch_size=batch_size)


def checkpoint_file(path: PathLike) -> Path:
    """``path`` if it is a file, ``path/best.npz`` if it is a run folder; CheckpointError naming it otherwise."""
    p = Path(path)
    if p.is_file():
        return p
    expected = "a .npz checkpoint written by python -m xpnet.train, or its run folder (holding best.npz)"
    if not p.is_dir():
        raise CheckpointError(f"{p}: no such checkpoint file or run folder; expected {expected}")
    if (p / "best.npz").is_file():
        return p / "best.npz"
    runs = sorted(q.name for q in p.iterdir() if (q / "best.npz").is_file())
    hint = f"; its subfolders {', '.join(runs)} are runs of a batch-size sweep: name one" if runs else ""
    raise CheckpointError(f"{p}: run folder without best.npz{hint}; expected {expected}")


def load_model(path: PathLike) -> TrainedModel:
    """The model saved in a checkpoint (or a run folder's best.npz), rebuilt from its record and weights, in eval
    mode; CheckpointError / ModelError naming the file if it cannot be."""
    file = checkpoint_file(path)
    checkpoint = load_checkpoint(file)
    record = checkpoint.record
    try:
        name = record["config"]["model"]
    except (KeyError, TypeError):
        raise CheckpointError(f"{file}: its record names no model (config.model); expected a checkpoint written by "
                              f"python -m xpnet.train") from None
    shape = tuple(int(n) for n in record.get("input_shape", MNIST_SHAPE))
    classes = [str(c) for c in record.get("classes") or range(10)]
    try:
        model = build_model(name, shape, len(classes), **record["config"].get("model_options", {}))
        check_fits_data(model, name, shape, len(classes), "the input shape and classes in its record")
    except ModelError as exc:
        raise ModelError(f"{file}: {exc}") from None
    check_fits(checkpoint, name, {k: v.shape for k, v in model.state_dict().items()}, file)
    model.load_state_dict(checkpoint.weights)
    model.eval()
    return TrainedModel(model, classes, shape, record.get("normalize"), file, record)


def image_files(paths: Sequence[PathLike]) -> list[Path]:
    """Each path that is a file as given, each folder as its PNG/JPG files (subfolders included, sorted, hidden
    entries skipped); DataError for a path that does not exist or a folder without images."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise DataError(f"{path}: folder holds no images; expected {'/'.join(IMAGE_SUFFIXES)} files in it "
                                f"or its subfolders")
            files.extend(found)
        else:
            raise DataError(f"{path}: no such file or folder; expected a PNG/JPG image or a folder of them")
    return files


def read_image(path: PathLike, input_shape: Shape) -> np.ndarray:
    """An image file as uint8 (C, H, W) for a model taking ``input_shape`` images: converted to its channels and
    resized to its size as the docstring of this module says."""
    channels, height, width = input_shape
    if channels not in (1, 3):
        raise DataError(f"{path}: the model takes {channels}-channel images; image files give 1 (gray) or 3 (RGB)")
    pixels = decode_image(Path(path), True, (height, width), grayscale=channels == 1)
    if pixels.ndim == 2:
        pixels = pixels[None]
    return np.broadcast_to(pixels, (channels, height, width))  # a gray file for an RGB model: three equal channels


def predict(model: Module | TrainedModel | PathLike, images: Any, *, batch_size: int = 256,
            input_shape: Sequence[int] | None = None,
            normalize: dict[str, Sequence[float]] | None = None) -> np.ndarray:
    """Class probabilities (N, classes) as a host NumPy array in the model's dtype: softmax of the logits in eval
    mode, without gradients (the model's mode is restored after).

    ``model``: a Module, a ``TrainedModel`` from ``load_model``, or a checkpoint file or run folder to load.
    ``images``: an (N, C, H, W) array or Tensor, or a list of (C, H, W) / (H, W) arrays and image paths, or a path;
    folders stand for their images (``image_files``). uint8 arrays are pixels (divided by 255); float arrays are
    taken as already scaled to [0, 1]; files are read with ``read_image``. Then ``normalize`` ({"mean", "std"} per
    channel) is applied. A checkpoint brings its own ``input_shape`` and ``normalize``; a bare Module needs
    ``input_shape`` to read files, and arrays of another shape are refused, never resized.
    """
    module, shape, stats = _resolve(model, input_shape, normalize)
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    params = module.parameters()
    dtype = np.dtype(params[0].dtype) if params else xpnet.get_default_dtype()
    transform = eval_transform(stats)
    was_training = module.training
    module.eval()
    chunks = []
    try:
        with no_grad():
            for x in _batches(images, shape, int(batch_size), dtype):
                chunks.append(_probabilities(module, x if transform is None else transform(x)))
    finally:
        module.train(was_training)
    return np.concatenate(chunks)


def top_k(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Indices (N, k) of each row's ``k`` largest probabilities, largest first (ties: the lower index first)."""
    return np.argsort(-probabilities, axis=1, kind="stable")[:, :k]


def _resolve(model: Any, input_shape: Sequence[int] | None,
             normalize: dict[str, Sequence[float]] | None) -> tuple[Module, Shape | None, dict | None]:
    """(module, input shape or None, normalisation or None) from what ``predict`` was given."""
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    if isinstance(model, TrainedModel):
        if input_shape is not None or normalize is not None:
            raise ValueError("input_shape, normalize: a checkpoint's model brings its own; pass them only with a "
                             "bare Module")
        return model.model, model.input_shape, model.normalize
    if not isinstance(model, Module):
        raise TypeError(f"model: expected an xpnet Module, a TrainedModel or a checkpoint path, got "
                        f"{type(model).__name__}")
    if input_shape is not None:
        shape = tuple(input_shape)
        if len(shape) != 3 or not all(isinstance(n, (int, np.integer)) and n > 0 for n in shape):
            raise ValueError(f"input_shape: expected (channels, height, width) of positive ints, got {input_shape!r}")
        input_shape = tuple(int(n) for n in shape)
    return model, input_shape, normalize


def _batches(images: Any, shape: Shape | None, batch_size: int, dtype: np.dtype) -> Any:
    """Float (B, C, H, W) host batches of ``images`` scaled to [0, 1]; files are read one batch at a time."""
    if isinstance(images, Tensor):
        images = get_backend().to_numpy(images.data)
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"images: expected an (N, C, H, W) array, got shape {images.shape}; pass one (C, H, W) "
                             f"image as images[None] or in a list")
        if not len(images):
            raise ValueError("images: got no images")
        _check_shape(images.shape[1:], shape, "images")
        _check_dtype(images, "images")
        for lo in range(0, len(images), batch_size):
            yield _scaled(images[lo:lo + batch_size], dtype)
        return
    items = _items(images)
    for lo in range(0, len(items), batch_size):
        arrays = [_item_pixels(item, shape, f"images[{lo + i}]", dtype)
                  for i, item in enumerate(items[lo:lo + batch_size])]
        if shape is None and len({a.shape for a in arrays}) > 1:
            raise ValueError(f"images: arrays of different shapes {sorted({a.shape for a in arrays})}; a model "
                             f"takes one (C, H, W)")
        yield np.stack(arrays)


def _items(images: Any) -> list[Any]:
    """``images`` (a path or a list of arrays and paths) as a list with every path expanded by ``image_files``."""
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if not isinstance(images, (list, tuple)):
        raise TypeError(f"images: expected an (N, C, H, W) array, a list of arrays or image paths, or a path, got "
                        f"{type(images).__name__}")
    items: list[Any] = []
    for item in images:
        items.extend(image_files([item]) if isinstance(item, (str, os.PathLike)) else [item])
    if not items:
        raise ValueError("images: got no images")
    return items


def _item_pixels(item: Any, shape: Shape | None, name: str, dtype: np.dtype) -> np.ndarray:
    """One list item (an image path or a (C, H, W) / (H, W) array) as float (C, H, W) scaled to [0, 1]."""
    if isinstance(item, Path):
        if shape is None:
            raise ValueError(f"{name}: reading image file {item} needs the model's input_shape (C, H, W); pass "
                             f"input_shape= or a checkpoint")
        return _scaled(read_image(item, shape), dtype)
    if isinstance(item, Tensor):
        item = get_backend().to_numpy(item.data)
    if not isinstance(item, np.ndarray) or item.ndim not in (2, 3):
        raise ValueError(f"{name}: expected a (C, H, W) or (H, W) array or an image path, got "
                         f"{type(item).__name__} {getattr(item, 'shape', '')}")
    item = item[None] if item.ndim == 2 else item
    _check_shape(item.shape, shape, name)
    _check_dtype(item, name)
    return _scaled(item, dtype)


def _check_shape(got: tuple[int, ...], shape: Shape | None, name: str) -> None:
    if shape is not None and tuple(got) != shape:
        raise ValueError(f"{name}: images of shape {tuple(got)} but the model takes {shape} (C, H, W); arrays are "
                         f"not resized (image files are)")


def _check_dtype(array: np.ndarray, name: str) -> None:
    if array.dtype != np.uint8 and array.dtype.kind != "f":
        raise ValueError(f"{name}: expected uint8 pixels (0-255) or floats scaled to [0, 1], got dtype {array.dtype}")


def _scaled(pixels: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """uint8 pixels / 255 in ``dtype`` (the DataLoader's arithmetic), float arrays cast to ``dtype``."""
    if pixels.dtype == np.uint8:
        return pixels.astype(dtype) / dtype.type(255)
    return pixels.astype(dtype)


def _probabilities(module: Module, x: np.ndarray) -> np.ndarray:
    """softmax(module(x)) over the classes, on the host."""
    backend = get_backend()
    logits = module(Tensor(backend.asarray(x)))
    if logits.ndim != 2:
        raise ValueError(f"model: expected logits (N, classes), got shape {tuple(logits.shape)}")
    return backend.to_numpy(F.softmax(logits, dim=1).data)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m xpnet.predict", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN",
                   help="a .npz checkpoint written by python -m xpnet.train, or its run folder (best.npz is used)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="PNG/JPG image files, or folders of them (searched "
                                                            "with their subfolders)")
    p.add_argument("--top-k", type=_positive_int, default=DEFAULT_TOP_K, dest="top_k",
                   help=f"how many classes to show per image, most probable first (default {DEFAULT_TOP_K}; at most "
                        f"the number of classes)")
    p.add_argument("--batch-size", type=_positive_int, default=256, dest="batch_size",
                   help="images per forward pass (default 256)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    out.add_argument("--csv", action="store_true", help="print CSV (path,rank,class,index,probability) instead")
    return p


def _rows(files: list[Path], probabilities: np.ndarray, classes: list[str],
          k: int) -> list[tuple[str, list[tuple[int, str, float]]]]:
    """(path, [(class index, class name, probability), ...] most probable first) per image."""
    best = top_k(probabilities, k)
    return [(str(f), [(int(i), classes[i], float(p[i])) for i in idx]) for f, p, idx in zip(files, probabilities, best)]


def _write_text(rows: list, trained: TrainedModel) -> None:
    print(f"{trained.record['config']['model']} from {trained.path} (epoch {trained.record.get('epoch', '?')}), "
          f"{len(trained.classes)} classes")
    for path, top in rows:
        print(f"{path}: " + ", ".join(f"{name} {100 * p:.2f}%" for _, name, p in top))


def _write_json(rows: list, trained: TrainedModel) -> None:
    document = {"checkpoint": str(trained.path), "classes": trained.classes, "predictions": [
        {"path": path, "top": [{"class": name, "index": i, "probability": p} for i, name, p in top]}
        for path, top in rows]}
    print(json.dumps(document, indent=1))


def _write_csv(rows: list, trained: TrainedModel) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["path", "rank", "class", "index", "probability"])
    for path, top in rows:
        writer.writerows([path, rank, name, i, repr(p)] for rank, (i, name, p) in enumerate(top, 1))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        trained = load_model(args.checkpoint)
        files = image_files(args.paths)
        probabilities = predict(trained, files, batch_size=args.batch_size)
    except (CheckpointError, DataError, ModelError, BackendUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = _rows(files, probabilities, trained.classes, min(args.top_k, len(trained.classes)))
    write = _write_json if args.json else _write_csv if args.csv else _write_text
    write(rows, trained)
    return 0


class _CallableModule(types.ModuleType):
    """The type of this module: ``xpnet.predict(model, images, ...)`` calls ``predict``."""

    def __call__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        return predict(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())

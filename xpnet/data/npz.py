"""MNIST-style .npz files: uint8 ``x_train`` (N, C, H, W) or (N, H, W), ``y_train``, ``x_test``, ``y_test``, optional
``classes``."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from xpnet.data.dataset import DataError, Dataset, dataset_from
from xpnet.data.files import atomic_write

KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: str | os.PathLike) -> tuple[Dataset, Dataset]:
    """(train, test) from an .npz file; ``classes`` defaults to "0", "1", ... up to the largest label."""
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not named arrays")
        with z:
            found = list(z.files)
            arrays = {k: z[k] for k in KEYS if k in found}
            classes = [str(c) for c in z["classes"]] if "classes" in found else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file of arrays {', '.join(KEYS)} ({exc})") from None
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}; expected arrays {', '.join(KEYS)} "
                        f"(found: {', '.join(found) or 'none'})")
    for key in ("x_train", "x_test"):
        shape = arrays[key].shape
        if len(shape) == 4 and shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4):
            raise DataError(f"{path}: {key} has shape {shape}, which looks channels-last (N, H, W, C); expected "
                            f"(N, C, H, W) (e.g. x.transpose(0, 3, 1, 2))")
    if classes is None:
        top = max((int(arrays[k].max()) for k in ("y_train", "y_test") if arrays[k].size), default=-1)
        classes = [str(i) for i in range(top + 1)]
    return (dataset_from(f"{path} (x_train, y_train)", arrays["x_train"], arrays["y_train"], classes),
            dataset_from(f"{path} (x_test, y_test)", arrays["x_test"], arrays["y_test"], classes))


def save_npz(path: str | os.PathLike, train: Dataset, test: Dataset) -> None:
    """Write ``train`` and ``test`` in the format ``load_npz`` reads; atomic (temp file + rename)."""
    if train.classes != test.classes:
        raise DataError(f"{path}: train and test class lists differ ({train.classes} vs {test.classes})")
    with atomic_write(path) as f:
        np.savez(f, x_train=train.images, y_train=train.labels, x_test=test.images, y_test=test.labels,
                 classes=np.array(train.classes, dtype=str))

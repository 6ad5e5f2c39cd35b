"""``python tests/data_fuzz_child.py CORPUS SEED CASES WORKDIR``: seeded mutations of one small corpus fed to the
public dataset loaders; prints one JSON report on stdout.

Run by tests/test_data_fuzz.py under an address-space limit. CORPUS is "idx" (MNIST's four IDX files, raw or
gzip: load_idx_pair and load_mnist), "folder" (a train/test tree of 28x28 PNGs: load_class_tree and
load_mnist) or "npz" (load_npz and load_mnist). Each case must either load a valid dataset (shapes consistent,
labels in range) or raise a DataError whose message names the mutated file; anything else is a failure.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import resource
import shutil
import sys
import time
import traceback
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
from corrupt_files import (forge_ihdr, forge_zip_sizes, gzip_bomb, idx_header, npy_bytes, npz_bytes, npz_of,
                           png_bytes, png_chunks, png_from_chunks, zeros_member, zlib_zeros)
from PIL import Image

from xpnet.data import DataError, Dataset, load_class_tree, load_idx_pair, load_mnist, load_npz
from xpnet.data.idx_datasets import IDX_NAMES

DIGITS = [str(d) for d in range(10)]
SIZE = (28, 28)


class Case:
    """One mutated corpus on disk: ``kind`` of mutation and the paths an error must name (any one of them); with
    no paths the corpus is still valid and must load."""

    def __init__(self, kind: str, names: list[Path], resize: bool = False):
        self.kind = kind
        self.names = [str(n) for n in names]
        self.resize = resize  # class folders: also load with resize=True (no size check before decoding)


# --- invariants --------------------------------------------------------------------------------------------------

def check_dataset(ds: Dataset, classes: list[str] | None = None) -> None:
    assert ds.images.dtype == np.uint8 and ds.images.ndim == 4, (ds.images.dtype, ds.images.shape)
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (len(ds.images),), ds.labels.shape
    assert not ds.labels.size or (ds.labels.min() >= 0 and ds.labels.max() < len(ds.classes))
    if classes is not None:
        assert ds.classes == classes, ds.classes


def check_splits(train: Dataset, test: Dataset, classes: list[str] | None = None,
                 size: tuple[int, int] | None = None) -> None:
    check_dataset(train, classes)
    check_dataset(test, classes)
    assert train.classes == test.classes and train.shape == test.shape, (train.shape, test.shape)
    assert size is None or train.shape[1:] == size, train.shape


def check_mnist(root: Path, classes: list[str] | None = None) -> None:
    data = load_mnist(root, download=False, progress=False)
    check_splits(data.train, data.test, classes, SIZE)


# --- IDX ---------------------------------------------------------------------------------------------------------

def idx_corpus(rng: np.random.Generator) -> dict[str, bytes]:
    """The decompressed bytes of four tiny IDX files: 4 training and 2 test images."""
    arrays = {IDX_NAMES[0]: rng.integers(0, 256, (4, *SIZE), dtype=np.uint8), IDX_NAMES[1]: np.array([0, 3, 9, 1]),
              IDX_NAMES[2]: rng.integers(0, 256, (2, *SIZE), dtype=np.uint8), IDX_NAMES[3]: np.array([7, 2])}
    return {name: idx_header(8, a.shape) + a.astype(np.uint8).tobytes() for name, a in arrays.items()}


def flip_bits(data: bytes, r: random.Random, count: int) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        if out:
            out[r.randrange(len(out))] ^= 1 << r.randrange(8)
    return bytes(out)


def mutate_idx_content(content: bytes, r: random.Random, kind: str, labels: bool) -> bytes:
    """A mutation of one file's decompressed IDX bytes."""
    data = bytearray(content)
    ndim = data[3]
    if kind == "content-bitflip":
        return flip_bits(content, r, r.randint(1, 8))
    if kind == "header-field":
        at = r.choice([2, 3] + [4 + 4 * i + j for i in range(ndim) for j in range(4)])
        data[at] = r.randrange(256)
        return bytes(data)
    if kind == "dimension":
        dim = r.randrange(ndim)
        old = int.from_bytes(data[4 + 4 * dim:8 + 4 * dim], "big")
        new = r.choice([0, 1, old - 1, old + 1, old * 2, r.randrange(2**32), 2**32 - 1, 2**31])
        data[4 + 4 * dim:8 + 4 * dim] = (new % 2**32).to_bytes(4, "big")
        return bytes(data)
    if kind == "huge-dims":
        dims = r.choice([(65536,) * 4, (2**32 - 1,) * 3, (0, 2**32 - 1, 2**32 - 1, 2**32 - 1), (1,) * 40,
                         (60000, 28, 28), (2**20,), (2**31, 2, 2, 2, 2)])
        return idx_header(8, dims) + content[4 + 4 * ndim:]
    if kind == "labels" and labels:
        data[4 + 4 * ndim + r.randrange(len(data) - 4 - 4 * ndim)] = r.randint(10, 255)
        return bytes(data)
    if kind == "labels":   # an images file: make it a labels file's shape
        return idx_header(8, (4,)) + bytes([r.randrange(256) for _ in range(4)])
    if kind == "wide-labels":
        values = np.array([r.choice([0, 9, 10, -1, 2**31 - 1, -2**31]) for _ in range(4)], ">i4")
        return idx_header(0x0C, (4,)) + values.tobytes()
    if kind == "pixels":
        data[-1 - r.randrange(8)] = r.randrange(256)
        return bytes(data)
    raise AssertionError(kind)


def bomb(content: bytes, r: random.Random, member: bytes) -> bytes:
    """A gzip bomb: the file then 1 GiB more, or a header claiming what one 16 MiB member (almost) provides."""
    choice = r.randrange(3)
    if choice == 0:
        return gzip_bomb(content, 64, member)                          # right header, 1 GiB of zeros after it
    if choice == 1:
        return gzip_bomb(idx_header(8, (20000, 28, 28)), 1, member)   # 15.7 MB declared, 16 MiB inflated
    return gzip_bomb(idx_header(8, (2**20, 28, 28)), 1, member)        # more than 16 KB of deflate can hold


IDX_KINDS = ["bitflip", "truncate", "extend", "content-bitflip", "header-field", "dimension", "huge-dims", "labels",
             "wide-labels", "gzip-bomb", "swap", "pixels", "none"]


def idx_case(root: Path, corpus: dict[str, bytes], r: random.Random, member: bytes) -> Case:
    """Write the four IDX files into ``root``, one of them mutated."""
    target = r.choice(IDX_NAMES)
    kind = r.choice(IDX_KINDS)
    root.mkdir(parents=True)
    paths = {}
    for name, content in corpus.items():
        compress = r.random() < 0.5 or (name == target and kind == "gzip-bomb")
        stored = content
        if name == target:
            if kind in ("content-bitflip", "header-field", "dimension", "huge-dims", "labels", "wide-labels",
                        "pixels"):
                stored = mutate_idx_content(content, r, kind, "labels" in name)
            elif kind == "swap":
                stored = corpus[r.choice([n for n in IDX_NAMES if n != name])]
        stored = gzip.compress(stored, mtime=0) if compress else stored
        if name == target:
            if kind == "bitflip":
                stored = flip_bits(stored, r, r.randint(1, 8))
            elif kind == "truncate":
                stored = stored[:r.randrange(len(stored))]
            elif kind == "extend":
                stored += bytes(r.randrange(256) for _ in range(r.randint(1, 64)))
            elif kind == "gzip-bomb":
                stored = bomb(content, r, member)
        paths[name] = root / (f"{name}.gz" if compress else name)
        paths[name].write_bytes(stored)
    return Case(kind, [] if kind == "none" else [paths[target]])


def run_idx(root: Path, case: Case) -> None:
    paths = {name: next(root.glob(f"{name}*")) for name in IDX_NAMES}
    train = load_idx_pair(paths[IDX_NAMES[0]], paths[IDX_NAMES[1]], classes=DIGITS)
    check_dataset(train, DIGITS)
    check_mnist(root, DIGITS)


# --- class folders -----------------------------------------------------------------------------------------------

FOLDER_LAYOUT = {"train/0/a.png": "L", "train/0/b.png": "L", "train/1/c.png": "RGB", "train/1/d.png": "L",
                 "test/0/e.png": "L", "test/1/f.png": "RGB"}


def folder_corpus(rng: np.random.Generator) -> dict[str, bytes]:
    shapes = {"L": SIZE, "RGB": (*SIZE, 3)}
    return {rel: png_bytes(rng.integers(0, 256, shapes[mode], dtype=np.uint8)) for rel, mode in FOLDER_LAYOUT.items()}


def encoded(pixels: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    (image.convert(mode) if mode else image).save(buffer, format=fmt)
    return buffer.getvalue()


def mutate_png(png: bytes, r: random.Random, kind: str, zbomb: bytes) -> bytes:
    if kind == "bitflip":
        return flip_bits(png, r, r.randint(1, 8))
    if kind == "truncate":
        return png[:r.randrange(len(png))]
    if kind == "pixel-data":    # corrupt compressed pixels behind a valid CRC: zlib and the unfilter see it
        return png_from_chunks([(kind_, flip_bits(data, r, r.randint(1, 4)) if kind_ == b"IDAT" else data)
                                for kind_, data in png_chunks(png)])
    if kind == "ihdr":
        field = r.choice(["width", "height", "depth", "color", "interlace", "compression", "filter"])
        values = {"width": [0, 1, 27, 29, r.randrange(1, 2**31), 2**32 - 1], "height": [0, 1, 27, 29, 2**31 - 1],
                  "depth": [1, 2, 4, 16, r.randrange(256)], "color": [0, 2, 3, 4, 6, r.randrange(256)],
                  "interlace": [1, r.randrange(256)], "compression": [r.randrange(256)], "filter": [r.randrange(256)]}
        return forge_ihdr(png, **{field: r.choice(values[field])})
    if kind == "dimension-bomb":
        side = r.choice([100_000, 10_000, 9_000, 65_535, 2**31 - 1])
        return forge_ihdr(png, width=side, height=r.choice([side, 28]))
    if kind == "chunks":
        chunks = png_chunks(png)
        choice = r.randrange(6)
        if choice == 0:
            chunks = [c for c in chunks if c[0] != b"IDAT"]
        elif choice == 1:
            chunks = chunks[:-1]                                          # no IEND
        elif choice == 2:
            chunks.insert(1, chunks[0])                                   # a second IHDR
        elif choice == 3:
            chunks.insert(1, (r.choice([b"zTXt", b"iCCP"]), b"k\0\0" + zbomb))  # text/profile bomb
        elif choice == 4:
            chunks = [(b"IDAT", zbomb) if c[0] == b"IDAT" else c for c in chunks]  # pixel data bomb
        else:
            return png[:33] + (2**31 - 1).to_bytes(4, "big") + b"tEXt" + b"x" * 16  # a chunk claiming 2 GiB
        return png_from_chunks(chunks)
    raise AssertionError(kind)


def replacement(r: random.Random, rng: np.random.Generator) -> bytes:
    """A different valid (or foreign-format) image file: other modes, depths and formats."""
    gray = rng.integers(0, 256, SIZE, dtype=np.uint8)
    choice = r.randrange(8)
    if choice == 0:
        return encoded((gray.astype(np.uint16) * 257), "PNG")                  # 16-bit grayscale
    if choice == 1:
        return encoded(np.dstack([gray] * 4), "PNG")                           # RGBA
    if choice == 2:
        return encoded(gray, "PNG", "P")
    if choice == 3:
        return encoded(gray, "PNG", "1")
    if choice == 4:
        return encoded(gray, "PNG", "LA")
    if choice == 5:
        return encoded(gray, "JPEG")                                           # JPEG bytes under a .png name
    if choice == 6:
        return encoded(gray, "GIF")
    return encoded(rng.integers(0, 256, (29, 28), dtype=np.uint8), "PNG")      # the wrong size


FOLDER_KINDS = ["bitflip", "truncate", "pixel-data", "ihdr", "dimension-bomb", "chunks", "replace", "structure", "none"]


def restructure(root: Path, r: random.Random, some_png: bytes) -> list[Path]:
    """A change to the tree's layout; returns the paths an error may name."""
    choice = r.randrange(7)
    if choice == 0:     # eleven classes: more than MNIST has
        for split in ("train", "test"):
            for c in range(2, 11):
                (root / split / str(c)).mkdir()
                (root / split / str(c) / "x.png").write_bytes(some_png)
        return [root / "train", root / "test"]
    if choice == 1:     # a class only in the test split
        (root / "test" / "7").mkdir()
        (root / "test" / "7" / "x.png").write_bytes(some_png)
        return [root / "test"]
    if choice == 2:
        (root / "train" / "5").mkdir()
        return [root / "train" / "5"]
    if choice == 3:
        (root / "train" / "0" / "notes.txt").write_text("hello")
        return [root / "train" / "0" / "notes.txt"]
    if choice == 4:     # hidden entries are skipped: still valid
        (root / "train" / "0" / ".DS_Store").write_bytes(b"\0junk")
        return []
    if choice == 5:
        shutil.rmtree(root / "test")
        return [root / "test"]
    (root / "train" / "0" / "a.png").rename(root / "train" / "0" / "a.jpg")   # PNG bytes, .jpg name: valid
    return []


def folder_case(root: Path, corpus: dict[str, bytes], r: random.Random, rng: np.random.Generator,
                zbomb: bytes) -> Case:
    target = r.choice(sorted(corpus))
    kind = r.choice(FOLDER_KINDS)
    for rel, data in corpus.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel == target and kind == "replace":
            data = replacement(r, rng)
        elif rel == target and kind not in ("structure", "none"):
            data = mutate_png(data, r, kind, zbomb)
        path.write_bytes(data)
    if kind == "structure":
        return Case(kind, restructure(root, r, corpus[target]))
    return Case(kind, [] if kind == "none" else [root / target], resize=r.random() < 0.3)


def run_folder(root: Path, case: Case) -> None:
    if case.resize:
        train, test = load_class_tree(root, size=SIZE, cache=False, resize=True)
        check_splits(train, test, size=SIZE)
    train, test = load_class_tree(root, size=SIZE, cache=False, max_classes=10)
    check_splits(train, test, size=SIZE)
    check_mnist(root)


# --- .npz --------------------------------------------------------------------------------------------------------

def npz_arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x_train": rng.integers(0, 256, (4, 1, *SIZE), dtype=np.uint8), "y_train": np.array([0, 3, 9, 1]),
            "x_test": rng.integers(0, 256, (2, 1, *SIZE), dtype=np.uint8), "y_test": np.array([7, 2], np.uint8)}


NPZ_KINDS = ["bitflip", "truncate", "extend", "npy-header", "directory-size", "drop", "compression", "labels",
             "values", "none"]


def npz_case(root: Path, arrays: dict[str, np.ndarray], r: random.Random) -> Case:
    kind = r.choice(NPZ_KINDS)
    values = dict(arrays)
    compressed = r.random() < 0.5
    members = None
    if kind == "npy-header":
        key = r.choice(sorted(values))
        descr = r.choice(["|u1", "<i8", "|O", "<f4", "|V8", "<U3", "|b1", ">u2", [("a", "<i4")]])
        shape = r.choice([(1 << 36,), (4, 1, 28, 28), (2,), (), (0, 2**62, 2**62), (4, 28, 28, 1), (3,) * 40])
        members = {f"{k}.npy": npy_bytes(v.dtype.str, v.shape, v.tobytes()) for k, v in values.items()}
        members[f"{key}.npy"] = npy_bytes(descr, shape, values[key].tobytes())
    elif kind == "drop":
        values.pop(r.choice(sorted(values)))
    elif kind == "labels":
        values["y_test"] = np.array([r.choice([10, -1, 2**40]), 0])
    elif kind == "values":
        key, value = r.choice([("x_train", values["x_train"].astype(np.float32)),
                               ("x_test", values["x_test"].transpose(0, 2, 3, 1)),
                               ("x_test", values["x_test"][:, :, :27]), ("classes", np.array([["a"], ["b"]])),
                               ("classes", np.array(["a", "b"])), ("y_train", values["y_train"][:3])])
        values[key] = value
    data = npz_of(values, compressed) if members is None else npz_bytes(
        members, zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED)
    if kind == "bitflip":
        data = flip_bits(data, r, r.randint(1, 8))
    elif kind == "truncate":
        data = data[:r.randrange(len(data))]
    elif kind == "extend":
        data += bytes(r.randrange(256) for _ in range(r.randint(1, 64)))
    elif kind == "directory-size":
        data = forge_zip_sizes(data, r.choice([0, 1, 1 << 20, 3 << 30, 2**32 - 1]))
    elif kind == "compression":
        data = npz_bytes({f"{k}.npy": npy_bytes(v.dtype.str, v.shape, v.tobytes()) for k, v in values.items()},
                         r.choice([zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))
    root.mkdir(parents=True)
    path = root / "data.npz"
    path.write_bytes(data)
    return Case(kind, [] if kind == "none" else [path])


def run_npz(root: Path, case: Case) -> None:
    train, test = load_npz(root / "data.npz")
    check_splits(train, test)
    data = load_mnist(root / "data.npz", download=False, progress=False)
    check_splits(data.train, data.test, train.classes)


# --- the driver --------------------------------------------------------------------------------------------------

def run_case(run: Callable[[Path, Case], None], root: Path, case: Case) -> tuple[str, str | None]:
    """("ok" | "refused" | "failed", what failed)."""
    try:
        run(root, case)
    except DataError as exc:
        if not any(name in str(exc) for name in case.names):
            return "failed", f"DataError not naming {case.names or 'a mutated file (none was)'}: {exc}"
        return "refused", None
    except BaseException as exc:  # noqa: BLE001  (the point: nothing else may escape)
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return "failed", f"{type(exc).__name__}: {str(exc)[:300]} at {Path(where.filename).name}:{where.lineno}"
    return "ok", None


def main() -> int:
    corpus_name, seed, cases, workdir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    r, rng = random.Random(seed), np.random.default_rng(seed)
    outcomes = {"ok": 0, "refused": 0, "failed": 0}
    kinds: dict[str, dict[str, int]] = {}
    failures, slowest = [], (0.0, "")
    start = time.perf_counter()
    member, zbomb = zeros_member(), zlib_zeros()
    corpus = {"idx": idx_corpus, "folder": folder_corpus, "npz": npz_arrays}[corpus_name](rng)
    for i in range(cases):
        root = workdir / f"case{i:04d}"
        if corpus_name == "idx":
            case, run = idx_case(root, corpus, r, member), run_idx
        elif corpus_name == "folder":
            case, run = folder_case(root, corpus, r, rng, zbomb), run_folder
        else:
            case, run = npz_case(root, corpus, r), run_npz
        began = time.perf_counter()
        outcome, failure = run_case(run, root, case)
        slowest = max(slowest, (time.perf_counter() - began, f"case {i} ({case.kind})"))
        outcomes[outcome] += 1
        kinds.setdefault(case.kind, {"ok": 0, "refused": 0, "failed": 0})[outcome] += 1
        if failure and len(failures) < 20:
            failures.append(f"case {i} ({case.kind}): {failure}")
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"corpus": corpus_name, "seed": seed, "cases": cases, "outcomes": outcomes, "kinds": kinds,
                      "failures": failures, "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0],
                      "seconds": round(time.perf_counter() - start, 2),
                      "slowest_case": [round(slowest[0], 3), slowest[1]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

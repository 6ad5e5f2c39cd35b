"""IDX reading and writing, the Dataset checks, and atomic writes."""

import gzip
import os
import re
import tracemalloc

import numpy as np
import pytest
from corrupt_files import gzip_bomb, idx_header

from xpnet.data import DataError, Dataset, load_idx_pair, read_idx, write_idx
from xpnet.data.dataset import MAX_NUMBERED_CLASSES
from xpnet.data.files import atomic_write


def idx_bytes(code, dims, payload):
    return bytes([0, 0, code, len(dims)]) + np.asarray(dims, ">u4").tobytes() + payload


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_round_trip(tmp_path, dtype, name):
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_known_bytes_are_big_endian(tmp_path):
    write_idx(tmp_path / "x", np.array([1, 256], dtype=np.int32))
    assert (tmp_path / "x").read_bytes() == bytes([0, 0, 0x0C, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 1, 0])


def test_gzip_is_detected_by_magic_not_suffix(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_idx(tmp_path / "packed.gz", array)
    os.rename(tmp_path / "packed.gz", tmp_path / "train-images-idx3-ubyte")   # gzip data, no .gz suffix
    np.testing.assert_array_equal(read_idx(tmp_path / "train-images-idx3-ubyte"), array)
    write_idx(tmp_path / "raw", array)
    os.rename(tmp_path / "raw", tmp_path / "raw.gz")                          # raw data, .gz suffix
    np.testing.assert_array_equal(read_idx(tmp_path / "raw.gz"), array)


def test_write_gz_really_compresses(tmp_path):
    write_idx(tmp_path / "z.gz", np.zeros((50, 50), np.uint8))
    assert (tmp_path / "z.gz").read_bytes()[:2] == b"\x1f\x8b"


@pytest.mark.parametrize("data, words", [
    (b"", ["magic", "empty"]),
    (b"\x01\x00\x08\x01\x00\x00\x00\x02\x01\x02", ["magic", "01 00 08 01"]),
    (idx_bytes(0x07, [2], b"\x01\x02"), ["dtype code 0x07"]),
    (bytes([0, 0, 8, 0]), ["0 dimensions"]),
    (bytes([0, 0, 8, 3, 0, 0, 0, 2]), ["header"]),
    (idx_bytes(0x08, [2, 3], b"\x00" * 5), ["(2, 3)", "need 18 bytes", "has 17"]),
    (idx_bytes(0x08, [2, 3], b"\x00" * 7), ["need 18 bytes", "has 19"]),
    (idx_bytes(0x0C, [2], b"\x00" * 7), ["4-byte", "need 16 bytes"]),
    (b"\x1f\x8b" + b"not really gzip", ["corrupt gzip"]),
], ids=["empty", "magic", "dtype", "ndim0", "short-header", "short-data", "extra-data", "int32-short", "gzip"])
def test_bad_idx_names_the_file(tmp_path, data, words):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(data)
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(path) in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "t.gz"
    path.write_bytes(gzip.compress(idx_bytes(0x08, [100], bytes(100)))[:-10])
    with pytest.raises(DataError, match="corrupt gzip") as err:
        read_idx(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("dims, words", [
    ((65536,) * 4, ["(65536, 65536, 65536, 65536)", "too large"]),        # 2**64 values: 0 in int64 arithmetic
    ((0, 2**32 - 1, 2**32 - 1, 2**32 - 1), ["too large"]),                # no values, but no array has that shape
    ((1,) * 40, ["40 dimensions", "at most 32"]),
], ids=["wraps-to-zero", "zero-times-huge", "too-many-dims"])
def test_dimensions_are_checked_in_exact_arithmetic(tmp_path, dims, words):
    path = tmp_path / "huge-idx3-ubyte"
    path.write_bytes(idx_header(0x08, dims))    # a header alone, which int64 arithmetic says is the whole file
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(path) in str(err.value)
    for word in words:
        assert word in str(err.value)


def read_tracing_memory(path):
    """read_idx(path)'s DataError and the peak of Python memory allocated meanwhile."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as err:
            read_idx(path)
        return err.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_gzip_bomb_is_inflated_only_as_far_as_the_header_promises(tmp_path):
    path = tmp_path / "bomb-idx3-ubyte.gz"
    path.write_bytes(gzip_bomb(idx_header(0x08, (4, 28, 28)) + bytes(4 * 28 * 28), members=64))  # then 1 GiB
    assert path.stat().st_size < 2 << 20
    err, peak = read_tracing_memory(path)
    assert str(path) in str(err) and "need 3152 bytes, but the decompressed file has more" in str(err)
    assert peak < 2 << 20


def test_gzip_header_claiming_more_than_deflate_can_hold_is_refused_before_inflating(tmp_path):
    path = tmp_path / "claims-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_header(0x08, (60000, 28, 28)) + bytes(100)))
    err, peak = read_tracing_memory(path)
    assert str(path) in str(err) and "need 47040016 bytes, more than a" in str(err) and "gzip file can hold" in str(err)
    assert peak < 1 << 20


def test_gzip_shorter_than_its_header(tmp_path):
    path = tmp_path / "short-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_header(0x08, (100,)) + bytes(40)))
    with pytest.raises(DataError, match="need 108 bytes, but the decompressed file has 48") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(DataError) as err:
        read_idx(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value)


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError, match="bool"):
        write_idx(tmp_path / "b", np.zeros(3, bool))
    assert not (tmp_path / "b").exists()


def write_pair(tmp_path, images, labels):
    write_idx(tmp_path / "images.gz", images)
    write_idx(tmp_path / "labels", labels)
    return tmp_path / "images.gz", tmp_path / "labels"


def test_load_idx_pair(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    labels = np.array([0, 2, 1, 2, 0], np.uint8)
    ds = load_idx_pair(*write_pair(tmp_path, images, labels))
    np.testing.assert_array_equal(ds.images, images[:, None])
    assert ds.shape == (1, 4, 3)
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 2, 1, 2, 0]
    assert ds.classes == ["0", "1", "2"] and len(ds) == 5
    assert load_idx_pair(*write_pair(tmp_path, images, labels), classes=list("abcd")).classes == list("abcd")


def test_idx_pair_counts_must_agree(tmp_path):
    paths = write_pair(tmp_path, np.zeros((5, 2, 2), np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="counts must agree") as err:
        load_idx_pair(*paths)
    assert str(paths[0]) in str(err.value) and str(paths[1]) in str(err.value)


def test_idx_pair_labels_out_of_range(tmp_path):
    paths = write_pair(tmp_path, np.zeros((3, 2, 2), np.uint8), np.array([0, 12, 1], np.uint8))
    with pytest.raises(DataError, match=r"label 12 is out of range \(at index 1\)") as err:
        load_idx_pair(*paths, classes=[str(i) for i in range(10)])
    assert str(paths[1]) in str(err.value) and "[0, 10)" in str(err.value)


def test_idx_pair_without_classes_refuses_a_label_that_would_make_billions(tmp_path):
    paths = write_pair(tmp_path, np.zeros((3, 2, 2), np.uint8), np.array([0, 2**31 - 1, 1], np.int32))
    with pytest.raises(DataError, match=r"label 2147483647 \(at index 1\) would make 2147483648 classes") as err:
        load_idx_pair(*paths)
    assert str(paths[1]) in str(err.value) and str(MAX_NUMBERED_CLASSES) in str(err.value)


@pytest.mark.parametrize("images, labels, bad", [
    (np.zeros((3, 4), np.uint8), np.zeros(3, np.uint8), 0),          # images not (N, H, W)
    (np.zeros((3, 2, 2), np.float32), np.zeros(3, np.uint8), 0),     # images not uint8
    (np.zeros((3, 2, 2), np.uint8), np.zeros((3, 1), np.uint8), 1),  # labels not (N,)
    (np.zeros((3, 2, 2), np.uint8), np.zeros(3, np.float32), 1),     # labels not integers
])
def test_idx_pair_shapes_name_the_file(tmp_path, images, labels, bad):
    paths = write_pair(tmp_path, images, labels)
    with pytest.raises(DataError) as err:
        load_idx_pair(*paths)
    assert str(paths[bad]) in str(err.value)


def test_dataset_validation_and_subset():
    images = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2)
    ds = Dataset(images, np.array([0, 1, 1, 0], np.int32), ["a", "b"])
    assert ds.labels.dtype == np.int64
    assert ds.images.shape == (4, 1, 2, 2) and ds.shape == (1, 2, 2)   # (N, H, W) gets its channel axis
    sub = ds.subset(np.array([3, 1]))
    np.testing.assert_array_equal(sub.images, images[[3, 1], None])
    assert sub.labels.tolist() == [0, 1] and sub.classes == ["a", "b"] and len(sub) == 2
    empty = ds.subset(np.array([], np.int64))
    assert len(empty) == 0 and empty.images.shape == (0, 1, 2, 2)
    with pytest.raises(DataError, match="4 images but 3 labels"):
        Dataset(images, np.zeros(3, np.int64), ["a"])
    with pytest.raises(DataError, match=r"label 2 is out of range \(at index 2\)"):
        Dataset(images, np.array([0, 1, 2, 0]), ["a", "b"])
    with pytest.raises(DataError, match=r"label 18446744073709551615 is out of range \(at index 1\)"):
        Dataset(images, np.array([0, 2**64 - 1, 1, 0], np.uint64), ["a", "b"])   # not wrapped to -1 first
    with pytest.raises(DataError, match="label -1 is out of range"):
        Dataset(images, np.array([0, -1, 1, 0]), ["a", "b"])
    with pytest.raises(DataError, match="uint8"):
        Dataset(images.astype(np.float32), np.zeros(4, np.int64), ["a"])
    with pytest.raises(DataError, match=r"\(N, C, H, W\) or \(N, H, W\)"):
        Dataset(images.reshape(4, 4), np.zeros(4, np.int64), ["a"])
    with pytest.raises(DataError, match="at least one channel"):
        Dataset(np.zeros((4, 0, 2, 2), np.uint8), np.zeros(4, np.int64), ["a"])
    with pytest.raises(DataError, match="at least 1x1 pixels"):
        Dataset(np.zeros((4, 1, 0, 2), np.uint8), np.zeros(4, np.int64), ["a"])
    assert issubclass(DataError, ValueError)


def test_dataset_keeps_channels():
    rgb = np.random.default_rng(0).integers(0, 256, (3, 3, 4, 5), dtype=np.uint8)
    ds = Dataset(rgb, np.array([0, 1, 0]), ["a", "b"])
    assert ds.shape == (3, 4, 5) and ds.images is rgb
    np.testing.assert_array_equal(ds.subset(np.array([2])).images, rgb[[2]])


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"half of the new")
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]
    with atomic_write(path) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["f"]


def test_atomic_write_errors_name_the_file_asked_for_not_the_temporary(tmp_path):
    missing = tmp_path / "no_such_folder" / "model.onnx"
    with pytest.raises(FileNotFoundError, match=r"^" + re.escape(f"{missing}: cannot write the file (No such")):
        with atomic_write(missing) as f:
            f.write(b"x")
    taken = tmp_path / "taken"
    taken.mkdir()
    with pytest.raises(OSError, match=re.escape(f"{taken}: cannot replace it with the new file")):
        with atomic_write(taken) as f:
            f.write(b"x")
    assert os.listdir(tmp_path) == ["taken"] and os.listdir(taken) == []  # no temporary left behind

""".npz reading that trusts nothing in the archive: .npy headers checked against the zip directory, the directory
checked against the file, dtypes limited to numeric and string arrays, all before anything is allocated."""

import tracemalloc
import zipfile

import numpy as np
import pytest
from corrupt_files import forge_zip_sizes, npy_bytes, npz_bytes, npz_of

from xpnet.data import DataError, load_npz
from xpnet.data.npz import read_npz


def arrays():
    rng = np.random.default_rng(0)
    return {"x_train": rng.integers(0, 256, (4, 1, 28, 28), dtype=np.uint8), "y_train": np.array([0, 1, 2, 3]),
            "x_test": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8), "y_test": np.array([3, 0], np.uint8)}


def members(values, **replaced):
    """.npy members of ``values`` as numpy.save writes them, some replaced by hand-made bytes."""
    out = {f"{k}.npy": npy_bytes(v.dtype.str, v.shape, v.tobytes()) for k, v in values.items()}
    out.update({f"{k}.npy": v for k, v in replaced.items()})
    return out


def refused(path):
    """load_npz's DataError message for ``path`` and the peak Python memory allocated meanwhile."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as err:
            load_npz(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(err.value)
    return str(err.value), peak


@pytest.mark.parametrize("compressed", [False, True])
def test_valid_archives_load(tmp_path, compressed):
    path = tmp_path / "d.npz"
    values = arrays()
    values["x_test"] = np.asfortranarray(values["x_test"])            # stored in Fortran order
    values["y_test"] = values["y_test"].astype(">i2")                 # big-endian labels
    path.write_bytes(npz_of(values, compressed))
    train, test = load_npz(path)
    np.testing.assert_array_equal(train.images, values["x_train"])
    np.testing.assert_array_equal(test.images[:, 0], values["x_test"])
    assert test.labels.tolist() == [3, 0] and train.classes == ["0", "1", "2", "3"]


def test_small_file_declaring_a_64_gib_array_is_refused_unallocated(tmp_path):
    path = tmp_path / "tiny.npz"
    path.write_bytes(npz_bytes(members(arrays(), x_train=npy_bytes("|u1", (1 << 36,), b""))))
    message, peak = refused(path)
    assert "x_train.npy declares shape (68719476736,)" in message and "the member holds 128 bytes" in message
    assert peak < 1 << 20


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_zip_directory_that_lies_about_a_member_size(tmp_path, compression):
    path = tmp_path / "lies.npz"
    big = npy_bytes("|u1", (3 << 30,), b"")            # agrees with the forged directory: both say 3 GiB
    path.write_bytes(forge_zip_sizes(npz_bytes(members(arrays(), x_train=big), compression), (3 << 30) + len(big)))
    message, peak = refused(path)
    assert "claims 3221225600 bytes, more than its" in message and "stored bytes can hold" in message
    assert peak < 1 << 20


@pytest.mark.parametrize("descr, words", [
    ("|O", ["holds object values", "never unpickled"]),
    ([("a", "<i4"), ("b", "<f8")], ["holds [('a', '<i4'), ('b', '<f8')] values"]),
    ("|V8", ["holds |V8 values"]),
], ids=["object", "structured", "void"])
def test_dtypes_other_than_numbers_and_strings_are_refused(tmp_path, descr, words):
    path = tmp_path / "odd.npz"
    path.write_bytes(npz_bytes(members(arrays(), y_train=npy_bytes(descr, (4,), bytes(64)))))
    message, _ = refused(path)
    for word in words:
        assert word in message


def test_other_compression_methods_and_corrupt_members_are_refused(tmp_path):
    path = tmp_path / "bz.npz"
    path.write_bytes(npz_bytes(members(arrays()), zipfile.ZIP_BZIP2))
    assert "compression method 12; expected stored or deflated" in refused(path)[0]
    data = bytearray(npz_bytes(members(arrays())))
    data[200] ^= 0xFF                                   # inside x_train's pixels: only the CRC tells
    path.write_bytes(bytes(data))
    assert "Bad CRC-32" in refused(path)[0]


def test_labels_without_a_class_list_name_the_array_value_and_index(tmp_path):
    path = tmp_path / "labels.npz"
    values = arrays()
    values["y_test"] = np.array([1, 2**40], np.int64)
    path.write_bytes(npz_of(values))
    message, _ = refused(path)
    assert f"{path} (y_test): label 1099511627776 (at index 1) would make" in message


def test_classes_must_be_a_list(tmp_path):
    path = tmp_path / "classes.npz"
    path.write_bytes(npz_of({**arrays(), "classes": np.array([["a", "b"], ["c", "d"]])}))
    assert "classes has shape (2, 2); expected a list of names" in refused(path)[0]


def test_read_npz_names_what_is_missing(tmp_path):
    path = tmp_path / "part.npz"
    path.write_bytes(npz_of({"x_train": np.zeros(2, np.uint8)}))
    assert read_npz(path, ("x_train", "other")).keys() == {"x_train"}
    with pytest.raises(DataError, match=r"missing key\(s\) other; expected arrays other \(found: x_train\)"):
        read_npz(path, ("x_train", "other"), required=("other",))

"""load_dataset for Fashion-MNIST and CIFAR-10 (and the names and options shared with MNIST): tiny files in each
format through the real readers, the Debian package source, the cache, downloads from local HTTP mirrors with
checksum mismatches, and the not-found message."""

import contextlib
import gzip
import hashlib
import http.server
import io
import tarfile
import threading

import numpy as np
import pytest
from PIL import Image
from local_http import serve

from xpnet.data import DATASETS, DataError, Dataset, load_dataset, load_mnist, to_grayscale, write_idx
from xpnet.data import cifar10, fashion_mnist, idx_datasets, mnist
from xpnet.data.cifar10 import BATCHES, FOLDER, META, RECORD_BYTES
from xpnet.data.dataset import luma
from xpnet.data.idx_datasets import IDX_NAMES
from xpnet.data.npz import save_npz
from xpnet.data.sources import fetch


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No user data, cache, installed package or proxy leaks in; the user cache lives in the test's folder."""
    monkeypatch.delenv("XPNET_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(mnist, "_hub_pickle", lambda: None)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian-package")
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


# --- tiny files in each format -----------------------------------------------------------------------------------

@pytest.fixture
def idx_arrays():
    """A tiny Fashion-MNIST look-alike: 28x28 uint8 images, labels 0..9."""
    rng = np.random.default_rng(0)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(12) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(5) * 3 % 10).astype(np.uint8),
    }


def write_idx_folder(folder, arrays):
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(folder / f"{name}.gz", array)
    return folder


def idx_body(array):
    """The bytes of a uint8 IDX file, written out by hand."""
    return bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + array.tobytes()


def idx_checksums(arrays):
    return {name: hashlib.sha256(idx_body(a)).hexdigest() for name, a in arrays.items()}


def assert_idx_matches(data, arrays):
    np.testing.assert_array_equal(data.train.images[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.train.labels, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(data.test.images[:, 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.test.labels, arrays["t10k-labels-idx1-ubyte"])
    assert data.train.shape == (1, 28, 28)
    assert data.train.classes == data.test.classes == fashion_mnist.CLASSES


@pytest.fixture
def cifar():
    """Two records per batch file: {name: (bytes, images (2, 3, 32, 32), labels)}; test_batch has label 9."""
    rng = np.random.default_rng(1)
    batches = {}
    for k, name in enumerate(BATCHES):
        labels = np.array([k, 9 - k], np.uint8)
        pixels = rng.integers(0, 256, (2, 3 * 32 * 32), dtype=np.uint8)
        batches[name] = (np.column_stack([labels, pixels]).tobytes(), pixels.reshape(2, 3, 32, 32), labels)
    return batches


def cifar_tar(cifar, *, meta=b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n",
              skip=(), folder=FOLDER):
    """The batches as a gzip-compressed tar, members in ``folder``/ as in cifar-10-binary.tar.gz."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        files = {name: data for name, (data, _, _) in cifar.items() if name not in skip}
        if meta is not None:
            files[META] = meta
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def assert_cifar_matches(data, cifar):
    train = [cifar[name] for name in BATCHES[:5]]
    assert data.train.images.shape == (10, 3, 32, 32) and data.test.images.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(data.train.images, np.concatenate([images for _, images, _ in train]))
    np.testing.assert_array_equal(data.train.labels, np.concatenate([labels for _, _, labels in train]))
    np.testing.assert_array_equal(data.test.images, cifar["test_batch.bin"][1])
    np.testing.assert_array_equal(data.test.labels, cifar["test_batch.bin"][2])
    assert data.train.classes == data.test.classes == cifar10.CLASSES


# --- names and options -------------------------------------------------------------------------------------------

def test_names():
    assert list(DATASETS) == ["mnist", "fashion-mnist", "cifar10", "folder"]
    with pytest.raises(DataError, match="dataset: unknown name 'svhn'; expected one of mnist, fashion-mnist, cifar10, "
                                        "folder"):
        load_dataset("svhn")


def test_mnist_by_name_is_load_mnist(tmp_path, idx_arrays):
    folder = write_idx_folder(tmp_path / "m", idx_arrays)
    a, b = load_dataset("mnist", folder), load_mnist(folder)
    assert a.source == b.source == f"IDX files in {folder}"
    np.testing.assert_array_equal(a.train.images, b.train.images)
    assert a.train.classes == [str(d) for d in range(10)]


def test_grayscale_applies_to_any_source(tmp_path):
    rng = np.random.default_rng(2)
    rgb = Dataset(rng.integers(0, 256, (4, 3, 6, 5), dtype=np.uint8), np.arange(4) % 2, ["a", "b"])
    save_npz(tmp_path / "c.npz", rgb, rgb)
    data = load_dataset("cifar10", tmp_path / "c.npz", grayscale=True)
    assert data.train.shape == (1, 6, 5)
    for image, gray in zip(rgb.images, data.train.images):
        expected = np.asarray(Image.fromarray(image.transpose(1, 2, 0)).convert("L"))   # Pillow's luma, bit for bit
        np.testing.assert_array_equal(gray[0], expected)
    assert load_dataset("cifar10", tmp_path / "c.npz").train.shape == (3, 6, 5)
    assert to_grayscale(data.train) is data.train
    with pytest.raises(DataError, match="grayscale: expected 1- or 3-channel"):
        to_grayscale(Dataset(np.zeros((1, 2, 2, 2), np.uint8), [0], ["a"]))


def test_luma_in_chunks_equals_one_pass(monkeypatch):
    images = np.random.default_rng(3).integers(0, 256, (7, 3, 2, 2), dtype=np.uint8)
    whole = luma(images)
    monkeypatch.setattr("xpnet.data.dataset.LUMA_CHUNK", 3)
    np.testing.assert_array_equal(luma(images), whole)


def test_npz_in_channels_last_order_is_refused(tmp_path):
    x = np.zeros((2, 32, 32, 3), np.uint8)
    np.savez(tmp_path / "hwc.npz", x_train=x, y_train=np.zeros(2, np.uint8), x_test=x, y_test=np.zeros(2, np.uint8))
    with pytest.raises(DataError, match=r"looks channels-last \(N, H, W, C\); expected \(N, C, H, W\)") as err:
        load_dataset("cifar10", tmp_path / "hwc.npz")
    assert str(tmp_path / "hwc.npz") in str(err.value)


def test_class_folder_trees_take_the_dataset_image_size(tmp_path):
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(np.full((32, 32, 3), 9, np.uint8)).save(tmp_path / split / c / "0.png")
    data = load_dataset("cifar10", tmp_path)
    assert data.train.shape == (3, 32, 32) and data.train.classes == ["cat", "dog"]
    assert data.source == f"class folders in {tmp_path}"
    assert load_dataset("cifar10", tmp_path, grayscale=True).test.shape == (1, 32, 32)
    with pytest.raises(DataError, match="32x32 .* but 28x28 was expected"):
        load_dataset("fashion-mnist", tmp_path)


# --- Fashion-MNIST -----------------------------------------------------------------------------------------------

def test_fashion_idx_folder_has_the_clothing_classes(tmp_path, idx_arrays):
    data = load_dataset("fashion-mnist", write_idx_folder(tmp_path / "f", idx_arrays), download=False)
    assert_idx_matches(data, idx_arrays)
    assert data.train.classes[0] == "T-shirt/top" and data.train.classes[9] == "Ankle boot"


def test_fashion_env_var_and_own_cache_file(tmp_path, idx_arrays, monkeypatch):
    monkeypatch.setenv("XPNET_DATA", str(write_idx_folder(tmp_path / "f", idx_arrays)))
    assert load_dataset("fashion-mnist").source == f"IDX files in {tmp_path / 'f'}"
    monkeypatch.delenv("XPNET_DATA")
    cache = tmp_path / "cache"
    cache.mkdir()
    mnist_like = Dataset(np.zeros((1, 28, 28), np.uint8), [0], [str(d) for d in range(10)])
    save_npz(cache / "mnist.npz", mnist_like, mnist_like)        # MNIST's cache is not Fashion-MNIST's
    with pytest.raises(DataError, match="Fashion-MNIST data not found"):
        load_dataset("fashion-mnist", cache_dir=cache, download=False)
    data = load_dataset("fashion-mnist", write_idx_folder(tmp_path / "f", idx_arrays))
    save_npz(cache / "fashion-mnist.npz", data.train, data.test)
    cached = load_dataset("fashion-mnist", cache_dir=cache, download=False)
    assert cached.source == f"cache {cache / 'fashion-mnist.npz'}"
    assert_idx_matches(cached, idx_arrays)


def test_fashion_partial_idx_folder(tmp_path, idx_arrays):
    folder = write_idx_folder(tmp_path / "f", idx_arrays)
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="only some of the Fashion-MNIST IDX files; missing train-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", folder)


def test_debian_package_is_read_after_the_cache_and_cached(tmp_path, idx_arrays, monkeypatch):
    debian = write_idx_folder(tmp_path / "usr-share-datasets", idx_arrays)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", debian)
    monkeypatch.setattr(fashion_mnist.SPEC, "checksums", idx_checksums(idx_arrays))
    data = load_dataset("fashion-mnist", download=False)
    cache = tmp_path / "xdg" / "xpnet" / "fashion-mnist.npz"
    assert data.source == f"Debian package dataset-fashion-mnist ({debian}), cached at {cache}"
    assert_idx_matches(data, idx_arrays)
    for path in debian.iterdir():
        path.unlink()
    again = load_dataset("fashion-mnist", download=False)
    assert again.source == f"cache {cache}"
    assert_idx_matches(again, idx_arrays)


def test_debian_files_that_fail_the_checksum_are_skipped(tmp_path, idx_arrays, monkeypatch):
    debian = write_idx_folder(tmp_path / "usr-share-datasets", idx_arrays)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", debian)
    sums = idx_checksums(idx_arrays)
    sums["t10k-images-idx3-ubyte"] = "0" * 64
    monkeypatch.setattr(fashion_mnist.SPEC, "checksums", sums)
    with pytest.warns(UserWarning, match="ignoring the Debian package dataset-fashion-mnist data"), \
            pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", download=False)
    assert f"{debian / 't10k-images-idx3-ubyte.gz'}: SHA-256 of the decompressed file is" in str(err.value)
    assert not (tmp_path / "xdg" / "xpnet" / "fashion-mnist.npz").exists()


def test_real_fashion_checksums_are_the_published_ones():
    assert fashion_mnist.SHA256["train-images-idx3-ubyte"].startswith("c59f468a") and len(fashion_mnist.SHA256) == 4
    assert all(len(h) == 64 for h in fashion_mnist.SHA256.values())
    assert str(fashion_mnist.DEBIAN_DIR) != "/usr/share/datasets/fashion-mnist"   # the fixture isolates it
    assert len(fashion_mnist.CLASSES) == 10


# --- CIFAR-10 ----------------------------------------------------------------------------------------------------

def test_cifar_archive_file(tmp_path, cifar):
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(cifar_tar(cifar))
    data = load_dataset("cifar10", tmp_path / "cifar-10-binary.tar.gz")
    assert_cifar_matches(data, cifar)
    assert data.source == f"archive {tmp_path / 'cifar-10-binary.tar.gz'}"
    assert list(tmp_path.iterdir()) == [tmp_path / "cifar-10-binary.tar.gz"], "something was extracted to disk"


def test_cifar_record_layout_is_label_then_rgb_planes(tmp_path, cifar):
    record = np.frombuffer(cifar["test_batch.bin"][0], np.uint8)[:RECORD_BYTES]
    (tmp_path / "a.tar.gz").write_bytes(cifar_tar(cifar))
    image = load_dataset("cifar10", tmp_path / "a.tar.gz").test.images[0]
    for c, y, x in [(0, 0, 0), (0, 0, 31), (0, 1, 0), (1, 2, 3), (2, 31, 31)]:
        assert image[c, y, x] == record[1 + c * 1024 + y * 32 + x]
    assert record[0] == 5


def test_cifar_folder_with_the_archive_or_the_batch_files(tmp_path, cifar):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "cifar-10-binary.tar.gz").write_bytes(cifar_tar(cifar))
    assert_cifar_matches(load_dataset("cifar10", tmp_path / "a"), cifar)
    for root, folder in ((tmp_path / "b", tmp_path / "b"), (tmp_path / "c", tmp_path / "c" / FOLDER)):
        folder.mkdir(parents=True)
        for name, (data, _, _) in cifar.items():
            (folder / name).write_bytes(data)
        data = load_dataset("cifar10", root)
        assert_cifar_matches(data, cifar)
        assert data.source == f"CIFAR-10 batch files in {folder}"


def test_cifar_class_names_come_from_the_meta_file(tmp_path, cifar):
    names = b"".join(f"class {i}\n".encode() for i in range(10))
    (tmp_path / "a.tar.gz").write_bytes(cifar_tar(cifar, meta=names))
    assert load_dataset("cifar10", tmp_path / "a.tar.gz").train.classes == [f"class {i}" for i in range(10)]
    (tmp_path / "b.tar.gz").write_bytes(cifar_tar(cifar, meta=b"cat\ndog\n"))
    with pytest.raises(DataError, match="batches.meta.txt: lists 2 class names; expected 10"):
        load_dataset("cifar10", tmp_path / "b.tar.gz")
    (tmp_path / "c.tar.gz").write_bytes(cifar_tar(cifar, meta=None))
    assert load_dataset("cifar10", tmp_path / "c.tar.gz").train.classes == cifar10.CLASSES


def test_cifar_label_out_of_range_names_the_member(tmp_path, cifar):
    data = bytearray(cifar["data_batch_3.bin"][0])
    data[RECORD_BYTES] = 10                                   # the second record's label
    cifar["data_batch_3.bin"] = (bytes(data), None, None)
    (tmp_path / "a.tar.gz").write_bytes(cifar_tar(cifar))
    with pytest.raises(DataError, match=r"a.tar.gz:cifar-10-batches-bin/data_batch_3.bin: record 1 has label 10; "
                                        r"expected labels 0 to 9"):
        load_dataset("cifar10", tmp_path / "a.tar.gz")


def test_cifar_batch_of_the_wrong_size(tmp_path, cifar):
    cifar["test_batch.bin"] = (cifar["test_batch.bin"][0][:-1], None, None)
    (tmp_path / "a.tar.gz").write_bytes(cifar_tar(cifar))
    with pytest.raises(DataError, match=f"test_batch.bin: {2 * RECORD_BYTES - 1} bytes is not a CIFAR-10 batch"):
        load_dataset("cifar10", tmp_path / "a.tar.gz")
    folder = tmp_path / "bins"
    folder.mkdir()
    for name, (data, _, _) in cifar.items():
        (folder / name).write_bytes(data)
    with pytest.raises(DataError, match="not a CIFAR-10 batch") as err:
        load_dataset("cifar10", folder)
    assert str(folder / "test_batch.bin") in str(err.value)


def test_cifar_member_size_is_checked_before_reading(tmp_path, cifar):
    """A header claiming more records than a batch holds is refused from the header, before any data is read."""
    header = tarfile.TarInfo(f"{FOLDER}/data_batch_1.bin")
    header.size = (cifar10.MAX_RECORDS + 1) * RECORD_BYTES
    (tmp_path / "huge.tar.gz").write_bytes(gzip.compress(header.tobuf() + b"\0" * 512))   # the data is not there
    with pytest.raises(DataError, match=f"{header.size} bytes is not a CIFAR-10 batch; expected 1 to 10000 records"):
        load_dataset("cifar10", tmp_path / "huge.tar.gz")


def test_cifar_archive_missing_a_batch_or_broken(tmp_path, cifar):
    (tmp_path / "a.tar.gz").write_bytes(cifar_tar(cifar, skip=("data_batch_4.bin",)))
    with pytest.raises(DataError, match="a.tar.gz: missing data_batch_4.bin"):
        load_dataset("cifar10", tmp_path / "a.tar.gz")
    (tmp_path / "b.tar.gz").write_bytes(cifar_tar(cifar)[:3000])
    with pytest.raises(DataError, match="b.tar.gz: not a readable tar.gz archive"):
        load_dataset("cifar10", tmp_path / "b.tar.gz")
    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "data_batch_1.bin").write_bytes(cifar["data_batch_1.bin"][0])
    with pytest.raises(DataError, match="missing data_batch_2.bin, data_batch_3.bin"):
        load_dataset("cifar10", folder)


def test_cifar_archive_with_a_link_member(tmp_path, cifar):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        link = tarfile.TarInfo(f"{FOLDER}/test_batch.bin")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    (tmp_path / "a.tar.gz").write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match="test_batch.bin: not a regular file"):
        load_dataset("cifar10", tmp_path / "a.tar.gz")


def test_cifar_folder_without_data(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no CIFAR-10 data") as err:
        load_dataset("cifar10", tmp_path / "empty")
    assert "data_batch_1.bin" in str(err.value) and "cifar-10-binary.tar.gz" in str(err.value)


def test_cifar_published_md5():
    assert cifar10.MD5 == "c32a1d4ab5d03f1284b67883e8d87530" and cifar10.MIRRORS[0].startswith("https://www.cs.")


# --- downloads ---------------------------------------------------------------------------------------------------

@pytest.fixture
def www(tmp_path, idx_arrays, cifar, monkeypatch):
    """Local HTTP mirrors: 'good' serves the files whose checksums are injected, 'bad' corrupted copies (valid
    gzip, wrong content), 'empty' 404s. Returns (url of a mirror dir, request log)."""
    served = tmp_path / "www"
    for mirror in ("good", "bad", "empty"):
        (served / mirror).mkdir(parents=True)
    for name, array in idx_arrays.items():
        write_idx(served / "good" / f"{name}.gz", array)
        raw = idx_body(array)
        (served / "bad" / f"{name}.gz").write_bytes(gzip.compress(raw[:-1] + bytes([raw[-1] ^ 1])))
    archive = cifar_tar(cifar)
    (served / "good" / "cifar-10-binary.tar.gz").write_bytes(archive)
    corrupted = {**cifar, "test_batch.bin": (cifar["test_batch.bin"][0][::-1], None, None)}
    (served / "bad" / "cifar-10-binary.tar.gz").write_bytes(cifar_tar(corrupted))
    monkeypatch.setattr(fashion_mnist.SPEC, "checksums", idx_checksums(idx_arrays))
    monkeypatch.setattr(cifar10.SPEC, "md5", hashlib.md5(archive).hexdigest())
    with serve(served) as served_urls:
        yield served_urls


def test_fashion_download_and_cache(tmp_path, idx_arrays, www):
    url, requests = www
    data = load_dataset("fashion-mnist", mirrors=[url("bad"), url("good")], progress=False)
    assert_idx_matches(data, idx_arrays)
    cache = tmp_path / "xdg" / "xpnet" / "fashion-mnist.npz"
    assert data.source == f"downloaded from {url('good')}, cached at {cache}"
    assert sorted(r for r in requests if r.startswith("/good/")) == sorted(f"/good/{n}.gz" for n in IDX_NAMES)
    assert sum(r.startswith("/bad/") for r in requests) == 4
    assert_idx_matches(load_dataset("fashion-mnist", mirrors=[url("good")], progress=False), idx_arrays)
    assert len(requests) == 8, "the second run must come from the cache"


def test_fashion_all_mirrors_corrupted(tmp_path, www):
    url, _ = www
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", mirrors=[url("bad"), url("empty")], progress=False)
    assert f"{url('bad')}train-images-idx3-ubyte.gz: corrupted (SHA-256" in str(err.value)
    assert f"{url('empty')}train-images-idx3-ubyte.gz" in str(err.value) and "404" in str(err.value)
    assert not (tmp_path / "xdg" / "xpnet" / "fashion-mnist.npz").exists()


def test_cifar_download_verifies_the_md5_and_caches(tmp_path, cifar, www):
    url, requests = www
    data = load_dataset("cifar10", cache_dir=tmp_path / "c", mirrors=[url("bad"), url("empty"), url("good")],
                        progress=False)
    assert requests == ["/bad/cifar-10-binary.tar.gz", "/empty/cifar-10-binary.tar.gz",
                        "/good/cifar-10-binary.tar.gz"]
    assert data.source == f"downloaded from {url('good')}, cached at {tmp_path / 'c' / 'cifar10.npz'}"
    assert_cifar_matches(data, cifar)
    cached = load_dataset("cifar10", cache_dir=tmp_path / "c", download=False)
    assert cached.source == f"cache {tmp_path / 'c' / 'cifar10.npz'}" and len(requests) == 3
    assert_cifar_matches(cached, cifar)
    assert load_dataset("cifar10", cache_dir=tmp_path / "c", download=False, grayscale=True).train.shape == \
        (1, 32, 32)


def test_cifar_md5_mismatch_everywhere(tmp_path, www):
    url, _ = www
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", mirrors=[url("bad"), url("empty")], progress=False)
    message = str(err.value)
    assert f"{url('bad')}cifar-10-binary.tar.gz: corrupted (MD5 of the archive is" in message
    assert f"{url('empty')}cifar-10-binary.tar.gz" in message and "404" in message
    assert not (tmp_path / "xdg" / "xpnet" / "cifar10.npz").exists()


def test_a_mirror_announcing_too_large_a_file_is_skipped(tmp_path, idx_arrays, www, monkeypatch):
    url, _ = www
    monkeypatch.setattr(idx_datasets, "MAX_DOWNLOAD_BYTES", 10)
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", mirrors=[url("good")], progress=False)
    assert f"{url('good')}train-images-idx3-ubyte.gz: the server announces" in str(err.value)
    assert "more than the 10 bytes this file can be" in str(err.value)
    monkeypatch.setattr(cifar10, "MAX_DOWNLOAD_BYTES", 10)
    with pytest.raises(DataError, match="more than the 10 bytes"):
        load_dataset("cifar10", mirrors=[url("good")], progress=False)


class EndlessBody(http.server.BaseHTTPRequestHandler):
    """Sends 64 KiB blocks without a Content-Length until the client hangs up (HTTP/1.0: the body ends at close)."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        with contextlib.suppress(OSError):
            while True:
                self.wfile.write(bytes(1 << 16))

    def log_message(self, *args: object) -> None:
        pass


def test_a_body_longer_than_the_cap_is_refused_while_it_arrives():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EndlessBody)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/x.gz"
        with pytest.raises(ValueError, match=f"{url}: the server sent more than the 1000000 bytes"):
            fetch(url, False, 1_000_000)
    finally:
        server.shutdown()
        server.server_close()


def test_cifar_download_with_progress_bar(www, capsys):
    url, _ = www
    load_dataset("cifar10", mirrors=[url("good")], progress=True)
    assert "cifar-10-binary.tar.gz" in capsys.readouterr().err


@pytest.mark.parametrize("name, ways", [
    ("fashion-mnist", ["train-images-idx3-ubyte", "apt install dataset-fashion-mnist", "fashion-mnist.npz",
                       "Debian package dataset-fashion-mnist: not installed"]),
    ("cifar10", ["data_batch_1.bin", "test_batch.bin", "cifar-10-binary.tar.gz", "cifar10.npz"]),
])
def test_nothing_found_lists_every_way(tmp_path, www, name, ways):
    url, requests = www
    with pytest.raises(DataError) as err:
        load_dataset(name, mirrors=[url("good")], download=False)
    message = str(err.value)
    assert message.startswith(f"{DATASETS[name].title} data not found. Provide it in one of these ways:")
    for way in ["--data PATH", "XPNET_DATA", "PATH/train/<class>", ".npz", f"allow the download (network access) "
                f"from {url('good')}", str(tmp_path / "xdg" / "xpnet"), "download: disabled", *ways]:
        assert way in message
    assert requests == [], "download=False must not touch the network"
    with pytest.raises(DataError) as err:
        load_dataset(name, download=False)
    assert DATASETS[name].mirrors[0] in str(err.value)


def test_the_folder_dataset_takes_its_own_image_size_and_class_count(tmp_path):
    """``--dataset folder``: the images' own size (the first training image's) and as many classes as folders;
    ``image_size`` resizes, for any dataset's class-folder tree."""
    names = [f"c{i:02d}" for i in range(12)]  # more classes than MNIST's ten
    for split in ("train", "test"):
        for c in names:
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(np.full((20, 24, 3), 7, np.uint8)).save(tmp_path / split / c / "0.png")
    data = load_dataset("folder", tmp_path)
    assert data.train.shape == (3, 20, 24) and data.train.classes == names and len(data.test) == 12
    assert load_dataset("folder", tmp_path, image_size=(16, 8)).train.shape == (3, 16, 8)
    Image.fromarray(np.full((10, 10, 3), 7, np.uint8)).save(tmp_path / "train" / "c05" / "1.png")
    with pytest.raises(DataError, match=r"1\.png: image is 10x10 .* but 20x24 was expected.*--image-size H,W"):
        load_dataset("folder", tmp_path)
    assert load_dataset("folder", tmp_path, image_size=(20, 24)).train.shape == (3, 20, 24)
    with pytest.raises(DataError, match="at most 10 folders"):
        load_dataset("mnist", tmp_path, image_size=(20, 24))


def test_the_folder_dataset_needs_a_path(monkeypatch):
    monkeypatch.delenv("XPNET_DATA", raising=False)
    with pytest.raises(DataError, match=r"dataset 'folder' reads your own images: give --data PATH"):
        load_dataset("folder")

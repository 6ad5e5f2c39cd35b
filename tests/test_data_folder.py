"""Class-folder trees: decoding, the label map, every bad input, and the .npz cache's invalidation."""

import os
import struct
import zlib

import numpy as np
import pytest
from corrupt_files import forge_ihdr, npy_bytes, npz_bytes, png_bytes, png_chunk, zlib_zeros
from PIL import Image

from xpnet.data import DataError, load_class_folders
from xpnet.data import folder


@pytest.fixture(autouse=True)
def _user_cache(tmp_path, monkeypatch):
    """Keep the fallback cache inside the test's own folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def save(path, pixels, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


def make_tree(root, classes=("0", "1", "2"), per_class=2, size=(28, 28), split="train", seed=0):
    """Random grayscale PNGs; returns {relative path: pixels}."""
    rng = np.random.default_rng(seed)
    written = {}
    for c in classes:
        for i in range(per_class):
            pixels = rng.integers(0, 256, size, dtype=np.uint8)
            save(root / split / c / f"{i}.png", pixels)
            written[f"{c}/{i}.png"] = pixels
    return written


@pytest.fixture
def decodes(monkeypatch):
    """Counts calls of the image decoder (to prove cache hits and rebuilds)."""
    calls = []
    real = folder.decode_image

    def counting(path, *args):
        calls.append(path)
        return real(path, *args)

    monkeypatch.setattr(folder, "decode_image", counting)
    return calls


def test_loads_pixels_and_labels_from_sorted_folder_names(tmp_path):
    written = make_tree(tmp_path, classes=("cat", "ant", "bee"))
    ds = load_class_folders(tmp_path, "train")
    assert ds.classes == ["ant", "bee", "cat"]
    assert ds.images.dtype == np.uint8 and ds.images.shape == (6, 1, 28, 28) and ds.shape == (1, 28, 28)
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    for image, label, name in zip(ds.images, ds.labels, ["ant/0", "ant/1", "bee/0", "bee/1", "cat/0", "cat/1"]):
        assert ds.classes[label] == name.split("/")[0]
        np.testing.assert_array_equal(image[0], written[f"{name}.png"])


def test_a_colour_image_makes_the_split_rgb(tmp_path):
    """Gray images decoded before and after the first colour one get three equal channels."""
    rng = np.random.default_rng(1)
    gray = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(2)]
    rgb = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    save(tmp_path / "test" / "a" / "0.png", gray[0])
    save(tmp_path / "test" / "b" / "rgb.PNG", rgb)
    save(tmp_path / "test" / "c" / "0.png", gray[1])
    ds = load_class_folders(tmp_path, "test", cache=False)
    assert ds.images.shape == (3, 3, 28, 28) and ds.labels.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(ds.images[1], rgb.transpose(2, 0, 1))
    for i, pixels in ((0, gray[0]), (2, gray[1])):
        np.testing.assert_array_equal(ds.images[i], np.asarray(Image.fromarray(pixels).convert("RGB"))
                                      .transpose(2, 0, 1))


def test_grayscale_converts_colour_to_luma(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    save(tmp_path / "test" / "a" / "rgb.PNG", rgb)
    flat = np.full((28, 28), 200, np.uint8)
    save(tmp_path / "test" / "b" / "flat.jpg", flat)
    ds = load_class_folders(tmp_path, "test", cache=False, grayscale=True)
    assert ds.shape == (1, 28, 28)
    np.testing.assert_array_equal(ds.images[0, 0], np.asarray(Image.fromarray(rgb).convert("L")))
    assert np.abs(ds.images[1].astype(int) - 200).max() <= 2   # JPEG is lossy
    assert ds.labels.tolist() == [0, 1]


@pytest.mark.parametrize("mode", ["RGBA", "CMYK"])
def test_other_colour_modes_are_rgb(tmp_path, mode):
    rgb = np.random.default_rng(2).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    image = Image.fromarray(rgb).convert(mode)
    path = tmp_path / "train" / "a" / ("x.png" if mode == "RGBA" else "x.jpg")   # PNG has no CMYK
    path.parent.mkdir(parents=True)
    image.save(path)
    ds = load_class_folders(tmp_path, "train", cache=False)
    with Image.open(path) as opened:
        expected = np.asarray(opened.convert("RGB")).transpose(2, 0, 1)
    assert ds.shape == (3, 28, 28)
    np.testing.assert_array_equal(ds.images[0], expected)


def test_palette_images_are_gray_unless_a_pixel_has_colour(tmp_path):
    gray_pixels = np.tile(np.arange(0, 252, 9, dtype=np.uint8), (28, 1))
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(gray_pixels).convert("P").save(tmp_path / "train" / "a" / "0.png")
    ds = load_class_folders(tmp_path, "train", cache=False)
    assert ds.shape == (1, 28, 28)
    with Image.open(tmp_path / "train" / "a" / "0.png") as opened:
        assert opened.mode == "P"
        np.testing.assert_array_equal(ds.images[0, 0], np.asarray(opened.convert("L")))
    colour = np.random.default_rng(3).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    Image.fromarray(colour).quantize(16).save(tmp_path / "train" / "a" / "1.png")
    ds = load_class_folders(tmp_path, "train", cache=False)
    assert ds.shape == (3, 28, 28)
    with Image.open(tmp_path / "train" / "a" / "1.png") as opened:
        np.testing.assert_array_equal(ds.images[1], np.asarray(opened.convert("RGB")).transpose(2, 0, 1))
    np.testing.assert_array_equal(ds.images[0], np.broadcast_to(gray_pixels, (3, 28, 28)))


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    wide = np.linspace(0, 65535, 28 * 28).round().astype(np.uint16).reshape(28, 28)
    save(tmp_path / "train" / "a" / "deep.png", wide)
    with Image.open(tmp_path / "train" / "a" / "deep.png") as opened:
        assert opened.mode.startswith("I")                   # Pillow opens it as 16-bit, not as "L"
    for grayscale in (False, True):
        ds = load_class_folders(tmp_path, "train", cache=False, grayscale=grayscale)
        assert ds.shape == (1, 28, 28)
        np.testing.assert_array_equal(ds.images[0, 0], np.rint(wide / 257.0).astype(np.uint8))
    assert ds.images.max() == 255 and ds.images.min() == 0 and len(np.unique(ds.images)) > 200


def test_16_bit_rgb_keeps_each_samples_high_byte(tmp_path):
    """Pillow has no 16-bit RGB mode: it opens a 48-bit PNG as "RGB" with each sample's high byte (v // 256), so
    these images are truncated where 16-bit gray is rounded (v / 257), at most 1 apart either way. The documented
    behaviour, pinned so that a Pillow that starts keeping the low byte is noticed."""
    rng = np.random.default_rng(3)
    wide = rng.integers(0, 65536, (28, 28, 3)).astype(">u2")
    rows = b"".join(b"\x00" + wide[y].tobytes() for y in range(28))  # filter type 0 (None) on every row
    png = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 16, 2, 0, 0, 0))
           + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "deep.png").write_bytes(png)
    ds = load_class_folders(tmp_path, "train", cache=False)
    assert ds.shape == (3, 28, 28)
    np.testing.assert_array_equal(ds.images[0], (wide // 256).astype(np.uint8).transpose(2, 0, 1))
    assert np.abs(ds.images[0].astype(int) - np.rint(wide / 257.0).transpose(2, 0, 1)).max() == 1


def test_tree_splits_agree_on_channels_and_classes(tmp_path):
    from xpnet.data import load_class_tree
    make_tree(tmp_path, split="train")
    make_tree(tmp_path, split="test", per_class=1)
    save(tmp_path / "test" / "1" / "colour.png", np.full((28, 28, 3), (10, 20, 30), np.uint8))
    train, test = load_class_tree(tmp_path)
    assert train.shape == test.shape == (3, 28, 28)
    gray_train = load_class_folders(tmp_path, "train")
    np.testing.assert_array_equal(train.images, np.repeat(gray_train.images, 3, axis=1))
    assert (test.images[2] == np.array([10, 20, 30])[:, None, None]).all()
    train, test = load_class_tree(tmp_path, grayscale=True)
    assert train.shape == test.shape == (1, 28, 28)
    np.testing.assert_array_equal(train.images, gray_train.images)


def test_resize(tmp_path):
    save(tmp_path / "train" / "0" / "big.png", np.full((40, 36), 77, np.uint8))
    ds = load_class_folders(tmp_path, "train", resize=True)
    assert ds.images.shape == (1, 1, 28, 28) and (ds.images == 77).all()
    save(tmp_path / "train" / "1" / "big.png", np.full((40, 36, 3), (1, 2, 3), np.uint8))
    ds = load_class_folders(tmp_path, "train", resize=True)
    assert ds.images.shape == (2, 3, 28, 28) and (ds.images[1] == np.array([1, 2, 3])[:, None, None]).all()


def test_size_is_height_then_width(tmp_path):
    save(tmp_path / "train" / "0" / "wide.png", np.zeros((10, 20), np.uint8))   # 10 high, 20 wide
    assert load_class_folders(tmp_path, "train", size=(10, 20)).images.shape == (1, 1, 10, 20)
    assert load_class_folders(tmp_path, "train", size=(5, 8), resize=True).images.shape == (1, 1, 5, 8)


def test_wrong_size_names_the_file_and_the_expected_size(tmp_path):
    make_tree(tmp_path)
    bad = tmp_path / "train" / "1" / "odd.png"
    save(bad, np.zeros((32, 30), np.uint8))
    with pytest.raises(DataError) as err:
        load_class_folders(tmp_path, "train")
    assert str(bad) in str(err.value) and "32x30" in str(err.value) and "28x28" in str(err.value)


def test_missing_split_folder(tmp_path):
    make_tree(tmp_path, split="train")
    with pytest.raises(DataError, match="not found") as err:
        load_class_folders(tmp_path, "test")
    assert str(tmp_path / "test") in str(err.value)


def test_split_without_class_folders(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="no class folders") as err:
        load_class_folders(tmp_path, "train")
    assert str(tmp_path / "train") in str(err.value)


def test_empty_class_folder(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "train" / "3").mkdir()
    with pytest.raises(DataError, match="empty class folder") as err:
        load_class_folders(tmp_path, "train")
    assert str(tmp_path / "train" / "3") in str(err.value)


def test_non_image_file(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "train" / "1" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not an image file") as err:
        load_class_folders(tmp_path, "train")
    assert str(tmp_path / "train" / "1" / "notes.txt") in str(err.value)


def test_text_file_named_png(tmp_path):
    make_tree(tmp_path)
    fake = tmp_path / "train" / "2" / "fake.png"
    fake.write_text("not an image at all")
    with pytest.raises(DataError, match="not a readable PNG/JPG") as err:
        load_class_folders(tmp_path, "train")
    assert str(fake) in str(err.value)


def test_truncated_png(tmp_path):
    make_tree(tmp_path)
    good = tmp_path / "train" / "0" / "0.png"
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="not a readable PNG/JPG") as err:
        load_class_folders(tmp_path, "train")
    assert str(good) in str(err.value)


def test_other_image_format_under_a_png_name(tmp_path):
    gif = tmp_path / "train" / "0" / "anim.png"
    save(gif, np.zeros((28, 28), np.uint8), fmt="GIF")
    with pytest.raises(DataError, match="GIF") as err:
        load_class_folders(tmp_path, "train")
    assert str(gif) in str(err.value)


@pytest.mark.parametrize("side, resize, words", [
    (100_000, False, ["DecompressionBombError"]),     # Pillow refuses it on opening, beyond twice its pixel limit
    (10_000, True, ["DecompressionBombWarning"]),     # past the limit: the warning is an error too
    (9_000, False, ["9000x9000", "28x28"]),           # under it: the header's size is refused before decoding
], ids=["bomb-error", "bomb-warning", "wrong-size-header"])
def test_png_that_claims_a_huge_size_names_the_file(tmp_path, side, resize, words):
    make_tree(tmp_path)
    bomb = tmp_path / "train" / "1" / "bomb.png"
    bomb.write_bytes(forge_ihdr(png_bytes(np.zeros((28, 28), np.uint8)), width=side, height=side))
    with pytest.raises(DataError) as err:
        load_class_folders(tmp_path, "train", resize=resize, cache=False)
    assert str(bomb) in str(err.value)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("forge", [
    lambda png: forge_ihdr(png, depth=7),                                  # no such bit depth
    lambda png: forge_ihdr(png, color=5),                                  # no such colour type
    lambda png: png[:8] + png_chunk(b"IHDR", b"\0" * 5) + png[33:],         # IHDR too short for its fields
    lambda png: png[:33] + png_chunk(b"zTXt", b"k\0\0" + zlib_zeros()) + png[33:],   # text chunk bomb
], ids=["depth", "colour-type", "short-ihdr", "ztxt-bomb"])
def test_any_decoder_failure_is_a_data_error_naming_the_file(tmp_path, forge):
    make_tree(tmp_path, classes=("0",))
    bad = tmp_path / "train" / "0" / "forged.png"
    bad.write_bytes(forge(png_bytes(np.zeros((28, 28), np.uint8))))
    with pytest.raises(DataError, match="not a readable PNG/JPG image") as err:
        load_class_folders(tmp_path, "train", cache=False)
    assert str(bad) in str(err.value)


def test_more_class_folders_than_the_dataset_has_classes(tmp_path):
    make_tree(tmp_path, classes=("a", "b", "c"), per_class=1)
    assert load_class_folders(tmp_path, "train", max_classes=3, cache=False).classes == ["a", "b", "c"]
    with pytest.raises(DataError, match=r"3 class folders \(a, b, c\), but the dataset has 2 classes") as err:
        load_class_folders(tmp_path, "train", max_classes=2, cache=False)
    assert str(tmp_path / "train") in str(err.value)


def test_hidden_entries_are_ignored(tmp_path):
    make_tree(tmp_path, classes=("0",))
    (tmp_path / "train" / "0" / ".DS_Store").write_bytes(b"\0junk")
    (tmp_path / "train" / ".git").mkdir()
    ds = load_class_folders(tmp_path, "train")
    assert ds.classes == ["0"] and len(ds) == 2


# --- cache -------------------------------------------------------------------------------------------------------

def test_cache_is_reused_while_nothing_changes(tmp_path, decodes):
    make_tree(tmp_path)
    first = load_class_folders(tmp_path, "train")
    assert len(decodes) == 6
    cache_file = tmp_path / ".xpnet-cache-train.npz"
    assert cache_file.is_file()
    with np.load(cache_file, allow_pickle=False) as z:   # arrays only: loadable without pickle
        np.testing.assert_array_equal(z["images"], first.images)
    second = load_class_folders(tmp_path, "train")
    assert len(decodes) == 6, "unchanged tree was decoded again"
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)
    assert second.classes == first.classes


def test_touching_a_file_rebuilds(tmp_path, decodes):
    make_tree(tmp_path)
    load_class_folders(tmp_path, "train")
    target = tmp_path / "train" / "1" / "0.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    load_class_folders(tmp_path, "train")
    assert len(decodes) == 12


def test_modified_file_is_seen(tmp_path, decodes):
    make_tree(tmp_path)
    load_class_folders(tmp_path, "train")
    target = tmp_path / "train" / "2" / "1.png"
    st = target.stat()
    save(target, np.full((28, 28), 9, np.uint8))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))   # same mtime: the size change alone must count
    ds = load_class_folders(tmp_path, "train")
    assert len(decodes) == 12 and (ds.images[5] == 9).all()


def test_added_and_removed_files_rebuild(tmp_path, decodes):
    make_tree(tmp_path)
    load_class_folders(tmp_path, "train")
    save(tmp_path / "train" / "3" / "new.png", np.zeros((28, 28), np.uint8))
    assert len(load_class_folders(tmp_path, "train")) == 7 and len(decodes) == 6 + 7
    (tmp_path / "train" / "0" / "0.png").unlink()
    assert len(load_class_folders(tmp_path, "train")) == 6 and len(decodes) == 6 + 7 + 6


def test_options_are_part_of_the_key(tmp_path, decodes):
    make_tree(tmp_path, classes=("0",))
    load_class_folders(tmp_path, "train")
    assert load_class_folders(tmp_path, "train", resize=True, size=(14, 14)).images.shape == (2, 1, 14, 14)
    assert len(decodes) == 4


def test_grayscale_is_part_of_the_key(tmp_path, decodes):
    make_tree(tmp_path, classes=("0",))
    save(tmp_path / "train" / "0" / "rgb.png", np.full((28, 28, 3), (200, 0, 0), np.uint8))
    assert load_class_folders(tmp_path, "train").shape == (3, 28, 28)
    assert load_class_folders(tmp_path, "train", grayscale=True).shape == (1, 28, 28)
    assert load_class_folders(tmp_path, "train", grayscale=True).shape == (1, 28, 28)
    assert len(decodes) == 6


def test_splits_have_separate_caches(tmp_path, decodes):
    make_tree(tmp_path, split="train")
    make_tree(tmp_path, split="test", classes=("0", "1", "2", "3"), per_class=1)
    assert len(load_class_folders(tmp_path, "train")) == 6
    assert len(load_class_folders(tmp_path, "test")) == 4
    assert len(load_class_folders(tmp_path, "train")) == 6
    assert len(decodes) == 10


def test_cache_off_decodes_every_time_and_writes_nothing(tmp_path, decodes):
    make_tree(tmp_path)
    load_class_folders(tmp_path, "train", cache=False)
    load_class_folders(tmp_path, "train", cache=False)
    assert len(decodes) == 12
    assert not list(tmp_path.glob(".xpnet-cache-*")) and not (tmp_path / "xdg").exists()


def test_corrupt_cache_is_rebuilt(tmp_path, decodes):
    written = make_tree(tmp_path)
    load_class_folders(tmp_path, "train")
    (tmp_path / ".xpnet-cache-train.npz").write_bytes(b"garbage")
    ds = load_class_folders(tmp_path, "train")
    assert len(decodes) == 12
    np.testing.assert_array_equal(ds.images[0, 0], written["0/0.png"])
    load_class_folders(tmp_path, "train")
    assert len(decodes) == 12


def test_cache_that_declares_a_huge_array_is_rebuilt_not_allocated(tmp_path, decodes):
    written = make_tree(tmp_path)
    load_class_folders(tmp_path, "train")
    cache = tmp_path / ".xpnet-cache-train.npz"
    with np.load(cache) as z:
        members = {f"{k}.npy": npy_bytes(z[k].dtype.str, z[k].shape, z[k].tobytes()) for k in z.files}
    members["images.npy"] = npy_bytes("|u1", (1 << 36,), b"")      # 64 GiB declared in a few bytes
    cache.write_bytes(npz_bytes(members))
    ds = load_class_folders(tmp_path, "train")
    assert len(decodes) == 12
    np.testing.assert_array_equal(ds.images[0, 0], written["0/0.png"])


def test_unwritable_root_falls_back_to_the_user_cache(tmp_path, decodes, monkeypatch):
    root = tmp_path / "readonly"
    make_tree(root)
    real = folder.atomic_write

    def refuse_root(path):
        if path.parent == root:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(folder, "atomic_write", refuse_root)
    load_class_folders(root, "train")
    assert not list(root.glob(".xpnet-cache-*"))
    cached = list((tmp_path / "xdg" / "xpnet" / "folders").glob("*-train.npz"))
    assert len(cached) == 1
    load_class_folders(root, "train")
    assert len(decodes) == 6


def test_image_type_reads_only_that_type(tmp_path):
    """Report 2's image_type key: with "png" the JPEGs beside the PNGs are left out, and the other way round."""
    make_tree(tmp_path, classes=("0", "1"), per_class=2)
    for c in ("0", "1"):
        save(tmp_path / "train" / c / "extra.jpg", np.full((28, 28), 200, np.uint8), "JPEG")
    assert len(load_class_folders(tmp_path, "train")) == 6
    assert len(load_class_folders(tmp_path, "train", image_type="png")) == 4
    jpgs = load_class_folders(tmp_path, "train", image_type="jpg")
    assert len(jpgs) == 2 and list(jpgs.labels) == [0, 1]
    with pytest.raises(DataError, match="image_type: expected png or jpg, got 'gif'"):
        load_class_folders(tmp_path, "train", image_type="gif")
